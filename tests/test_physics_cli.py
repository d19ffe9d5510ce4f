"""The physics command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmm_twin.records import RESULT_FIELDS

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmm_twin.physics", *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


BASE = ("--measured", "100.0118", "--temp", "25", "--material", "AL6061", "--nominal", "100", "--tol", "0.01")


def test_text_output() -> None:
    done = run_cli(*BASE)
    assert done.returncode == 0, done.stderr
    assert "compensated     100.00000 mm at 20 degC" in done.stdout
    assert "correction      -11.80 um" in done.stdout
    assert "U = 2.84 um" in done.stdout
    assert "verdict         PASS" in done.stdout


def test_json_output_uses_result_record_names() -> None:
    done = run_cli(
        *BASE,
        "--air-temp", "24.5",
        "--machine-id", "CMM-01",
        "--part-id", "P1",
        "--feature", "length_x",
        "--timestamp", "2026-03-01T12:00:00Z",
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert tuple(record) == RESULT_FIELDS
    assert record["compensated_mm"] == pytest.approx(100.0, abs=1e-7)
    assert record["correction_um"] == pytest.approx(-11.8, abs=1e-4)
    # 2.8408 without air; air 0.5 K below the part adds the gradient term (0.2 * 0.5 K)^2 / 3
    # to u(T)^2 = 0.2^2: u_c^2 = 0.464136 + 5.5696 * 0.043333 + 1.080360 + 0.25, U = 2 * 1.426830 at 100 mm
    assert record["uncertainty_um"] == pytest.approx(2.8538, abs=1e-4)  # L = 100.0118 mm, not 100
    assert record["verdict"] == "PASS"
    assert record["flags"] == []
    assert record["timestamp"] == "2026-03-01T12:00:00.000000Z"
    assert len(record["measurement_id"]) == 36


def test_scale_and_simple_rule_options() -> None:
    done = run_cli(*BASE, "--scale-material", "STEEL_1020", "--scale-temp", "22", "--rule", "simple", "--json")
    record = json.loads(done.stdout)
    assert record["compensated_mm"] == pytest.approx(100.00234, abs=1e-7)
    assert record["verdict"] == "PASS"
    assert record["scale_temp_c"] == 22.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (("--measured", "nan"), "--measured: must be a finite number"),
        (("--measured", "1e5"), "--measured: must be within +-10000 mm"),
        (("--temp", "250"), "--temp: outside the plausible range"),
        (("--tol", "0"), "--tol: must be > 0"),
        (("--material", "unobtainium"), "--material: unknown material 'unobtainium'"),
        (("--temp-u", "-1"), "--temp-u: invalid value"),
        (("--measured", "abc"), "--measured: invalid float value"),
    ],
)
def test_bad_values_exit_2_with_one_line(override: tuple[str, str], expected: str) -> None:
    args = list(BASE)
    flag, value = override
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]
    assert "Traceback" not in done.stderr
