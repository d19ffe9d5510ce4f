"""The optional `unit` column of the CSV source: `mm` (the default, also empty) or `deg`
(case-insensitive); an angle row is delivered in degrees and never thermally corrected, as the
other sources deliver angles; an unknown unit is a row error naming `unit`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk, RowError, ValidRows
from cmm_twin.physics.compensation import Compensation

SOURCE = CsvSource(IngestSettings())
HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,unit"


def row(feature: str, nominal: str, measured: str, unit: str) -> str:
    return f"2026-11-27T08:00:00.000Z,CMM-01,P0001,{feature},AL6061,{nominal},0.05,{measured},25.0,{unit}"


def read(tmp_path: Path, lines: list[str], header: str = HEADER) -> tuple[ValidRows, list[RowError]]:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    chunk = SOURCE.read(path)
    assert isinstance(chunk, ParsedChunk)
    return chunk.rows, chunk.errors


def test_units_mm_deg_and_empty(tmp_path: Path) -> None:
    rows, errors = read(
        tmp_path,
        [
            row("bore", "40.0", "40.01", "mm"),
            row("angle", "45.0", "45.02", "deg"),
            row("angle2", "60.0", "59.99", " DEG "),
            row("width", "80.0", "80.002", ""),
            row("depth", "12.0", "12.001", "MM"),
        ],
    )
    assert errors == []
    assert rows.unit == ["mm", "deg", "deg", "mm", "mm"]
    assert rows.compensation.tolist() == [
        Compensation.GATEWAY,
        Compensation.NONE,
        Compensation.NONE,
        Compensation.GATEWAY,
        Compensation.GATEWAY,
    ]
    assert rows.measured_mm.tolist() == [40.01, 45.02, 59.99, 80.002, 12.001]  # degrees as given
    assert rows.nominal_mm[1] == 45.0 and rows.tolerance_mm[1] == 0.05


def test_unknown_unit_is_a_row_error_naming_unit(tmp_path: Path) -> None:
    rows, errors = read(
        tmp_path,
        [row("bore", "40.0", "40.01", "mm"), row("angle", "45.0", "45.02", "rad"), row("x", "1", "1.0", "inch")],
    )
    assert rows.feature == ["bore"]
    assert [(e.line, e.column, e.reason) for e in errors] == [
        (3, "unit", "unknown unit 'rad': expected mm or deg"),
        (4, "unit", "unknown unit 'inch': expected mm or deg"),
    ]


def test_an_earlier_column_error_comes_first(tmp_path: Path) -> None:
    rows, errors = read(tmp_path, [row("angle", "45.0", "x", "rad")])
    assert len(rows) == 0
    assert [(e.line, e.column) for e in errors] == [(2, "measured_mm")]


def test_a_file_without_the_column_is_in_mm(tmp_path: Path) -> None:
    header = HEADER.removesuffix(",unit")
    rows, errors = read(tmp_path, [row("bore", "40.0", "40.01", "").removesuffix(",")], header=header)
    assert errors == [] and rows.unit == ["mm"]
    assert rows.compensation.tolist() == [Compensation.GATEWAY]


def test_unit_first_and_quoted(tmp_path: Path) -> None:
    header = "unit,timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c"
    lines = [
        "deg,2026-11-27T08:00:00.000Z,CMM-01,P1,a,45,0.1,45.01,21",
        '"mm",2026-11-27T08:00:00.000Z,CMM-01,P1,b,5,0.1,5,21',
    ]
    rows, errors = read(tmp_path, lines, header=header)
    assert errors == [] and rows.unit == ["deg", "mm"]
    assert np.array_equal(rows.compensation, np.array([Compensation.NONE, Compensation.GATEWAY], dtype=np.int8))
