"""Bytes of a Q-DAS file as text: the encoding (UTF-8 with or without a BOM, else Windows-1252,
else Latin-1) and the checks that reject a file before any key is read (empty, UTF-16, binary
data, a bare CR, a last line without a line end)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate, repeat
from operator import add

from cmm_twin.gateway.sources.rows import FileRejected

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
CHARACTERISTIC_SEPARATOR = "\x0f"
"""Separates the characteristics of a compact value line."""
FIELD_SEPARATOR = "\x14"
"""Separates the fields (value, attribute, date/time...) of one characteristic in a value line."""
_JUNK = re.compile(r"[\x00-\x08\x0b\x0c\x0e\x10-\x13\x15-\x1f\x7f]")
"""Control characters no Q-DAS file holds (tab, CR, LF and the two separators are allowed)."""
_NOT_JUNK = bytes(b for b in range(256) if not _JUNK.match(chr(b)))
"""Every byte but those: deleting them from a file's bytes leaves its junk. The junk characters
are ASCII, which each of the three codecs decodes byte for byte (and UTF-8 never uses inside a
multi-byte character), so the bytes hold junk exactly when the text does."""
_BARE_CR = re.compile(r"\r(?!\n)")


@dataclass(frozen=True)
class Text:
    """One decoded file: its name (for messages), text, codec and number of physical lines."""

    name: str
    text: str
    codec: str
    """Codec that gives back the exact bytes (`text.encode(codec)`); a UTF-8 BOM stays in `text`."""
    line_count: int
    """Physical lines (each ends with a line end: a file whose last line has none is rejected)."""
    companion: bool = False
    """The .dfx of a pair (its name is then given in messages)."""

    @property
    def start(self) -> int:
        """Character offset of line 1 (the BOM is no part of it)."""
        return 1 if self.text.startswith("\ufeff") else 0

    def line_start(self, number: int) -> int:
        """Character offset where physical line `number` (1-based) starts."""
        return self._starts[number - 1]

    @cached_property
    def _starts(self) -> list[int]:
        """Where each line starts; worked out on the first `line_start` (only the compensated DFQ
        writer needs offsets: reading a file does not)."""
        starts = list(accumulate(map(add, map(len, self.text.split("\n")), repeat(1)), initial=0))
        starts[0] = self.start
        return starts

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
    junk = _JUNK.search(text) if data.translate(None, _NOT_JUNK) else None
    if junk is not None:
        line = text.count("\n", 0, junk.start()) + 1
        raise FileRejected(f"{label}binary data (control byte 0x{ord(junk.group()):02x}): not a Q-DAS text file", line)
    bare = _BARE_CR.search(text) if text.count("\r") != text.count("\r\n") else None
    if bare is not None:
        line = text.count("\n", 0, bare.start()) + 1
        raise FileRejected(f"{label}a CR without LF (line ends must be CR LF or LF)", line)
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        raise FileRejected(f"{label}truncated: the last line has no line end", line)
    return Text(name, text, codec, text.count("\n"), companion)


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
