"""Safe parsing of a QIF document: defusedxml's parser (no DTD, no entity declarations, no external
entities), a bound on the size read, the line of every element, and the checks that the document
is a QIF 3 results document at all."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

from defusedxml.ElementTree import DefusedXMLParser

from cmm_twin.gateway.sources.rows import FileRejected

log = logging.getLogger(__name__)

QIF_NS = "http://qifstandards.org/xsd/qif3"
MAX_DOCUMENT_BYTES = 200 * 1024 * 1024
"""Larger files are refused unread (a results document of a CMM run is kilobytes to a few MB)."""


def q(name: str) -> str:
    """The Clark name of a QIF element (`{namespace}name`)."""
    return f"{{{QIF_NS}}}{name}"


def local_name(tag: str) -> str:
    """`name` of a `{namespace}name` tag."""
    return tag.rpartition("}")[2]


class _LineParser(DefusedXMLParser):  # type: ignore[misc]
    """defusedxml's expat parser that remembers the line each element starts on, and refuses a
    DTD (after its entity declarations were refused one by one, with their own reason)."""

    def __init__(self) -> None:
        super().__init__(forbid_dtd=False, forbid_entities=True, forbid_external=True)
        self.lines: dict[Element, int] = {}
        self.parser.EndDoctypeDeclHandler = self._end_doctype
        self.parser.StartDoctypeDeclHandler = self._start_doctype
        self.doctype = ""

    def _start(self, tag: str, attr_list: Any) -> Element:
        element: Element = super()._start(tag, attr_list)
        self.lines[element] = self.parser.CurrentLineNumber
        return element

    def _start_doctype(self, name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
        self.doctype = name + (f" SYSTEM {sysid!r}" if sysid else "")

    def _end_doctype(self) -> None:
        raise FileRejected(
            f"a document type declaration (DTD <!DOCTYPE {self.doctype}>) is not accepted in a QIF document",
            self.parser.CurrentLineNumber,
        )

    def defused_entity_decl(
        self,
        name: str,
        is_parameter_entity: bool,
        value: str | None,
        base: str | None,
        sysid: str | None,
        pubid: str | None,
        notation_name: str | None,
    ) -> None:
        if sysid or pubid:
            where = sysid or pubid
            raise FileRejected(
                f"external entity {name!r} ({where}) refused: a QIF document may not refer to other files",
                self.parser.CurrentLineNumber,
            )
        raise FileRejected(
            f"entity declaration {name!r} refused (entity expansion, e.g. a 'billion laughs' document)",
            self.parser.CurrentLineNumber,
        )

    def defused_unparsed_entity_decl(
        self, name: str, base: str | None, sysid: str | None, pubid: str | None, notation_name: str | None
    ) -> None:
        raise FileRejected(f"unparsed entity {name!r} ({sysid or pubid}) refused", self.parser.CurrentLineNumber)

    def defused_external_entity_ref_handler(
        self, context: str | None, base: str | None, sysid: str | None, pubid: str | None
    ) -> None:
        raise FileRejected(f"external entity reference ({sysid or pubid}) refused", self.parser.CurrentLineNumber)


class Document:
    """A parsed QIF document: its root and the line of each element."""

    def __init__(self, root: Element, lines: dict[Element, int], line_count: int, size: int) -> None:
        self.root = root
        self._lines = lines
        self.line_count = line_count
        """Lines of the file (the last one counted even without a line end)."""
        self.size = size

    def line(self, element: Element | None) -> int:
        """The line the element starts on (1 when unknown)."""
        return self._lines.get(element, 1) if element is not None else 1


def read_document(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> Document:
    """The document at `path`, parsed safely; FileRejected when it is larger than `max_bytes`, not
    well-formed XML, holds a DTD or entities, or is not a QIF 3 results document."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size > max_bytes:
            raise FileRejected(f"file of {size} bytes is larger than the {max_bytes} bytes a QIF document may have")
        handle.seek(0)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while being opened
        raise FileRejected(f"file larger than the {max_bytes} bytes a QIF document may have")
    return parse_document(data)


def parse_document(data: bytes) -> Document:
    """`data` parsed as a QIF 3 results document (see `read_document`)."""
    if not data.strip():
        raise FileRejected("empty file")
    parser = _LineParser()
    try:
        parser.feed(data)
        root: Element = parser.close()
    except ParseError as exc:
        line = exc.position[0] if exc.position else None
        raise FileRejected(f"malformed XML: {exc}", line) from None
    line_count = data.count(b"\n") + (not data.endswith(b"\n"))
    document = Document(root, parser.lines, line_count, len(data))
    check_results_document(document)
    return document


def check_results_document(document: Document) -> None:
    """FileRejected naming what is missing when the document is not QIF 3 results."""
    root = document.root
    if root.tag != q("QIFDocument"):
        namespace = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
        if local_name(root.tag) == "QIFDocument":
            found = f"namespace {namespace!r}" if namespace else "no namespace"
            raise FileRejected(f"QIFDocument is not in the QIF 3 namespace {QIF_NS!r} ({found})", 1)
        raise FileRejected(f"not a QIF document: the root element is <{local_name(root.tag)}>, not QIFDocument", 1)
    results = root.find(q("Results"))
    if results is None:
        raise FileRejected("not a QIF results document: QIFDocument has no Results", document.line(root))
    if results.find(f"{q('MeasurementResultsSet')}/{q('MeasurementResults')}") is None:
        raise FileRejected("QIF Results hold no MeasurementResultsSet/MeasurementResults", document.line(results))
