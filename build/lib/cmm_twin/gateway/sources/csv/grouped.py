"""Many small CSV files read together: files that share a header are parsed in one pass, which
spreads the fixed cost of a parse over all of them."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.sources.csv.parser import ChunkParser
from cmm_twin.gateway.sources.rows import FileRejected, ParsedChunk, slice_rows, with_source_file

if TYPE_CHECKING:
    from cmm_twin.gateway.sources.csv.source import CsvSource

_Member = tuple[int, bytes, int, int]
"""A file of a joint parse: (position in `paths`, data lines ending in a newline, their count, bytes read)."""
_Results = list[ParsedChunk | Exception | None]


def read_small_files(
    source: CsvSource, paths: Sequence[Path], complete_at: Sequence[int | None] | None = None
) -> _Results:
    """Read several small files whole, parsing files that share a header in one pass.

    The same result, file by file, as reading each with `read_chunks` and joining its chunks: a
    ParsedChunk (None when the file has neither valid rows nor errors), or the exception reading
    that file raised (FileRejected, OSError). A group whose joint parse fails (e.g. one file is
    not UTF-8) is read again file by file, so one bad file costs only itself. `complete_at` gives
    each file's `read_chunks` argument of that name (default: all complete); a ParsedChunk ends
    before a last line left unread.
    """
    results: _Results = [None] * len(paths)
    groups: dict[tuple[tuple[str, ...], int], list[_Member]] = {}
    for i, path in enumerate(paths):
        try:
            found = _data_lines(source, path, None if complete_at is None else complete_at[i])
        except (OSError, CmmTwinError) as exc:
            results[i] = exc
            continue
        if found is not None:  # None: no complete header line yet
            header, header_line, rest, size = found
            groups.setdefault((header, header_line), []).append((i, rest, rest.count(b"\n"), size))
    block_lines = source.parse_block_lines
    for (names, first_line), members in groups.items():
        parser = source.parser(list(names), first_line)
        batch: list[_Member] = []
        batch_lines = 0
        for member in [*members, None]:
            if member is not None and batch_lines + member[2] <= block_lines:
                batch.append(member)
                batch_lines += member[2]
                continue
            if batch:
                _parse_together(source, parser, batch, first_line, paths, results)
            if member is None:
                break
            batch, batch_lines = [member], member[2]
    return results


def _data_lines(source: CsvSource, path: Path, stable: int | None) -> tuple[tuple[str, ...], int, bytes, int] | None:
    """(header names, header line, data lines ending in a newline, bytes read) of a small file;
    None when it has no complete header line yet. A bad header raises FileRejected now, as
    read_chunks does."""
    data = path.read_bytes()
    if not data:
        raise FileRejected("empty file")
    held = stable is not None and len(data) != stable and not data.endswith(b"\n")
    if held:  # a last line a writer may still be writing: not read
        data = data[: data.rfind(b"\n") + 1]
    found = source.shared.headers.read(io.BytesIO(data), len(data) if held else None)
    if found is None:
        return None
    header, header_line, header_end = found
    source.parser(header, header_line)
    rest = data[header_end:]
    if rest and not rest.endswith(b"\n"):
        rest += b"\n"
    return tuple(header), header_line, rest, len(data)


def _parse_together(
    source: CsvSource,
    parser: ChunkParser,
    batch: list[_Member],
    header_line: int,
    paths: Sequence[Path],
    results: _Results,
) -> None:
    """Parse the data lines of `batch` (files with one header) in one call; split the results."""
    total_lines = sum(member[2] for member in batch)
    if not total_lines:
        return  # header-only files: nothing to report
    try:
        rows, errors = parser.parse(b"".join(member[1] for member in batch), total_lines, 1)
    except FileRejected:
        for member in batch:  # find the culprit(s) file by file
            results[member[0]] = _read_one(source, paths[member[0]], member[3])
        return
    starts = np.cumsum([0] + [member[2] for member in batch])  # file k has joint lines starts[k]+1..starts[k+1]
    row_bounds = np.searchsorted(rows.line, starts + 0.5)
    error_file = np.searchsorted(starts, [e.line for e in errors], side="left") - 1
    for k, (i, _, lines, size) in enumerate(batch):
        shift = header_line - int(starts[k])  # joint line n is line n + shift of its file
        file_rows = slice_rows(rows, int(row_bounds[k]), int(row_bounds[k + 1]), shift)
        file_errors = [replace(e, line=e.line + shift) for e, f in zip(errors, error_file, strict=True) if f == k]
        if len(file_rows) or file_errors:
            results[i] = with_source_file(ParsedChunk(file_rows, file_errors, size, header_line + lines), paths[i].name)


def _read_one(source: CsvSource, path: Path, read_size: int) -> ParsedChunk | Exception | None:
    """One file read on its own (the fallback of read_small_files), up to `read_size` bytes
    (where read_small_files stopped reading it)."""
    try:
        return source.read(path, complete_at=read_size)
    except (OSError, CmmTwinError) as exc:
        return exc
