"""Input formats of the inbox as plugins: the source interface (`base`), the common row model
(`rows`), one module or package per format (`csv`), and the registry (`registry.SOURCES`)."""

from __future__ import annotations

from collections.abc import Sequence

from cmm_twin.gateway.sources.base import BatchReading, ChunkedReading, Source
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk, RowError, ValidRows

__all__ = [
    "BatchReading",
    "ChunkedReading",
    "FileRejected",
    "IngestSettings",
    "ParsedChunk",
    "RowError",
    "Source",
    "ValidRows",
    "source_for",
]


def source_for(name: str, sources: Sequence[type[Source]]) -> type[Source] | None:
    """The first of `sources` that claims files named `name`, or None."""
    return next((source for source in sources if source.claims(name)), None)
