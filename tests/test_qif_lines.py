"""The lines of QIF values and errors whatever the spelling of the document: element lines are found
in the text (prefixed tags, tag-like text in comments, CDATA sections and processing instructions,
same-named elements of another namespace, UTF-16), and malformed XML is reported where expat finds
it in the file as written."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from xml.parsers import expat

import numpy as np
import pytest

from cmm_twin.formats.qif import write_qif_results
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources.rows import RowError
from tests.qif_helpers import FIXTURES, line_of, read, rejection

BRACKET = FIXTURES / "bracket_3_parts.qif"
BAD = ("<Value>12.0031</Value>", "<Value>12,0031</Value>")
"""One value made a row error: its line is checked too."""


def _variant(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "variant.qif"
    path.write_bytes(text.encode(encoding))
    return path


def _prefixed(text: str) -> str:
    """Every QIF element with the prefix `q:` (a same-line edit: lines unchanged)."""
    text = text.replace('xmlns="http://qifstandards.org/xsd/qif3"', 'xmlns:q="http://qifstandards.org/xsd/qif3"')
    return re.sub(r"<(/?)(?=[A-Za-z])", r"<\1q:", text)


def _tag_like_text(text: str) -> str:
    """Start tags of read elements inside a comment, a CDATA section and a processing instruction,
    on lines that exist already."""
    text = text.replace("?>\n", "?><!-- <Value>1</Value> <TargetValue>2</TargetValue> -->\n", 1)
    text = text.replace(
        "<Description>Bracket first-article and series inspection</Description>",
        "<Description><![CDATA[<Value>3</Value><ActualComponent id='9'>]]></Description><?pi <Value>4</Value>?>",
    )
    return text


def _foreign_value(text: str) -> str:
    """A `Value` element of another namespace (its tag has the same local name) in the header."""
    return text.replace("</Header>", '<x:Value xmlns:x="urn:other">5</x:Value></Header>', 1)


def _utf16(text: str) -> str:
    return text.replace('encoding="UTF-8"', 'encoding="UTF-16"', 1)


@pytest.mark.parametrize(
    ("edit", "encoding"),
    [(_prefixed, "utf-8"), (_tag_like_text, "utf-8"), (_foreign_value, "utf-8"), (_utf16, "utf-16")],
    ids=["prefixed", "tag-like-text", "foreign-value", "utf-16"],
)
def test_value_lines_whatever_the_spelling(tmp_path: Path, edit: object, encoding: str) -> None:
    text = BRACKET.read_text().replace(*BAD)
    expected = read(_variant(tmp_path, text))
    assert callable(edit)
    path = _variant(tmp_path, edit(text), encoding)
    chunk = read(path)
    bad_line = line_of(BRACKET, BAD[0])
    assert chunk.errors == expected.errors == [RowError(bad_line, "Value", "not a number: '12,0031'")]
    assert len(chunk.rows) == len(expected.rows) == 68
    lines = [int(n) for n in chunk.rows.line]
    assert lines == [int(n) for n in expected.rows.line]
    np.testing.assert_array_equal(chunk.rows.measured_mm, expected.rows.measured_mm)
    np.testing.assert_array_equal(chunk.rows.part_temp_c, expected.rows.part_temp_c)
    value_lines = [n for n, line in enumerate(text.splitlines(), start=1) if "<Value>" in line]
    assert lines == [n for n in value_lines if n != bad_line]


def _expat_error(data: bytes) -> tuple[str, int]:
    """The error and line expat itself reports for `data` (the oracle)."""
    try:
        expat.ParserCreate().Parse(data, True)
    except expat.ExpatError as exc:
        return str(exc), exc.lineno
    raise AssertionError("well-formed")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("<Value>25.0152</Value>", "<Value>25.0152</Valeu>"),  # mismatched tag in the middle
        ("<Name>Shop floor CMM software</Name>", "<Name>Shop floor &cmm; software</Name>"),  # no DTD: undefined
        ("<QPId>3e0f5c2a", '<QPId a="1" a="2">3e0f5c2a'),  # duplicate attribute
    ],
)
def test_malformed_xml_is_reported_where_it_is_in_the_file(tmp_path: Path, old: str, new: str) -> None:
    text = BRACKET.read_text()
    assert old in text
    path = tmp_path / "bad.qif"
    path.write_text(text.replace(old, new, 1))
    message, line = _expat_error(path.read_bytes())
    exc = rejection(path)
    assert (exc.reason, exc.line) == (f"malformed XML: {message}", line)
    assert line == line_of(path, new)


def test_a_document_of_several_megabytes_keeps_every_value_and_line(tmp_path: Path) -> None:
    """Compacted and parsed in pieces of 1 MB: no value and no line lost at a piece's edge."""
    count = 3000
    specs = [ReportCharacteristic(i + 1, f"L{i + 1:05d}", "mm", 10.0 + i % 50, -0.01, 0.02, 4) for i in range(count)]
    values = [ReportValue(round(10.0 + i % 50 + (i % 7) * 1e-4, 4)) for i in range(count)]
    part = ReportPart("P1", "CMM-01", datetime(2026, 1, 5, 6, 0, tzinfo=UTC), values, part_temp_c=20.0)
    path = tmp_path / "big.qif"
    path.write_bytes(write_qif_results(Report("4711-A", "big part", specs, [part])))
    assert path.stat().st_size > 3 * 1024 * 1024
    chunk = read(path)
    assert chunk.errors == []
    text = path.read_text().splitlines()
    value_lines = [n for n, line in enumerate(text, start=1) if "<Value>" in line]
    assert [int(n) for n in chunk.rows.line] == value_lines
    assert [float(text[n - 1].split(">")[1].split("<")[0]) for n in value_lines] == [v.value for v in values]
    assert list(chunk.rows.measured_mm) == [v.value for v in values]
    assert list(chunk.rows.feature) == [s.name for s in specs]
