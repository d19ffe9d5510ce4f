"""The CSV source (reader and validator) against the CSV contract: README, 'The CSV format (inbox)'."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import ArrayLike

from cmm_twin.errors import ConfigError, PhysicsInputError
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.csv.lines import MAX_LINE_BYTES, PARSE_BLOCK_LINES, READ_BLOCK_BYTES
from cmm_twin.gateway.sources.csv.numbers import Numbers
from cmm_twin.gateway.sources.csv.timestamps import Timestamps, check_timestamp, check_timestamps
from cmm_twin.gateway.sources.ids import MeasurementIds
from cmm_twin.gateway.sources.rows import (
    FileRejected,
    IngestSettings,
    ParsedChunk,
    RowError,
    ValidRows,
    concat_rows,
)
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.physics.thermal import Evaluation, PhysicsConfig, ThermalLimits, evaluate
from cmm_twin.records import RecordBatch, canonical_timestamp, measurement_id

HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,air_temp_c"
GOOD_ROW = "2024-05-01T08:00:00.250Z,CMM-01,P0001,length_x,AL6061,100.0000,0.0500,100.01180,25.000,21.000"
DEFAULTS = IngestSettings()
_SOURCES: dict[str, CsvSource] = {}
measurement_ids = MeasurementIds()


def source(settings: IngestSettings) -> CsvSource:
    """One CsvSource per settings for the whole module: its caches live across files, as in the gateway."""
    return _SOURCES.setdefault(repr(settings), CsvSource(settings))


def read_chunks(path: Path, settings: IngestSettings, *args: Any, **kwargs: Any) -> Iterator[ParsedChunk]:
    return source(settings).read_chunks(path, *args, **kwargs)


def read_small_files(
    paths: list[Path], settings: IngestSettings, complete_at: list[int | None] | None = None
) -> list[ParsedChunk | Exception | None]:
    return source(settings).read_many(paths, complete_at)


def write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def read_all(path: Path, ingest: IngestSettings = DEFAULTS) -> tuple[list[ParsedChunk], list[RowError]]:
    chunks = list(read_chunks(path, ingest))
    return chunks, [e for c in chunks for e in c.errors]


def only_rows(path: Path, ingest: IngestSettings = DEFAULTS) -> ValidRows:
    chunks, errors = read_all(path, ingest)
    assert errors == []
    assert len(chunks) == 1
    return chunks[0].rows


def row_errors(tmp_path: Path, *rows: str, valid: int = 1) -> list[RowError]:
    """Errors of a file holding `rows` after one good row (so data rows start at line 3)."""
    path = write(tmp_path, "\n".join([HEADER, GOOD_ROW, *rows]) + "\n")
    chunks, errors = read_all(path)
    assert sum(len(c.rows) for c in chunks) == valid
    return errors


def rows_as_tuples(rows: ValidRows) -> list[tuple[object, ...]]:
    """Every column of `rows`, row by row (NaN compared as a string)."""
    columns = [getattr(rows, f.name) for f in fields(rows)]
    out: list[tuple[object, ...]] = []
    for i in range(len(rows)):
        values: list[object] = []
        for column in columns:
            value = column[i].item() if isinstance(column, np.ndarray) else column[i]
            values.append("nan" if isinstance(value, float) and math.isnan(value) else value)
        out.append(tuple(values))
    return out


def lines_of(count: int, start: int = 0) -> list[str]:
    """`count` valid data rows (8 features per part, a timestamp per part)."""
    t0 = datetime(2024, 5, 1, 8, tzinfo=UTC)
    out = []
    for i in range(start, start + count):
        stamp = f"{t0 + timedelta(seconds=i // 8):%Y-%m-%dT%H:%M:%S}.000Z"
        out.append(
            f"{stamp},CMM-0{i % 3},P{i // 8:06d},f{i % 8},AL6061,{50 + i % 7}.0000,0.0500,"
            f"{50 + i % 7}.00{i % 10}00,{20 + (i % 50) / 10:.3f},{20.5:.3f}"
        )
    return out


# --- a good file -----------------------------------------------------------------------------


def test_good_file_gives_values_canonical_timestamps_and_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER + "\n" + GOOD_ROW + "\n"
        "2024-05-01T10:00:00+02:00,CMM-02,P 0002,bore_d,ss304,12.0000,0.0100,11.99990,19.500,19.750\n",
    )
    rows = only_rows(path)
    assert rows.line.tolist() == [2, 3]
    assert rows.timestamp == ["2024-05-01T08:00:00.250000Z", "2024-05-01T08:00:00.000000Z"]
    assert rows.timestamp_ns.tolist() == [1714550400250000000, 1714550400000000000]
    assert rows.machine_id == ["CMM-01", "CMM-02"]
    assert rows.part_id == ["P0001", "P 0002"]
    assert rows.feature == ["length_x", "bore_d"]
    assert rows.material == ["AL6061", "SS304"]
    assert rows.cte_per_k.tolist() == [MATERIALS["AL6061"].cte_per_k, MATERIALS["SS304"].cte_per_k]
    assert rows.cte_u_per_k.tolist() == [MATERIALS["AL6061"].cte_u_per_k, MATERIALS["SS304"].cte_u_per_k]
    assert rows.nominal_mm.tolist() == [100.0, 12.0]
    assert rows.tolerance_mm.tolist() == [0.05, 0.01]
    assert rows.measured_mm.tolist() == [100.0118, 11.9999]
    assert rows.part_temp_c.tolist() == [25.0, 19.5]
    assert rows.air_temp_c.tolist() == [21.0, 19.75]
    assert np.isnan(rows.scale_temp_c).all()
    first = datetime(2024, 5, 1, 8, 0, 0, 250000, tzinfo=UTC)
    second = datetime(2024, 5, 1, 10, tzinfo=timezone(timedelta(hours=2)))
    assert rows.measurement_id == [
        measurement_id("CMM-01", "P0001", "length_x", first),
        measurement_id("CMM-02", "P 0002", "bore_d", second),
    ]


def test_z_and_utc_offset_spellings_give_the_same_id(tmp_path: Path) -> None:
    rows = [GOOD_ROW, GOOD_ROW.replace(".250Z", ".25+00:00"), GOOD_ROW.replace("08:00:00.250Z", "09:00:00.250+01:00")]
    got = only_rows(write(tmp_path, "\n".join([HEADER, *rows]) + "\n"))
    assert len(set(got.measurement_id)) == 1
    assert got.timestamp == ["2024-05-01T08:00:00.250000Z"] * 3


def test_columns_in_another_order_with_an_unknown_extra_column(tmp_path: Path) -> None:
    text = (
        "part_temp_c, Measured_MM ,comment,feature,part_id,machine_id,timestamp,tolerance_mm,nominal_mm\n"
        "25.0,100.0118,re-measured,length_x,P0001,CMM-01,2024-05-01T08:00:00.250Z,0.05,100\n"
    )
    rows = only_rows(write(tmp_path, text))
    assert rows.part_id == ["P0001"]
    assert rows.measured_mm.tolist() == [100.0118]
    assert rows.nominal_mm.tolist() == [100.0]
    assert rows.part_temp_c.tolist() == [25.0]
    assert rows.material == ["AL6061"]  # no material column: the default
    assert np.isnan(rows.air_temp_c).all()
    assert rows.measurement_id == [
        measurement_id("CMM-01", "P0001", "length_x", datetime(2024, 5, 1, 8, 0, 0, 250000, tzinfo=UTC))
    ]


def test_bom_and_crlf_are_accepted_and_offsets_stay_exact(tmp_path: Path) -> None:
    text = "\ufeff" + HEADER + "\r\n" + GOOD_ROW + "\r\n" + GOOD_ROW.replace("P0001", "P0002") + "\r\n"
    path = write(tmp_path, text)
    chunks, errors = read_all(path)
    assert errors == []
    assert [c.end_offset for c in chunks] == [path.stat().st_size]
    assert chunks[0].rows.part_id == ["P0001", "P0002"]
    assert chunks[0].rows.air_temp_c.tolist() == [21.0, 21.0]  # no "\r" left on the last column


def test_crlf_line_without_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\r\n" + GOOD_ROW + "\r\n" + GOOD_ROW.replace("P0001", "P0002"))
    chunks, errors = read_all(path)
    assert errors == []
    assert chunks[0].rows.part_id == ["P0001", "P0002"]
    assert (chunks[0].end_offset, chunks[0].end_line) == (path.stat().st_size, 3)


def test_quoted_comma_in_part_id(tmp_path: Path) -> None:
    row = GOOD_ROW.replace("P0001", '"P,0001"')
    rows = only_rows(write(tmp_path, "\n".join([HEADER, row, GOOD_ROW]) + "\n"))
    assert rows.part_id == ["P,0001", "P0001"]
    assert rows.measured_mm.tolist() == [100.0118, 100.0118]


def test_blank_lines_are_skipped_silently(tmp_path: Path) -> None:
    text = "\n" + HEADER + "\n\n" + GOOD_ROW + "\n   \n\r\n" + GOOD_ROW.replace("P0001", "P0002") + "\n\n"
    rows = only_rows(write(tmp_path, text))
    assert rows.line.tolist() == [4, 7]


def test_header_names_are_case_insensitive(tmp_path: Path) -> None:
    rows = only_rows(write(tmp_path, HEADER.upper() + "\n" + GOOD_ROW + "\n"))
    assert rows.part_id == ["P0001"]


# --- file-level rejection --------------------------------------------------------------------


def rejection(path: Path) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        list(read_chunks(path, DEFAULTS))
    return caught.value


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    error = rejection(write(tmp_path, b""))
    assert (error.reason, error.line) == ("empty file", None)


def test_file_of_blank_lines_has_no_header(tmp_path: Path) -> None:
    error = rejection(write(tmp_path, "\n \r\n"))
    assert (error.reason, error.line) == ("no header: the file has only blank lines", None)


def test_header_only_file_is_valid_and_yields_nothing(tmp_path: Path) -> None:
    assert read_all(write(tmp_path, HEADER + "\n")) == ([], [])
    assert read_all(write(tmp_path, HEADER)) == ([], [])
    assert read_all(write(tmp_path, HEADER + "\n\n\n")) == ([], [])


def test_missing_required_columns_reject_the_file(tmp_path: Path) -> None:
    header = HEADER.replace("part_temp_c,", "").replace("tolerance_mm,", "")
    error = rejection(write(tmp_path, header + "\n" + "x\n"))
    assert (error.reason, error.line) == (
        "missing required column(s): tolerance_mm (or lower_tol_mm / upper_tol_mm), part_temp_c",
        1,
    )


def test_a_data_row_as_header_rejects_the_file(tmp_path: Path) -> None:
    error = rejection(write(tmp_path, GOOD_ROW + "\n"))
    assert error.reason.startswith("missing required column(s): timestamp, machine_id")


def test_duplicate_columns_reject_the_file(tmp_path: Path) -> None:
    error = rejection(write(tmp_path, "\n" + HEADER + ",Measured_mm,note,note\n"))
    assert (error.reason, error.line) == ("duplicate column(s): measured_mm", 2)


def test_non_utf8_bytes_reject_the_file_with_their_line(tmp_path: Path) -> None:
    data = (HEADER + "\n" + GOOD_ROW + "\n" + GOOD_ROW + "\n").encode().replace(b"P0001", b"P\xff01", 2)
    error = rejection(write(tmp_path, data))
    assert (error.reason, error.line) == ("not UTF-8: invalid byte 0xff at line 2", 2)
    error = rejection(write(tmp_path, HEADER.encode().replace(b"part_id", b"part\xc3id") + b"\n"))
    assert (error.reason, error.line) == ("not UTF-8: invalid byte 0xc3 at line 1", 1)


def test_non_utf8_late_in_a_big_file_is_found_before_any_chunk(tmp_path: Path) -> None:
    lines = lines_of(30_000)
    lines[29_000] = lines[29_000].replace("CMM-0", "CMM-\xe9")
    path = write(tmp_path, (HEADER + "\n" + "\n".join(lines) + "\n").encode("latin-1"))
    reader = read_chunks(path, IngestSettings(chunk_rows=100))
    with pytest.raises(FileRejected) as caught:
        next(reader)
    assert (caught.value.reason, caught.value.line) == ("not UTF-8: invalid byte 0xe9 at line 29002", 29002)


def test_non_utf8_written_while_reading_raises_mid_file(tmp_path: Path) -> None:
    lines = lines_of(40_000)
    path = write(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n")
    assert path.stat().st_size > 2 * READ_BLOCK_BYTES
    reader = read_chunks(path, IngestSettings(chunk_rows=10))
    first = next(reader)
    assert first.end_line == 11
    bad_offset = path.stat().st_size - 10  # in the last line, far beyond what was read yet
    with open(path, "r+b") as handle:
        handle.seek(bad_offset)
        handle.write(b"\xff")
    with pytest.raises(FileRejected) as caught:
        for _ in reader:
            pass
    assert (caught.value.reason, caught.value.line) == ("not UTF-8: invalid byte 0xff at line 40001", 40001)


def test_overlong_line_rejects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\n" + GOOD_ROW + "\n" + "x" * (MAX_LINE_BYTES + 10) + "\n")
    error = rejection(path)
    assert (error.reason, error.line) == (f"a line is longer than {MAX_LINE_BYTES} bytes", 3)


# --- row errors ------------------------------------------------------------------------------


def test_non_numeric_nan_inf_negative_and_zero_values(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        GOOD_ROW.replace("100.0000", "abc"),
        GOOD_ROW.replace("0.0500", "nan"),
        GOOD_ROW.replace("100.01180", "inf"),
        GOOD_ROW.replace("100.01180", "-1.0"),
        GOOD_ROW.replace("0.0500", "0"),
        GOOD_ROW.replace("100.0000", ""),
        GOOD_ROW.replace("100.0000", "1_000"),
        GOOD_ROW.replace("25.000", "-Infinity"),
    )
    assert errors == [
        RowError(3, "nominal_mm", "not a number: 'abc'"),
        RowError(4, "tolerance_mm", "not a finite number: 'nan'"),
        RowError(5, "measured_mm", "not a finite number: 'inf'"),
        RowError(6, "measured_mm", "must be > 0, got -1.0"),
        RowError(7, "tolerance_mm", "must be > 0, got 0.0"),
        RowError(8, "nominal_mm", "missing value"),
        RowError(9, "nominal_mm", "not a number: '1_000'"),
        RowError(10, "part_temp_c", "not a finite number: '-Infinity'"),
    ]


def test_bad_values_found_by_the_vectorised_path(tmp_path: Path) -> None:
    # Every value of the column parses as a float: NumPy converts the column at once.
    errors = row_errors(tmp_path, GOOD_ROW.replace("100.0000", "NaN"), GOOD_ROW.replace("0.0500", "-0.05"))
    assert errors == [
        RowError(3, "nominal_mm", "not a finite number: 'NaN'"),
        RowError(4, "tolerance_mm", "must be > 0, got -0.05"),
    ]


def test_temperatures_out_of_the_plausible_range(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        GOOD_ROW.replace(",25.000,", ",95.0,"),
        GOOD_ROW.replace(",21.000", ",-20.5"),
        GOOD_ROW.replace(",21.000", ",nan"),
        GOOD_ROW.replace(",21.000", ",warm"),
        GOOD_ROW.replace(",25.000,", ",,"),
    )
    assert errors == [
        RowError(3, "part_temp_c", "outside the plausible range -20..80 degC, got 95.0"),
        RowError(4, "air_temp_c", "outside the plausible range -20..80 degC, got -20.5"),
        RowError(5, "air_temp_c", "not a finite number: 'nan'"),
        RowError(6, "air_temp_c", "not a number: 'warm'"),
        RowError(7, "part_temp_c", "missing value"),
    ]


def test_plausible_range_is_configurable(tmp_path: Path) -> None:
    path = write(tmp_path, "\n".join([HEADER, GOOD_ROW, GOOD_ROW.replace(",25.000,", ",35.5,")]) + "\n")
    _, errors = read_all(path, IngestSettings(plausible_min_c=10.0, plausible_max_c=30.0))
    assert errors == [RowError(3, "part_temp_c", "outside the plausible range 10..30 degC, got 35.5")]


def test_empty_optional_air_temperature_is_nan(tmp_path: Path) -> None:
    rows = only_rows(write(tmp_path, "\n".join([HEADER, GOOD_ROW, GOOD_ROW.replace(",21.000", ", ")]) + "\n"))
    assert rows.air_temp_c[0] == 21.0
    assert math.isnan(rows.air_temp_c[1])
    all_empty = only_rows(write(tmp_path, "\n".join([HEADER, GOOD_ROW.replace(",21.000", ",")]) + "\n"))
    assert math.isnan(all_empty.air_temp_c[0])
    # empty and a literal "nan" in the same column: only the literal is an error
    errors = row_errors(tmp_path, GOOD_ROW.replace(",21.000", ",nan"), GOOD_ROW.replace(",21.000", ","), valid=2)
    assert errors == [RowError(3, "air_temp_c", "not a finite number: 'nan'")]


def test_scale_temperature_column(tmp_path: Path) -> None:
    text = HEADER + ",scale_temp_c\n" + GOOD_ROW + ",20.5\n" + GOOD_ROW + ",\n"
    rows = only_rows(write(tmp_path, text))
    assert rows.scale_temp_c[0] == 20.5
    assert math.isnan(rows.scale_temp_c[1])


def test_unknown_material_and_default_material(tmp_path: Path) -> None:
    errors = row_errors(tmp_path, GOOD_ROW.replace("AL6061", "XYZ"))
    assert errors == [RowError(3, "material", "unknown material 'XYZ'")]
    rows = only_rows(write(tmp_path, "\n".join([HEADER, GOOD_ROW.replace("AL6061", ""), GOOD_ROW]) + "\n"))
    assert rows.material == ["AL6061", "AL6061"]
    steel = IngestSettings(default_material="steel_1020")
    rows = only_rows(write(tmp_path, "\n".join([HEADER, GOOD_ROW.replace("AL6061", ""), GOOD_ROW]) + "\n"), steel)
    assert rows.material == ["STEEL_1020", "AL6061"]
    assert rows.cte_per_k.tolist() == [11.7e-6, 23.6e-6]


def test_default_material_when_the_column_is_absent(tmp_path: Path) -> None:
    header = HEADER.replace("material,", "")
    row = GOOD_ROW.replace("AL6061,", "")
    rows = only_rows(write(tmp_path, f"{header}\n{row}\n"), IngestSettings(default_material="INVAR36"))
    assert rows.material == ["INVAR36"]
    assert rows.cte_per_k.tolist() == [1.3e-6]


def test_bad_identifiers(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        GOOD_ROW.replace("CMM-01", "CMM 01"),
        GOOD_ROW.replace("CMM-01", "M" * 65),
        GOOD_ROW.replace("length_x", "länge"),
        GOOD_ROW.replace("P0001", "  "),
        GOOD_ROW.replace("P0001", "P" * 65),
        GOOD_ROW.replace("P0001", "P\x0701"),
    )
    assert errors == [
        RowError(3, "machine_id", "must match [A-Za-z0-9_.-]{1,64}, got 'CMM 01'"),
        RowError(4, "machine_id", f"must match [A-Za-z0-9_.-]{{1,64}}, got '{'M' * 65}'"),
        RowError(5, "feature", "must match [A-Za-z0-9_.-]{1,64}, got 'länge'"),
        RowError(6, "part_id", "missing value"),
        RowError(7, "part_id", "longer than 64 characters (65)"),
        RowError(8, "part_id", "not printable: 'P\\x0701'"),
    ]


def test_identifiers_are_stripped(tmp_path: Path) -> None:
    row = GOOD_ROW.replace("CMM-01", " CMM-01 ").replace("P0001", " P0001\t")
    rows = only_rows(write(tmp_path, f"{HEADER}\n{row}\n"))
    assert (rows.machine_id, rows.part_id) == (["CMM-01"], ["P0001"])
    assert rows.measurement_id == only_rows(write(tmp_path, f"{HEADER}\n{GOOD_ROW}\n")).measurement_id


def test_bad_timestamps(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", "2024-05-01T08:00:00.250"),
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", "yesterday"),
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", "2024-04-31T08:00:00Z"),
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", ""),
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", "2300-01-01T00:00:00Z"),
    )
    assert errors == [
        RowError(3, "timestamp", "timestamp needs a UTC offset"),
        RowError(4, "timestamp", "not an ISO 8601 timestamp: 'yesterday'"),
        RowError(5, "timestamp", "not an ISO 8601 timestamp: '2024-04-31T08:00:00Z'"),
        RowError(6, "timestamp", "missing value"),
        RowError(7, "timestamp", "timestamp out of range: '2300-01-01T00:00:00Z'"),
    ]


def test_wrong_field_count_and_unreadable_quoting(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        ",".join(GOOD_ROW.split(",")[:7]),
        GOOD_ROW + ",extra",
        GOOD_ROW.replace("P0001", '"P0001'),
        GOOD_ROW.replace("P0001", 'P"00"01'),  # a quote inside an unquoted field is kept
        valid=2,
    )
    assert errors == [
        RowError(3, None, "expected 10 fields, got 7"),
        RowError(4, None, "expected 10 fields, got 11"),
        RowError(5, None, "unreadable CSV (a quoted field cannot span lines)"),
    ]


def test_quoted_line_break_is_not_supported(tmp_path: Path) -> None:
    row = GOOD_ROW.replace("P0001", '"P00\n01"')
    errors = row_errors(tmp_path, row, GOOD_ROW, valid=2)
    assert errors == [  # each physical line is a row of its own
        RowError(3, None, "unreadable CSV (a quoted field cannot span lines)"),
        RowError(4, None, "expected 10 fields, got 8"),
    ]


def test_a_row_reports_its_first_problem_in_contract_order(tmp_path: Path) -> None:
    row = "2024-05-01T08:00:00,CMM 01,P0001,length_x,XYZ,-1,0,abc,95,200"
    errors = row_errors(tmp_path, row, row.replace("2024-05-01T08:00:00", "2024-05-01T08:00:00Z"))
    assert errors == [
        RowError(3, "timestamp", "timestamp needs a UTC offset"),
        RowError(4, "machine_id", "must match [A-Za-z0-9_.-]{1,64}, got 'CMM 01'"),
    ]
    row = "2024-05-01T08:00:00Z,CMM-01,P0001,length_x,AL6061,100,0.05,100,95,200"
    assert row_errors(tmp_path, row) == [
        RowError(3, "part_temp_c", "outside the plausible range -20..80 degC, got 95.0")
    ]


# --- chunks and resuming ---------------------------------------------------------------------


def test_chunks_of_a_25000_row_file_resume_exactly(tmp_path: Path) -> None:
    lines = lines_of(25_000)
    path = write(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n")
    ingest = IngestSettings(chunk_rows=10_000)
    chunks = list(read_chunks(path, ingest))
    assert [len(c.rows) for c in chunks] == [10_000, 10_000, 5_000]
    assert [c.end_line for c in chunks] == [10_001, 20_001, 25_001]
    header_bytes = len(HEADER) + 1
    assert [c.end_offset for c in chunks] == [
        header_bytes + sum(len(line) + 1 for line in lines[:10_000]),
        header_bytes + sum(len(line) + 1 for line in lines[:20_000]),
        path.stat().st_size,
    ]
    assert chunks[1].rows.line[0] == 10_002
    resumed = list(read_chunks(path, ingest, chunks[0].end_offset, chunks[0].end_line))
    assert len(resumed) == 2
    for again, before in zip(resumed, chunks[1:], strict=True):
        assert rows_as_tuples(again.rows) == rows_as_tuples(before.rows)
        assert (again.end_offset, again.end_line) == (before.end_offset, before.end_line)
    assert list(read_chunks(path, ingest, chunks[-1].end_offset, chunks[-1].end_line)) == []


def test_resume_point_must_be_a_line_start(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "\n" + GOOD_ROW + "\n" + GOOD_ROW + "\n")
    with pytest.raises(ValueError, match="not at the start of a line"):
        list(read_chunks(path, DEFAULTS, len(HEADER) + 5, 1))
    with pytest.raises(ValueError, match="not in the data part"):
        list(read_chunks(path, DEFAULTS, 3, 1))


LINE_KINDS = st.sampled_from(
    [
        GOOD_ROW,
        GOOD_ROW.replace("P0001", "P0002"),
        GOOD_ROW.replace("P0001", '"P,0003"'),
        GOOD_ROW.replace(",21.000", ","),
        GOOD_ROW.replace("AL6061", "brass_c360"),
        GOOD_ROW.replace("2024-05-01T08:00:00.250Z", "2024-05-01T09:30:00+01:30"),
        GOOD_ROW.replace("100.0000", "abc"),
        GOOD_ROW.replace("CMM-01", "CMM 01"),
        GOOD_ROW.replace("P0001", '"P0001'),
        GOOD_ROW + ",extra",
        "",
        "  ",
    ]
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(LINE_KINDS, min_size=0, max_size=40),
    chunk_rows=st.integers(min_value=1, max_value=45),
    block_lines=st.integers(min_value=1, max_value=9),
    crlf=st.booleans(),
    final_newline=st.booleans(),
)
def test_any_chunk_size_gives_the_same_rows_and_resumes(
    tmp_path: Path, lines: list[str], chunk_rows: int, block_lines: int, crlf: bool, final_newline: bool
) -> None:
    end = "\r\n" if crlf else "\n"
    path = write(tmp_path, end.join([HEADER, *lines]) + (end if final_newline else ""), "prop.csv")
    whole = list(read_chunks(path, IngestSettings(chunk_rows=1000)))
    with pytest.MonkeyPatch.context() as patch:  # parse blocks inside a chunk, as small as a line
        patch.setattr(CsvSource, "parse_block_lines", block_lines)
        split = list(read_chunks(path, IngestSettings(chunk_rows=chunk_rows)))
    assert [c.end_line for c in split] == sorted({c.end_line for c in split})
    assert len(whole) <= 1

    def flatten(chunks: list[ParsedChunk]) -> tuple[list[tuple[object, ...]], list[RowError]]:
        return [r for c in chunks for r in rows_as_tuples(c.rows)], [e for c in chunks for e in c.errors]

    assert flatten(split) == flatten(whole)
    assert all(len(c.rows) + len(c.errors) > 0 for c in split)
    if whole and lines[-1].strip():  # (trailing blank lines make no chunk of their own)
        assert (split[-1].end_offset, split[-1].end_line) == (whole[0].end_offset, whole[0].end_line)
    for i, chunk in enumerate(split):  # resuming after any chunk gives the chunks after it
        resumed = list(read_chunks(path, IngestSettings(chunk_rows=chunk_rows), chunk.end_offset, chunk.end_line))
        assert flatten(resumed) == flatten(split[i + 1 :])


# --- ids and timestamps ----------------------------------------------------------------------

ID_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=20)
MOMENTS = st.datetimes(
    min_value=datetime(1677, 9, 22), max_value=datetime(2262, 4, 11), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(1700, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]),
)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(ID_TEXT, ID_TEXT, ID_TEXT, MOMENTS), min_size=0, max_size=20))
def test_measurement_ids_equal_records_measurement_id(rows: list[tuple[str, str, str, datetime]]) -> None:
    stamps = [canonical_timestamp(m) for _, _, _, m in rows]
    got = measurement_ids([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], stamps)
    assert got == [measurement_id(a, b, c, m) for a, b, c, m in rows]


def test_measurement_ids_with_a_line_break_in_a_value() -> None:
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    got = measurement_ids(["A", "B"], ["x\ny", "z"], ["f", "g"], [canonical_timestamp(moment)] * 2)
    assert got == [measurement_id("A", "x\ny", "f", moment), measurement_id("B", "z", "g", moment)]


@settings(max_examples=100, deadline=None)
@given(
    moments=st.lists(MOMENTS, min_size=1, max_size=5),
    digits=st.integers(min_value=0, max_value=6),
    utc_spelling=st.sampled_from(["Z", "+00:00"]),
    invalid=st.lists(
        st.sampled_from(["", "garbage", "2024-04-31T08:00:00Z", "2024-05-01T08:00:00", "2300-01-01T00:00:00Z"]),
        max_size=2,
    ),
)
def test_vectorised_timestamps_equal_the_exact_path(
    moments: list[datetime], digits: int, utc_spelling: str, invalid: list[str]
) -> None:
    texts = []
    for moment in moments:
        text = moment.isoformat(timespec="microseconds")
        text = text[: len(text) - 6 - (6 - digits) - (1 if digits == 0 else 0)] + text[-6:]
        if moment.utcoffset() == timedelta(0):
            text = text[:-6] + utc_spelling
        texts.append(text)
    checked = check_timestamps([*texts, *invalid])
    assert checked == [check_timestamp(t) for t in [*texts, *invalid]]
    assert all(reason is not None for _, reason in checked[len(texts) :])
    for text, (value, reason) in zip(texts, checked, strict=False):
        assert reason is None
        parsed = datetime.fromisoformat(text)
        assert value[0] == canonical_timestamp(parsed)
        assert value[1] == (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


# --- fast paths against the exact checks ----------------------------------------------------


def spelled(moment: datetime, digits: int, utc_spelling: str) -> str:
    """`moment` (UTC) with `digits` fraction digits, ending in `utc_spelling`."""
    text = moment.isoformat(timespec="microseconds")
    text = text[: len(text) - 6 - (6 - digits) - (1 if digits == 0 else 0)]
    return text + utc_spelling


@settings(max_examples=200, deadline=None)
@given(
    moments=st.lists(
        st.datetimes(min_value=datetime(1677, 1, 1), max_value=datetime(2262, 12, 31), timezones=st.just(UTC)),
        min_size=1,
        max_size=30,
    ),
    one_day=st.booleans(),
    digits=st.integers(min_value=0, max_value=6),
    utc_spelling=st.sampled_from(["Z", "+00:00"]),
)
def test_fast_timestamps_equal_the_exact_path(
    moments: list[datetime], one_day: bool, digits: int, utc_spelling: str
) -> None:
    if one_day:  # the times of the first moment's day (the shorter fast path)
        moments = [datetime.combine(moments[0].date(), m.timetz()) for m in moments]
    texts = [spelled(m, digits, utc_spelling) for m in moments]
    exact = [check_timestamp(t) for t in texts]
    fast = Timestamps().fast(texts)
    if all(1678 <= m.year <= 2261 for m in moments):
        assert fast is not None
    if fast is not None:
        assert all(reason is None for _, reason in exact)
        assert fast[0] == [value[0] for value, _ in exact]
        assert fast[1].tolist() == [value[1] for value, _ in exact]


@pytest.mark.parametrize(
    "odd",
    [
        "2024-04-31T08:00:00.000Z",
        "2023-02-29T08:00:00.000Z",
        "2024-02-29T08:00:00.000Z",  # valid: a leap day
        "2024-05-02T08:00:00.000Z",  # valid: another day
        "2024-05-01T24:00:00.000Z",
        "2024-05-01T08:60:00.000Z",
        "2024-05-01T08:00:60.000Z",
        "2024-00-01T08:00:00.000Z",
        "2024-13-01T08:00:00.000Z",
        "2024-05-00T08:00:00.000Z",
        "2024-05-32T08:00:00.000Z",
        "2262-05-01T08:00:00.000Z",
        "1677-05-01T08:00:00.000Z",
        "0999-05-01T08:00:00.000Z",
        "2024-05-01 08:00:00.000Z",
        "2024-05-01T08:00:00.000z",
        " 2024-05-01T08:00:00.00Z",
        "2024-05-01T08:00:0\u0660.000Z",
        "2024-05-01T08:00:00.0000",
        "2024-05-01T08:00:00.000+01:00",
        "2024-05-01T08:00:00.00+00:00",
        "",
    ],
)
def test_fast_timestamps_leave_any_bad_value_to_the_exact_path(odd: str) -> None:
    good = ["2024-05-01T08:00:00.000Z", "2024-05-01T23:59:59.999Z"]
    for position in range(len(good) + 1):
        texts = [*good[:position], odd, *good[position:]]
        exact = [check_timestamp(t) for t in texts]
        fast = Timestamps().fast(texts)
        if any(reason is not None for _, reason in exact):
            assert fast is None
        if fast is not None:
            assert fast[0] == [value[0] for value, _ in exact]
            assert fast[1].tolist() == [value[1] for value, _ in exact]


GOOD_NUMBERS = st.sampled_from(["100.0", "0.010", "25.0", "24", "-20", "80", "80.0", "-20.0", " 7.5 ", "1e1", "+2"])
ODD_NUMBERS = st.sampled_from(
    ["nan", "inf", "-inf", "", " ", "1_0", "abc", "\u0663", "0", "-0.0", "5e-324", "-1", "80.5", "-20.5", "1e400"]
)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.tuples(*[GOOD_NUMBERS] * 6), min_size=1, max_size=8),
    odd=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5), ODD_NUMBERS), max_size=2),
    scale_column=st.booleans(),
)
def test_numbers_at_once_equal_the_checks_column_by_column(
    rows: list[tuple[str, ...]], odd: list[tuple[int, int, str]], scale_column: bool
) -> None:
    names = ["nominal_mm", "tolerance_mm", "measured_mm", "part_temp_c", "air_temp_c", "scale_temp_c"]
    names = names if scale_column else names[:-1]
    numbers = Numbers(DEFAULTS)
    columns = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    for row, column, text in odd:  # a few odd values (errors, or valid at the edge)
        columns[names[column % len(names)]][row % len(rows)] = text
    lines = np.arange(2, 2 + len(rows), dtype=np.int64)
    at_once: dict[int, RowError] = {}
    one_by_one: dict[int, RowError] = {}
    got = numbers.convert_all(columns, lines, at_once)
    for name in names:
        assert got[name].tobytes() == numbers.convert(name, columns[name], lines, one_by_one).tobytes()
    assert at_once == one_by_one


def test_small_file_read_at_once_equals_the_general_path(tmp_path: Path) -> None:
    lines = lines_of(100)
    lines[7] = lines[7].replace("P000000", "P 0")
    lines[40] = lines[40].replace(",20.500", ",")
    lines[41] = lines[41].replace("2024-05-01", "2024-04-31")
    lines[60] = ""
    for text in (
        HEADER + "\n" + "\n".join(lines) + "\n",
        HEADER + "\r\n" + "\r\n".join(lines),
        HEADER + "\n" + "\n".join(lines[:50]),
        HEADER + "\n\n\n",
    ):
        path = write(tmp_path, text)
        at_once = list(read_chunks(path, DEFAULTS))
        assert len(at_once) <= 1
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(CsvSource, "whole_read_bytes", 0)
            general = list(read_chunks(path, DEFAULTS))
        assert [rows_as_tuples(c.rows) for c in at_once] == [rows_as_tuples(c.rows) for c in general]
        assert [(c.errors, c.end_offset, c.end_line) for c in at_once] == [
            (c.errors, c.end_offset, c.end_line) for c in general
        ]
    data = (HEADER + "\n" + "\n".join(lines) + "\n").encode().replace(b"P000011", b"P\xc3\x2811")
    assert rejection(write(tmp_path, data)).reason == "not UTF-8: invalid byte 0xc3 at line 90"
    assert row_errors(tmp_path, GOOD_ROW.replace("P0001", " ")) == [RowError(3, "part_id", "missing value")]


def test_remembered_ids_and_headers_still_give_their_errors(tmp_path: Path) -> None:
    assert len(only_rows(write(tmp_path, f"{HEADER}\n{GOOD_ROW}\n"))) == 1  # CMM-01 and length_x seen valid
    errors = row_errors(tmp_path, GOOD_ROW.replace("length_x", "length x"), GOOD_ROW.replace("CMM-01", "CMM 01"))
    assert errors == [
        RowError(3, "feature", "must match [A-Za-z0-9_.-]{1,64}, got 'length x'"),
        RowError(4, "machine_id", "must match [A-Za-z0-9_.-]{1,64}, got 'CMM 01'"),
    ]
    header = HEADER.replace("part_temp_c,", "")
    for blank_lines in (0, 2, 0):  # the second and third time the header comes from the cache
        error = rejection(write(tmp_path, "\n" * blank_lines + header + "\nx\n"))
        assert (error.reason, error.line) == ("missing required column(s): part_temp_c", blank_lines + 1)
    reordered = "part_id," + HEADER.replace("part_id,", "")
    row = "P7," + GOOD_ROW.replace("P0001,", "")
    for _ in range(2):
        assert only_rows(write(tmp_path, f"{reordered}\n{row}\n")).part_id == ["P7"]
        assert only_rows(write(tmp_path, f"{HEADER}\n{GOOD_ROW}\n")).part_id == ["P0001"]


def test_measurement_ids_of_more_rows_than_a_parse_block() -> None:
    count = 2 * PARSE_BLOCK_LINES + 3
    moment = datetime(2024, 5, 1, tzinfo=UTC)
    stamp = canonical_timestamp(moment)
    got = measurement_ids(["CMM-01"] * count, [f"P{i}" for i in range(count)], ["f"] * count, [stamp] * count)
    assert len(got) == count
    for i in (0, 1, PARSE_BLOCK_LINES, count - 1):
        assert got[i] == measurement_id("CMM-01", f"P{i}", "f", moment)
    assert measurement_ids(["A"], ["B"], ["C"], [stamp]) == [measurement_id("A", "B", "C", moment)]


PHYSICS_ROWS = st.tuples(
    st.sampled_from([100.0118, 12.5, 0.5]),  # measured
    st.sampled_from([25.0, 20.0, 31.0, 14.0, 16.5]),  # part temperature
    st.sampled_from([100.0, 12.5]),  # nominal
    st.sampled_from([0.01, 0.002]),  # tolerance
    st.sampled_from([23.6e-6, 0.0, 1e-5]),  # CTE
    st.sampled_from([1.4e-6, 0.0]),  # its uncertainty
    st.sampled_from([math.nan, 21.0, 29.5]),  # air temperature
    st.sampled_from([math.nan, 20.5]),  # scale temperature
)
ODD_PHYSICS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 5e-324, 95.0, -40.0, 30.5, 14.5])


def evaluation_or_error(args: Sequence[ArrayLike], config: PhysicsConfig) -> object:
    try:
        measured, part_temp, nominal, tolerance, cte, cte_u, air_temp, scale_temp = args
        result = evaluate(measured, part_temp, nominal, tolerance, cte, cte_u, air_temp, scale_temp, config)
    except PhysicsInputError as exc:
        return (exc.field, exc.index, str(exc))
    return [(np.asarray(getattr(result, f.name)).dtype, getattr(result, f.name).tobytes()) for f in fields(Evaluation)]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(PHYSICS_ROWS, min_size=1, max_size=6),
    odd=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7), ODD_PHYSICS), max_size=2),
    scale_cte=st.sampled_from([0.0, 11.5e-6]),
    narrow=st.booleans(),
)
def test_evaluate_on_vectors_equals_input_by_input_checks(
    rows: list[tuple[float, ...]], odd: list[tuple[int, int, float]], scale_cte: float, narrow: bool
) -> None:
    limits = ThermalLimits(plausible_min_c=15.0, plausible_max_c=30.0) if narrow else ThermalLimits()
    config = PhysicsConfig(limits=limits, scale_cte_per_k=scale_cte)
    columns = [[row[i] for row in rows] for i in range(8)]
    for row, column, value in odd:  # a few odd values (errors, or valid at the edge)
        columns[column][row % len(rows)] = value
    vectors = evaluation_or_error([np.array(c, dtype=np.float64) for c in columns], config)  # at once
    lists = evaluation_or_error(columns, config)  # lists: each input converted and checked on its own
    assert vectors == lists


# --- physics ---------------------------------------------------------------------------------


def test_to_records_equals_calling_the_physics_directly(tmp_path: Path) -> None:
    lines = lines_of(50)
    lines[3] = lines[3].replace(",20.500", ",")
    path = write(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n")
    rows = only_rows(path)
    config = PhysicsConfig()
    batch = to_records(rows, config)
    assert isinstance(batch, RecordBatch)
    expected = evaluate(
        rows.measured_mm,
        rows.part_temp_c,
        rows.nominal_mm,
        rows.tolerance_mm,
        rows.cte_per_k,
        rows.cte_u_per_k,
        rows.air_temp_c,
        rows.scale_temp_c,
        config,
    )
    assert len(batch) == 50
    assert batch.compensated_mm.tolist() == expected.compensated_mm.tolist()
    assert batch.correction_um.tolist() == expected.correction_um.tolist()
    assert batch.deviation_um.tolist() == expected.deviation_um.tolist()
    assert batch.uncertainty_um.tolist() == expected.uncertainty_um.tolist()
    assert batch.verdict.tolist() == expected.verdict.tolist()
    assert batch.flags.tolist() == expected.flags.tolist()
    assert batch.measurement_id == rows.measurement_id
    assert batch.timestamp == rows.timestamp
    assert batch.timestamp_ns.tolist() == rows.timestamp_ns.tolist()
    assert batch.material == rows.material
    record = batch.to_dicts()[3]
    assert record["air_temp_c"] is None
    assert record["scale_temp_c"] is None
    # 100 mm of AL6061 read at 25 degC is 100.0118 / (1 + 23.6e-6 * 5) at 20 degC.
    one = to_records(only_rows(write(tmp_path, f"{HEADER}\n{GOOD_ROW}\n")), config)
    assert one.compensated_mm[0] == pytest.approx(100.0118 / (1 + 23.6e-6 * 5), abs=1e-12)


# --- settings --------------------------------------------------------------------------------


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="chunk_rows"):
        IngestSettings(chunk_rows=0)
    with pytest.raises(ConfigError, match="default_material"):
        IngestSettings(default_material="UNOBTAINIUM")
    with pytest.raises(ConfigError, match="plausible_min_c"):
        IngestSettings(plausible_min_c=50.0, plausible_max_c=40.0)
    with pytest.raises(ConfigError, match="plausible_max_c"):
        IngestSettings(plausible_max_c=math.inf)


def test_row_error_json() -> None:
    assert RowError(3, None, "expected 10 fields, got 7").to_json() == {
        "line": 3,
        "column": None,
        "reason": "expected 10 fields, got 7",
    }


# ----------------------------------------------------------------------------- many small files at once

_SMALL_FILES: list[bytes] = [
    b"timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\n"
    b"2026-01-05T06:00:00Z,M1,A1,f,100,0.01,100.0118,25\n2026-01-05T06:00:01Z,M1,A2,f,100,0.01,x,25\n",
    b"timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\n"
    b"2026-01-05T06:00:02Z,M2,B1,f,100,0.01,100.0118,95\n\n2026-01-05T06:00:03Z,M2,B2,f,100,0.01,100.01,21",
    b"",
    b"timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\n",
    b"\xef\xbb\xbftimestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\r\n"
    b"2026-01-05T06:00:04Z,M3,C1,f,100,0.01,100.0118,25\r\n",
    b"timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\n"
    b"2026-01-05T06:00:05Z,M4,D\xff,f,100,0.01,100.0118,25\n",
    b"machine_id,timestamp,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c,air_temp_c\n"
    b"M5,2026-01-05T06:00:06Z,E1,f,100,0.01,100.0118,25,24\n",
    b"timestamp,machine_id,part_id\n2026-01-05T06:00:07Z,M6,F1\n",
    b"\n\ntimestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,measured_mm,part_temp_c\n"
    b"2026-01-05T06:00:08Z,M7,G1,f,100,0.01,100.0118,25\nbad line\n",
]


def _one_by_one(path: Path) -> object:
    try:
        chunks = list(read_chunks(path, IngestSettings()))
    except (OSError, FileRejected) as exc:
        return ("error", type(exc).__name__, str(exc))
    if not chunks:
        return None
    return _summary(concat_rows([c.rows for c in chunks]), [e for c in chunks for e in c.errors])


def _summary(rows: ValidRows, errors: list[RowError]) -> object:
    air = [repr(v) for v in rows.air_temp_c.tolist()]  # NaN compares unequal to itself; its repr does not
    return (rows.line.tolist(), rows.measurement_id, rows.measured_mm.tolist(), air, errors)


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(list(range(len(_SMALL_FILES)))), repeat=st.integers(1, 3))
def test_read_small_files_gives_what_read_chunks_gives_file_by_file(order: list[int], repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, index in enumerate(order * repeat):
            path = Path(tmp) / f"f{k:03d}.csv"
            path.write_bytes(_SMALL_FILES[index])
            paths.append(path)
        together = read_small_files(paths, IngestSettings())
        for path, result in zip(paths, together, strict=True):
            if isinstance(result, Exception):
                got: object = ("error", type(result).__name__, str(result))
            elif result is None:
                got = None
            else:
                got = _summary(result.rows, result.errors)
                assert result.end_offset == path.stat().st_size
            assert got == _one_by_one(path), path.read_bytes()


def test_lengths_above_the_limit_are_row_errors_naming_the_column(tmp_path: Path) -> None:
    errors = row_errors(
        tmp_path,
        GOOD_ROW.replace("100.01180", "1e308"),
        GOOD_ROW.replace("100.0000,0.0500", "1.7e308,0.0500"),
        GOOD_ROW.replace("0.0500", "20000"),
        valid=1,
    )
    assert errors == [
        RowError(3, "measured_mm", "must be <= 10000 mm (limits.max_length_mm), got 1e+308"),
        RowError(4, "nominal_mm", "must be <= 10000 mm (limits.max_length_mm), got 1.7e+308"),
        RowError(5, "tolerance_mm", "must be <= 10000 mm (limits.max_length_mm), got 20000.0"),
    ]
    path = write(tmp_path, f"{HEADER}\n{GOOD_ROW.replace('100.01180', '20000')}\n", "wide.csv")
    assert len(only_rows(path, IngestSettings(max_length_mm=30_000.0))) == 1


@pytest.mark.parametrize("rows", [1, 5000])  # the one-read path and the block-by-block path
def test_a_last_line_without_line_end_waits_unless_the_file_is_stable(tmp_path: Path, rows: int) -> None:
    complete = f"{HEADER}\n" + f"{GOOD_ROW}\n" * rows
    partial = GOOD_ROW[: GOOD_ROW.rindex(",") - 3]  # a line cut by a reader racing its writer
    path = write(tmp_path, complete + partial)
    size = path.stat().st_size
    held = list(read_chunks(path, IngestSettings(chunk_rows=2000), complete_at=-1))
    assert sum(len(c.rows) for c in held) == rows
    assert not [e for c in held for e in c.errors]
    assert held[-1].end_offset == len(complete.encode())
    assert held[-1].end_line == rows + 1
    assert list(read_chunks(path, DEFAULTS, held[-1].end_offset, held[-1].end_line, complete_at=-1)) == []
    stable = list(read_chunks(path, IngestSettings(chunk_rows=2000), complete_at=size))
    assert stable[-1].end_offset == size  # stable at this size: the line is read as it is
    assert [e.line for c in stable for e in c.errors] == [rows + 2]
    small = read_small_files([path], DEFAULTS, [-1])
    if rows == 1:
        assert isinstance(small[0], ParsedChunk) and small[0].end_offset == len(complete.encode())


def test_a_held_last_line_is_not_decoded_and_a_partial_header_is_not_read(tmp_path: Path) -> None:
    cut_in_a_character = (f"{HEADER}\n{GOOD_ROW}\n" + GOOD_ROW.replace("P0001", "P\u00e9")).encode()[:-60] + b"\xc3"
    path = write(tmp_path, cut_in_a_character)
    chunks = list(read_chunks(path, DEFAULTS, complete_at=-1))
    assert [len(c.rows) for c in chunks] == [1] and not chunks[0].errors
    header_only_partial = write(tmp_path, HEADER[:40], "partial_header.csv")
    assert list(read_chunks(header_only_partial, DEFAULTS, complete_at=-1)) == []
    assert read_small_files([header_only_partial], DEFAULTS, [-1]) == [None]
    with pytest.raises(FileRejected, match="missing required column"):
        list(read_chunks(header_only_partial, DEFAULTS, complete_at=header_only_partial.stat().st_size))
