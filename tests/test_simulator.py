"""Tests of the CMM simulator: shop model determinism, file format, atomic writes, CLI contract."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmm_twin.errors import ConfigError
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.records import measurement_id
from cmm_twin.simulator.catalogue import CATALOGUE, part_type_index
from cmm_twin.simulator.cli import main, parse_settings
from cmm_twin.simulator.scenario import ShopScenario
from cmm_twin.simulator.shop import BLOCK_PARTS, PartBatch, ShopModel
from cmm_twin.simulator.writer import CSV_COLUMNS, TRUTH_COLUMNS, format_timestamp, temp_name

REPO_ROOT = Path(__file__).resolve().parents[1]
START = "2024-05-01T08:00:00Z"
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
FILE_RE = re.compile(r"CMM-(\d\d)_\d{8}T\d{9}_(\d{8})\.csv")


@pytest.fixture(autouse=True)
def _no_cmm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep CMM_* variables of the developer's shell out of the tests."""
    for name in list(os.environ):
        if name.startswith("CMM_"):
            monkeypatch.delenv(name)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: no CMM_* variables except `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMM_")}
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the top-level script as a user would."""
    return subprocess.run(
        [sys.executable, "cmm_simulator.py", *args],
        cwd=REPO_ROOT,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file, checking the header is exactly as `csv.DictReader` reports it."""
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as handle:
        return next(csv.reader(handle))


def csv_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.csv"))


def ended_process_pid() -> int:
    """The pid of a process that has ended (as a simulator killed earlier)."""
    process = subprocess.Popen(["true"])
    process.wait(timeout=60)
    return process.pid


def part_index_of(path: Path) -> int:
    match = FILE_RE.fullmatch(path.name)
    assert match, path.name
    return int(match.group(2))


def part_type_of(part_index: int, machines: int = 3) -> int:
    return int(part_type_index(np.array([part_index]), machines)[0])


def check_inbox_file(path: Path, machines: int = 3) -> list[dict[str, str]]:
    """Assert one inbox file is complete and well formed (the features of its part type); returns its rows."""
    match = FILE_RE.fullmatch(path.name)
    assert match, path.name
    assert header(path) == list(CSV_COLUMNS)
    rows = read_rows(path)
    part_type = CATALOGUE[part_type_of(int(match.group(2)), machines)]
    assert [r["feature"] for r in rows] == [f.name for f in part_type.features], path.name
    assert {r["material"] for r in rows} == {part_type.material}
    for row, feature in zip(rows, part_type.features, strict=True):
        assert row["unit"] == feature.unit
        if feature.symmetric:
            assert (row["tolerance_mm"], row["lower_tol_mm"], row["upper_tol_mm"]) == (f"{feature.upper:.4f}", "", "")
        else:
            expected = ["" if x is None else f"{x:.4f}" for x in (feature.lower, feature.upper)]
            assert [row["tolerance_mm"], row["lower_tol_mm"], row["upper_tol_mm"]] == ["", *expected]
    for row in rows:
        assert row["machine_id"] == f"CMM-{match.group(1)}"
        assert row["part_id"] == f"P{int(match.group(2)):07d}"
        assert TIMESTAMP_RE.fullmatch(row["timestamp"]), row["timestamp"]
        assert re.fullmatch(r"\d+\.\d{4}" if row["unit"] == "deg" else r"\d+\.\d{5}", row["measured_mm"]), row
        assert re.fullmatch(r"\d+\.\d{4}", row["nominal_mm"])
        assert re.fullmatch(r"-?\d+\.\d{3}", row["part_temp_c"])
        assert re.fullmatch(r"-?\d+\.\d{3}", row["air_temp_c"])
        for column in ("nominal_mm", "measured_mm", "part_temp_c", "air_temp_c"):
            assert math.isfinite(float(row[column]))
    return rows


# ----------------------------------------------------------------------------- shop model


def batches_equal(a: PartBatch, b: PartBatch) -> bool:
    return all(
        np.array_equal(getattr(a, name), getattr(b, name), equal_nan=getattr(a, name).dtype.kind == "f")
        for name in a.__dataclass_fields__
    )


def test_parts_do_not_depend_on_chunking() -> None:
    model = ShopModel(seed=11)
    whole = model.parts(0, 1000)
    assert len(whole) == sum(len(CATALOGUE[part_type_of(k)].features) for k in range(1000))
    assert batches_equal(whole, PartBatch.concat([model.parts(0, 300), model.parts(300, 700)]))
    assert batches_equal(whole.select(np.isin(whole.part_index, [255, 256, 257])), model.parts(255, 3))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 3 * BLOCK_PARTS), st.integers(1, 2 * BLOCK_PARTS), st.integers(1, 2 * BLOCK_PARTS))
def test_parts_any_split_matches(start: int, first: int, second: int) -> None:
    model = ShopModel(seed=3)
    whole = model.parts(start, first + second)
    assert batches_equal(whole, PartBatch.concat([model.parts(start, first), model.parts(start + first, second)]))


def test_seed_changes_values_and_same_seed_repeats() -> None:
    assert batches_equal(ShopModel(seed=5).parts(10, 50), ShopModel(seed=5).parts(10, 50))
    assert not np.array_equal(ShopModel(seed=5).parts(0, 50).measured, ShopModel(seed=6).parts(0, 50).measured)


def test_parts_rows_machines_and_shop_time() -> None:
    scenario = ShopScenario(shop_step_s=30.0)
    batch = ShopModel(scenario, seed=0, machines=4).parts(40, 10)
    types = [CATALOGUE[(k // 4) % len(CATALOGUE)] for k in range(40, 50)]  # (40 // 4) % 7 = 3: the fourth type first
    assert [t.part_number for t in types[:5]] == ["VB-095-SS304"] * 4 + ["FR-250-INVAR36"]
    assert batch.part_index.tolist() == [k for k, t in zip(range(40, 50), types, strict=True) for _ in t.features]
    assert batch.feature.tolist() == [f.name for t in types for f in t.features]
    assert batch.part_number.tolist() == [t.part_number for t in types for _ in t.features]
    assert batch.material.tolist() == [t.material for t in types for _ in t.features]
    assert batch.machine_index.tolist() == [
        k % 4 for k, t in zip(range(40, 50), types, strict=True) for _ in t.features
    ]
    assert batch.part_id[:2].tolist() == ["P0000040", "P0000040"]
    np.testing.assert_array_equal(batch.shop_time_s, batch.part_index * 30.0)
    assert [len(p) for p in batch.per_part()] == [len(t.features) for t in types]


def test_model_temperatures_are_plausible_over_days() -> None:
    batch = ShopModel(seed=1).parts(0, 3 * 1440)  # three shop days at one part a minute
    air = batch.true_air_temp_c
    assert 17.5 < air.min() < 18.8, air.min()
    assert 25.2 < air.max() < 26.5, air.max()
    assert (batch.true_part_temp_c >= air).all()
    assert (batch.true_part_temp_c <= air + 6.0).all()
    assert (batch.true_surface_temp_c >= air).all()
    # one reading per part on the surface: the sensor's offset plus a reading noise of 0.02 K
    reading_noise = batch.part_temp_c - batch.true_surface_temp_c - batch.part_sensor_offset_k
    assert 0.017 < reading_noise.std() < 0.023 and np.abs(reading_noise).max() < 0.15
    assert (np.abs(batch.part_sensor_offset_k) <= 0.15 + 0.002 * 20.0).all()
    assert (np.abs(batch.air_sensor_offset_k) <= 0.1).all()
    air_noise = batch.air_temp_c - air - batch.air_sensor_offset_k
    assert 0.017 < air_noise.std() < 0.023


def test_invalid_model_arguments_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="machines"):
        ShopModel(machines=0)
    with pytest.raises(ConfigError, match="seed"):
        ShopModel(seed=-1)
    with pytest.raises(ConfigError, match=r"scenario\.shop_step_s"):
        ShopScenario(shop_step_s=0.0)


# ----------------------------------------------------------------------------- files


def test_same_seed_and_start_give_identical_bytes(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        args = ["--outdir", str(tmp_path / name / "in"), "--truth-dir", str(tmp_path / name / "truth")]
        assert main([*args, "--count", "20", "--rate", "0", "--seed", "7", "--start", START]) == 0
        outputs.append({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.csv")})
    assert len(outputs[0]) == 40
    assert outputs[0] == outputs[1]
    assert main(["--outdir", str(tmp_path / "c"), "--count", "20", "--rate", "0", "--seed", "8", "--start", START]) == 0
    other = {p.name: p.read_bytes() for p in (tmp_path / "c").glob("*.csv")}
    assert other.keys() == {p.name for p in outputs[0] if p.parts[0] == "in"}
    assert all(other[p.name] != data for p, data in outputs[0].items() if p.parts[0] == "in")


def test_file_format_and_plausible_values(tmp_path: Path) -> None:
    # --rate 0 stamps parts 1 s apart; --speedup 1800 makes that 30 min of shop time: 48 parts = one shop day.
    args = ["--outdir", str(tmp_path), "--count", "48", "--rate", "0", "--speedup", "1800", "--machines", "2"]
    assert main([*args, "--start", START]) == 0
    files = csv_files(tmp_path)
    assert len(files) == 48
    start = datetime.fromisoformat(START)
    air, part = [], []
    for path in files:
        rows = check_inbox_file(path, machines=2)
        index = part_index_of(path)
        assert path.name.startswith("CMM-01" if index % 2 == 0 else "CMM-02")
        features = CATALOGUE[part_type_of(index, machines=2)].features
        assert [r["nominal_mm"] for r in rows] == [f"{f.nominal:.4f}" for f in features]
        assert {r["timestamp"] for r in rows} == {format_timestamp(start + timedelta(seconds=index))}
        for row in rows:
            air.append(float(row["air_temp_c"]))
            part.append(float(row["part_temp_c"]))
            assert abs(float(row["measured_mm"]) - float(row["nominal_mm"])) < 0.2
    air_c, part_c = np.array(air), np.array(part)
    assert ((air_c > 17.0) & (air_c < 27.0)).all(), (air_c.min(), air_c.max())
    assert (part_c >= air_c - 1.0).all()
    assert (part_c < 34.0).all()
    assert air_c.max() - air_c.min() > 5.0, "a shop day should show the daily drift"


def test_pacing_follows_rate(tmp_path: Path) -> None:
    began = time.monotonic()
    assert main(["--outdir", str(tmp_path), "--count", "11", "--rate", "20", "--start", START]) == 0
    elapsed_s = time.monotonic() - began
    assert elapsed_s >= 0.45, elapsed_s  # 10 intervals of 50 ms at least: never faster than the rate
    assert len(csv_files(tmp_path)) == 11


def test_count_is_respected(tmp_path: Path) -> None:
    assert main(["--outdir", str(tmp_path), "--count", "7", "--rate", "0", "--start", START]) == 0
    names = [p.name for p in csv_files(tmp_path)]
    parsed = sorted((int(m.group(2)), int(m.group(1))) for n in names if (m := FILE_RE.fullmatch(n)))
    assert parsed == [(k, k % 3 + 1) for k in range(7)]
    assert sum(len(read_rows(tmp_path / n)) for n in names) == 3 * 5 + 3 * 4 + 6  # types 0, 1 and 2


def test_atomic_writes_leave_only_csv_files_and_clear_stale_temps(tmp_path: Path) -> None:
    outdir, truth = tmp_path / "in", tmp_path / "truth"
    outdir.mkdir()
    truth.mkdir()
    dead_pid = ended_process_pid()
    (outdir / temp_name("CMM-01_00000099.csv", dead_pid)).write_text("timestamp,machine_id\n2024-")
    (truth / temp_name("CMM-01_00000099.csv", dead_pid)).write_text("half")
    (outdir / "notes.txt").write_text("not ours")
    assert main(["--outdir", str(outdir), "--truth-dir", str(truth), "--count", "9", "--rate", "0"]) == 0
    assert sorted(p.name for p in outdir.iterdir()) == sorted([*(p.name for p in csv_files(outdir)), "notes.txt"])
    assert not list(truth.glob(".*"))
    assert len(csv_files(outdir)) == 9
    assert len(csv_files(truth)) == 9
    for path in csv_files(outdir):
        check_inbox_file(path)


def test_truth_files_match_rows(tmp_path: Path) -> None:
    outdir, truth = tmp_path / "in", tmp_path / "truth"
    assert main(["--outdir", str(outdir), "--truth-dir", str(truth), "--count", "12", "--rate", "0.0"]) == 0
    assert [p.name for p in csv_files(truth)] == [p.name for p in csv_files(outdir)]
    for path in csv_files(outdir):
        rows = read_rows(path)
        assert header(truth / path.name) == list(TRUTH_COLUMNS)
        truths = read_rows(truth / path.name)
        assert len(truths) == len(rows)
        for row, true in zip(rows, truths, strict=True):
            for key in ("machine_id", "part_id", "feature", "timestamp"):
                assert row[key] == true[key]
            expected_id = measurement_id(
                row["machine_id"], row["part_id"], row["feature"], datetime.fromisoformat(row["timestamp"])
            )
            assert true["measurement_id"] == expected_id
            assert (true["unit"], true["nominal"]) == (row["unit"], row["nominal_mm"])
            true_value = float(true["true_value"])
            assert abs(true_value - float(row["nominal_mm"])) < 0.1
            assert true["true_length_20c_mm"] == ("" if row["unit"] == "deg" else true["true_value"])
            assert 15.0 < float(true["true_part_temp_c"]) < 35.0
            table = MATERIALS[row["material"]].cte_per_k
            assert abs(float(true["true_cte_per_k"]) / table - 1.0) <= 0.1 + 1e-6


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--rate", "-1"], "--rate"),
        (["--rate", "nan"], "--rate"),
        (["--count", "0"], "--count"),
        (["--machines", "100"], "--machines"),
        (["--machines", "two"], "--machines"),
        (["--speedup", "0"], "--speedup"),
        (["--seed", "-3"], "--seed"),
        (["--start", "yesterday"], "--start"),
        (["--start", "2024-05-01T08:00:00"], "--start"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--count"], "--count"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], flag: str) -> None:
    result = run_cli(["--outdir", str(tmp_path / "in"), *args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmm_simulator: error:"), lines[0]
    assert flag in lines[0], lines[0]
    assert not (tmp_path / "in").exists()


def test_default_outdir_and_same_truth_dir_is_an_error(tmp_path: Path) -> None:
    bare = parse_settings([], {})  # `python cmm_simulator.py`: the bare gateway's inbox, at `make run`'s rate
    assert (bare.outdir, bare.rate_hz) == (Path("data/inbox"), 2.0)
    result = run_cli(["--outdir", str(tmp_path), "--truth-dir", str(tmp_path)])
    assert result.returncode == 2
    assert "--truth-dir" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_environment_variables_are_honoured(tmp_path: Path) -> None:
    began = time.monotonic()
    result = run_cli(["--count", "3", "--start", START], env=clean_env(CMM_SIM_RATE="4", CMM_SIM_OUTDIR=str(tmp_path)))
    elapsed_s = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert elapsed_s >= 0.45, "two intervals at 4 Hz take 0.5 s"
    stamps = [read_rows(p)[0]["timestamp"] for p in csv_files(tmp_path)]
    assert sorted(stamps) == ["2024-05-01T08:00:00.000Z", "2024-05-01T08:00:00.250Z", "2024-05-01T08:00:00.500Z"]


def test_bad_environment_variable_is_named_and_flag_overrides_it(tmp_path: Path) -> None:
    result = run_cli(["--outdir", str(tmp_path), "--count", "1"], env=clean_env(CMM_SIM_RATE="-1"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cmm_simulator: error: CMM_SIM_RATE: expected a number >= 0, got '-1'"
    ]
    result = run_cli(["--outdir", str(tmp_path), "--count", "1", "--rate", "0"], env=clean_env(CMM_SIM_RATE="-1"))
    assert result.returncode == 0, result.stderr
    assert len(csv_files(tmp_path)) == 1


def test_start_and_summary_are_logged(tmp_path: Path) -> None:
    result = run_cli(["--outdir", str(tmp_path), "--count", "2", "--rate", "0", "--seed", "4"])
    assert result.returncode == 0
    assert re.search(
        r"INFO: simulator started: outdir=.* scenario=shop mpe=1.5:333 .*machines=3 count=2 seed=4", result.stderr
    )
    assert re.search(r"INFO: simulator done: 2 parts, 10 measurements", result.stderr)  # two flanges


# ----------------------------------------------------------------------------- kills and signals


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by a test; any still running at the end are killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


def start_cli(args: list[str], started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "cmm_simulator.py", *args],
        cwd=REPO_ROOT,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    return process


def wait_for_files(directory: Path, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(directory.glob("*.csv"))) < count:
        assert time.monotonic() < deadline, f"fewer than {count} files after {timeout_s} s"
        time.sleep(0.01)


def assert_only_complete_files(directory: Path, pid: int) -> int:
    """Every *.csv is whole; anything else is a dot temp file of the simulator `pid`. Returns the .csv count."""
    for path in directory.iterdir():
        if path.suffix != ".csv":
            assert path.name.startswith(f".cmmsim-{pid}-"), path.name
            assert path.name.endswith(".csv.tmp"), path.name
    files = csv_files(directory)
    for path in files:
        check_inbox_file(path)
    return len(files)


def test_kill_9_leaves_only_complete_files(tmp_path: Path, running: list[subprocess.Popen[str]]) -> None:
    outdir = tmp_path / "in"
    process = start_cli(["--outdir", str(outdir), "--rate", "0", "--count", "10000000"], running)
    wait_for_files(outdir, 40)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    written = assert_only_complete_files(outdir, process.pid)
    assert written >= 40
    # A new run clears any temp file the kill left and writes complete files.
    assert main(["--outdir", str(outdir), "--count", "1", "--rate", "0"]) == 0
    assert all(p.suffix == ".csv" for p in outdir.iterdir())
    assert_only_complete_files(outdir, process.pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_finish_the_file_and_exit_0(
    tmp_path: Path, running: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    outdir = tmp_path / "in"
    process = start_cli(["--outdir", str(outdir), "--rate", "50", "--truth-dir", str(tmp_path / "truth")], running)
    wait_for_files(outdir, 3)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "simulator stopped:" in stderr
    assert all(p.suffix == ".csv" for p in outdir.iterdir())
    written = assert_only_complete_files(outdir, process.pid)
    assert [p.name for p in csv_files(tmp_path / "truth")] == [p.name for p in csv_files(outdir)]
    assert f"{written} parts" in stderr


def test_start_defaults_to_now_truncated_to_the_second(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["--outdir", str(tmp_path), "--count", "1", "--rate", "0"]) == 0
    stamp = read_rows(csv_files(tmp_path)[0])[0]["timestamp"]
    moment = datetime.fromisoformat(stamp)
    assert stamp.endswith(".000Z")
    assert before <= moment <= datetime.now(UTC)
