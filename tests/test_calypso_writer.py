"""The Calypso writer: the files it writes, and that the Calypso source reads them back exactly."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cmm_twin.formats.calypso import write_calypso
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources import IngestSettings
from cmm_twin.gateway.sources.calypso import CalypsoSource
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.physics.thermal import Flag

BERLIN = ZoneInfo("Europe/Berlin")
CHARACTERISTICS = (
    ReportCharacteristic(1, "Diameter Bore A1", "mm", 34.6, -0.003, 0.003),
    ReportCharacteristic(2, "Width flange", "mm", 80.0, 0.0, 0.03),
    ReportCharacteristic(3, "Flatness top", "um", 0.0, None, 20.0, decimals=1),
    ReportCharacteristic(4, "Angle chamfer", "deg", 45.0, -0.5, 0.5, decimals=3),
    ReportCharacteristic(5, "Length inch", "inch", 2.0, -0.001, 0.001),
    ReportCharacteristic(6, "Wall min", "mm", 3.0, -0.2, None),
    ReportCharacteristic(7, "Temperature part", "degC", None, decimals=2),
)


def report() -> Report:
    return Report(
        "4711-A",
        "Gearbox housing",
        CHARACTERISTICS,
        [
            ReportPart(
                "GH-0001",
                "CMM-07",
                datetime(2026, 3, 12, 8, 41, 7, 250000, tzinfo=UTC),  # CET: 09:41:07 local
                [ReportValue(v) for v in (34.60123, 80.0125, 8.44, 45.1204, 2.00052, 3.12, 21.5)],
                part_temp_c=21.5,
                air_temp_c=20.8,
            ),
            ReportPart(
                "GH-0002",
                "CMM-07",
                datetime(2026, 7, 15, 12, 30, tzinfo=UTC),  # CEST: 14:30 local
                [ReportValue(v) for v in (34.6100, None, 2.0, 44.9, 1.9995, 2.5, None)],
                part_temp_c=23.062519,  # written exactly, not rounded
            ),
        ],
    )


def test_each_part_is_a_hdr_then_a_chr_closed_by_end() -> None:
    files = write_calypso(report(), BERLIN)
    assert [name for name, _ in files] == [
        "4711-A_GH-0001_20260312_094107_hdr.txt",
        "4711-A_GH-0001_20260312_094107_chr.txt",
        "4711-A_GH-0002_20260715_143000_hdr.txt",
        "4711-A_GH-0002_20260715_143000_chr.txt",
    ]
    hdr = files[0][1].decode()
    assert hdr == (
        "date\ttime\tplanid\tpartnb\tdescription\toperator\tmachine\tpart_temp\tair_temp\r\n"
        "2026-03-12\t09:41:07\t4711-A\tGH-0001\tGearbox housing\t\tCMM-07\t21.5\t20.8\r\n"
    )
    chr_lines = files[1][1].decode().split("\r\n")
    assert chr_lines[0].split("\t") == [
        "planid",
        "partnb",
        "id",
        "type",
        "actual",
        "nominal",
        "uppertol",
        "lowertol",
        "deviation",
        "exceed",
        "unit",
        "featureid",
        "comment",
    ]
    assert (
        chr_lines[1]
        == "4711-A\tGH-0001\tDiameter Bore A1\tdistance\t34.6012\t34.6000\t0.0030\t-0.0030\t0.0012\t\tmm\t1\t"
    )
    assert chr_lines[3] == "4711-A\tGH-0001\tFlatness top\tdistance\t8.4\t0.0\t20.0\t\t8.4\t\tµm\t3\t"
    assert chr_lines[-2:] == ["END", ""]
    second = files[3][1].decode().split("\r\n")
    assert second[1].split("\t")[4:10] == ["34.6100", "34.6000", "0.0030", "-0.0030", "0.0100", "0.0070"]  # exceed
    assert not any("Width flange" in line for line in second)  # not measured: left out
    assert "\t\r\n" in files[2][1].decode()  # no air temperature: an empty field


def test_the_source_reads_the_written_files_back_exactly(tmp_path: Path) -> None:
    for name, data in write_calypso(report(), BERLIN):
        (tmp_path / name).write_bytes(data)
    calypso = CalypsoSource(IngestSettings(inputs=InputSettings(timezone="Europe/Berlin", machine_id="OTHER")))
    first = calypso.read(tmp_path / "4711-A_GH-0001_20260312_094107_chr.txt")
    second = calypso.read(tmp_path / "4711-A_GH-0002_20260715_143000_chr.txt")
    assert first is not None and second is not None and first.errors == second.errors == []
    rows = first.rows
    assert rows.feature == [
        "Diameter_Bore_A1",
        "Width_flange",
        "Flatness_top",
        "Angle_chamfer",
        "Length_inch",
        "Wall_min",
    ]
    assert set(rows.timestamp) == {"2026-03-12T08:41:07.000000Z"}  # the file keeps whole seconds
    assert set(rows.machine_id) == {"CMM-07"} and set(rows.part_id) == {"GH-0001"}
    assert rows.flags.tolist() == [0] * 6
    assert rows.part_temp_c.tolist() == [21.5] * 6 and rows.air_temp_c.tolist() == [20.8] * 6
    assert rows.unit == ["mm", "mm", "mm", "deg", "mm", "mm"]
    # values rounded to the characteristic's decimals, then in mm
    assert rows.measured_mm.tolist() == pytest.approx(
        [34.6012, 80.0125, 0.0084, 45.120, 2.0005 * 25.4, 3.12], rel=1e-12
    )
    assert rows.nominal_mm.tolist() == pytest.approx([34.6, 80.0, 0.0, 45.0, 50.8, 3.0], rel=1e-12)
    assert rows.upper_tol_mm[:5].tolist() == pytest.approx([0.003, 0.03, 0.02, 0.5, 0.0254], rel=1e-12)
    assert rows.lower_tol_mm[[0, 1, 3, 4, 5]].tolist() == pytest.approx([-0.003, 0.0, -0.5, -0.0254, -0.2], rel=1e-12)
    assert math.isnan(rows.lower_tol_mm[2]) and math.isnan(rows.upper_tol_mm[5])
    later = second.rows
    assert later.feature == ["Diameter_Bore_A1", "Flatness_top", "Angle_chamfer", "Length_inch", "Wall_min"]
    assert set(later.timestamp) == {"2026-07-15T12:30:00.000000Z"}
    assert later.part_temp_c.tolist() == [23.062519] * 5 and math.isnan(later.air_temp_c[0])
    assert later.flags.tolist() == [0] * 5


def test_a_run_without_temperatures_reads_back_as_assumed(tmp_path: Path) -> None:
    part = ReportPart("P 1/2", "CMM-07", datetime(2026, 1, 5, 6, 0, tzinfo=UTC), [ReportValue(10.0012)])
    files = write_calypso(Report("X:9", "", [ReportCharacteristic(1, "Bore", "mm", 10.0, -0.01, 0.01)], [part]), UTC)
    assert [name for name, _ in files] == ["X-9_P-1-2_20260105_060000_hdr.txt", "X-9_P-1-2_20260105_060000_chr.txt"]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    chunk = CalypsoSource(IngestSettings(inputs=InputSettings(timezone="UTC"))).read(tmp_path / files[1][0])
    assert chunk is not None
    assert (chunk.rows.part_id, chunk.rows.timestamp) == (["P 1/2"], ["2026-01-05T06:00:00.000000Z"])
    assert chunk.rows.flags.tolist() == [int(Flag.TEMPERATURE_ASSUMED)]
