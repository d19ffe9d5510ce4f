"""Safe parsing of a QIF document: any DTD refused (so no entity is ever declared or expanded and
nothing external read), a bound on the size read, the line of elements, and the checks that the
document is a QIF 3 results document at all."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import Element, ParseError, XMLParser
from xml.parsers import expat

from cmm_twin.gateway.sources.rows import FileRejected

log = logging.getLogger(__name__)

QIF_NS = "http://qifstandards.org/xsd/qif3"
MAX_DOCUMENT_BYTES = 200 * 1024 * 1024
"""Larger files are refused unread (a results document of a CMM run is kilobytes to a few MB)."""


def q(name: str) -> str:
    """The Clark name of a QIF element (`{namespace}name`)."""
    return f"{{{QIF_NS}}}{name}"


def find_path(element: Element, first: str, second: str) -> Element | None:
    """`element.find("first/second")` for Clark names, without ElementPath (a simple tag is found in
    C): the first `second` of the first `first` that has one."""
    for child in element.findall(first):
        found = child.find(second)
        if found is not None:
            return found
    return None


def text_at(element: Element, first: str, second: str) -> str | None:
    """`element.findtext("first/second")` for Clark names (see `find_path`)."""
    found = find_path(element, first, second)
    return None if found is None else (found.text or "")


def local_name(tag: str) -> str:
    """`name` of a `{namespace}name` tag."""
    return tag.rpartition("}")[2]


class _PrologEndError(Exception):
    """The first element is reached: the prolog held no DTD."""


class _PrologCheck:
    """An expat pass over the prolog only (it stops at the first element): refuses a document type
    declaration, after its entity declarations were refused one by one with their own reason. A
    document that passes has no DTD, hence no entity declaration and no external entity."""

    def __init__(self) -> None:
        self.parser = expat.ParserCreate()
        self.parser.StartDoctypeDeclHandler = self._start_doctype
        self.parser.EndDoctypeDeclHandler = self._end_doctype
        self.parser.EntityDeclHandler = self._entity_decl
        self.parser.UnparsedEntityDeclHandler = self._unparsed_entity_decl
        self.parser.StartElementHandler = self._start_element
        self.doctype = ""

    def check(self, data: bytes) -> None:
        try:
            self.parser.Parse(data, True)
        except _PrologEndError:
            return
        except expat.ExpatError as exc:
            raise FileRejected(f"malformed XML: {exc}", exc.lineno) from None

    def _start_element(self, name: str, attributes: object) -> None:
        raise _PrologEndError

    def _start_doctype(self, name: str, sysid: str | None, pubid: str | None, has_internal_subset: bool) -> None:
        self.doctype = name + (f" SYSTEM {sysid!r}" if sysid else "")

    def _end_doctype(self) -> None:
        raise FileRejected(
            f"a document type declaration (DTD <!DOCTYPE {self.doctype}>) is not accepted in a QIF document",
            self.parser.CurrentLineNumber,
        )

    def _entity_decl(
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
            raise FileRejected(
                f"external entity {name!r} ({sysid or pubid}) refused: a QIF document may not refer to other files",
                self.parser.CurrentLineNumber,
            )
        raise FileRejected(
            f"entity declaration {name!r} refused (entity expansion, e.g. a 'billion laughs' document)",
            self.parser.CurrentLineNumber,
        )

    def _unparsed_entity_decl(
        self, name: str, base: str | None, sysid: str | None, pubid: str | None, notation_name: str | None
    ) -> None:
        raise FileRejected(f"unparsed entity {name!r} ({sysid or pubid}) refused", self.parser.CurrentLineNumber)


_SKIPPED = rb"!--.*?-->|!\[CDATA\[.*?\]\]>|\?.*?\?>|"
"""Comments, CDATA sections and processing instructions: their text may look like start tags."""
_PREFIX = rb"(?:[^\s<>/:=!?\"']++:)?"
"""A namespace prefix (sought only when the text declares one: it is the slow part)."""
_START_TAGS = rb"<(?:%s%s(%s)(?=[\s/>]))"
"""The start tags of some local names, in document order."""
_TOGETHER = frozenset({"Value", "TargetValue", "ActualComponent", "ObjectTemperature", "AmbientTemperature"})
"""Local names whose lines every reading needs: found in one pass."""


class Document:
    """A parsed QIF document: its root and the line each element starts on (found on demand)."""

    def __init__(self, root: Element, data: bytes) -> None:
        self.root = root
        self._data = data
        self._lines: dict[str, dict[Element, int]] = {}
        self._all_lines: dict[Element, int] | None = None
        self.line_count = data.count(b"\n") + (not data.endswith(b"\n"))
        """Lines of the file (the last one counted even without a line end)."""
        self.size = len(data)

    def line(self, element: Element | None) -> int:
        """The line the element starts on (1 when unknown)."""
        if element is None:
            return 1
        lines = self._lines.get(element.tag)
        if lines is None:
            self._index(element.tag)
            lines = self._lines[element.tag]
        return lines.get(element, 1)

    def _index(self, tag: str) -> None:
        """The lines of the elements `tag` (and of the `_TOGETHER` ones with it): their start tags
        are found in the text by one regex pass and paired with the elements in document order.
        When the text holds start tags of that local name in another namespace, or is not in an
        ASCII-compatible encoding (the counts then differ), the lines come from an expat pass."""
        namespace, _, name = tag.rpartition("}")
        names = sorted(_TOGETHER) if name in _TOGETHER else [name]
        tags = {n: f"{namespace}}}{n}" if namespace else n for n in names}
        elements: dict[str, list[Element]] = {n: [] for n in names}
        by_tag = {t: elements[n] for n, t in tags.items()}
        for element in self.root.iter():  # one walk for all the names
            listed = by_tag.get(element.tag)
            if listed is not None:
                listed.append(element)
        found: dict[bytes, list[int]] = {n.encode(): [] for n in names}
        if self._all_lines is None:
            data = self._data
            prefix = _PREFIX if b"xmlns:" in data else b""  # no prefix declared: no prefixed tag
            alternatives = b"|".join(re.escape(n) for n in found)
            line, done = 1, 0
            for match in re.finditer(_START_TAGS % (_SKIPPED, prefix, alternatives), data, re.DOTALL):
                if match.lastindex:
                    start = match.start()
                    line += data.count(b"\n", done, start)
                    done = start
                    found[match[1]].append(line)
        for n, t in tags.items():
            lines = found[n.encode()]
            if self._all_lines is None and len(lines) != len(elements[n]):
                log.debug("lines of <%s> from an expat pass (%d elements, %d tags)", t, len(elements[n]), len(lines))
                self._all_lines = _element_lines(self.root, self._data)
            if self._all_lines is not None:
                self._lines[t] = {element: self._all_lines.get(element, 1) for element in elements[n]}
            else:
                self._lines[t] = dict(zip(elements[n], lines, strict=True))


def _element_lines(root: Element, data: bytes) -> dict[Element, int]:
    """The line of every element, from an expat pass that notes where each start tag is."""
    lines: list[int] = []
    parser = expat.ParserCreate()

    def start(name: str, attributes: object) -> None:
        lines.append(parser.CurrentLineNumber)

    parser.StartElementHandler = start
    parser.Parse(data, True)
    return dict(zip(root.iter(), lines, strict=True))


def read_document(path: Path, max_bytes: int = MAX_DOCUMENT_BYTES) -> Document:
    """The document at `path`, parsed safely; FileRejected when it is larger than `max_bytes`, not
    well-formed XML, holds a DTD or entities, or is not a QIF 3 results document."""
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        if size > max_bytes:
            raise FileRejected(f"file of {size} bytes is larger than the {max_bytes} bytes a QIF document may have")
        handle.seek(0)
        data = handle.read(size + 1)  # not max_bytes + 1: that would allocate max_bytes at once
        if len(data) > size:
            data += handle.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:  # grew while being opened
        raise FileRejected(f"file larger than the {max_bytes} bytes a QIF document may have")
    return parse_document(data)


def parse_document(data: bytes) -> Document:
    """`data` parsed as a QIF 3 results document (see `read_document`)."""
    if not data.strip():
        raise FileRejected("empty file")
    _PrologCheck().check(data)
    try:
        root = _tree(data)
    except ParseError as exc:
        line = exc.position[0] if exc.position else None
        raise FileRejected(f"malformed XML: {exc}", line) from None
    document = Document(root, data)
    check_results_document(document)
    return document


_BETWEEN_TAGS = re.compile(rb">\s+<")
_PIECE = 1 << 20
"""Bytes compacted and fed to the parser at a time."""


def _tree(data: bytes) -> Element:
    """The element tree of `data`, by the C parser (no DTD: refused before, so no entity to expand).
    The whitespace between tags is dropped first (unless a CDATA section could hold such text, or
    the encoding is not ASCII-compatible): it would be a text object per element, twice the time
    and memory of the tree, and every value read is stripped. A malformed document is parsed again
    as it is, for the error's position."""
    compact = b"<![CDATA[" not in data and b"\x00" not in data[:4] and not data.startswith((b"\xff\xfe", b"\xfe\xff"))
    parser = XMLParser()
    try:
        for piece in _compacted(data) if compact else (data,):
            parser.feed(piece)
        root: Element = parser.close()
    except ParseError:
        if not compact:
            raise
        parser = XMLParser()
        parser.feed(data)
        root = parser.close()
    return root


def _compacted(data: bytes) -> Iterator[bytes]:
    """`data` without the whitespace between tags, in pieces of about `_PIECE` bytes (each cut
    before a `<`, so no whitespace between two tags is split)."""
    start = 0
    while start < len(data):
        end = data.find(b"<", start + _PIECE)
        end = len(data) if end < 0 else end
        piece = data[start:end]
        if end < len(data) and piece.rstrip().endswith(b">"):
            piece = piece.rstrip()
        yield b"><".join(_BETWEEN_TAGS.split(piece))
        start = end


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
    if not any(s.find(q("MeasurementResults")) is not None for s in results.findall(q("MeasurementResultsSet"))):
        raise FileRejected("QIF Results hold no MeasurementResultsSet/MeasurementResults", document.line(results))
