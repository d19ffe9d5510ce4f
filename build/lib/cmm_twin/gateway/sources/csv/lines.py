"""File I/O of the CSV source: reading in blocks, splitting lines with exact byte offsets,
line ends, line length and the UTF-8 check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from cmm_twin.gateway.sources.rows import FileRejected

MAX_LINE_BYTES = 1 << 20
"""Longest accepted physical line (1 MiB); a longer one rejects the file."""

READ_BLOCK_BYTES = 1 << 20
"""Size of one read from the file."""

PARSE_BLOCK_LINES = 2048
"""Lines parsed at once inside a chunk: small enough for the CPU caches (about 15 % faster than
parsing 10,000 lines at once), large enough for NumPy to pay off."""

WHOLE_READ_BYTES = min(READ_BLOCK_BYTES, MAX_LINE_BYTES)
"""A rest of the file up to this size is read at once (and holds no line longer than MAX_LINE_BYTES)."""


def after_last_line_end(handle: BinaryIO, size: int) -> int:
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


def not_utf8(exc: UnicodeDecodeError, data: bytes, first_line: int) -> FileRejected:
    """The rejection for `exc`, raised decoding `data` whose first line is `first_line`."""
    line = first_line + data.count(b"\n", 0, exc.start)
    return FileRejected(f"not UTF-8: invalid byte 0x{data[exc.start]:02x} at line {line}", line)


def check_utf8(handle: BinaryIO, offset: int, line: int, end: int | None = None) -> None:
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
            raise not_utf8(exc, piece, line + 1) from None
        line += piece.count(b"\n")
    if carry:
        try:
            carry.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(exc, carry, line + 1) from None


def _too_long(line: int) -> FileRejected:
    return FileRejected(f"a line is longer than {MAX_LINE_BYTES} bytes", line)


def byte_pieces(
    handle: BinaryIO, chunk_lines: int, block_lines: int, line: int, end: int | None = None
) -> Iterator[tuple[bytes, int, bool]]:
    """Pieces of the file up to `end` (None: its end), whole lines each (only the very last may
    lack its b"\\n").

    Yields (bytes, line count, whether the piece ends a chunk of `chunk_lines` lines, or the file).
    Pieces hold at most `block_lines` lines. `line` is the number of the line before the
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
                raise _too_long(line + len(newlines) + int(too_long[0]) + 1)
        newlines = np.concatenate((newlines, found)) if len(newlines) else found
        buffer += block
        while len(newlines) >= (take := min(block_lines, left)):
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
            raise _too_long(line + len(newlines) + 1)
    if buffer:
        yield bytes(buffer), len(newlines) + (0 if buffer.endswith(b"\n") else 1), True
    elif left != chunk_lines:
        yield b"", 0, True  # close the chunk begun by the last pieces


def split_lines(text: str, line_count: int) -> list[str]:
    """The lines of `text`, which must be `line_count`."""
    lines = text.split("\n")
    if len(lines) != line_count:
        raise AssertionError(f"{len(lines)} lines where {line_count} were counted")
    return lines
