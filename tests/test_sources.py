"""The source interface and registry: claimed names, capabilities, whole-unit reading."""

from __future__ import annotations

from pathlib import Path

from cmm_twin.gateway.ingest.jobs import read_unit
from cmm_twin.gateway.sources import BatchReading, ChunkedReading, IngestSettings, source_for
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.registry import SOURCES
from tests.gateway_harness import HEADER, csv_row
from tests.pipeline_harness import WITH_NUMBERS, NumbersSource


def test_claims_are_case_insensitive_and_never_dot_or_temporary_files() -> None:
    assert source_for("a.csv", SOURCES) is CsvSource
    assert source_for("A.CSV", SOURCES) is CsvSource
    for name in (".a.csv", "a.csv.tmp", "a.csv~", "a.csv.part", "a.txt", "a.csvx"):
        assert source_for(name, SOURCES) is None, name
    assert source_for("a.txt", WITH_NUMBERS) is NumbersSource
    assert CsvSource.leader("a.csv") == "a.csv" and CsvSource.companions("a.csv") == ()


def test_capabilities_are_offered_or_not() -> None:
    csv = CsvSource(IngestSettings())
    numbers = NumbersSource(IngestSettings())
    assert isinstance(csv, ChunkedReading) and isinstance(csv, BatchReading)
    assert not isinstance(numbers, ChunkedReading) and not isinstance(numbers, BatchReading)


def test_a_whole_unit_source_waits_until_stable(tmp_path: Path) -> None:
    path = tmp_path / "n.txt"
    path.write_text("100.0\n101.0")
    source = NumbersSource(IngestSettings())
    size = path.stat().st_size
    assert list(read_unit(source, path, 0, 1, -1)) == []  # not stable: nothing read yet
    (chunk,) = read_unit(source, path, 0, 1, size)
    assert chunk.end_offset == size and list(chunk.rows.measured_mm) == [100.0, 101.0]


def test_csv_holds_a_last_line_without_a_line_end_until_stable(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    text = HEADER + csv_row("A") + csv_row("B").rstrip("\n")
    path.write_text(text)
    source = CsvSource(IngestSettings())
    size = path.stat().st_size
    assert source.waits_for_more(path, len(HEADER + csv_row("A")), size, stable=False)
    assert not source.waits_for_more(path, len(HEADER + csv_row("A")), size, stable=True)
    (held,) = read_unit(source, path, 0, 1, -1)
    assert held.rows.part_id == ["A"]
    whole = source.read(path, complete_at=size)
    assert whole is not None and whole.rows.part_id == ["A", "B"]
