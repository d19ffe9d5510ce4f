"""The QIF source: inbox files `*.qif`, QIF 3 (ISO 23952) results documents, read whole.

The document is parsed safely (any DTD refused, so no entity and nothing external; at most
`MAX_DOCUMENT_BYTES`; see `document`), checked to be QIF 3 results, and its measurements turned
into neutral readings (`reader`) that the shared `RowBuilder` makes rows of (docs/formats/qif.md).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from cmm_twin.gateway.sources.base import Source, collector_paused
from cmm_twin.gateway.sources.characteristics import RowBuilder
from cmm_twin.gateway.sources.qif.document import MAX_DOCUMENT_BYTES, read_document
from cmm_twin.gateway.sources.qif.reader import document_readings
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk

log = logging.getLogger(__name__)


class QifSource(Source):
    """Inbox QIF 3 results documents (`*.qif`), each read whole once the file is stable."""

    name = "qif"
    patterns = ("*.qif",)
    document_end = b"QIFDocument>"  # the root element closed
    max_document_bytes: ClassVar[int] = MAX_DOCUMENT_BYTES
    """Larger files are rejected unread."""

    def __init__(self, settings: IngestSettings) -> None:
        super().__init__(settings)
        self.builder = RowBuilder(settings, "qif")

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        """The rows and row errors of the document `path`; FileRejected when nothing of it can be
        taken (see `document.read_document`)."""
        with collector_paused():
            document = read_document(path, self.max_document_bytes)
            file_time = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
            found = document_readings(document, self.settings.inputs, path.stem, file_time)
            size, lines = document.size, document.line_count
            del document  # the tree and the text are not kept while the rows are built
        chunk = self.builder.build(found.readings, found.errors, path.name, size, lines)
        log.debug("read %s: %d readings, %d row errors", path, len(found.readings), len(chunk.errors) if chunk else 0)
        return chunk
