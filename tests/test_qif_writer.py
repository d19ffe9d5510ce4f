"""The QIF 3 results writer: valid against the official schema, deterministic, and read back by
the QIF source to the values written (raw simulator documents and compensated outbox ones)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import xmlschema

from cmm_twin.formats.qif import write_qif_results
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sinks.outbox.outputs import report_of
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qdas import QdasSource
from cmm_twin.gateway.sources.rows import IngestSettings, RowError
from cmm_twin.physics.thermal import Flag, PhysicsConfig
from tests.qif_helpers import FIXTURES, read

CET = timezone(timedelta(hours=1))
CHARACTERISTICS = [
    ReportCharacteristic(1, "D_BORE1", "mm", 25.0, 0.0, 0.021),
    ReportCharacteristic(2, "L_OVERALL", "mm", 120.0, -0.05, 0.05, decimals=3),
    ReportCharacteristic(3, "FLAT_A", "um", 0.0, None, 20.0, decimals=1),  # one-sided, in um
    ReportCharacteristic(4, "T_WALL", "mm", 3.0, -0.05, None),  # one-sided lower
    ReportCharacteristic(5, "D_SHAFT", "inch", 1.25, -0.0005, 0.0005),
    ReportCharacteristic(6, "ANG_CHAMFER", "deg", 45.0, -0.5, 0.5, decimals=3),
    ReportCharacteristic(7, "D_REF", "mm", 50.0),  # no limits
]
RAW = Report(
    "BRK-4711",
    "Bracket",
    CHARACTERISTICS,
    [
        ReportPart(
            "SN-0001",
            "CMM-07",
            datetime(2026, 11, 20, 8, 15, tzinfo=CET),
            [ReportValue(v) for v in (25.0152, 120.051, 11.2, 2.971, 1.2502, 45.12, 50.021)],
            part_temp_c=23.4,
            air_temp_c=21.2,
        ),
        ReportPart(
            "SN-0002",
            "CMM-08",
            datetime(2026, 11, 20, 8, 31, 30, 250000, tzinfo=UTC),
            [ReportValue(v) for v in (25.0218, 119.985, 25.0, 2.962, 1.2491, 44.75, 49.988)],
            part_temp_c=22.0,
        ),
    ],
)


def qif_schema() -> xmlschema.XMLSchema:
    """The official QIF 3 schema from QIF_XSD_DIR (skips the test when it is not set)."""
    folder = os.environ.get("QIF_XSD_DIR")
    if not folder:
        pytest.skip("QIF_XSD_DIR is not set: QIF schema validation skipped (make pytest sets it)")
    path = Path(folder) / "QIFApplications" / "QIFDocument.xsd"
    if not path.is_file():
        pytest.fail(f"QIF_XSD_DIR={folder!r} holds no QIFApplications/QIFDocument.xsd")
    return xmlschema.XMLSchema(str(path))


def outbox_document() -> bytes:
    """The QIF the outbox writes for the Q-DAS fixture housing.dfq (angles, one-sided limits,
    values the gateway rejected), from the records the gateway makes of it."""
    settings = IngestSettings(inputs=InputSettings(timezone="Europe/Berlin"))
    chunk = QdasSource(settings).read(Path(__file__).parent / "fixtures" / "qdas" / "housing.dfq")
    assert chunk is not None
    records = to_records(chunk.rows, PhysicsConfig()).to_dicts()
    return write_qif_results(report_of(records, coverage_factor=2.0))


def written(tmp_path: Path, report: Report, name: str = "out.qif") -> Path:
    path = tmp_path / name
    path.write_bytes(write_qif_results(report))
    return path


def test_written_documents_and_the_fixtures_are_valid_qif() -> None:
    """One test loads the schema (about 10 s and more under load), so only one worker pays for it."""
    schema = qif_schema()
    documents = {
        "raw": write_qif_results(RAW),
        "compensated": write_qif_results(compensated(RAW)),
        "empty": write_qif_results(Report("", "", [], [])),
        "temperature characteristic": write_qif_results(PROBED),
        "outbox, from a Q-DAS file": outbox_document(),
        **{name: (FIXTURES / name).read_bytes() for name in ("bracket_3_parts.qif", "shaft_inch.qif")},
    }
    for name, document in documents.items():
        errors = [f"{e.path}: {e.reason}" for e in schema.iter_errors(document.decode())]
        assert errors == [], name
    broken = documents["raw"].replace(b"<QPId>", b"<QPID>").replace(b"</QPId>", b"</QPID>")
    assert not schema.is_valid(broken.decode())  # the check can fail


def test_output_is_deterministic_and_its_qpid_follows_the_content() -> None:
    first = write_qif_results(RAW)
    assert write_qif_results(replace(RAW, parts=list(RAW.parts))) == first
    other = write_qif_results(replace(RAW, part_description="Bracket, rev B"))
    qpid = re.compile(rb"<QPId>([0-9a-f-]{36})</QPId>")
    first_id, other_id = qpid.search(first), qpid.search(other)
    assert first_id is not None and other_id is not None and first_id.group(1) != other_id.group(1)
    assert b"idMax=" in first and first.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<QIFDocument')


def test_a_raw_document_reads_back_to_the_values_written(tmp_path: Path) -> None:
    chunk = read(written(tmp_path, RAW))
    rows = chunk.rows
    assert chunk.errors == []
    assert rows.part_id == ["SN-0001"] * 7 + ["SN-0002"] * 7
    assert rows.feature == [c.name for c in CHARACTERISTICS] * 2
    assert rows.machine_id == ["CMM-07"] * 7 + ["CMM-08"] * 7
    assert rows.unit == ["mm"] * 5 + ["deg", "mm"] + ["mm"] * 5 + ["deg", "mm"]
    assert list(rows.measured_mm[:7]) == [25.0152, 120.051, 0.0112, 2.971, 31.75508, 45.12, 50.021]  # inch: exact
    assert list(rows.nominal_mm[:7]) == [25.0, 120.0, 0.0, 3.0, 31.75, 45.0, 50.0]
    lower, upper = list(rows.lower_tol_mm[:7]), list(rows.upper_tol_mm[:7])
    assert lower[0] == 0.0 and upper[0] == 0.021 and (lower[1], upper[1]) == (-0.05, 0.05)
    assert math.isnan(lower[2]) and upper[2] == 0.02
    assert lower[3] == -0.05 and math.isnan(upper[3])
    assert (lower[4], upper[4]) == (-0.0127, 0.0127) and (lower[5], upper[5]) == (-0.5, 0.5)
    assert math.isnan(lower[6]) and math.isnan(upper[6])
    assert (rows.part_temp_c[0], rows.air_temp_c[0], rows.part_temp_c[7]) == (23.4, 21.2, 22.0)
    assert math.isnan(rows.air_temp_c[7]) and set(rows.flags) == {0}
    assert rows.timestamp[0] == "2026-11-20T07:15:00.000000Z" and rows.timestamp[7] == "2026-11-20T08:31:30.250000Z"


def test_statuses_written_or_derived_from_the_limits() -> None:
    text = write_qif_results(RAW).decode()
    statuses = re.findall(r"<CharacteristicStatusEnum>(\w+)</CharacteristicStatusEnum>", text)
    # SN-0001: L_OVERALL 120.051 over 120.05 as measured; D_REF has no limits
    assert statuses[:7] == ["PASS", "FAIL", "PASS", "PASS", "PASS", "PASS", "UNDEFINED"]
    # SN-0002: D_BORE1 25.0218 over 25.021, FLAT_A 25 um over 20 um, D_SHAFT 1.2491 under 1.2495
    assert statuses[7:] == ["FAIL", "PASS", "FAIL", "PASS", "FAIL", "PASS", "UNDEFINED"]
    assert re.findall(r"<InspectionStatusEnum>(\w+)</InspectionStatusEnum>", text) == ["FAIL"] * 4


def compensated(report: Report) -> Report:
    """What the outbox writes: values at 20 degC with u_c and a decision per value."""
    parts = []
    for part in report.parts:
        values = [
            ReportValue(v.value, uncertainty=0.0012, status="INDETERMINATE" if i == 1 else "PASS")
            for i, v in enumerate(part.values)
        ]
        parts.append(replace(part, values=values))
    return replace(report, parts=parts)


def test_a_compensated_document_carries_uncertainty_and_decision(tmp_path: Path) -> None:
    data = write_qif_results(compensated(RAW))
    text = data.decode()
    assert '<Value combinedUncertainty="0.000120">25.0152</Value>' not in text  # u_c is in the value's unit
    assert '<Value combinedUncertainty="0.001200">25.0152</Value>' in text
    assert '<Value combinedUncertainty="0.00120">120.051</Value>' in text  # decimals + 2
    assert '<Value combinedUncertainty="0.0000012">0.0112</Value>' in text  # 1.2 nm for a value in um
    statuses = re.findall(r"<CharacteristicStatusEnum>(\w+)</CharacteristicStatusEnum>", text)
    assert statuses == (["PASS", "INDETERMINATE"] + ["PASS"] * 5) * 2
    rows = read(written(tmp_path, compensated(RAW))).rows
    assert rows.measured_mm[0] == 25.0152 and len(rows) == 14


def test_values_not_measured_are_measurements_without_value(tmp_path: Path) -> None:
    part = RAW.parts[0]
    values = [ReportValue(None) if i == 3 else v for i, v in enumerate(part.values)]
    path = written(tmp_path, replace(RAW, parts=[replace(part, values=values)]))
    text = path.read_text()
    assert text.count("<Value") == 6 and "<CharacteristicStatusEnum>NOT_ANALYZED<" in text
    chunk = read(path)
    assert len(chunk.rows) == 6
    (error,) = chunk.errors
    assert error == RowError(error.line, "Value", "no Value for 'T_WALL' (status NOT_ANALYZED)")
    assert "<LengthCharacteristicMeasurement" in text.splitlines()[error.line - 1]


PROBED = Report(
    "BRK-4711",
    "Bracket",
    [*CHARACTERISTICS[:2], ReportCharacteristic(3, "Part temperature", "degC", 20.0, decimals=2)],
    [
        ReportPart(
            "P-1", "CMM-07", datetime(2026, 11, 20, 9, 0, tzinfo=UTC), [ReportValue(v) for v in (25.01, 120.02, 24.5)]
        )
    ],
)
"""A part whose temperature is a characteristic (a probe on the part), not an ObjectTemperature."""


def test_a_temperature_characteristic_is_the_parts_temperature(tmp_path: Path) -> None:
    chunk = read(written(tmp_path, PROBED))
    assert "<UserDefinedTemperatureCharacteristicMeasurement" in write_qif_results(PROBED).decode()
    assert chunk.errors == [] and chunk.rows.feature == ["D_BORE1", "L_OVERALL"]
    assert list(chunk.rows.part_temp_c) == [24.5, 24.5] and set(chunk.rows.flags) == {0}
    part = PROBED.parts[0]
    without = read(written(tmp_path, Report("", "", CHARACTERISTICS[:1], [replace(part, values=part.values[:1])])))
    assert without.rows.part_temp_c[0] == 20.0 and without.rows.flags[0] == Flag.TEMPERATURE_ASSUMED


def test_what_the_writer_refuses() -> None:
    part = RAW.parts[0]
    with pytest.raises(ValueError, match="unit 'N' not supported"):
        write_qif_results(replace(RAW, characteristics=[ReportCharacteristic(1, "force", "N", 1.0)]))
    with pytest.raises(ValueError, match="timestamp without a zone"):
        write_qif_results(replace(RAW, parts=[replace(part, timestamp=datetime(2026, 11, 20, 8, 15))]))
    uncertain = [replace(v, status="UNCERTAIN") for v in part.values]
    with pytest.raises(ValueError, match="part 'SN-0001', 'D_BORE1': status 'UNCERTAIN' is not QIF's"):
        write_qif_results(replace(RAW, parts=[replace(part, values=uncertain)]))
    with pytest.raises(ValueError, match="part 'SN-0001': 6 values for 7 characteristics"):
        write_qif_results(replace(RAW, parts=[replace(part, values=part.values[:6])]))
