"""The Q-DAS AQDEF source: `*.dfq` files (description and values in one), and `*.dfd` files (the
description) with their `*.dfx` (the values, same stem) as one unit led by the .dfd. What is read
and what is rejected: docs/formats/qdas.md."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cmm_twin.gateway.sources.base import Source
from cmm_twin.gateway.sources.characteristics import RowBuilder
from cmm_twin.gateway.sources.qdas.document import Document, parse
from cmm_twin.gateway.sources.qdas.text import decode
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk


def _swap_suffix(name: str, old: str, new: str) -> str:
    """`name` with its suffix `old` (matched case-insensitively) replaced by `new` in the same case
    pattern (`X.DFX` -> `X.DFD`)."""
    suffix = name[-len(old) :]
    mirrored = "".join(n.upper() if s.isupper() else n for s, n in zip(suffix, new, strict=True))
    return name[: -len(old)] + mirrored


def read_document(data: bytes, name: str, settings: IngestSettings, dfx: bytes | None = None) -> Document:
    """The document of a .dfq (or a .dfd, with its .dfx's bytes); raises FileRejected."""
    texts = [decode(data, name)]
    if dfx is not None:
        dfx_name = _swap_suffix(name, ".dfd", ".dfx") if name.lower().endswith(".dfd") else "the .dfx"
        texts.append(decode(dfx, dfx_name, companion=True))
    return parse(texts, settings.inputs)


class QdasSource(Source):
    """Q-DAS AQDEF files: a `.dfq` alone, or a `.dfd` + `.dfx` pair of one stem."""

    name = "qdas"
    patterns = ("*.dfq", "*.dfd", "*.dfx")
    document_end = b"\n"  # a last line with its line end (the settle time for a file still open)

    def __init__(self, settings: IngestSettings) -> None:
        super().__init__(settings)
        self.builder = RowBuilder(settings, "qdas")

    @classmethod
    def leader(cls, name: str) -> str:
        """A `.dfx` is led by the `.dfd` of its stem; every other file leads itself."""
        return _swap_suffix(name, ".dfx", ".dfd") if name.lower().endswith(".dfx") else name

    @classmethod
    def companions(cls, name: str) -> tuple[str, ...]:
        """A `.dfd` needs the `.dfx` of its stem."""
        return (_swap_suffix(name, ".dfd", ".dfx"),) if name.lower().endswith(".dfd") else ()

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        """The rows and row errors of the .dfq or the .dfd + .dfx pair `path` leads."""
        path = path.with_name(self.leader(path.name))
        data = path.read_bytes()
        companions = self.companions(path.name)
        dfx = path.with_name(companions[0]).read_bytes() if companions else None
        document = read_document(data, path.name, self.settings, dfx)
        chunk = self.builder.build(
            document.readings, document.errors, path.name, len(data), document.texts[0].line_count
        )
        if chunk is None or len(document.texts) == 1:
            return chunk
        names = document.file_names(chunk.errors)
        errors = [replace(e, reason=f"{e.reason} (in {n})") for e, n in zip(chunk.errors, names, strict=True)]
        return replace(chunk, errors=errors)
