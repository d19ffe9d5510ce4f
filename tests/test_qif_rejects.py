"""Bad QIF input: whole documents rejected with the reason and line (malformed XML, DTDs and
entities, documents that are not QIF 3 results, too big), and row errors for single values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.rows import RowError
from cmm_twin.physics.thermal import Flag
from tests.qif_helpers import BERLIN, FIXTURES, line_of, read, rejection
from tests.test_qif_source import FEATURES

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


def test_unsupported_specifications_and_units_are_row_errors(tmp_path: Path) -> None:
    text = BRACKET.read_text()
    pin = text.index("<MaxValue>-0.005</MaxValue>")
    tolerance = text[text.rindex("<Tolerance>", 0, pin) : text.index("</Tolerance>", pin) + len("</Tolerance>")]
    path = edited(
        tmp_path,
        (tolerance, "<LimitsAndFitsSpecification><Deviation>h</Deviation></LimitsAndFitsSpecification>"),
        ("<MaxValue>0.100</MaxValue>\n          <DefinedAsLimit>", "<DefinitionId>3</DefinitionId>\n<DefinedAsLimit>"),
        ("<UnitName>millimeter</UnitName>\n        <UnitConversion>\n          <Factor>0.001</Factor>",
         "<UnitName>furlong</UnitName>\n        <UnitConversion>\n          <Factor>201.168</Factor>"),
    )  # fmt: skip
    chunk = read(path)
    fits = line_of(path, "<LimitsAndFitsSpecification>") - 1
    by_reference = line_of(path, "<DefinitionId>3</DefinitionId>") - 1
    assert len(chunk.rows) == 6  # the angles only: every length has the unknown unit
    lengths = [n for n in FEATURES if not n.startswith("ANG_") and n not in ("D_PIN", "DEPTH_POCKET")]
    assert {e.reason for e in chunk.errors} == {
        f"a limits-and-fits (ISO 286 code) specification is not supported; see line {fits}",
        f"a tolerance given by reference is not supported; see line {by_reference}",
        *(f"unknown unit 'furlong' of characteristic {name!r}" for name in lengths),
    }
    assert sum(e.column == "LimitsAndFitsSpecification" for e in chunk.errors) == 3  # D_PIN on three parts
    assert sum(e.column == "DefinitionId" for e in chunk.errors) == 3  # DEPTH_POCKET (its MaxValue only)
    assert sum(e.column == "unit" for e in chunk.errors) == 3 * (23 - 2 - 2)


MINIMAL = """<?xml version="1.0" encoding="UTF-8"?>
<QIFDocument xmlns="http://qifstandards.org/xsd/qif3" versionQIF="3.0.0" idMax="9">
  <Characteristics>
    <CharacteristicDefinitions n="1">
      <DiameterCharacteristicDefinition id="1">
        <Tolerance><MaxValue>0.01</MaxValue><MinValue>-0.01</MinValue><DefinedAsLimit>false</DefinedAsLimit></Tolerance>
      </DiameterCharacteristicDefinition>
    </CharacteristicDefinitions>
    <CharacteristicNominals n="1">
      <DiameterCharacteristicNominal id="2">
        <CharacteristicDefinitionId>1</CharacteristicDefinitionId>
        <TargetValue>10</TargetValue>
      </DiameterCharacteristicNominal>
    </CharacteristicNominals>
    <CharacteristicItems n="1">
      <DiameterCharacteristicItem id="3">
        <Name>D1</Name>
        <CharacteristicNominalId>2</CharacteristicNominalId>
      </DiameterCharacteristicItem>
    </CharacteristicItems>
  </Characteristics>
  <Results>
    <MeasurementResultsSet n="2">
      <MeasurementResults id="4">
        <MeasuredCharacteristics>
          <CharacteristicMeasurements n="1">
            <DiameterCharacteristicMeasurement id="5">
              <Status><CharacteristicStatusEnum>PASS</CharacteristicStatusEnum></Status>
              <CharacteristicItemId>3</CharacteristicItemId>
              <Value>10.004</Value>
            </DiameterCharacteristicMeasurement>
          </CharacteristicMeasurements>
        </MeasuredCharacteristics>
        <InspectionStatus><InspectionStatusEnum>PASS</InspectionStatusEnum></InspectionStatus>
      </MeasurementResults>
      <MeasurementResults id="6">
        <MeasuredCharacteristics>
          <CharacteristicMeasurements n="2">
            <DiameterCharacteristicMeasurement id="7">
              <Status><CharacteristicStatusEnum>PASS</CharacteristicStatusEnum></Status>
              <CharacteristicItemId>3</CharacteristicItemId>
              <TimeStamp>2026-11-20T10:00:00Z</TimeStamp>
              <Value>9.998</Value>
            </DiameterCharacteristicMeasurement>
            <DiameterCharacteristicMeasurement id="8">
              <Status><CharacteristicStatusEnum>PASS</CharacteristicStatusEnum></Status>
              <CharacteristicItemId>3</CharacteristicItemId>
              <ActualComponentId>77</ActualComponentId>
              <Value>9.999</Value>
            </DiameterCharacteristicMeasurement>
          </CharacteristicMeasurements>
        </MeasuredCharacteristics>
        <InspectionStatus><InspectionStatusEnum>PASS</InspectionStatusEnum></InspectionStatus>
      </MeasurementResults>
    </MeasurementResultsSet>
  </Results>
</QIFDocument>
"""


def test_without_components_times_or_devices(tmp_path: Path) -> None:
    path = tmp_path / "run 42.qif"
    path.write_text(MINIMAL)
    os.utime(path, (1795165200, 1795165200))  # 2026-11-20T09:00:00Z
    chunk = read(path)
    rows = chunk.rows
    assert rows.part_id == ["run 42-4", "run 42-6"]  # the file's stem and the MeasurementResults id
    assert rows.timestamp == ["2026-11-20T09:00:00.000000Z", "2026-11-20T10:00:00.000000Z"]
    assert list(rows.flags) == [Flag.TEMPERATURE_ASSUMED | Flag.TIMESTAMP_FROM_FILE, Flag.TEMPERATURE_ASSUMED]
    assert rows.machine_id == ["CMM", "CMM"] and rows.part_id[0] != rows.part_id[1]
    assert chunk.errors == [
        RowError(line_of(path, "<Value>9.999<"), "ActualComponentId", "refers to no ActualComponent (id 77)")
    ]


def test_a_kind_without_length_or_angle_is_a_row_error_per_value(tmp_path: Path) -> None:
    text = BRACKET.read_text()
    start = text.index('<DiameterCharacteristicItem id="6">')
    end = text.index("</DiameterCharacteristicItem>", start) + len("</DiameterCharacteristicItem>")
    force = text[start:end].replace("DiameterCharacteristicItem", "UserDefinedForceCharacteristicItem")
    path = tmp_path / "force.qif"
    path.write_text(text[:start] + force + text[end:])
    chunk = read(path)
    item = line_of(path, '<UserDefinedForceCharacteristicItem id="6">')
    measurements = [line_of(path, f'CharacteristicMeasurement id="{m}"') for m in (75, 100, 125)]
    reason = f"UserDefinedForce characteristics carry no length or angle: not taken; see line {item}"
    assert chunk.errors == [RowError(line, "CharacteristicItemId", reason) for line in measurements]
    assert len(chunk.rows) == 66 and "D_BORE1" not in chunk.rows.feature
