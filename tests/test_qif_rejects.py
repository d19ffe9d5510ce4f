"""Bad QIF input: whole documents rejected with the reason and line (malformed XML, DTDs and
entities, documents that are not QIF 3 results, too big), and row errors for single values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.rows import RowError
from tests.qif_helpers import BERLIN, FIXTURES, line_of, read, rejection

BRACKET = FIXTURES / "bracket_3_parts.qif"


@pytest.mark.parametrize(
    ("name", "line", "reason"),
    [
        (
            "billion_laughs.qif",
            3,
            "entity declaration 'lol' refused (entity expansion, e.g. a 'billion laughs' document)",
        ),
        (
            "external_entity.qif",
            3,
            "external entity 'serial' (file:///etc/hostname) refused: a QIF document may not refer to other files",
        ),
        (
            "doctype.qif",
            2,
            "a document type declaration (DTD <!DOCTYPE QIFDocument SYSTEM 'http://example.com/qif3.dtd'>) "
            "is not accepted in a QIF document",
        ),
        ("not_qif.qif", 1, "not a QIF document: the root element is <MeasurementReport>, not QIFDocument"),
        (
            "wrong_namespace.qif",
            1,
            "QIFDocument is not in the QIF 3 namespace 'http://qifstandards.org/xsd/qif3' "
            "(namespace 'http://qifstandards.org/xsd/qif2')",
        ),
        ("plan_only.qif", 2, "not a QIF results document: QIFDocument has no Results"),
        ("not_xml.qif", 1, "malformed XML: not well-formed (invalid token): line 1, column 4"),
    ],
)
def test_documents_rejected_with_reason_and_line(name: str, line: int, reason: str) -> None:
    exc = rejection(FIXTURES / name)
    assert (exc.reason, exc.line) == (reason, line)


def test_a_truncated_document_is_malformed_at_its_end() -> None:
    path = FIXTURES / "truncated.qif"
    exc = rejection(path)
    last = len(path.read_text().splitlines())
    assert exc.line == last and exc.reason.startswith("malformed XML: ") and f"line {last}, column" in exc.reason


def test_no_namespace_and_empty_and_results_without_measurement_results(tmp_path: Path) -> None:
    path = tmp_path / "plain.qif"
    path.write_text('<?xml version="1.0"?>\n<QIFDocument versionQIF="3.0.0" idMax="0"/>\n')
    assert rejection(path).reason == (
        "QIFDocument is not in the QIF 3 namespace 'http://qifstandards.org/xsd/qif3' (no namespace)"
    )
    path.write_bytes(b"")
    assert rejection(path).reason == "empty file"
    path.write_text(
        '<QIFDocument xmlns="http://qifstandards.org/xsd/qif3">\n  <Results>\n    <ActualComponentSets n="0"/>\n'
        "  </Results>\n</QIFDocument>\n"
    )
    exc = rejection(path)
    assert (exc.reason, exc.line) == ("QIF Results hold no MeasurementResultsSet/MeasurementResults", 2)


def test_a_document_over_the_size_bound_is_refused_unread(tmp_path: Path) -> None:
    class SmallQif(QifSource):
        max_document_bytes = 1000

    path = tmp_path / "big.qif"
    path.write_bytes(BRACKET.read_bytes())
    size = path.stat().st_size
    with pytest.raises(Exception) as caught:
        SmallQif(BERLIN).read(path)
    assert str(caught.value) == f"file of {size} bytes is larger than the 1000 bytes a QIF document may have"


def test_a_missing_nominal_reference_fails_its_values_only() -> None:
    path = FIXTURES / "missing_nominal.qif"
    chunk = read(path)
    assert len(chunk.rows) == 22 and "D_BORE2" not in chunk.rows.feature
    item_line = line_of(path, "<CharacteristicNominalId>9999</CharacteristicNominalId>") - 2
    measurement_line = line_of(path, "<DiameterCharacteristicMeasurement", line_of(path, "<Value>25.0152</Value>"))
    assert chunk.errors == [
        RowError(
            measurement_line,
            "CharacteristicNominalId",
            f"characteristic item 9 refers to no characteristic nominal (id 9999); see line {item_line}",
        )
    ]


def edited(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The bracket document with each (old, new) replaced once, as a new file."""
    text = BRACKET.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / "edited.qif"
    path.write_text(text)
    return path


def test_bad_values_are_row_errors_naming_line_and_field(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        ("<Value>12.0031</Value>", "<Value>12,0031</Value>"),  # D_BORE2
        ("<Value>7.9902</Value>", '<Value linearUnit="inch">7.9902</Value>'),  # D_PIN
        ("<TimeStamp>2026-11-20T08:15:30+01:00</TimeStamp>", "<TimeStamp>20.11.2026 08:15:30</TimeStamp>"),
        ("<CharacteristicItemId>18</CharacteristicItemId>", ""),  # L_SLOT, measurement 79
        ("<CharacteristicItemId>21</CharacteristicItemId>", "<CharacteristicItemId>4000</CharacteristicItemId>"),
        ("<Value>10.0530</Value>", ""),  # DEPTH_POCKET, measurement 83
    )
    chunk = read(path)
    assert chunk.errors == [
        RowError(line_of(path, "<Value>12,0031</Value>"), "Value", "not a number: '12,0031'"),
        RowError(
            line_of(path, '<Value linearUnit="inch">'),
            "Value",
            "unit 'inch' differs from the document's linear unit 'mm'",
        ),
        RowError(line_of(path, "<TimeStamp>20.11.2026"), "TimeStamp", "not an xs:dateTime: '20.11.2026 08:15:30'"),
        RowError(
            line_of(path, 'CharacteristicMeasurement id="79"'),
            "CharacteristicItemId",
            "Length measurement names no characteristic item",
        ),
        RowError(
            line_of(path, 'CharacteristicMeasurement id="80"'),
            "CharacteristicItemId",
            "refers to no characteristic item (id 4000)",
        ),
        RowError(
            line_of(path, 'CharacteristicMeasurement id="83"'), "Value", "no Value for 'DEPTH_POCKET' (status PASS)"
        ),
    ]
    assert len(chunk.rows) == 69 - 6
    first = [f for f, p in zip(chunk.rows.feature, chunk.rows.part_id, strict=True) if p == "SN-0001"]
    assert first[:4] == ["D_BORE1", "W_FLANGE", "H_STEP", "R_CORNER"] and len(first) == 23 - 6


def test_a_system_error_and_a_bad_part_temperature(tmp_path: Path) -> None:
    path = edited(
        tmp_path,
        ("<CharacteristicStatusEnum>PASS<", "<CharacteristicStatusEnum>SYSERROR<"),
        ("<ObjectTemperature>22.0</ObjectTemperature>", "<ObjectTemperature>warm</ObjectTemperature>"),
    )  # fmt: skip
    chunk = read(path)
    temp_line = line_of(path, "<ObjectTemperature>warm")
    assert chunk.errors[0] == RowError(
        line_of(path, "<Value>25.0152</Value>"), "Status", "the measuring system reports SYSERROR for this value"
    )
    assert RowError(temp_line, "ObjectTemperature", "not a number: 'warm'") in chunk.errors
    rejected_part = [e for e in chunk.errors if e.reason == f"its part's temperature is invalid (line {temp_line})"]
    assert len(rejected_part) == 23
    assert set(chunk.rows.part_id) == {"SN-0001", "SN-0003"} and len(chunk.rows) == 22 + 23
