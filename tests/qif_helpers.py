"""Shared helpers of the QIF tests: the fixtures, reading a document, finding a line."""

from __future__ import annotations

from pathlib import Path

from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "qif"
BERLIN = IngestSettings(inputs=InputSettings(timezone="Europe/Berlin"))


def read(path: Path, settings: IngestSettings = BERLIN) -> ParsedChunk:
    """The chunk of a QIF document that has rows or row errors."""
    chunk = QifSource(settings).read(path)
    assert chunk is not None
    return chunk


def rejection(path: Path, settings: IngestSettings = BERLIN) -> FileRejected:
    """The FileRejected reading `path` raises."""
    try:
        QifSource(settings).read(path)
    except FileRejected as exc:
        return exc
    raise AssertionError(f"{path.name} was not rejected")


def line_of(path: Path, text: str, start: int = 1) -> int:
    """The number of the first line at or after `start` of `path` that holds `text`."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if number >= start and text in line:
            return number
    raise AssertionError(f"{text!r} not in {path.name}")
