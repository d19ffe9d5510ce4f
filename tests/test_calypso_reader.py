"""The Calypso source on its own: `<prefix>_chr.txt` with and without its `<prefix>_hdr.txt`,
the END rule, malformed files. Expected values are worked out by hand from the fixtures
(tests/fixtures/calypso/) and the physics: compensated = measured / (1 + cte * (T - 20))."""

from __future__ import annotations

import math
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources import FileRejected, IngestSettings, ParsedChunk, RowError, source_for
from cmm_twin.gateway.sources.calypso import CalypsoSource
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.decision import Verdict
from cmm_twin.physics.thermal import Flag, PhysicsConfig
from cmm_twin.records import RecordBatch

FIXTURES = Path(__file__).parent / "fixtures" / "calypso"
AL6061_CTE = 23.6e-6
STEEL_1020_CTE = 11.7e-6
HEAD = "planid\tpartnb\tid\tactual\tnominal\tuppertol\tlowertol\tunit\r\n"


def source(**inputs: object) -> CalypsoSource:
    settings = InputSettings(**{"timezone": "Europe/Berlin", "machine_id": "CMM-07", **inputs})  # type: ignore[arg-type]
    return CalypsoSource(IngestSettings(inputs=settings))


def records(chunk: ParsedChunk | None) -> RecordBatch:
    assert chunk is not None
    return to_records(chunk.rows, PhysicsConfig())


def copy(tmp_path: Path, *names: str, mtime: datetime | None = None) -> Path:
    """The fixtures `names` copied to `tmp_path` (the first returned), with their mtime set."""
    for name in names:
        shutil.copyfile(FIXTURES / name, tmp_path / name)
        if mtime is not None:
            ns = int(mtime.timestamp()) * 1_000_000_000
            os.utime(tmp_path / name, ns=(ns, ns))
    return tmp_path / names[0]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_the_source_claims_both_files_and_the_chr_leads() -> None:
    assert source_for("4711-A_GH-0001_chr.txt", SOURCES) is CalypsoSource
    assert source_for("RUN_HDR.TXT", SOURCES) is CalypsoSource
    assert source_for("run_fet.txt", SOURCES) is None
    assert source_for("notes.txt", SOURCES) is None
    assert CalypsoSource.leader("p_hdr.txt") == "p_chr.txt"
    assert CalypsoSource.leader("P_HDR.TXT") == "P_CHR.TXT"  # mirror case
    assert CalypsoSource.leader("p_Hdr.txt") == "p_Chr.txt"
    assert CalypsoSource.leader("p_chr.txt") == "p_chr.txt"
    assert CalypsoSource.optional_companions("P_CHR.txt") == ("P_HDR.txt",)
    assert CalypsoSource.optional_companions("p_hdr.txt") == ()
    assert CalypsoSource.companions("p_chr.txt") == ()  # the hdr is never waited for


def test_a_run_with_its_header_gives_every_characteristic_as_read() -> None:
    chunk = source().read(FIXTURES / "4711-A_GH-0001_chr.txt")
    assert chunk is not None and chunk.errors == []
    assert chunk.end_offset == (FIXTURES / "4711-A_GH-0001_chr.txt").stat().st_size and chunk.end_line == 25
    batch = records(chunk)
    assert len(batch) == 23
    assert chunk.rows.line.tolist() == list(range(2, 25))
    assert batch.feature[:6] == [
        "Diameter_Bore_A1",
        "Diameter_Bore_A2",
        "Distance_A1-A2",
        "Length_housing",
        "Width_flange",
        "Pin_diameter_P1_g6",
    ]
    # hdr: 2026-03-12 09:41:07 in Europe/Berlin (CET, UTC+1); machine "CONTURA 07" made safe
    assert set(batch.timestamp) == {"2026-03-12T08:41:07.000000Z"}
    assert set(batch.machine_id) == {"CONTURA_07"}
    assert set(batch.part_id) == {"GH-0001"}
    assert set(batch.material) == {"AL6061"}
    assert set(batch.source_format) == {"calypso"} and set(batch.source_file) == {"4711-A_GH-0001_chr.txt"}
    assert np.all(batch.part_temp_c == 21.5) and np.all(batch.air_temp_c == 20.8)
    assert batch.flags.tolist() == [0] * 23  # the time and the temperature are the file's
    assert len(set(batch.measurement_id)) == 23
    angles = [i for i, unit in enumerate(batch.unit) if unit == "deg"]
    assert [batch.feature[i] for i in angles] == ["Angle_chamfer", "Angle_face_B_to_A"]
    expected_compensation = [Compensation.NONE if i in angles else Compensation.GATEWAY for i in range(23)]
    assert batch.compensation.tolist() == expected_compensation
    expected_verdicts = [Verdict.PASS] * 23
    expected_verdicts[1] = expected_verdicts[21] = Verdict.FAIL  # 34.6100 > 34.603; 25 um > 10 um
    assert batch.verdict.tolist() == expected_verdicts

    def row(feature: str) -> int:
        return batch.feature.index(feature)

    factor = 1 + AL6061_CTE * (21.5 - 20.0)
    a1 = row("Diameter_Bore_A1")  # symmetric +-0.003
    assert (batch.nominal_mm[a1], batch.tolerance_mm[a1]) == (34.6, 0.003)
    assert (batch.lower_tol_mm[a1], batch.upper_tol_mm[a1]) == (-0.003, 0.003)
    assert batch.measured_mm[a1] == 34.6012
    assert batch.compensated_mm[a1] == pytest.approx(34.6012 / factor, rel=1e-12)
    flange = row("Width_flange")  # asymmetric +0.030 / 0
    assert (batch.lower_tol_mm[flange], batch.upper_tol_mm[flange]) == (0.0, 0.03)
    assert math.isnan(batch.tolerance_mm[flange])
    pin = row("Pin_diameter_P1_g6")  # both limits below the nominal
    assert (batch.lower_tol_mm[pin], batch.upper_tol_mm[pin]) == (-0.017, -0.006)
    parallelism = row("Parallelism_base")  # um: 8.4 um of at most 20 um, no lower limit
    assert batch.unit[parallelism] == "mm"
    assert batch.measured_mm[parallelism] == pytest.approx(0.0084, rel=1e-12)
    assert batch.upper_tol_mm[parallelism] == pytest.approx(0.02, rel=1e-12)
    assert math.isnan(batch.lower_tol_mm[parallelism]) and math.isnan(batch.tolerance_mm[parallelism])
    assert batch.compensated_mm[parallelism] == pytest.approx(0.0084 / factor, rel=1e-12)
    thread = row("Thread_depth_M8")  # at least the nominal, no upper limit
    assert batch.lower_tol_mm[thread] == 0.0 and math.isnan(batch.upper_tol_mm[thread])
    chamfer = row("Angle_chamfer")  # degrees: never thermally corrected
    assert batch.measured_mm[chamfer] == batch.compensated_mm[chamfer] == 45.12
    assert (batch.lower_tol_mm[chamfer], batch.upper_tol_mm[chamfer]) == (-0.5, 0.5)


def test_a_run_without_header_takes_the_file_time_and_the_configured_machine(tmp_path: Path) -> None:
    # UTF-8 with BOM, other column order, no unit column, decimal commas, a part temperature row
    path = copy(tmp_path, "B-220_0007_chr.txt", mtime=datetime(2026, 3, 12, 10, 0, tzinfo=UTC))
    chunk = source(parts={"B-220": PartSettings(material="STEEL_1020")}).read(path)
    assert chunk is not None and chunk.errors == []
    batch = records(chunk)
    assert batch.feature == ["Hole_diameter_D1", "Slot_width", "Bend_angle", "Flatness_base"]  # no temperature
    assert chunk.rows.line.tolist() == [2, 3, 4, 6]
    assert set(batch.timestamp) == {"2026-03-12T10:00:00.000000Z"}
    assert batch.flags.tolist() == [int(Flag.TIMESTAMP_FROM_FILE)] * 4
    assert set(batch.machine_id) == {"CMM-07"} and set(batch.part_id) == {"0007"}
    assert set(batch.material) == {"STEEL_1020"}  # planid B-220 in the part catalogue
    assert np.all(batch.part_temp_c == 23.4) and np.all(np.isnan(batch.air_temp_c))
    assert batch.measured_mm.tolist() == [10.0042, 6.015, 90.21, 0.021]
    assert batch.lower_tol_mm[:3].tolist() == [-0.01, 0.0, -0.5]
    assert batch.upper_tol_mm.tolist() == [0.01, 0.03, 0.5, 0.05]
    assert math.isnan(batch.lower_tol_mm[3])
    assert batch.unit == ["mm", "mm", "deg", "mm"]  # the type names the angle
    assert batch.compensated_mm[0] == pytest.approx(10.0042 / (1 + STEEL_1020_CTE * 3.4), rel=1e-12)
    assert batch.compensated_mm[2] == 90.21


def test_a_chr_file_is_complete_only_with_its_last_line_end(tmp_path: Path) -> None:
    path = copy(tmp_path, "4711-A_GH-0002_chr.txt")
    calypso = source()
    size = path.stat().st_size
    assert calypso.waits_for_more(path, 0, size, stable=True)  # stable or not: no END, no reading
    assert calypso.waits_for_more(path, 0, size, stable=False)
    with pytest.raises(FileRejected, match="no closing line 'END'"):
        calypso.read(path)
    with path.open("ab") as f:
        f.write(b"END\r\n\r\n")  # blank lines after END are fine
    size = path.stat().st_size
    assert not calypso.waits_for_more(path, 0, size, stable=False)
    assert not calypso.waits_for_more(path, size, size, stable=False)  # all read
    assert records(calypso.read(path)).part_id == ["GH-0002", "GH-0002"]


@pytest.mark.parametrize(
    ("name", "line", "reason"),
    [
        ("noheader_chr.txt", 1, "no header row (no column named actual, id, nominal)"),
        ("semicolons_chr.txt", 1, "the columns are separated by ';', not by tabs"),
        ("noactual_chr.txt", 1, "the header has no column 'actual'"),
        (
            "baddate_chr.txt",
            None,
            "baddate_hdr.txt, line 2, column 'date': not a date (yyyy-mm-dd or dd.mm.yyyy): '2026-13-40'",
        ),
    ],
)
def test_a_malformed_file_is_rejected_naming_line_and_column(name: str, line: int | None, reason: str) -> None:
    with pytest.raises(FileRejected) as caught:
        source().read(FIXTURES / name)
    assert (caught.value.line, caught.value.reason) == (line, reason)


def test_bad_rows_are_row_errors_and_the_others_are_taken() -> None:
    chunk = source().read(FIXTURES / "badrows_chr.txt")
    assert chunk is not None
    assert chunk.errors == [
        RowError(3, None, "expected 8 tab-separated fields, got 6"),
        RowError(4, "actual", "not a number: 'n/a'"),
    ]
    assert chunk.rows.line.tolist() == [2, 5]
    assert chunk.rows.feature == ["Diameter_Bore_A1", "Distance_A1-A2"]
    # no hdr, no temperature: the assumed one, with its flag
    assert chunk.rows.flags.tolist() == [int(Flag.TIMESTAMP_FROM_FILE | Flag.TEMPERATURE_ASSUMED)] * 2
    assert chunk.rows.part_temp_c.tolist() == [20.0, 20.0]


def test_values_and_specifications_that_are_not_numbers_are_row_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p_chr.txt",
        HEAD
        + "A\t1\tok\t10,002\t10\t0,01\t-0,01\tmm\r\n"
        + "A\t1\tempty\t\t10\t0.01\t-0.01\tmm\r\n"
        + "A\t1\tnominal\t10.001\tten\t0.01\t-0.01\tmm\r\n"
        + "A\t1\tinfinite\tinf\t10\t0.01\t-0.01\tmm\r\n"
        + "A\t1\tthousands\t1.000,5\t1000\t1\t-1\tmm\r\n"
        + "A\t1\tunit\t10.001\t10\t0.01\t-0.01\tfurlong\r\n"
        + "A\t1\tlimits\t10.001\t10\t-0.01\t0.01\tmm\r\n"
        + "A\t1\tno limits\t10.001\t10\t\t\tmm\r\n"
        + "END\r\n",
    )
    chunk = source().read(path)
    assert chunk is not None
    assert chunk.errors == [
        RowError(3, "actual", "no measured value"),
        RowError(4, "nominal", "not a number: 'ten'"),
        RowError(5, "actual", "not a number: 'inf'"),
        RowError(6, "actual", "not a number: '1.000,5'"),
        RowError(7, "unit", "unknown unit 'furlong' of characteristic 'unit'"),
        RowError(8, "nominal", "lower limit 0.01 above upper limit -0.01 of 'limits'"),
    ]
    batch = records(chunk)
    assert batch.feature == ["ok", "no_limits"]
    assert batch.measured_mm[0] == 10.002
    assert batch.verdict.tolist() == [Verdict.PASS, Verdict.UNDEFINED]


def test_one_part_per_partnb_and_its_planid(tmp_path: Path) -> None:
    path = write(
        tmp_path / "nest_chr.txt",
        HEAD
        + "4711-A\tN1\tBore\t10.001\t10\t0.01\t-0.01\tmm\r\n"
        + "B-220\tN2\tBore\t10.002\t10\t0.01\t-0.01\tmm\r\n"
        + "4711-A\tN1\tTemp part\t22.0\t\t\t\t°C\r\n"
        + "B-220\tN2\tTemp part\t24.0\t\t\t\t°C\r\n"
        + "B-220\tN2\tAir temp\t20.5\t\t\t\t°C\r\n"
        + "END\r\n",
        encoding="cp1252",
    )
    batch = records(source(parts={"B-220": PartSettings(material="STEEL_1020")}).read(path))
    assert batch.part_id == ["N1", "N2"]
    assert batch.material == ["AL6061", "STEEL_1020"]
    assert batch.part_temp_c.tolist() == [22.0, 24.0]
    assert math.isnan(batch.air_temp_c[0]) and batch.air_temp_c[1] == 20.5
    assert batch.compensated_mm.tolist() == pytest.approx(
        [10.001 / (1 + AL6061_CTE * 2.0), 10.002 / (1 + STEEL_1020_CTE * 4.0)], rel=1e-12
    )


def test_without_a_partnb_the_part_is_the_file_prefix(tmp_path: Path) -> None:
    path = write(tmp_path / "run 17_chr.txt", "id\tactual\tnominal\r\nBore\t10.001\t10\r\nEND\r\n")
    chunk = source().read(path)
    assert chunk is not None and chunk.rows.part_id == ["run 17"]
    assert math.isnan(chunk.rows.lower_tol_mm[0]) and math.isnan(chunk.rows.upper_tol_mm[0])


def test_a_file_neither_utf8_nor_windows_1252_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "p_chr.txt"
    path.write_bytes(HEAD.encode() + b"A\t1\tBore \x81\t10.001\t10\t0.01\t-0.01\tmm\r\nEND\r\n")
    with pytest.raises(FileRejected) as caught:
        source().read(path)
    assert (caught.value.line, caught.value.reason) == (2, "neither UTF-8 nor Windows-1252 (byte 0x81)")


def test_a_row_with_trailing_tabs_is_fine_and_an_empty_file_waits(tmp_path: Path) -> None:
    path = write(tmp_path / "p_chr.txt", "id\tactual\tnominal\t\r\nBore\t10.001\t10\t\t\r\nEND\r\n")
    assert source().read(path) is not None
    empty = write(tmp_path / "e_chr.txt", "")
    assert source().waits_for_more(empty, 0, 0, stable=True)  # created, not yet written
    only_end = write(tmp_path / "o_chr.txt", "END\r\n")
    with pytest.raises(FileRejected, match="no header row"):
        source().read(only_end)


def test_a_utf16_file_with_its_bom_is_read_and_its_end_seen(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u_chr.txt", "\ufeffid\tactual\tnominal\tunit\r\nBore\t10.001\t10\tµm\r\nEND\r\n", "utf-16-le"
    )
    assert not source().waits_for_more(path, 0, path.stat().st_size, stable=False)
    chunk = source().read(path)
    assert chunk is not None and chunk.rows.measured_mm.tolist() == pytest.approx([0.010001], rel=1e-12)
