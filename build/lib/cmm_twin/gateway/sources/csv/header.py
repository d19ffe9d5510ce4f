"""The header line of an inbox CSV and the column layout it gives (the CSV contract: README,
'The CSV format (inbox)')."""

from __future__ import annotations

import csv
from typing import BinaryIO

from cmm_twin.gateway.sources.csv.lines import MAX_LINE_BYTES, not_utf8
from cmm_twin.gateway.sources.rows import FileRejected
from cmm_twin.records import INBOX_COLUMNS, INBOX_OPTIONAL_COLUMNS

LIMIT_COLUMNS: tuple[str, ...] = ("lower_tol_mm", "upper_tol_mm")
"""Optional columns of an asymmetric or one-sided tolerance (signed, relative to the nominal): the
alternative to `tolerance_mm`; a header needs `tolerance_mm` or at least one of them."""
TOLERANCE_COLUMNS: tuple[str, ...] = ("tolerance_mm", *LIMIT_COLUMNS)
UNIT_COLUMN = "unit"
"""Optional column: `mm` (the default, also when empty) or `deg` (an angle: nominal, limits and value
in degrees, never thermally corrected); case-insensitive."""
OPTIONAL_COLUMNS: tuple[str, ...] = (*INBOX_OPTIONAL_COLUMNS, *LIMIT_COLUMNS, UNIT_COLUMN)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(c for c in INBOX_COLUMNS if c not in OPTIONAL_COLUMNS)
"""Required columns (`tolerance_mm` unless a limit column stands in for it)."""
_AT_TOLERANCE = INBOX_COLUMNS.index("tolerance_mm") + 1
CONTRACT_COLUMNS: tuple[str, ...] = (
    *INBOX_COLUMNS[:_AT_TOLERANCE],
    *LIMIT_COLUMNS,
    *INBOX_COLUMNS[_AT_TOLERANCE:],
    UNIT_COLUMN,
)
"""Contract columns in contract order (the limit columns after `tolerance_mm`, `unit` last): a
row's errors are looked for in this order."""
MISSING_TOLERANCE = "tolerance_mm (or lower_tol_mm / upper_tol_mm)"

LAYOUT_CACHE_ENTRIES = 256
"""Header lines and layouts remembered across files (cleared when full)."""
_BOM = b"\xef\xbb\xbf"

Layout = tuple[int, dict[str, int], str | None]
"""(field count, field index of each contract column, the contract column first in a line if any)."""


class Headers:
    """Reads header lines and maps them to column layouts; remembers both across files (the same
    header comes file after file)."""

    def __init__(self) -> None:
        self._names: dict[str, tuple[str, ...]] = {}
        """Header line (decoded) -> its names as `read` returns them."""
        self._layouts: dict[tuple[str, ...], Layout | str] = {}
        """Header names -> `layout`."""

    def read(self, handle: BinaryIO, end: int | None = None) -> tuple[list[str], int, int] | None:
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
                raise not_utf8(exc, raw, line_no) from None
            if text.strip():
                break
        names = self._names.get(text)
        if names is None:
            try:
                fields = next(csv.reader([text.rstrip("\r\n")], strict=True))
            except csv.Error as exc:
                raise FileRejected(f"unreadable header: {exc}", line_no) from None
            names = tuple(n.strip().lower() for n in fields)
            if len(self._names) >= LAYOUT_CACHE_ENTRIES:
                self._names.clear()
            self._names[text] = names
        return list(names), line_no, handle.tell()

    def layout(self, header: tuple[str, ...], header_line: int) -> Layout:
        """The layout of `header`; raises FileRejected when the header rejects the file."""
        layout = self._layouts.get(header)
        if layout is None:
            layout = _layout(header)
            if len(self._layouts) >= LAYOUT_CACHE_ENTRIES:
                self._layouts.clear()
            self._layouts[header] = layout
        if isinstance(layout, str):
            raise FileRejected(layout, header_line)
        return layout


def _layout(header: tuple[str, ...]) -> Layout | str:
    """The layout of `header`, or the reason it rejects the file."""
    has_tolerance = any(c in header for c in TOLERANCE_COLUMNS)
    missing = [
        MISSING_TOLERANCE if c == "tolerance_mm" else c
        for c in REQUIRED_COLUMNS
        if c not in header and not (c == "tolerance_mm" and has_tolerance)
    ]
    duplicates = [c for c in CONTRACT_COLUMNS if header.count(c) > 1]
    if missing:
        return f"missing required column(s): {', '.join(missing)}"
    if duplicates:
        return f"duplicate column(s): {', '.join(duplicates)}"
    index = {c: header.index(c) for c in CONTRACT_COLUMNS if c in header}
    return len(header), index, next((c for c, j in index.items() if j == 0), None)
