"""The CSV source: inbox files `*.csv` (the contract: README, 'The CSV format (inbox)').

`read_chunks` reads the file in binary, splits lines itself (so every chunk carries an exact byte
offset to resume from) and yields `ParsedChunk`s of at most `chunk_rows` physical lines: the valid
rows as columns (`ValidRows`) and one `RowError` per invalid row (its first problem, columns
checked in contract order).

Decisions, beyond the contract:
- Header names are matched case-insensitively after stripping whitespace (`Timestamp` works); a
  contract column named twice rejects the file; duplicate unknown columns are ignored like any
  unknown column. Blank lines before the header are skipped.
- An empty file (0 bytes) and a file of blank lines only ("no header") are rejected. A file with a
  header and no data rows is valid and yields nothing.
- Field values are stripped of surrounding whitespace (ids are derived from the stripped values).
  Numbers are ASCII decimal as Python `float` reads them; `nan` / `inf` are row errors.
- UTF-8: at the first `next()`, before any chunk, the file (header, then from `start_offset` on)
  is checked to be UTF-8 in one quick pass whatever its size (`bytes.isascii` per block, a real
  decode only for blocks that are not ASCII: measured 70 ms for a 95 MB ASCII file, 160 ms
  non-ASCII, against about 5 s to parse it); a rest of at most one parse block is read at once
  and its decoding is the check. Invalid bytes reject the file before anything from it is
  yielded. Chunks are decoded again as they are read, so a file changed under the reader can
  still raise `FileRejected` after chunks were yielded: the caller must then treat the WHOLE file
  as rejected (take nothing more from it and report it rejected, as for a bad file).
- Tolerances: `tolerance_mm` (symmetric, > 0), or the optional columns `lower_tol_mm` /
  `upper_tol_mm` (signed, relative to the nominal; any value within +-max_length_mm). A header
  needs `tolerance_mm` or at least one limit column. With limit columns, each row gives either
  `tolerance_mm` (zone -tol..+tol) or its limits (an empty limit: none on that side, a one-sided
  zone; `tolerance_mm` of the record is then null, unless lower == -upper > 0). A row giving both
  (an error on the limit column), neither (an error on the row: the CSV contract requires a
  limit, so such a row is not taken with the verdict UNDEFINED), or a lower limit above the upper
  one (an error on `lower_tol_mm`) is a row error (`zones.py`).
- A quoted comma works (`"A,1"`); a quoted line break does not (each physical line is one row):
  such lines are row errors.
- A line longer than `MAX_LINE_BYTES` rejects the file (keeps memory bounded for junk input).
- A last line without a line end may be one a writer is still writing (`100.01` of `100.0118`):
  with `complete_at`, the caller says whether the file is known complete at its current size;
  if not, such a line is not read at all (nor decoded, nor counted) and reading stops before it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, ClassVar

from cmm_twin.gateway.sources.base import Source, ends_with_line_end
from cmm_twin.gateway.sources.csv import grouped
from cmm_twin.gateway.sources.csv.lines import (
    PARSE_BLOCK_LINES,
    WHOLE_READ_BYTES,
    after_last_line_end,
    byte_pieces,
    check_utf8,
)
from cmm_twin.gateway.sources.csv.parser import ChunkParser, CsvShared
from cmm_twin.gateway.sources.rows import (
    FileRejected,
    IngestSettings,
    ParsedChunk,
    RowError,
    ValidRows,
    concat_rows,
    join_chunks,
    with_source_file,
)

log = logging.getLogger(__name__)


class CsvSource(Source):
    """Inbox CSV files, read in resumable chunks (`read_chunks`) or many small ones at once
    (`read_many`). Holds the caches its parsers share across files."""

    name = "csv"
    patterns = ("*.csv",)
    parse_block_lines: ClassVar[int] = PARSE_BLOCK_LINES
    whole_read_bytes: ClassVar[int] = WHOLE_READ_BYTES

    def __init__(self, settings: IngestSettings) -> None:
        super().__init__(settings)
        self.shared = CsvShared(settings)

    def parser(self, header: list[str], header_line: int) -> ChunkParser:
        """A parser of the data lines under `header`; raises FileRejected for a bad header."""
        return ChunkParser(header, header_line, self.shared)

    def waits_for_more(self, path: Path, read_to: int, size: int, stable: bool) -> bool:
        """A last line without a line end waits until the file is stable."""
        return not stable and read_to < size and not ends_with_line_end(path, size)

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        """The chunks of `path` joined (see `read_chunks`)."""
        return join_chunks(list(self.read_chunks(path, complete_at=complete_at)))

    def read_many(
        self, paths: Sequence[Path], complete_at: Sequence[int | None] | None = None
    ) -> list[ParsedChunk | Exception | None]:
        """Several small files read whole, files that share a header parsed in one pass (see
        `grouped.read_small_files`)."""
        return grouped.read_small_files(self, paths, complete_at)

    def read_chunks(
        self, path: Path, start_offset: int = 0, start_line: int = 1, complete_at: int | None = None
    ) -> Iterator[ParsedChunk]:
        """Read and validate `path` chunk by chunk; memory stays bounded by `settings.chunk_rows` lines.

        To resume after the last committed chunk `c`, pass `start_offset=c.end_offset` and
        `start_line=c.end_line` (the number of the last line before `start_offset`); `start_line` is
        ignored when `start_offset` is 0. The header is always read from the top of the file.
        Raises FileRejected (see the module docstring) and OSError when the file cannot be read.
        Chunks with neither valid rows nor errors (blank lines only) are not yielded.

        `complete_at`: None reads the file to its end, a last line without a line end included.
        Otherwise such a last line is read only when the file ends at byte `complete_at` (the size the
        caller saw stable for its settle time; -1: not stable): a writer may still be writing it, so
        it is left unread and reading stops after the last line end (at the size seen on opening).
        """
        for chunk in self._chunks(path, start_offset, start_line, complete_at):
            yield with_source_file(chunk, path.name)

    def _chunks(self, path: Path, start_offset: int, start_line: int, complete_at: int | None) -> Iterator[ParsedChunk]:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            if size == 0:
                raise FileRejected("empty file")
            end = None if complete_at is None else (size if size == complete_at else after_last_line_end(handle, size))
            handle.seek(0)
            found = self.shared.headers.read(handle, end)
            if found is None:
                return  # the header line itself is not complete yet
            header, header_line, header_end = found
            parser = self.parser(header, header_line)
            start = _resume_at(handle, start_offset, start_line, header_end, header_line, size, end)
            if start is None:
                return  # nothing complete after what was read before
            offset, line = start
            limit = size if end is None else end
            if limit - offset <= self.whole_read_bytes:  # the usual small file: the rest in one read, one chunk
                rest = self._small_rest(handle, parser, offset, line, limit, end is None)
                if rest is not None:
                    if rest.rows or rest.errors:
                        yield rest
                    log.debug("read %s: %d valid rows, %d row errors", path, len(rest.rows), len(rest.errors))
                    return
            yield from self._general(path, handle, parser, offset, line, end)

    def _small_rest(
        self, handle: BinaryIO, parser: ChunkParser, offset: int, line: int, limit: int, to_end: bool
    ) -> ParsedChunk | None:
        """The rest of the file from `offset` up to `limit` in one read, as one chunk (without rows
        nor errors: nothing to yield); None when the general path must read it (it grew meanwhile,
        or holds more lines than one parse block or chunk)."""
        handle.seek(offset)
        # one byte more (unless bounded): a file grown meanwhile takes the general path
        rest = handle.read(limit - offset + to_end)
        rest_lines = rest.count(b"\n") + (not rest.endswith(b"\n")) if rest else 0
        if len(rest) > limit - offset or rest_lines > min(self.parse_block_lines, self.settings.chunk_rows):
            return None
        # What the general path does with a rest of at most one parse block of lines: one piece,
        # one chunk. No line can be too long; the decoding in `parse` is the UTF-8 check (it finds
        # the same first bad byte and line), before anything is yielded.
        if not rest_lines:
            return ParsedChunk(concat_rows([]), [], offset, line)
        valid, row_errors = parser.parse(rest, rest_lines, line + 1)
        return ParsedChunk(valid, row_errors, offset + len(rest), line + rest_lines)

    def _general(
        self, path: Path, handle: BinaryIO, parser: ChunkParser, offset: int, line: int, end: int | None
    ) -> Iterator[ParsedChunk]:
        """Chunks of the file from `offset` (after line `line`) up to `end`, checked UTF-8 first."""
        check_utf8(handle, offset, line, end)
        handle.seek(offset)
        rows_total = errors_total = 0
        parts: list[ValidRows] = []
        errors: list[RowError] = []
        pieces = byte_pieces(handle, self.settings.chunk_rows, self.parse_block_lines, line, end)
        for data, line_count, ends_chunk in pieces:
            if line_count:
                part, part_errors = parser.parse(data, line_count, line + 1)
                if len(part):
                    parts.append(part)
                errors.extend(part_errors)
            offset += len(data)
            line += line_count
            if not ends_chunk or (not parts and not errors):
                continue
            rows = concat_rows(parts)
            rows_total += len(rows)
            errors_total += len(errors)
            yield ParsedChunk(rows=rows, errors=errors, end_offset=offset, end_line=line)
            parts, errors = [], []
        log.debug("read %s: %d valid rows, %d row errors", path, rows_total, errors_total)


def _resume_at(
    handle: BinaryIO,
    start_offset: int,
    start_line: int,
    header_end: int,
    header_line: int,
    size: int,
    end: int | None,
) -> tuple[int, int] | None:
    """Where reading starts: (offset, number of the line before it); None when nothing complete
    follows `start_offset`. Raises ValueError for an offset that is not at a line start of the data."""
    if start_offset == 0:
        return header_end, header_line
    if start_offset < header_end or start_offset > size:
        raise ValueError(f"start_offset {start_offset} is not in the data part {header_end}..{size}")
    if end is not None and start_offset > end:
        return None
    if start_offset < size:
        handle.seek(start_offset - 1)
        if handle.read(1) != b"\n":
            raise ValueError(f"start_offset {start_offset} is not at the start of a line")
    return start_offset, start_line
