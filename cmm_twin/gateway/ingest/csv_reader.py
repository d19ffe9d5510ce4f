"""Streaming reader and validator of one inbox CSV file (DESIGN.md section 2).

`read_chunks` reads the file in binary, splits lines itself (so every chunk carries an exact byte
offset to resume from) and yields `ParsedChunk`s of at most `chunk_rows` physical lines: the valid
rows as columns (`ValidRows`) and one `RowError` per invalid row (its first problem, columns
checked in contract order). `to_records` runs the physics on the valid rows and builds the
`RecordBatch` every sink receives.

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
- A quoted comma works (`"A,1"`); a quoted line break does not (each physical line is one row):
  such lines are row errors.
- A line longer than `MAX_LINE_BYTES` rejects the file (keeps memory bounded for junk input).
- A last line without a line end may be one a writer is still writing (`100.01` of `100.0118`):
  with `complete_at`, the caller says whether the file is known complete at its current size;
  if not, such a line is not read at all (nor decoded, nor counted) and reading stops before it.
"""

from __future__ import annotations

import binascii
import csv
import hashlib
import io
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
from numpy.typing import NDArray

from cmm_twin.errors import CmmTwinError, ConfigError
from cmm_twin.physics.materials import MATERIALS, Material
from cmm_twin.physics.thermal import PhysicsConfig, ThermalLimits, evaluate, implausible_results
from cmm_twin.records import INBOX_COLUMNS, INBOX_OPTIONAL_COLUMNS, MEASUREMENT_ID_NAMESPACE, RecordBatch

log = logging.getLogger(__name__)

OPTIONAL_COLUMNS: tuple[str, ...] = INBOX_OPTIONAL_COLUMNS
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in INBOX_COLUMNS if c not in OPTIONAL_COLUMNS)
CONTRACT_COLUMNS: tuple[str, ...] = INBOX_COLUMNS
"""Contract columns in contract order: a row's errors are looked for in this order."""

MAX_LINE_BYTES = 1 << 20
"""Longest accepted physical line (1 MiB); a longer one rejects the file."""

READ_BLOCK_BYTES = 1 << 20
"""Size of one read from the file."""

PARSE_BLOCK_LINES = 2048
"""Lines parsed at once inside a chunk: small enough for the CPU caches (about 15 % faster than
parsing 10,000 lines at once), large enough for NumPy to pay off."""

_WHOLE_READ_BYTES = min(READ_BLOCK_BYTES, MAX_LINE_BYTES)
"""A rest of the file up to this size is read at once (and holds no line longer than MAX_LINE_BYTES)."""

MAX_ID_CHARS = 64
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_BOM = b"\xef\xbb\xbf"
_NS_MIN = -(2**63)
_NS_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PENDING: tuple[tuple[str, int], str | None] = (("", 0), "not checked")
_EMPTY = "nan"
"""Stands for an empty optional value while a column is converted (found again by identity)."""
_CACHE_MAX_ENTRIES = 100_000
"""Per-file caches of distinct values are cleared when they grow beyond this."""
_SHARED_CACHE_ENTRIES = 10_000
"""Caches shared by all files (ids known valid, days) are cleared when they grow beyond this."""
_CLEAN_IDS: set[str] = set()
"""Machine and feature ids `_check_id` accepts unchanged (valid, nothing to strip), across files."""


@dataclass(frozen=True)
class RowError:
    """One rejected row: 1-based physical line, offending column (None: the row as a whole), reason."""

    line: int
    column: str | None
    reason: str

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict for the quarantine report."""
        return {"line": self.line, "column": self.column, "reason": self.reason}


class FileRejected(CmmTwinError):  # noqa: N818 (the name is the gateway's interface)
    """The file cannot be read as an inbox CSV at all: nothing from it is delivered.

    Raised mid-file (after chunks were yielded) only when the file changed while being read; the
    caller must then treat the whole file as rejected.
    """

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class IngestSettings:
    """Validation settings; keep the plausible range equal to the physics' `ThermalLimits`."""

    default_material: str = "AL6061"
    materials: Mapping[str, Material] = field(default_factory=lambda: MATERIALS)
    plausible_min_c: float = -20.0
    plausible_max_c: float = 80.0
    max_length_mm: float = 10_000.0
    """Largest accepted nominal, tolerance and measured length (keep equal to the physics' limit)."""
    chunk_rows: int = 10_000
    """Physical lines (data rows and blank lines) per chunk."""

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError("chunk_rows", f"must be >= 1, got {self.chunk_rows!r}")
        for name in ("plausible_min_c", "plausible_max_c", "max_length_mm"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(name, f"must be finite, got {getattr(self, name)!r}")
        if not self.max_length_mm > 0:
            raise ConfigError("max_length_mm", f"must be > 0, got {self.max_length_mm!r}")
        if not self.plausible_min_c < self.plausible_max_c:
            raise ConfigError("plausible_min_c", "must be below plausible_max_c")
        if self.default_material.strip().upper() not in self.materials:
            raise ConfigError("default_material", f"unknown material {self.default_material!r}")


@dataclass(frozen=True)
class ValidRows:
    """Valid rows of a chunk as columns, in file order (NaN: optional temperature not given)."""

    line: NDArray[np.int64]
    measurement_id: list[str]
    timestamp: list[str]
    """Canonical UTC form (`records.canonical_timestamp`)."""
    timestamp_ns: NDArray[np.int64]
    """Unix time in nanoseconds."""
    machine_id: list[str]
    part_id: list[str]
    feature: list[str]
    material: list[str]
    """Key of the materials table (upper-case)."""
    cte_per_k: NDArray[np.float64]
    cte_u_per_k: NDArray[np.float64]
    nominal_mm: NDArray[np.float64]
    tolerance_mm: NDArray[np.float64]
    measured_mm: NDArray[np.float64]
    part_temp_c: NDArray[np.float64]
    air_temp_c: NDArray[np.float64]
    scale_temp_c: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.measurement_id)


@dataclass(frozen=True)
class ParsedChunk:
    """One chunk of a file: its valid rows, its row errors and where to resume after it."""

    rows: ValidRows
    errors: list[RowError]
    end_offset: int
    """Byte offset just after the last line of this chunk (pass as `start_offset` to resume)."""
    end_line: int
    """Physical line number of the last line of this chunk (pass as `start_line` to resume)."""


def read_chunks(
    path: Path,
    settings: IngestSettings,
    start_offset: int = 0,
    start_line: int = 1,
    complete_at: int | None = None,
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
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size == 0:
            raise FileRejected("empty file")
        end = None if complete_at is None else (size if size == complete_at else _after_last_line_end(handle, size))
        handle.seek(0)
        found = _read_header(handle, end)
        if found is None:
            return  # the header line itself is not complete yet
        header, header_line, header_end = found
        parser = _ChunkParser(header, header_line, settings)
        if start_offset == 0:
            offset, line = header_end, header_line
        else:
            if start_offset < header_end or start_offset > size:
                raise ValueError(f"start_offset {start_offset} is not in the data part {header_end}..{size}")
            if end is not None and start_offset > end:
                return  # nothing complete after what was read before
            if start_offset < size:
                handle.seek(start_offset - 1)
                if handle.read(1) != b"\n":
                    raise ValueError(f"start_offset {start_offset} is not at the start of a line")
            offset, line = start_offset, start_line
        limit = size if end is None else end
        if limit - offset <= _WHOLE_READ_BYTES:  # the usual small file: the rest in one read, one chunk
            handle.seek(offset)
            # one byte more (unless bounded): a file grown meanwhile takes the general path
            rest = handle.read(limit - offset + (end is None))
            rest_lines = rest.count(b"\n") + (not rest.endswith(b"\n")) if rest else 0
            if len(rest) <= limit - offset and rest_lines <= min(PARSE_BLOCK_LINES, settings.chunk_rows):
                # What the general path below does with a rest of at most one parse block of lines:
                # one piece, one chunk. No line can be too long; the decoding in `parse` is the
                # UTF-8 check (it finds the same first bad byte and line), before anything is yielded.
                counts = (0, 0)
                if rest_lines:
                    valid, row_errors = parser.parse(rest, rest_lines, line + 1)
                    counts = (len(valid), len(row_errors))
                    if counts != (0, 0):
                        yield ParsedChunk(valid, row_errors, offset + len(rest), line + rest_lines)
                log.debug("read %s: %d valid rows, %d row errors", path, *counts)
                return
        _check_utf8(handle, offset, line, end)
        handle.seek(offset)
        rows_total = errors_total = 0
        parts: list[ValidRows] = []
        errors: list[RowError] = []
        for data, line_count, ends_chunk in _byte_pieces(handle, settings.chunk_rows, line, end):
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


def read_small_files(
    paths: Sequence[Path], settings: IngestSettings, complete_at: Sequence[int | None] | None = None
) -> list[ParsedChunk | Exception | None]:
    """Read several small files whole, parsing files that share a header in one pass.

    The same result, file by file, as reading each with `read_chunks` and joining its chunks: a
    ParsedChunk (None when the file has neither valid rows nor errors), or the exception reading
    that file raised (FileRejected, OSError). Parsing many small files at once spreads the fixed
    cost of a parse over all of them; a group whose joint parse fails (e.g. one file is not UTF-8)
    is read again file by file, so one bad file costs only itself. `complete_at` gives each
    file's `read_chunks` argument of that name (default: all complete); a ParsedChunk ends before
    a last line left unread.
    """
    results: list[ParsedChunk | Exception | None] = [None] * len(paths)
    groups: dict[tuple[tuple[str, ...], int], list[tuple[int, bytes, int, int]]] = {}
    for i, path in enumerate(paths):
        try:
            data = path.read_bytes()
            if not data:
                raise FileRejected("empty file")
            stable = None if complete_at is None else complete_at[i]
            held = stable is not None and len(data) != stable and not data.endswith(b"\n")
            if held:  # a last line a writer may still be writing: not read
                data = data[: data.rfind(b"\n") + 1]
            handle = io.BytesIO(data)
            found = _read_header(handle, len(data) if held else None)
            if found is None:
                continue  # no complete header line yet
            header, header_line, header_end = found
            _ChunkParser(header, header_line, settings)  # rejects a bad header now, as read_chunks does
        except (OSError, CmmTwinError) as exc:
            results[i] = exc
            continue
        rest = data[header_end:]
        if rest and not rest.endswith(b"\n"):
            rest += b"\n"
        groups.setdefault((tuple(header), header_line), []).append((i, rest, rest.count(b"\n"), len(data)))
    for (names, first_line), members in groups.items():
        parser = _ChunkParser(list(names), first_line, settings)
        batch: list[tuple[int, bytes, int, int]] = []
        batch_lines = 0
        for member in [*members, None]:
            if member is not None and batch_lines + member[2] <= PARSE_BLOCK_LINES:
                batch.append(member)
                batch_lines += member[2]
                continue
            if batch:
                _parse_together(parser, batch, first_line, paths, settings, results)
            if member is None:
                break
            batch, batch_lines = [member], member[2]
    return results


def _parse_together(
    parser: _ChunkParser,
    batch: list[tuple[int, bytes, int, int]],
    header_line: int,
    paths: Sequence[Path],
    settings: IngestSettings,
    results: list[ParsedChunk | Exception | None],
) -> None:
    """Parse the data lines of `batch` (files with one header) in one call; split the results.

    Each member is (position in `paths`, data lines ending in a newline, their count, file size).
    """
    total_lines = sum(member[2] for member in batch)
    if not total_lines:
        return  # header-only files: nothing to report
    try:
        rows, errors = parser.parse(b"".join(member[1] for member in batch), total_lines, 1)
    except FileRejected:
        for member in batch:  # find the culprit(s) file by file
            results[member[0]] = _read_one(paths[member[0]], settings, member[3])
        return
    starts = np.cumsum([0] + [member[2] for member in batch])  # file k has joint lines starts[k]+1..starts[k+1]
    row_bounds = np.searchsorted(rows.line, starts + 0.5)
    error_file = np.searchsorted(starts, [e.line for e in errors], side="left") - 1
    for k, (i, _, lines, size) in enumerate(batch):
        shift = header_line - int(starts[k])  # joint line n is line n + shift of its file
        file_rows = _slice_rows(rows, int(row_bounds[k]), int(row_bounds[k + 1]), shift)
        file_errors = [
            RowError(e.line + shift, e.column, e.reason) for e, f in zip(errors, error_file, strict=True) if f == k
        ]
        if len(file_rows) or file_errors:
            results[i] = ParsedChunk(file_rows, file_errors, size, header_line + lines)


def _read_one(path: Path, settings: IngestSettings, read_size: int) -> ParsedChunk | Exception | None:
    """One file through read_chunks, its chunks joined (the fallback of read_small_files), up
    to `read_size` bytes (where read_small_files stopped reading it)."""
    try:
        chunks = list(read_chunks(path, settings, complete_at=read_size))
    except (OSError, CmmTwinError) as exc:
        return exc
    if not chunks:
        return None
    return ParsedChunk(
        concat_rows([c.rows for c in chunks]),
        [e for c in chunks for e in c.errors],
        chunks[-1].end_offset,
        chunks[-1].end_line,
    )


def _slice_rows(rows: ValidRows, start: int, stop: int, line_shift: int) -> ValidRows:
    values: dict[str, Any] = {f.name: getattr(rows, f.name)[start:stop] for f in fields(rows)}
    values["line"] = values["line"] + line_shift
    return ValidRows(**values)


def to_records(rows: ValidRows, config: PhysicsConfig) -> RecordBatch:
    """Compensate, decide and flag `rows` with the physics; the result records of the rows.

    Raises PhysicsInputError when a value passed the reader's checks but not the physics' (the
    reader's plausible range is wider than `config.limits`): a configuration mistake.
    """
    result = evaluate(
        rows.measured_mm,
        rows.part_temp_c,
        rows.nominal_mm,
        rows.tolerance_mm,
        rows.cte_per_k,
        rows.cte_u_per_k,
        air_temp_c=rows.air_temp_c,
        scale_temp_c=rows.scale_temp_c,
        config=config,
    )
    return RecordBatch(
        measurement_id=rows.measurement_id,
        timestamp=rows.timestamp,
        timestamp_ns=rows.timestamp_ns,
        machine_id=rows.machine_id,
        part_id=rows.part_id,
        feature=rows.feature,
        material=rows.material,
        cte_per_k=rows.cte_per_k,
        nominal_mm=rows.nominal_mm,
        tolerance_mm=rows.tolerance_mm,
        measured_mm=rows.measured_mm,
        part_temp_c=rows.part_temp_c,
        air_temp_c=rows.air_temp_c,
        scale_temp_c=rows.scale_temp_c,
        compensated_mm=result.compensated_mm,
        correction_um=result.correction_um,
        deviation_um=result.deviation_um,
        uncertainty_um=result.uncertainty_um,
        verdict=result.verdict,
        flags=result.flags,
    )


def reject_implausible(
    records: RecordBatch, lines: NDArray[np.int64], limits: ThermalLimits
) -> tuple[RecordBatch, list[RowError]]:
    """`records` without the rows whose computed results are implausible (`implausible_results`),
    and a RowError for each of those (on `measured_mm`, the input the result follows from).
    `lines` are the rows' line numbers (`ValidRows.line` of the rows `records` was made from)."""
    compensated = records.compensated_mm
    bad = implausible_results(limits, compensated, records.correction_um, records.deviation_um, records.uncertainty_um)
    if not bad.any():
        return records, []
    errors = []
    for i in np.flatnonzero(bad).tolist():
        value = float(compensated[i])
        errors.append(
            RowError(
                int(lines[i]),
                "measured_mm",
                f"gives a compensated length of {value!r} mm, outside 0 < L <= {limits.max_length_mm:g} mm"
                " (limits.max_length_mm)"
                if math.isfinite(value)
                else f"gives a non-finite compensated result ({value!r})",
            )
        )
    return records.take(np.flatnonzero(~bad)), errors


# --- measurement ids -------------------------------------------------------------------------

_HASH_DIGEST = type(hashlib.sha1()).digest
_ID_CHARACTERS = b"-5\n"
"""Prefixed to the hex digits of the digests: the dash, the version digit and the line end of an id."""
_ID_VARIANT = np.zeros(256, dtype=np.uint8)
_ID_VARIANT[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.frombuffer(b"89ab" * 4, dtype=np.uint8)
"""Hex digit of the high nibble of a digest's byte 8 -> that digit with the RFC 4122 variant bits set."""
_id_positions = np.empty(0, dtype=np.intp)


def _id_layout(count: int) -> NDArray[np.intp]:
    """Where each character of `count` ids `xxxxxxxx-xxxx-5xxx-Vxxx-xxxxxxxxxxxx\\n` comes from, in
    `_ID_CHARACTERS` + the hex digits of the digests (40 per digest; the variant digit V is put in after)."""
    global _id_positions  # noqa: PLW0603 (grown on demand, the same for every caller)
    if len(_id_positions) < 37 * count:
        rows = max(count, 2 * len(_id_positions) // 37)
        digits = [*range(8), -3, *range(8, 12), -3, -2, *range(13, 16), -3, *range(16, 20), -3, *range(20, 32), -1]
        one = np.array(digits, dtype=np.intp) + 3  # -3, -2, -1: the dash, the 5 and the line end
        starts = np.where(one >= 3, 40, 0) * np.arange(rows, dtype=np.intp)[:, None]
        _id_positions = (one + starts).ravel()
    return _id_positions[: 37 * count]


def measurement_ids(
    machine_ids: Sequence[str], part_ids: Sequence[str], features: Sequence[str], timestamps: Sequence[str]
) -> list[str]:
    """UUIDv5 ids of rows, equal to `records.measurement_id` (timestamps in canonical form).

    The RFC 4122 computation of `uuid.uuid5` (SHA-1 of namespace + name, version and variant bits
    set), one SHA-1 per row, with the bit setting and formatting done for all rows at once by
    NumPy on the hex digits of the digests instead of a `uuid.UUID` object per row (which costs
    about five times as much).
    """
    count = len(machine_ids)
    if count == 0:
        return []
    namespace = MEASUREMENT_ID_NAMESPACE.bytes
    names = "\n".join(map("|".join, zip(machine_ids, part_ids, features, timestamps, strict=True))).encode()
    if names.count(b"\n") == count - 1 and b"\n" not in namespace:  # one SHA-1 input per line
        messages = (namespace + names.replace(b"\n", b"\n" + namespace)).split(b"\n")
    else:  # a value holds a line break
        rows = zip(machine_ids, part_ids, features, timestamps, strict=True)
        messages = [namespace + "|".join(row).encode() for row in rows]
    digests = b"".join(map(_HASH_DIGEST, map(hashlib.sha1, messages)))
    source = np.frombuffer(_ID_CHARACTERS + binascii.hexlify(digests), dtype=np.uint8)
    text = source.take(_id_layout(count))
    text[19::37] = _ID_VARIANT[source[len(_ID_CHARACTERS) + 16 :: 40]]  # the high nibble of byte 8
    ids = text.tobytes().decode("ascii").split("\n")
    ids.pop()
    return ids


# --- reading ---------------------------------------------------------------------------------


def _read_header(handle: BinaryIO, end: int | None = None) -> tuple[list[str], int, int] | None:
    """The header's names (stripped, lower-case), its line number and the byte offset after it.

    With `end` (the offset after the last complete line), None when no header line ends before it.
    """
    line_no = 0
    while True:
        if end is not None and handle.tell() >= end:
            return None
        raw = handle.readline(MAX_LINE_BYTES + 2)
        if not raw:
            raise FileRejected("no header: the file has only blank lines")
        line_no += 1
        if len(raw) - raw.endswith(b"\n") > MAX_LINE_BYTES:
            raise FileRejected(f"a line is longer than {MAX_LINE_BYTES} bytes", line_no)
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, raw, line_no) from None
        if text.strip():
            break
    names = _HEADER_NAMES.get(text)
    if names is None:
        try:
            fields = next(csv.reader([text.rstrip("\r\n")], strict=True))
        except csv.Error as exc:
            raise FileRejected(f"unreadable header: {exc}", line_no) from None
        names = tuple(n.strip().lower() for n in fields)
        if len(_HEADER_NAMES) >= _LAYOUT_CACHE_ENTRIES:
            _HEADER_NAMES.clear()
        _HEADER_NAMES[text] = names
    return list(names), line_no, handle.tell()


def _after_last_line_end(handle: BinaryIO, size: int) -> int:
    """The offset just after the last b"\\n" of a file of `size` bytes (0: none), looked for
    backwards over at most MAX_LINE_BYTES + 1 bytes (a longer last line is read, to be rejected)."""
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return size
    position = size
    while position > 0 and size - position <= MAX_LINE_BYTES:
        start = max(position - (64 << 10), 0)
        handle.seek(start)
        found = handle.read(position - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        position = start
    return 0 if position == 0 else size


def _not_utf8(exc: UnicodeDecodeError, data: bytes, first_line: int) -> FileRejected:
    line = first_line + data.count(b"\n", 0, exc.start)
    return FileRejected(f"not UTF-8: invalid byte 0x{data[exc.start]:02x} at line {line}", line)


def _check_utf8(handle: BinaryIO, offset: int, line: int, end: int | None = None) -> None:
    """Raise FileRejected if the file from `offset` (just after line `line`) up to `end` (None:
    its end) is not UTF-8."""
    handle.seek(offset)
    carry = b""
    while True:
        block = handle.read(READ_BLOCK_BYTES if end is None else min(READ_BLOCK_BYTES, end - offset))
        offset += len(block)
        if not block:
            break
        if not carry and block.isascii():
            line += block.count(b"\n")
            continue
        data = carry + block
        cut = data.rfind(b"\n") + 1  # cut after a line end: never inside a UTF-8 sequence
        if cut == 0:
            if len(data) > MAX_LINE_BYTES:
                return  # the reading pass rejects the file for this over-long line
            carry = data
            continue
        piece, carry = data[:cut], data[cut:]
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, piece, line + 1) from None
        line += piece.count(b"\n")
    if carry:
        try:
            carry.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, carry, line + 1) from None


def _byte_pieces(
    handle: BinaryIO, chunk_lines: int, line: int, end: int | None = None
) -> Iterator[tuple[bytes, int, bool]]:
    """Pieces of the file up to `end` (None: its end), whole lines each (only the very last may
    lack its b"\\n").

    Yields (bytes, line count, whether the piece ends a chunk of `chunk_lines` lines, or the file).
    Pieces hold at most PARSE_BLOCK_LINES lines. `line` is the number of the line before the
    handle's position (for error messages only).
    """
    buffer = bytearray()
    newlines = np.empty(0, dtype=np.int64)  # positions of b"\n" in buffer
    left = chunk_lines  # lines still to go into the current chunk
    position = handle.tell()
    while True:
        block = handle.read(READ_BLOCK_BYTES if end is None else min(READ_BLOCK_BYTES, end - position))
        position += len(block)
        if not block:
            break
        found = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A) + len(buffer)
        if len(found):
            line_starts = np.concatenate(([int(newlines[-1]) + 1 if len(newlines) else 0], found[:-1] + 1))
            too_long = np.flatnonzero(found - line_starts > MAX_LINE_BYTES)
            if len(too_long):
                bad_line = line + len(newlines) + int(too_long[0]) + 1
                raise FileRejected(f"a line is longer than {MAX_LINE_BYTES} bytes", bad_line)
        newlines = np.concatenate((newlines, found)) if len(newlines) else found
        buffer += block
        while len(newlines) >= (take := min(PARSE_BLOCK_LINES, left)):
            cut = int(newlines[take - 1]) + 1
            data = bytes(buffer[:cut])
            del buffer[:cut]
            newlines = newlines[take:] - cut
            line += take
            left -= take
            yield data, take, left == 0
            if left == 0:
                left = chunk_lines
        open_line = len(buffer) - (int(newlines[-1]) + 1 if len(newlines) else 0)
        if open_line > MAX_LINE_BYTES:
            bad_line = line + len(newlines) + 1
            raise FileRejected(f"a line is longer than {MAX_LINE_BYTES} bytes", bad_line)
    if buffer:
        yield bytes(buffer), len(newlines) + (0 if buffer.endswith(b"\n") else 1), True
    elif left != chunk_lines:
        yield b"", 0, True  # close the chunk begun by the last pieces


# --- parsing and validation ------------------------------------------------------------------

T = TypeVar("T")
_Columns = dict[str, Any]
"""Columns of ValidRows by field name, while a chunk is validated."""
_NUMBER_COLUMNS = ("nominal_mm", "tolerance_mm", "measured_mm", "part_temp_c", "air_temp_c", "scale_temp_c")
_Check = Callable[[list[str]], list[tuple[T, str | None]]]
"""Check of distinct values: each gives (converted value, None), or (a fill value, reason) when invalid."""


_LAYOUT_CACHE_ENTRIES = 256
"""Header lines and layouts remembered across files (cleared when full)."""
_HEADER_NAMES: dict[str, tuple[str, ...]] = {}
"""Header line (decoded) -> its names as `_read_header` returns them."""
_LAYOUTS: dict[tuple[str, ...], tuple[int, dict[str, int], str | None] | str] = {}
"""Header names -> `_header_layout`."""


def _header_layout(header: tuple[str, ...]) -> tuple[int, dict[str, int], str | None] | str:
    """(field count, field index of each contract column, the contract column first in a line if
    any), or the reason the header rejects the file. Remembered: the same header comes file after file.
    """
    layout = _LAYOUTS.get(header)
    if layout is None:
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        duplicates = [c for c in CONTRACT_COLUMNS if header.count(c) > 1]
        if missing:
            layout = f"missing required column(s): {', '.join(missing)}"
        elif duplicates:
            layout = f"duplicate column(s): {', '.join(duplicates)}"
        else:
            index = {c: header.index(c) for c in CONTRACT_COLUMNS if c in header}
            layout = (len(header), index, next((c for c, j in index.items() if j == 0), None))
        if len(_LAYOUTS) >= _LAYOUT_CACHE_ENTRIES:
            _LAYOUTS.clear()
        _LAYOUTS[header] = layout
    return layout


class _ChunkParser:
    """Parses and validates chunks of one file; holds the header map and per-file caches."""

    def __init__(self, header: list[str], header_line: int, settings: IngestSettings) -> None:
        layout = _header_layout(tuple(header))
        if isinstance(layout, str):
            raise FileRejected(layout, header_line)
        self.field_count, self.index, self.first_column = layout
        self.settings = settings
        self.materials = settings.materials
        self.default_material = settings.default_material.strip().upper()
        self.range_reason = (
            f"outside the plausible range {settings.plausible_min_c:g}..{settings.plausible_max_c:g} degC"
        )
        self.timestamp_cache: dict[str, tuple[tuple[str, int], str | None]] = {}
        self.id_cache: dict[str, tuple[str, str | None]] = {}
        self.material_cache: dict[str, tuple[str, str | None]] = {}

    def parse(self, data: bytes, line_count: int, first_line: int) -> tuple[ValidRows, list[RowError]]:
        """Valid rows and row errors of `data` (`line_count` lines, the first is line `first_line`)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _not_utf8(exc, data, first_line) from None
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text.endswith("\r"):
                text = text[:-1]
        if text.endswith("\n"):
            text = text[:-1]
        columns, errors, line_numbers = self._split_fields(text, line_count, first_line)
        if not len(line_numbers):
            return _empty_rows(), errors
        bad: dict[int, RowError] = {}
        values = self._validate(columns, line_numbers, bad)
        if bad:
            keep = np.ones(len(line_numbers), dtype=bool)
            keep[list(bad)] = False
            values = _select(values, keep)
            errors = sorted([*errors, *bad.values()], key=lambda e: e.line)
        ids = measurement_ids(values["machine_id"], values["part_id"], values["feature"], values["timestamp"])
        return ValidRows(measurement_id=ids, **values), errors

    def _split_fields(
        self, text: str, line_count: int, first_line: int
    ) -> tuple[dict[str, list[str]], list[RowError], NDArray[np.int64]]:
        """Contract columns of the rows with the header's field count; errors of the others; line numbers.

        Without quotes (and stray CRs) a line is split at every comma, for the whole chunk at once;
        otherwise each line goes through the csv module (strict, one physical line per row).
        """
        n = self.field_count
        errors: list[RowError] = []
        if '"' not in text and "\r" not in text:
            # Split the whole chunk at commas, keeping each line break at the start of the next
            # line's first field: the chunk is well formed (n fields per line) exactly when there
            # are n * lines fields and every n-th field, from the n-th on, begins a line (which
            # also shows that the chunk has `line_count` lines). The line breaks are then taken
            # off the first column (the value checks strip anyway).
            flat = text.replace("\n", ",\n").split(",")
            if len(flat) == n * line_count and "".join(flat[n::n]).count("\n") == line_count - 1:
                numbers = np.arange(first_line, first_line + line_count, dtype=np.int64)
                columns = {name: flat[j::n] for name, j in self.index.items()}
                if self.first_column is not None:
                    columns[self.first_column] = "".join(columns[self.first_column]).split("\n")
                return columns, errors, numbers
            lines = _lines(text, line_count)
            kept: list[int] = []
            for i, line in enumerate(lines):
                count = line.count(",")
                if count == n - 1:
                    kept.append(i)
                elif line.strip():  # blank lines are skipped
                    errors.append(RowError(first_line + i, None, f"expected {n} fields, got {count + 1}"))
            numbers = np.array(kept, dtype=np.int64) + first_line
            if not kept:
                return {}, errors, numbers
            flat = "\n".join([lines[i] for i in kept]).replace("\n", ",").split(",")
            return {name: flat[j::n] for name, j in self.index.items()}, errors, numbers
        rows, errors, numbers = self._split_csv(_lines(text, line_count), first_line)
        if not rows:
            return {}, errors, numbers
        return {name: [row[j] for row in rows] for name, j in self.index.items()}, errors, numbers

    def _split_csv(
        self, lines: list[str], first_line: int
    ) -> tuple[list[list[str]], list[RowError], NDArray[np.int64]]:
        n = self.field_count
        try:
            parsed = list(csv.reader(lines, strict=True))
        except csv.Error:
            parsed = []
        # a CSV error, or a quoted field running over a line end: split line by line
        rows: list[list[str] | None] = list(parsed) if len(parsed) == len(lines) else list(map(_split_line, lines))
        good: list[list[str]] = []
        numbers: list[int] = []
        errors: list[RowError] = []
        for i, row in enumerate(rows):
            if row is None:
                errors.append(RowError(first_line + i, None, "unreadable CSV (a quoted field cannot span lines)"))
            elif len(row) == n:
                good.append(row)
                numbers.append(first_line + i)
            elif row and not (len(row) == 1 and not row[0].strip()):  # blank lines are skipped
                errors.append(RowError(first_line + i, None, f"expected {n} fields, got {len(row)}"))
        return good, errors, np.array(numbers, dtype=np.int64)

    def _validate(self, columns: dict[str, list[str]], lines: NDArray[np.int64], bad: dict[int, RowError]) -> _Columns:
        """Converted columns (all but the ids); the first error of each bad row, in contract order, into `bad`.

        Each column tries a fast path that only accepts a column without any error; the checks
        value by value (which find the errors) run when it does not.
        """
        size = len(lines)
        raw_stamps = columns["timestamp"]
        converted = _fast_timestamps(raw_stamps)
        if converted is not None:
            timestamp, timestamp_ns = converted
        else:
            stamps = _check_distinct("timestamp", raw_stamps, _check_timestamps, self.timestamp_cache, lines, bad)
            canonical = {raw: value[0] for raw, value in stamps.items()}
            unix_ns = {raw: value[1] for raw, value in stamps.items()}
            timestamp = list(map(canonical.__getitem__, raw_stamps))
            timestamp_ns = np.fromiter(map(unix_ns.__getitem__, raw_stamps), dtype=np.int64, count=size)
        machine_id = self._ids("machine_id", columns["machine_id"], lines, bad)
        part_id = _fast_part_ids(columns["part_id"])
        if part_id is None:
            part_id = _mapped(
                columns["part_id"], _check_distinct("part_id", columns["part_id"], _check_part_ids, {}, lines, bad)
            )
        feature = self._ids("feature", columns["feature"], lines, bad)
        spellings = set(columns["material"]) if "material" in columns else set()
        checked = self._check_materials(list(spellings)) if len(spellings) == 1 else []
        if checked and checked[0][1] is None:  # one valid spelling in the whole chunk (the usual case)
            distinct = {checked[0][0]}
            material = [checked[0][0]] * size
        elif "material" in columns:
            keys = _check_distinct(
                "material", columns["material"], self._check_materials, self.material_cache, lines, bad
            )
            distinct = set(keys.values())
            material = (
                [next(iter(distinct))] * size
                if len(distinct) == 1
                else list(map(keys.__getitem__, columns["material"]))
            )
        else:
            distinct = {self.default_material}
            material = [self.default_material] * size
        if len(distinct) == 1:
            only = self.materials[material[0]]
            cte = np.full(size, only.cte_per_k)
            cte_u = np.full(size, only.cte_u_per_k)
        else:
            by_key = {k: self.materials[k] for k in distinct}
            cte = np.array([by_key[k].cte_per_k for k in material], dtype=np.float64)
            cte_u = np.array([by_key[k].cte_u_per_k for k in material], dtype=np.float64)
        return {
            "line": lines,
            "timestamp": timestamp,
            "timestamp_ns": timestamp_ns,
            "machine_id": machine_id,
            "part_id": part_id,
            "feature": feature,
            "material": material,
            "cte_per_k": cte,
            "cte_u_per_k": cte_u,
            **self._all_numbers(columns, lines, bad),
        }

    def _ids(self, name: str, column: list[str], lines: NDArray[np.int64], bad: dict[int, RowError]) -> list[str]:
        """The machine or feature ids of `column` (stripped); row errors into `bad`."""
        if _CLEAN_IDS.issuperset(column):  # every value seen before, valid as it is
            return column
        ids = _mapped(column, _check_distinct(name, column, _check_ids, self.id_cache, lines, bad))
        if len(_CLEAN_IDS) > _SHARED_CACHE_ENTRIES:
            _CLEAN_IDS.clear()
        for raw in set(column):
            if self.id_cache[raw] == (raw, None):
                _CLEAN_IDS.add(raw)
        return ids

    def _all_numbers(
        self, columns: dict[str, list[str]], lines: NDArray[np.int64], bad: dict[int, RowError]
    ) -> dict[str, NDArray[np.float64]]:
        """The numeric columns as float64 (`_numbers` of each); row errors into `bad`.

        Fast path: NumPy converts all numeric columns at once and a row-wise min and max show
        that every value is valid; otherwise each column goes through `_numbers`.
        """
        size = len(lines)
        names = [name for name in _NUMBER_COLUMNS if name in columns]
        values: list[str] = []
        for name in names:
            values += columns[name]
        joined = "\x00".join(values)
        block: NDArray[np.float64] | None = None
        if joined.isascii() and "_" not in joined:
            try:
                block = np.array(values, dtype=np.float64).reshape(len(names), size)
            except ValueError:
                block = None
        numbers: dict[str, NDArray[np.float64]]
        if block is not None and self._all_valid(names, block):
            numbers = dict(zip(names, block, strict=True))
        else:
            numbers = {name: self._numbers(name, columns[name], lines, bad) for name in names}
        for name in _NUMBER_COLUMNS:
            if name not in numbers:
                numbers[name] = np.full(size, np.nan)
        return numbers

    def _all_valid(self, names: list[str], block: NDArray[np.float64]) -> bool:
        """Whether `_numbers` finds no error in the rows of `block` (every value given, as in `block`)."""
        low = block.min(axis=1).tolist()  # NaN in a row gives NaN, which fails every comparison below
        high = block.max(axis=1).tolist()
        minimum, maximum = self.settings.plausible_min_c, self.settings.plausible_max_c
        for name, lo, hi in zip(names, low, high, strict=True):
            if name.endswith("_temp_c"):
                if not (lo >= minimum and hi <= maximum):
                    return False
            elif not (lo > 0.0 and hi <= self.settings.max_length_mm):
                return False
        return True

    def _check_materials(self, raws: list[str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for raw in raws:
            text = raw.strip()
            key = text.upper()
            if not text:
                out.append((self.default_material, None))
            elif key not in self.materials:
                out.append((self.default_material, f"unknown material {text!r}"))
            else:
                out.append((key, None))
        return out

    def _numbers(
        self, name: str, column: list[str], lines: NDArray[np.int64], bad: dict[int, RowError]
    ) -> NDArray[np.float64]:
        """The column as float64 (NaN where an optional value is empty); row errors into `bad`.

        Fast path: NumPy converts the whole column (Python `float` syntax), in an optional column
        with its empty values filled in first; only when that fails (a malformed value) is each
        value converted on its own.
        """
        optional = name in OPTIONAL_COLUMNS
        temperature = name.endswith("_temp_c")
        reasons: dict[int, str] = {}
        values: NDArray[np.float64] | None = None
        empty: list[int] = []
        joined = "\x00".join(column)
        if joined.isascii() and "_" not in joined:
            try:
                values = np.array(column, dtype=np.float64)
            except ValueError:
                values = None
            if values is None and optional:
                if not joined.replace("\x00", "").strip():
                    return np.full(len(column), np.nan)  # an optional column left empty
                filled = [value if value and not value.isspace() else _EMPTY for value in column]
                empty = [i for i, value in enumerate(filled) if value is _EMPTY]
                try:
                    values = np.array(filled, dtype=np.float64)
                except ValueError:
                    values = None
        per_value = values is None
        if values is None:  # slow path: malformed values, found one by one
            values = np.empty(len(column), dtype=np.float64)
            for i, raw in enumerate(column):
                number, reason, given = _parse_number(raw)
                values[i] = number
                if reason is not None and (given or not optional):
                    reasons[i] = reason
        elif empty:
            values[empty] = np.nan
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(values)
            if temperature:
                out_of_range = finite & (
                    (values < self.settings.plausible_min_c) | (values > self.settings.plausible_max_c)
                )
            else:
                too_long = finite & (values > self.settings.max_length_mm)
                out_of_range = (finite & (values <= 0.0)) | too_long
        if not per_value:
            nonfinite = ~finite
            nonfinite[empty] = False
            for i in np.flatnonzero(nonfinite).tolist():
                reasons[i] = f"not a finite number: {column[i].strip()!r}"
        for i in np.flatnonzero(out_of_range).tolist():
            got = float(values[i])
            if temperature:
                reasons[i] = f"{self.range_reason}, got {got!r}"
            elif got > 0.0:
                reasons[i] = f"must be <= {self.settings.max_length_mm:g} mm (limits.max_length_mm), got {got!r}"
            else:
                reasons[i] = f"must be > 0, got {got!r}"
        for i in sorted(reasons):
            if i not in bad:
                bad[i] = RowError(int(lines[i]), name, reasons[i])
        return values


def _lines(text: str, line_count: int) -> list[str]:
    """The lines of `text`, which must be `line_count`."""
    lines = text.split("\n")
    if len(lines) != line_count:
        raise AssertionError(f"{len(lines)} lines where {line_count} were counted")
    return lines


def _check_distinct(
    name: str,
    column: list[str],
    check: _Check[T],
    cache: dict[str, tuple[T, str | None]],
    lines: NDArray[np.int64],
    bad: dict[int, RowError],
) -> dict[str, T]:
    """Check each distinct value of `column` once (results cached per file); raw value -> converted.

    Rows holding an invalid value get their RowError in `bad` (unless they have one already).
    """
    if len(cache) > _CACHE_MAX_ENTRIES:
        cache.clear()
    distinct = set(column)
    new = [raw for raw in distinct if raw not in cache]
    if new:
        cache.update(zip(new, check(new), strict=True))
    converted: dict[str, T] = {}
    invalid: dict[str, str] = {}
    for raw in distinct:
        value, reason = cache[raw]
        converted[raw] = value
        if reason is not None:
            invalid[raw] = reason
    if invalid:
        for i, raw in enumerate(column):
            reason = invalid.get(raw)
            if reason is not None and i not in bad:
                bad[i] = RowError(int(lines[i]), name, reason)
    return converted


def _mapped(column: list[str], converted: dict[str, str]) -> list[str]:
    """`column` with each value replaced by its converted form (the column itself if none changes)."""
    if all(raw is value for raw, value in converted.items()):
        return column
    return list(map(converted.__getitem__, column))


def _split_line(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=True), [])
    except csv.Error:
        return None


def concat_rows(parts: list[ValidRows]) -> ValidRows:
    """The rows of `parts`, in order, as one ValidRows."""
    if not parts:
        return _empty_rows()
    if len(parts) == 1:
        return parts[0]
    values: dict[str, object] = {}
    for f in fields(ValidRows):
        columns = [getattr(p, f.name) for p in parts]
        if isinstance(columns[0], np.ndarray):
            values[f.name] = np.concatenate(columns)
        else:
            values[f.name] = list(chain.from_iterable(columns))
    return ValidRows(**values)  # type: ignore[arg-type]


def _select(values: _Columns, keep: NDArray[np.bool_]) -> _Columns:
    """The rows where `keep` is true, of each column."""
    positions = np.flatnonzero(keep).tolist()
    out: _Columns = {}
    for name, column in values.items():
        if isinstance(column, np.ndarray):
            out[name] = column[keep]
        else:
            out[name] = [column[i] for i in positions]
    return out


def _parse_number(raw: str) -> tuple[float, str | None, bool]:
    """(value, reason it is invalid or None, whether a value was given at all)."""
    text = raw.strip()
    if not text:
        return math.nan, "missing value", False
    if not text.isascii() or "_" in text:
        return math.nan, f"not a number: {text!r}", True
    try:
        number = float(text)
    except ValueError:
        return math.nan, f"not a number: {text!r}", True
    if not math.isfinite(number):
        return math.nan, f"not a finite number: {text!r}", True
    return number, None, True


_UTC_TIMESTAMP_RE = re.compile(
    r"([1-9]\d{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)(?:\.(\d{1,6}))?(?:Z|\+00:00)"
)
"""The common UTC spellings, converted for many values at once by NumPy (others: `_check_timestamp`)."""
_FAST_YEARS = (1678, 2261)
"""First and last year of `_fast_timestamps` (inside the range of int64 nanoseconds)."""


def _check_timestamps(raws: list[str]) -> list[tuple[tuple[str, int], str | None]]:
    """`_check_timestamp` of each value; UTC timestamps in the usual form are converted vectorised."""
    results = [_PENDING] * len(raws)
    positions: list[int] = []
    canonical: list[str] = []
    for i, raw in enumerate(raws):
        match = _UTC_TIMESTAMP_RE.fullmatch(raw.strip())
        if match is None:
            results[i] = _check_timestamp(raw)
        else:
            seconds, fraction = match.groups()
            positions.append(i)
            canonical.append(f"{seconds}.{(fraction or '').ljust(6, '0')}")
    if positions:
        try:
            unix_us = np.array(canonical, dtype="datetime64[us]").astype(np.int64)
            in_range = bool(unix_us.min() > _NS_MIN // 1000 and unix_us.max() < _NS_MAX // 1000)
        except ValueError:  # e.g. 31 April: the exact path names the bad value
            in_range = False
        if in_range:
            for i, text, us in zip(positions, canonical, unix_us.tolist(), strict=True):
                results[i] = ((text + "Z", us * 1000), None)
        else:
            for i in positions:
                results[i] = _check_timestamp(raws[i])
    return results


@dataclass(frozen=True)
class _StampLayout:
    """One fixed-width spelling of UTC timestamps `_UTC_TIMESTAMP_RE` accepts, for `_fast_timestamps`."""

    template: NDArray[np.uint8]
    """The bytes of a timestamp and its line end, "0" for each digit."""
    limit: NDArray[np.uint8]
    """A byte is right when (byte XOR template) < limit: 1 for the fixed characters, 10 for a
    digit, 3 for the tens of the hour, 6 for the tens of minutes and seconds."""
    time_template: bytes
    """`template` after the date."""
    day_limit: NDArray[np.uint8]
    """`limit` with the date fixed (the date of the first value, put into the template)."""
    weights: NDArray[np.float64]
    """Digit weights giving (year, month, day, hour, year * 12 + month, nanoseconds into the
    month + 1 day) as one matrix product (exact: every sum is an integer below 2**53)."""
    day_weights: NDArray[np.float64]
    """Digit weights giving (hour, nanoseconds into the day)."""
    suffix: str
    """`Z` or `+00:00`, as spelled."""
    pad: str
    """What turns the fraction into 6 digits in the canonical form (with the dot when none is given)."""


_STAMP_LAYOUTS: dict[tuple[int, str], _StampLayout] = {}
_STAMP_LOW = np.array([_FAST_YEARS[0], 1, 1, 0])
_STAMP_HIGH = np.array([_FAST_YEARS[1], 12, 31, 23])
_MONTH_STARTS = np.arange(f"{_FAST_YEARS[0]}-01", f"{_FAST_YEARS[1] + 1}-02", dtype="datetime64[M]")
_MONTH_START_NS = (_MONTH_STARTS.astype("datetime64[s]").astype(np.int64) - 86_400) * 1_000_000_000
"""Unix nanoseconds of the day before the first of each month, from January of the first fast year on."""
_MONTH_DAYS = np.diff(_MONTH_STARTS.astype("datetime64[D]").astype(np.int64))
_DATE_RE = re.compile(r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")
_DAY_SECONDS: dict[str, int | None] = {}
"""Date (YYYY-MM-DD) -> Unix seconds of its start, None if no such day in the fast years."""
_NOT_SEEN = -1
"""Not in `_DAY_SECONDS` (never the start of a day, a multiple of 86,400)."""


def _stamp_layout(length: int, suffix: str) -> _StampLayout | None:
    """The layout of `length`-character timestamps ending in `suffix`; None if the regex takes no such one."""
    layout = _STAMP_LAYOUTS.get((length, suffix))
    if layout is None:
        digits = length - len(suffix) - 20  # of the fraction, after "YYYY-MM-DDTHH:MM:SS."
        if digits == -1 or 1 <= digits <= 6:
            fraction = "." + "0" * digits if digits > 0 else ""
            text = "0000-00-00T00:00:00" + fraction
            template = np.frombuffer((text + suffix + "\n").encode(), dtype=np.uint8)
            limit = np.ones(len(template), dtype=np.uint8)
            limit[[i for i, c in enumerate(text) if c == "0"]] = 10
            limit[[11, 14, 17]] = [3, 6, 6]
            day_limit = limit.copy()
            day_limit[:10] = 1
            fraction_digits = max(digits, 0)
            weights = np.zeros((len(template), 6), dtype=np.float64)
            day_weights = np.zeros((len(template), 2), dtype=np.float64)
            second = 1_000_000_000
            for matrix, column, start, size, scale in (
                (weights, 0, 0, 4, 1),  # year
                (weights, 1, 5, 2, 1),  # month
                (weights, 2, 8, 2, 1),  # day
                (weights, 3, 11, 2, 1),  # hour
                (weights, 4, 0, 4, 12),  # year * 12 + month
                (weights, 4, 5, 2, 1),
                (weights, 5, 8, 2, 86_400 * second),  # nanoseconds into the month + 1 day
                (weights, 5, 11, 2, 3_600 * second),
                (weights, 5, 14, 2, 60 * second),
                (weights, 5, 17, 2, second),
                (weights, 5, 20, fraction_digits, 10 ** (9 - fraction_digits)),
                (day_weights, 0, 11, 2, 1),  # hour
                (day_weights, 1, 11, 2, 3_600 * second),  # nanoseconds into the day
                (day_weights, 1, 14, 2, 60 * second),
                (day_weights, 1, 17, 2, second),
                (day_weights, 1, 20, fraction_digits, 10 ** (9 - fraction_digits)),
            ):
                for k in range(size):
                    matrix[start + k, column] += scale * 10 ** (size - 1 - k)
            pad = ("" if digits > 0 else ".") + "0" * (6 - fraction_digits)
            time_template = template[10:].tobytes()
            layout = _StampLayout(template, limit, time_template, day_limit, weights, day_weights, suffix, pad)
            _STAMP_LAYOUTS[length, suffix] = layout
    return layout


def _day_seconds(date: str) -> int | None:
    """Unix seconds at the start of `date` (YYYY-MM-DD), None if it is no day of the fast years."""
    seconds = _DAY_SECONDS.get(date, _NOT_SEEN)
    if seconds == _NOT_SEEN:
        seconds = None
        if _DATE_RE.fullmatch(date) and _FAST_YEARS[0] <= int(date[:4]) <= _FAST_YEARS[1]:
            try:
                start = datetime(int(date[:4]), int(date[5:7]), int(date[8:10]), tzinfo=UTC)
            except ValueError:  # e.g. 31 April
                pass
            else:
                seconds = (start - _EPOCH).days * 86_400
        if len(_DAY_SECONDS) >= _SHARED_CACHE_ENTRIES:
            _DAY_SECONDS.clear()
        _DAY_SECONDS[date] = seconds
    return seconds


def _fast_timestamps(raws: list[str]) -> tuple[list[str], NDArray[np.int64]] | None:
    """Canonical forms and Unix nanoseconds of a column of timestamps, all valid and spelled alike.

    The same results as `_check_timestamps` for a column whose values all have one length and
    one UTC suffix, match `_UTC_TIMESTAMP_RE` with ASCII digits, name existing days and fall in
    the years _FAST_YEARS (always in the nanosecond range); None for any other column. The
    checks and the arithmetic are done by NumPy on the bytes of all values at once, with fewer
    steps when all values are of one day (the date is then checked once, and its start looked up).
    """
    first = raws[0]
    suffix = "Z" if first.endswith("Z") else "+00:00" if first.endswith("+00:00") else ""
    layout = _stamp_layout(len(first), suffix) if suffix else None
    if layout is None:
        return None
    text = "\n".join(raws) + "\n"
    count = len(raws)
    width = len(layout.template)
    if len(text) != count * width or not text.isascii():
        return None
    data = np.ndarray((count, width), dtype=np.uint8, buffer=text.encode("ascii"))
    unix_ns: NDArray[np.int64] | None = None
    day = _day_seconds(first[:10])
    if day is not None:  # try: every value of this day (the date is then part of the template)
        template = np.frombuffer(first[:10].encode("ascii") + layout.time_template, dtype=np.uint8)
        digits = data ^ template  # digit values where digits go, 0 where the template matches
        if (digits < layout.day_limit).all():
            hour, nanoseconds = (digits @ layout.day_weights).astype(np.int64).T
            if hour.max() > 23:
                return None
            unix_ns = nanoseconds + day * 1_000_000_000
    if unix_ns is None:  # values of several days (or a bad one)
        digits = data ^ layout.template
        if not (digits < layout.limit).all():
            return None
        fields = (digits @ layout.weights).astype(np.int64)
        if ((fields[:, :4] < _STAMP_LOW) | (fields[:, :4] > _STAMP_HIGH)).any():
            return None
        month = fields[:, 4] - (_FAST_YEARS[0] * 12 + 1)
        if (fields[:, 2] > 28).any() and (fields[:, 2] > _MONTH_DAYS[month]).any():
            return None  # e.g. 31 April: `_check_timestamp` names the bad value
        unix_ns = _MONTH_START_NS[month] + fields[:, 5]
    if layout.suffix == "Z" and not layout.pad:
        return list(raws), unix_ns
    canonical = text.replace(layout.suffix + "\n", layout.pad + "Z\n").split("\n")
    canonical.pop()
    return canonical, unix_ns


def _fast_part_ids(raws: list[str]) -> list[str] | None:
    """The stripped part ids if `_check_part_id` accepts all of them, else None."""
    stripped = list(map(str.strip, raws))
    if "" in stripped or max(map(len, stripped)) > MAX_ID_CHARS or not "".join(stripped).isprintable():
        return None
    return stripped


def _check_timestamp(raw: str) -> tuple[tuple[str, int], str | None]:
    text = raw.strip()
    fill = ("", 0)
    if not text:
        return fill, "missing value"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return fill, f"not an ISO 8601 timestamp: {text!r}"
    if moment.tzinfo is None:
        return fill, "timestamp needs a UTC offset"
    try:
        delta = moment - _EPOCH
    except OverflowError:
        return fill, f"timestamp out of range: {text!r}"
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if not _NS_MIN <= ns <= _NS_MAX:
        return fill, f"timestamp out of range: {text!r}"
    # the text of records.canonical_timestamp (years 1678..2262 here), without its slow strftime
    canonical = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return (canonical, ns), None


def _check_ids(raws: list[str]) -> list[tuple[str, str | None]]:
    return list(map(_check_id, raws))


def _check_part_ids(raws: list[str]) -> list[tuple[str, str | None]]:
    return list(map(_check_part_id, raws))


def _check_id(raw: str) -> tuple[str, str | None]:
    text = raw.strip()
    if not text:
        return "", "missing value"
    if _ID_RE.fullmatch(text) is None:
        return "", f"must match [A-Za-z0-9_.-]{{1,64}}, got {text!r}"
    return text, None


def _check_part_id(raw: str) -> tuple[str, str | None]:
    text = raw.strip()
    if not text:
        return "", "missing value"
    if len(text) > MAX_ID_CHARS:
        return "", f"longer than {MAX_ID_CHARS} characters ({len(text)})"
    if not text.isprintable():
        return "", f"not printable: {text!r}"
    return text, None


def _empty_rows() -> ValidRows:
    no_floats = np.empty(0, dtype=np.float64)
    return ValidRows(
        line=np.empty(0, dtype=np.int64),
        measurement_id=[],
        timestamp=[],
        timestamp_ns=np.empty(0, dtype=np.int64),
        machine_id=[],
        part_id=[],
        feature=[],
        material=[],
        cte_per_k=no_floats,
        cte_u_per_k=no_floats,
        nominal_mm=no_floats,
        tolerance_mm=no_floats,
        measured_mm=no_floats,
        part_temp_c=no_floats,
        air_temp_c=no_floats,
        scale_temp_c=no_floats,
    )
