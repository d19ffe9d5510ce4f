"""Bytes of a Q-DAS file as text: the encoding (UTF-8 with or without a BOM, else Windows-1252,
else Latin-1), the physical lines with their character offsets, and the checks that reject a file
before any key is read (empty, UTF-16, binary data, a bare CR, a last line without a line end)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cmm_twin.gateway.sources.rows import FileRejected

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
CHARACTERISTIC_SEPARATOR = "\x0f"
"""Separates the characteristics of a compact value line."""
FIELD_SEPARATOR = "\x14"
"""Separates the fields (value, attribute, date/time...) of one characteristic in a value line."""
_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e\x10-\x13\x15-\x1f\x7f]")
"""Control characters no Q-DAS file holds (tab, CR, LF and the two separators are allowed)."""
_BARE_CR = re.compile(r"\r(?!\n)")


@dataclass(frozen=True)
class Text:
    """One decoded file: its name (for messages), text, codec and physical lines."""

    name: str
    text: str
    codec: str
    """Codec that gives back the exact bytes (`text.encode(codec)`); a UTF-8 BOM stays in `text`."""
    lines: list[tuple[int, int]]
    """(start, end) character offsets of each physical line, without its line end."""
    companion: bool = False
    """The .dfx of a pair (its name is then given in messages)."""

    def line(self, number: int) -> str:
        """Physical line `number` (1-based), without its line end."""
        start, end = self.lines[number - 1]
        return self.text[start:end]

    @property
    def label(self) -> str:
        """What messages about this file start with: `in <name>: ` for the .dfx of a pair (the
        quarantine report is named after the .dfd), else nothing."""
        return f"in {self.name}: " if self.companion else ""


def decode(data: bytes, name: str, companion: bool = False) -> Text:
    """`data` (a whole file called `name`) as Text; raises FileRejected naming the line when it is
    not a readable text file or its last line is cut off."""
    label = f"in {name}: " if companion else ""
    if not data.strip():
        raise FileRejected(f"{label}empty file")
    if data.startswith(_UTF16_BOMS):
        raise FileRejected(f"{label}UTF-16 text is not read (expected UTF-8 or Windows-1252)", 1)
    text, codec = _text(data, label)
    junk = _JUNK.search(text)
    if junk is not None:
        line = text.count("\n", 0, junk.start()) + 1
        raise FileRejected(f"{label}binary data (control byte 0x{ord(junk.group()):02x}): not a Q-DAS text file", line)
    bare = _BARE_CR.search(text)
    if bare is not None:
        line = text.count("\n", 0, bare.start()) + 1
        raise FileRejected(f"{label}a CR without LF (line ends must be CR LF or LF)", line)
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        raise FileRejected(f"{label}truncated: the last line has no line end", line)
    lines: list[tuple[int, int]] = []
    start = 1 if text.startswith("\ufeff") else 0  # the BOM is no part of line 1
    while start < len(text):
        end = text.index("\n", start)
        lines.append((start, end - 1 if end > start and text[end - 1] == "\r" else end))
        start = end + 1
    return Text(name, text, codec, lines, companion)


def _text(data: bytes, label: str) -> tuple[str, str]:
    """The decoded text and its codec: UTF-8 (strict when a BOM says so), else Windows-1252, else Latin-1."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if data.startswith(UTF8_BOM):
            line = data.count(b"\n", 0, exc.start) + 1
            raise FileRejected(
                f"{label}not UTF-8 although the file starts with a UTF-8 BOM (invalid byte 0x{data[exc.start]:02x})",
                line,
            ) from None
    try:
        return data.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "latin-1"
