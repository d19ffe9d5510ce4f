"""The Q-DAS writers: a DFQ from a Report reads back as written; the outbox's compensated DFQ
changes exactly the compensated values and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cmm_twin.formats.qdas import compensated_dfq, write_dfq
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qdas import QdasSource
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk
from cmm_twin.physics.thermal import PhysicsConfig
from cmm_twin.records import measurement_id

FIXTURES = Path(__file__).parent / "fixtures" / "qdas"
BERLIN = IngestSettings(inputs=InputSettings(timezone="Europe/Berlin"))
AL_CTE = 23.6e-6


def read(path: Path, settings: IngestSettings = BERLIN) -> ParsedChunk:
    chunk = QdasSource(settings).read(path)
    assert chunk is not None
    return chunk


def compensated_values(path: Path) -> dict[str, float]:
    batch = to_records(read(path).rows, PhysicsConfig())
    return dict(zip(batch.measurement_id, batch.compensated_mm.tolist(), strict=True))


def changed_lines(before: bytes, after: bytes, encoding: str) -> dict[int, tuple[str, str]]:
    old, new = before.decode(encoding).split("\r\n"), after.decode(encoding).split("\r\n")
    assert len(old) == len(new)
    return {n: (a, b) for n, (a, b) in enumerate(zip(old, new, strict=True), start=1) if a != b}


def test_without_compensated_values_the_original_comes_back_byte_for_byte() -> None:
    data = (FIXTURES / "housing.dfq").read_bytes()
    assert compensated_dfq(data, {}, BERLIN) == data
    dfd, dfx = (FIXTURES / "bracket.dfd").read_bytes(), (FIXTURES / "bracket.dfx").read_bytes()
    assert compensated_dfq(dfd, {}, BERLIN, dfx=dfx) == dfd + dfx.removeprefix(b"\xef\xbb\xbf")


def test_the_compensated_dfq_replaces_exactly_the_compensated_values() -> None:
    data = (FIXTURES / "housing.dfq").read_bytes()
    out = compensated_dfq(data, compensated_values(FIXTURES / "housing.dfq"), BERLIN)
    changes = changed_lines(data, out, "cp1252")
    factor = 1 + AL_CTE * (21.5 - 20)  # part GH-0001 at 21.5 degC
    # one decimal more than the reading had (K2022's when more): the correction is below the last digit
    assert (
        changes[141]
        == ("K0001/1 12.0071", f"K0001/1 {12.0071 / factor:.5f}")
        == ("K0001/1 12.0071", "K0001/1 12.00667")
    )
    assert f"{21.4 / factor:.2f}" == "21.40" and 151 not in changes  # µm: a value that does not change stays
    assert changes[153] == ("K0001/7 1.25021", f"K0001/7 {1.25021 / factor:.6f}")  # inch
    assert changes[163] == ("K0001/12 64,012", "K0001/12 " + f"{64.012 / factor:.4f}".replace(".", ","))
    assert f"{0.011 / factor:.4f}" == "0.0110" and 173 not in changes  # no K2022: one more decimal, the same value
    for unchanged in (155, 157, 159, 161, 177, 192):  # angle, temperatures, attribute, no nominal, invalid
        assert unchanged not in changes, unchanged
    rows = read(FIXTURES / "housing.dfq").rows
    replaced_lines = {int(line) for line in rows.line}
    assert set(changes) <= replaced_lines
    assert len(changes) > 30  # of 53 rows: the others are the same value with one more decimal


def test_the_compensated_dfq_reads_back_with_the_same_ids(tmp_path: Path) -> None:
    values = compensated_values(FIXTURES / "housing.dfq")
    path = tmp_path / "housing.dfq"
    path.write_bytes(compensated_dfq((FIXTURES / "housing.dfq").read_bytes(), values, BERLIN))
    again, original = read(path), read(FIXTURES / "housing.dfq")
    assert again.rows.measurement_id == original.rows.measurement_id and again.errors == original.errors
    for i, identity in enumerate(again.rows.measurement_id):
        if again.rows.unit[i] == "mm":
            assert again.rows.measured_mm[i] == pytest.approx(
                values[identity], abs=0.005 + 1e-12
            )  # half the coarsest last digit (0.001 cm)


def test_a_pair_comes_back_as_one_dfq(tmp_path: Path) -> None:
    dfd, dfx = (FIXTURES / "bracket.dfd").read_bytes(), (FIXTURES / "bracket.dfx").read_bytes()
    values = compensated_values(FIXTURES / "bracket.dfd")
    out = compensated_dfq(dfd, values, BERLIN, dfx=dfx, name="bracket.dfd")
    assert out.startswith(dfd) and out.count(b"\xef\xbb\xbf") == 1
    lines = out[len(dfd) :].decode("utf-8").split("\r\n")
    factor = 1 + AL_CTE * (22.4 - 20)
    assert lines[0].split("\x0f")[0].split("\x14")[0] == f"{10.0071 / factor:.5f}"
    assert lines[1].split("\x0f")[1].split("\x14")[:2] == ["49.987", "255"]  # invalid: kept
    assert lines[0].split("\x0f")[4].split("\x14")[0] == "22.4"  # temperature: kept
    path = tmp_path / "bracket.dfq"
    path.write_bytes(out)
    again, original = read(path), read(FIXTURES / "bracket.dfd")
    assert again.rows.measurement_id == original.rows.measurement_id
    assert [e.reason for e in again.errors] == [e.reason.removesuffix(" (in bracket.dfx)") for e in original.errors]


def test_a_rejected_original_is_rejected_by_the_writer_too() -> None:
    with pytest.raises(FileRejected):
        compensated_dfq((FIXTURES / "malformed" / "truncated.dfq").read_bytes(), {}, BERLIN)


REPORT = Report(
    "P-20",
    "Welle Ø20 µ-Test",
    [
        ReportCharacteristic(1, "Durchmesser", "mm", 20.0, -0.021, 0.0, 4),
        ReportCharacteristic(2, "Winkel", "deg", 45.0, -0.5, 0.5, 2),
        ReportCharacteristic(3, "Position", "um", 0.0, None, 30.0, 1),
        ReportCharacteristic(4, "Länge", "inch", 2.0, -0.002, 0.001, 5),
    ],
    [
        ReportPart(
            "S-1",
            "CMM-1",
            datetime(2026, 3, 29, 0, 30, tzinfo=UTC),
            [ReportValue(19.99123), ReportValue(45.1), ReportValue(None), ReportValue(2.00042)],
            21.3,
            20.4,
        ),
        ReportPart(
            "S-2",
            "CMM-1",
            datetime(2026, 3, 29, 1, 30, tzinfo=UTC),  # 03:30 CEST, just after the clocks went forward
            [ReportValue(19.9931), ReportValue(44.9), ReportValue(12.5), ReportValue(1.99901)],
            21.5,
        ),
    ],
)


def test_write_dfq_is_windows_1252_with_cr_lf() -> None:
    data = write_dfq(REPORT, ZoneInfo("Europe/Berlin"))
    assert data.count(b"\n") == data.count(b"\r\n") > 0
    text = data.decode("cp1252")
    assert "K1002 Welle Ø20 µ-Test\r\n" in text and "K2142/3 µm\r\n" in text and "K2142/2 °\r\n" in text
    assert "K0001/1/1 19.9912\r\n" in text and "K0004/0/2 29.03.2026/03:30:00\r\n" in text
    assert "K2002/5 Part temperature\r\nK2142/5 °C\r\n" in text and "K0001/6/1 20.40\r\n" in text
    assert "K0001/6/2" not in text and "K0001/3/1" not in text  # not given: not written


def test_write_dfq_reads_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "sim.dfq"
    path.write_bytes(write_dfq(REPORT, ZoneInfo("Europe/Berlin")))
    chunk = read(path)
    rows = chunk.rows
    assert chunk.errors == []
    assert rows.part_id == ["S-1"] * 3 + ["S-2"] * 4
    assert rows.feature == ["Durchmesser", "Winkel", "L_nge", "Durchmesser", "Winkel", "Position", "L_nge"]
    assert list(rows.measured_mm) == pytest.approx(
        [19.9912, 45.1, 2.00042 * 25.4, 19.9931, 44.9, 0.0125, 1.99901 * 25.4]
    )
    assert list(rows.part_temp_c) == [21.3] * 3 + [21.5] * 4
    assert list(rows.air_temp_c)[:3] == [20.4] * 3
    assert (rows.lower_tol_mm[0], rows.upper_tol_mm[0], rows.nominal_mm[0]) == (-0.021, 0.0, 20.0)
    assert (rows.lower_tol_mm[6], rows.upper_tol_mm[6]) == pytest.approx((-0.002 * 25.4, 0.001 * 25.4))
    assert rows.unit[1] == "deg" and rows.machine_id == ["CMM-1"] * 7
    assert rows.measurement_id[3] == measurement_id("CMM-1", "S-2", "Durchmesser", REPORT.parts[1].timestamp)
    assert rows.timestamp[0] == "2026-03-29T00:30:00.000000Z"


def test_write_dfq_keeps_a_reports_own_temperature_characteristic(tmp_path: Path) -> None:
    report = Report(
        "P",
        "",
        [
            ReportCharacteristic(1, "L", "mm", 5.0, -0.01, 0.01, 3),
            ReportCharacteristic(2, "Temp", "degC", None, None, None, 1),
        ],
        [ReportPart("A", "M", datetime(2026, 1, 1, tzinfo=UTC), [ReportValue(5.002), ReportValue(24.0)], 99.0)],
    )
    data = write_dfq(report, UTC)
    assert data.startswith(b"K0100 2\r\n") and b"99" not in data
    path = tmp_path / "t.dfq"
    path.write_bytes(data)
    rows = read(path).rows
    assert list(rows.part_temp_c) == [24.0] and rows.timestamp == [
        "2025-12-31T23:00:00.000000Z"
    ]  # written in UTC, read in Berlin
