"""The simulator's `--format csv|dfq|calypso|qif` and `--timezone`: reports built from the shop
model, times as each format keeps them, and every format read back by the gateway's own sources
(the real readers and writers) with the measurement ids of the ground truth."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.gateway.sources import Source, source_for
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk, ValidRows, concat_rows
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.thermal import Flag
from cmm_twin.simulator.catalogue import parts_table
from cmm_twin.simulator.cli import main, parse_settings
from cmm_twin.simulator.formats import FORMATS, carried_moment, part_report, read_back_moment
from cmm_twin.simulator.shop import ShopModel
from cmm_twin.simulator.writer import TRUTH_COLUMNS, temp_name
from tests.gateway_harness import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
ZONE = "Europe/Berlin"
CATALOGUE_PARTS = {number: PartSettings(material=str(entry["material"])) for number, entry in parts_table().items()}
BERLIN = InputSettings(timezone=ZONE, parts=CATALOGUE_PARTS)
START = "2026-10-25T00:59:58.250Z"
"""Two parts before 03:00 CEST (01:00 UTC), when Berlin's clocks go back to 02:00 CET, the rest
after it: their local times 02:00:00.. come a second time (fold 1)."""
SOURCE_FORMAT = {"csv": "csv", "dfq": "qdas", "calypso": "calypso", "qif": "qif"}


@pytest.fixture(autouse=True)
def _no_cmm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CMM_"):
            monkeypatch.delenv(name)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ----------------------------------------------------------------------------- reports and times


def test_carried_and_read_back_times() -> None:
    before, after = utc("2026-10-25T00:30:00.123456Z"), utc("2026-10-25T01:30:00.700900Z")
    assert carried_moment("csv", after) == utc("2026-10-25T01:30:00.700Z")
    assert carried_moment("qif", after) == utc("2026-10-25T01:30:00.700Z")
    assert carried_moment("dfq", after) == utc("2026-10-25T01:30:00Z")
    assert carried_moment("calypso", after) == utc("2026-10-25T01:30:00Z")
    # 00:30 UTC is 02:30 CEST (the first 02:30 of the day): read back as it is
    assert read_back_moment("dfq", before, BERLIN) == utc("2026-10-25T00:30:00Z")
    # 01:30 UTC is 02:30 CET, the second 02:30: the gateway takes the first one, an hour earlier
    assert read_back_moment("dfq", after, BERLIN) == utc("2026-10-25T00:30:00Z")
    assert read_back_moment("calypso", after, BERLIN) == utc("2026-10-25T00:30:00Z")
    assert read_back_moment("calypso", after, InputSettings(timezone="UTC")) == utc("2026-10-25T01:30:00Z")
    assert read_back_moment("qif", after, BERLIN) == utc("2026-10-25T01:30:00.700Z")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_part_as_a_report(fmt: str) -> None:
    model = ShopModel(seed=3, machines=2)
    part = next(model.parts(5, 1).per_part())
    moment = utc("2026-01-05T06:00:05.250Z")
    report = part_report(fmt, part, "CMM-02", moment)  # part 5 on 2 machines: type (5 // 2) % 7 = 2
    assert (report.part_number, report.part_description) == (
        "HSG-300-AL7075",
        "simulated part HSG-300-AL7075 (AL7075)",
    )
    names = [(c.number, c.name, c.unit, c.nominal, c.lower, c.upper) for c in report.characteristics]
    features = [
        (1, "bearing_bore_d", "mm", 62.0, 0.0, 0.03),
        (2, "bore_spacing", "mm", 150.0, -0.02, 0.02),
        (3, "housing_width", "mm", 300.0, -0.05, 0.05),
        (4, "pin_bore_d", "mm", 10.0, 0.0, 0.015),
        (5, "face_angle", "deg", 90.0, -0.03, 0.03),
        (6, "wall_thickness", "mm", 8.0, -0.04, None),
    ]
    temperatures = [(7, "part temperature", "degC", None, None, None), (8, "air temperature", "degC", None, None, None)]
    assert names == (features + temperatures if fmt == "dfq" else features)
    (only,) = report.parts
    assert (only.part_id, only.machine_id) == ("P0000005", "CMM-02")
    assert only.timestamp == (utc("2026-01-05T06:00:05Z") if fmt in ("dfq", "calypso") else moment)
    values = [v.value for v in only.values]
    part_temp, air_temp = float(part.part_temp_c[0]), float(part.air_temp_c[0])
    assert values[:6] == part.measured.tolist()
    if fmt == "dfq":  # the temperatures as characteristics, not as the part's
        assert values[6:] == [part_temp, air_temp]
        assert (only.part_temp_c, only.air_temp_c) == (None, None)
    else:
        assert (only.part_temp_c, only.air_temp_c) == (part_temp, air_temp)
    assert [c.decimals for c in report.characteristics[:6]] == [5, 5, 5, 5, 4, 5]  # the angle: 0.0001 deg


# ----------------------------------------------------------------------------- command line


def test_format_and_timezone_settings(tmp_path: Path) -> None:
    settings = parse_settings(["--outdir", str(tmp_path)], {})
    assert (settings.format, settings.timezone) == ("csv", None)
    settings = parse_settings(["--outdir", str(tmp_path), "--format", " QIF "], {"CMM_SIM_TIMEZONE": ZONE})
    assert (settings.format, settings.timezone) == ("qif", ZONE)
    settings = parse_settings(["--outdir", str(tmp_path)], {"CMM_SIM_FORMAT": "calypso"})
    assert settings.format == "calypso"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--format", "xml"], "cmm_simulator: error: --format: expected one of csv, dfq, calypso, qif, got 'xml'"),
        (["--timezone", "Mars/Olympus"], "cmm_simulator: error: --timezone: unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_format_or_zone_exits_2_with_one_line(tmp_path: Path, args: list[str], line: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMM_")}
    result = subprocess.run(
        [sys.executable, "cmm_simulator.py", "--outdir", str(tmp_path / "in"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "in").exists()


def test_help_names_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--format FORMAT file format: csv (one file per part), dfq (Q-DAS), calypso" in text
    assert "(env CMM_SIM_FORMAT; default csv)" in text
    assert "--timezone ZONE IANA zone of the local times in dfq and calypso files" in text
    assert "(env CMM_SIM_TIMEZONE; default off)" in text


def test_csv_output_ignores_the_timezone(tmp_path: Path) -> None:
    common = ["--count", "4", "--rate", "0", "--seed", "2", "--start", START]
    assert main(["--outdir", str(tmp_path / "a"), *common]) == 0
    assert main(["--outdir", str(tmp_path / "b"), "--timezone", ZONE, "--format", "csv", *common]) == 0
    a, b = sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_temporary_names_are_claimed_by_no_source() -> None:
    for name in ("CMM-01_x_00000001.csv", "a.dfq", "a.qif", "a_hdr.txt", "a_chr.txt", "A.DFQ"):
        temp = temp_name(name)
        assert temp.startswith(".cmmsim-") and temp.endswith(".tmp")
        assert source_for(temp, SOURCES) is None


# ----------------------------------------------------------------------------- read back by the gateway


def read_inbox(inbox: Path, settings: IngestSettings) -> tuple[ValidRows, list[str]]:
    """Every unit of `inbox` read by its source (the leaders only); the rows, and the errors as text."""
    rows: list[ValidRows] = []
    errors: list[str] = []
    sources: dict[type[Source], Source] = {}
    for path in sorted(inbox.iterdir()):
        kind = source_for(path.name, SOURCES)
        assert kind is not None, f"no source claims {path.name}"
        if kind.leader(path.name) != path.name:
            continue  # a companion: read with its leader
        source = sources.setdefault(kind, kind(settings))
        chunk = source.read(path)
        assert isinstance(chunk, ParsedChunk), path.name
        rows.append(chunk.rows)
        errors += [f"{path.name}:{e.line}:{e.column}: {e.reason}" for e in chunk.errors]
    return concat_rows(rows), errors


def truth_rows(truth: Path) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for path in sorted(truth.iterdir()):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == list(TRUTH_COLUMNS)
            out += list(reader)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_read_back_with_the_truths_ids(tmp_path: Path, fmt: str) -> None:
    inbox, truth = tmp_path / "inbox", tmp_path / "truth"
    args = ["--outdir", str(inbox), "--truth-dir", str(truth), "--format", fmt, "--timezone", ZONE]
    assert main([*args, "--count", "6", "--rate", "0", "--seed", "3", "--machines", "2", "--start", START]) == 0
    names = sorted(p.name for p in inbox.iterdir())
    stem = r"CMM-0[12]_20261025T0\d{5}250_0000000\d"
    suffix = {"csv": r"\.csv", "dfq": r"\.dfq", "calypso": r"_(hdr|chr)\.txt", "qif": r"\.qif"}[fmt]
    assert len(names) == (12 if fmt == "calypso" else 6)
    assert all(re.fullmatch(stem + suffix, name) for name in names), names
    truth_name = ".csv" if fmt == "csv" else f".{fmt}.csv"
    assert sorted(p.name for p in truth.iterdir()) == sorted({re.sub(suffix + "$", truth_name, n) for n in names})

    rows, errors = read_inbox(inbox, IngestSettings(inputs=BERLIN))
    assert errors == []
    truths = truth_rows(truth)
    assert sorted(rows.measurement_id) == sorted(t["measurement_id"] for t in truths)
    assert len(rows) == 30  # parts 0..5 on 2 machines: two of each of the first three types (5 + 4 + 6 features)

    model = ShopModel(seed=3, machines=2)
    expected = model.parts(0, 6)
    by_key = {(str(p), str(f)): i for i, (p, f) in enumerate(zip(expected.part_id, expected.feature, strict=True))}
    truth_by_id = {t["measurement_id"]: t for t in truths}
    for i in range(len(rows)):
        j = by_key[rows.part_id[i], rows.feature[i]]
        true = truth_by_id[rows.measurement_id[i]]
        assert (rows.machine_id[i], rows.part_id[i], rows.feature[i]) == (
            true["machine_id"],
            true["part_id"],
            true["feature"],
        )
        assert rows.machine_id[i] == f"CMM-0{int(expected.machine_index[j]) + 1}"
        assert rows.timestamp[i][:23] == true["timestamp"][:23]
        angle = rows.unit[i] == "deg"
        assert rows.nominal_mm[i] == expected.nominal[j]
        limits = [rows.lower_tol_mm[i], rows.upper_tol_mm[i], rows.tolerance_mm[i]]
        assert limits == pytest.approx(
            [expected.lower_tol[j], expected.upper_tol[j], expected.tolerance[j]], abs=1e-12, nan_ok=True
        )
        assert rows.measured_mm[i] == pytest.approx(float(expected.measured[j]), abs=0.51e-4 if angle else 0.51e-5)
        assert rows.part_temp_c[i] == pytest.approx(float(expected.part_temp_c[j]), abs=0.006)
        assert rows.air_temp_c[i] == pytest.approx(float(expected.air_temp_c[j]), abs=0.006)
        assert not rows.flags[i] & Flag.TEMPERATURE_ASSUMED
        assert rows.material[i] == expected.material[j] == true["material"]
        assert (rows.unit[i], rows.source_format[i]) == (expected.unit[j], SOURCE_FORMAT[fmt])
        assert rows.compensation[i] == (Compensation.NONE if angle else Compensation.GATEWAY)
    assert {rows.unit[i] for i in range(len(rows))} == {"mm", "deg"}
    assert np.isnan(rows.upper_tol_mm).any() and np.isnan(rows.tolerance_mm).any()
    # part 2 was measured at 01:00:00.250 UTC = 02:00:00 CET, the second 02:00 of the day: a
    # Q-DAS or Calypso file says 02:00:00 local, which the gateway reads as 02:00:00 CEST
    third = [rows.timestamp[i] for i in range(len(rows)) if rows.part_id[i] == "P0000002"]
    local_time = fmt in ("dfq", "calypso")
    assert set(third) == {"2026-10-25T00:00:00.000000Z" if local_time else "2026-10-25T01:00:00.250000Z"}
    assert not np.isnan(rows.part_temp_c).any() and all(math.isfinite(v) for v in rows.measured_mm.tolist())


def test_the_gateway_takes_every_format_with_the_truths_ids(tmp_path: Path) -> None:
    """All four formats in one inbox, through a real gateway (`--once`): every file archived, every
    record's id in the truth, its compensated length within a few um of the true one."""
    inbox, truth = tmp_path / "inbox", tmp_path / "truth"
    for k, fmt in enumerate(FORMATS):  # a start per format: every id of the run is distinct
        start = f"2026-10-25T00:59:5{k}.500Z"
        args = ["--outdir", str(inbox), "--truth-dir", str(truth), "--format", fmt, "--timezone", ZONE]
        assert main([*args, "--count", "8", "--rate", "0", "--seed", str(k), "--start", start]) == 0
    config = tmp_path / "gateway.toml"
    parts = "".join(f'[inputs.parts."{n}"]\nmaterial = "{e["material"]}"\n' for n, e in parts_table().items())
    config.write_text(f'[inputs]\ntimezone = "{ZONE}"\n{parts}', encoding="utf-8")
    gateway = [
        *("--data-dir", str(tmp_path), "--http", "127.0.0.1:0", "--settle-ms", "50"),
        *("--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", "--historian", "none"),
        *("--stdout-sink", "--config", str(config), "--once", "--mes-url", "off"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMM_")}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "cmm_edge_gateway.py"), *gateway],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not list(inbox.iterdir())
    assert len(list((tmp_path / "archive").iterdir())) == 8 * 5  # calypso: two files a part
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    truths = {t["measurement_id"]: t for t in truth_rows(truth)}
    assert len(truths) == 4 * (3 * 5 + 3 * 4 + 2 * 6)  # 8 parts on 3 machines: types 0, 0, 0, 1, 1, 1, 2, 2
    assert sorted(r["measurement_id"] for r in records) == sorted(truths)
    for fmt in FORMATS:
        mine = [r for r in records if r["source_format"] == SOURCE_FORMAT[fmt]]
        assert len(mine) == 39
        lengths = [r for r in mine if r["unit"] == "mm"]
        assert {r["material"] for r in mine} == {"AL6061", "STEEL_1020", "AL7075"}
        errors_um = [(r["compensated_mm"] - float(truths[r["measurement_id"]]["true_value"])) * 1000.0 for r in lengths]
        # probe noise 0.5 um, CMM error <= 1.6 um, sensor offset and surface gradient x CTE x L
        assert max(map(abs, errors_um)) < 15.0, (fmt, errors_um)
        angles = [r for r in mine if r["unit"] == "deg"]
        assert len(angles) == 3 + 2  # the flanges and housings have one each
        for r in angles:  # an angle is not corrected: the value the CMM gave, degrees
            assert abs(r["compensated_mm"] - float(truths[r["measurement_id"]]["true_value"])) < 0.03
