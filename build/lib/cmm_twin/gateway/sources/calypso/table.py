"""The syntax shared by Calypso's `_chr.txt` and `_hdr.txt`: text decoding, tab-separated rows
under a header row mapped by column name, numbers (decimal commas), the closing `END` line."""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from cmm_twin.gateway.sources.rows import FileRejected

END = "END"
"""The last non-empty line of a complete `_chr.txt`."""
TAIL_BYTES = 4096
"""How much of a file's end is read to find its last non-empty line."""


def decode(data: bytes) -> str:
    """`data` as text: UTF-16 after its BOM, UTF-8 (a BOM is dropped), else Windows-1252;
    FileRejected naming the first byte none can decode."""
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileRejected(f"neither UTF-8 nor Windows-1252 (byte 0x{data[exc.start]:02x})", line) from None


def ends_with_end(path: Path, size: int) -> bool:
    """Whether the last non-empty line of the first `size` bytes of `path` is `END`."""
    if size <= 0:
        return False
    with open(path, "rb") as f:
        start = max(0, size - TAIL_BYTES)
        f.seek(start)
        tail = f.read(size - start)
    return last_line_is_end(tail)


def last_line_is_end(data: bytes) -> bool:
    """Whether the last non-empty line of `data` is `END` (in UTF-16 too: its zero bytes are dropped)."""
    last = data.replace(b"\x00", b"").rstrip(b" \t\r\n").rsplit(b"\n", 1)[-1]
    return last.strip().upper() == END.encode()


def number(text: str) -> float | None:
    """A number as Calypso writes it (`34.6`, `34,6`, `+0.003`, `1e-3`); None when empty.
    Raises ValueError for anything else, NaN and infinities included."""
    text = text.strip()
    if not text:
        return None
    if "," in text and "." not in text and text.count(",") == 1:
        text = text.replace(",", ".")
    if not all(c in "0123456789+-.eE" for c in text):
        raise ValueError(f"not a number: {text!r}")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


@dataclass(frozen=True)
class Table:
    """The rows of a tab-separated file under its header row."""

    columns: dict[str, int]
    """Position of each column by its name (lower case, stripped; the first of a repeated name)."""
    header_line: int
    rows: list[tuple[int, list[str]]]
    """(line, fields) of every non-empty line after the header, `END` lines excluded."""
    bad_rows: list[tuple[int, str]]
    """(line, reason) of rows whose number of fields does not match the header."""

    def get(self, fields: list[str], column: str) -> str:
        """The stripped value of `column` in `fields` ('' when the table has no such column)."""
        at = self.columns.get(column)
        return fields[at].strip() if at is not None else ""


def parse_table(text: str, known: Collection[str], required: Collection[str]) -> Table:
    """The table of `text`: its first non-empty line is the header, which must hold every
    `required` column; FileRejected with the line when it does not (no header at all, another
    separator than tabs, a required column missing)."""
    lines = text.split("\n")
    header_at = next((i for i, line in enumerate(lines) if line.strip() and line.strip().upper() != END), None)
    if header_at is None:
        raise FileRejected("no header row (the file holds no table)", 1)
    header_line = header_at + 1
    header = [cell.strip().lower() for cell in lines[header_at].rstrip("\r").split("\t")]
    if len(header) == 1:
        for separator in (";", ","):
            if separator in header[0]:
                raise FileRejected(f"the columns are separated by {separator!r}, not by tabs", header_line)
    if not set(header) & set(known):
        expected = ", ".join(sorted(required or known))
        raise FileRejected(f"no header row (no column named {expected})", header_line)
    missing = [column for column in required if column not in header]
    if missing:
        raise FileRejected(f"the header has no column {missing[0]!r}", header_line)
    columns: dict[str, int] = {}
    for position, column in enumerate(header):
        if column:
            columns.setdefault(column, position)
    rows: list[tuple[int, list[str]]] = []
    bad_rows: list[tuple[int, str]] = []
    width = len(header)
    for index in range(header_at + 1, len(lines)):
        line = lines[index].rstrip("\r")
        if not line.strip() or line.strip().upper() == END:
            continue
        fields = line.split("\t")
        if len(fields) > width and not "".join(fields[width:]).strip():
            fields = fields[:width]  # trailing empty fields (a tab at the line end)
        if len(fields) != width:
            hint = next((f" (separated by {s!r}?)" for s in (";", ",") if len(fields) == 1 and s in line), "")
            bad_rows.append((index + 1, f"expected {width} tab-separated fields, got {len(fields)}{hint}"))
            continue
        rows.append((index + 1, fields))
    return Table(columns, header_line, rows, bad_rows)


def read_text(path: Path) -> tuple[bytes, str]:
    """The bytes of `path` and their text (see `decode`)."""
    data = path.read_bytes()
    return data, decode(data)


def mtime_ns(path: Path) -> int:
    """The modification time of `path` in Unix nanoseconds."""
    return os.stat(path).st_mtime_ns
