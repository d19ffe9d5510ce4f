"""The Q-DAS source on hand-written fixtures: records computed by hand, both value forms, the
encodings, and every malformed variant rejected with a reason naming the line or key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sources import source_for
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.gateway.sources.qdas import QdasSource
from cmm_twin.gateway.sources.qdas.numbers import decimals_of, parse_int, parse_number, parse_time
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk, RowError
from cmm_twin.physics.thermal import PhysicsConfig
from cmm_twin.records import RecordBatch, measurement_id

FIXTURES = Path(__file__).parent / "fixtures" / "qdas"
BERLIN = IngestSettings(inputs=InputSettings(timezone="Europe/Berlin"))
AL_CTE = 23.6e-6


def read(path: Path, settings: IngestSettings = BERLIN) -> ParsedChunk:
    chunk = QdasSource(settings).read(path)
    assert chunk is not None
    return chunk


def records(path: Path, settings: IngestSettings = BERLIN) -> list[dict[str, Any]]:
    return to_records(read(path, settings).rows, PhysicsConfig()).to_dicts()


def record(found: Sequence[dict[str, Any]], part_id: str, feature: str) -> dict[str, Any]:
    (match,) = [r for r in found if r["part_id"] == part_id and r["feature"] == feature]
    return match


def compensated(measured_mm: float, part_temp_c: float) -> float:
    return measured_mm / (1 + AL_CTE * (part_temp_c - 20.0))


def write(tmp_path: Path, name: str, lines: Sequence[str], encoding: str = "utf-8", end: str = "\r\n") -> Path:
    path = tmp_path / name
    path.write_bytes((end.join(lines) + end).encode(encoding))
    return path


HEAD = ["K0100 1", "K1001 P-7", "K2001/1 1", "K2002/1 Länge", "K2142/1 mm", "K2101/1 10", "K2112/1 -0.1", "K2113/1 0.1"]


# --- names and units -------------------------------------------------------------------------


def test_claims_and_pairs_mirror_the_suffixes_case() -> None:
    for name in ("a.dfq", "A.DFQ", "a.dfd", "a.DFX"):
        assert source_for(name, SOURCES) is QdasSource, name
    assert QdasSource.leader("x.dfx") == "x.dfd" and QdasSource.leader("X.DFX") == "X.DFD"
    assert QdasSource.leader("x.Dfx") == "x.Dfd" and QdasSource.leader("x.dfq") == "x.dfq"
    assert QdasSource.companions("x.dfd") == ("x.dfx",) and QdasSource.companions("X.DFD") == ("X.DFX",)
    assert QdasSource.companions("x.dfq") == () and QdasSource.leader("x.dfd") == "x.dfd"


# --- the .dfq fixture: key form, Windows-1252, CR LF -----------------------------------------


def test_the_dfq_gives_every_measured_value_of_its_three_parts() -> None:
    chunk = read(FIXTURES / "housing.dfq")
    rows = chunk.rows
    # 22 characteristics: 2 temperatures, 1 attribute, 1 without nominal: 18 per part; one value invalid
    assert len(rows) == 18 * 3 - 1
    assert sorted(set(rows.part_id)) == ["4711-A-3", "GH-0001", "GH-0002"]  # K0014, else K1001-<value set>
    assert set(rows.machine_id) == {"3"} and set(rows.source_format) == {"qdas"}
    assert set(rows.source_file) == {"housing.dfq"} and set(rows.material) == {"AL6061"}
    assert chunk.end_offset == (FIXTURES / "housing.dfq").stat().st_size and chunk.end_line == 280
    assert rows.line[0] == 141 and rows.feature[0] == "Bohrung__12_H7"  # the K0001/1 line; Ø made safe


def test_the_dfq_row_errors_name_line_and_key() -> None:
    errors = read(FIXTURES / "housing.dfq").errors
    attribute = "'Sichtprüfung Lack' is an attribute characteristic (K2004 = 5): its values are not measurements"
    no_nominal = "characteristic 'Breite Nut' has no nominal value"
    assert errors == [
        RowError(115, "K2101/19", no_nominal),
        RowError(115, "K2101/19", no_nominal),
        RowError(115, "K2101/19", no_nominal),
        RowError(161, "K0001/11", attribute),
        RowError(193, "K0002/3", "value '45.071' marked invalid (attribute 255)"),
        RowError(208, "K0001/11", attribute),
        RowError(255, "K0001/11", attribute),
    ]


def test_dfq_records_are_compensated_with_the_files_temperatures() -> None:
    found = records(FIXTURES / "housing.dfq")
    bore = record(found, "GH-0001", "Bohrung__12_H7")  # K2110/K2111 absolute 12.0000 / 12.0180: asymmetric
    assert bore["measured_mm"] == 12.0071 and bore["part_temp_c"] == 21.5 and bore["air_temp_c"] == 20.8
    assert bore["compensated_mm"] == pytest.approx(compensated(12.0071, 21.5), abs=1e-12)
    assert (bore["nominal_mm"], bore["lower_tol_mm"], bore["upper_tol_mm"], bore["tolerance_mm"]) == (
        12.0,
        0.0,
        0.018,
        None,
    )
    assert bore["unit"] == "mm" and bore["compensation"] == "gateway" and bore["flags"] == []
    assert bore["timestamp"] == "2026-03-15T07:14:07.000000Z"  # 08:14:07 CET
    length = record(found, "GH-0002", "L_nge_gesamt")  # K2112/K2113 allowances: symmetric
    assert (length["lower_tol_mm"], length["upper_tol_mm"], length["tolerance_mm"]) == (-0.1, 0.1, 0.1)
    assert length["compensated_mm"] == pytest.approx(compensated(119.962, 23.0), abs=1e-12)


def test_dfq_units_are_converted_and_angles_not_compensated() -> None:
    found = records(FIXTURES / "housing.dfq")
    position = record(found, "GH-0001", "Position_Bohrung_A")  # µm, one-sided (K2111 only)
    assert position["measured_mm"] == pytest.approx(0.0214, abs=1e-15)
    assert (position["lower_tol_mm"], position["upper_tol_mm"]) == (None, 0.05)
    shaft = record(found, "4711-A-3", "Durchmesser_Welle")  # inch
    assert shaft["nominal_mm"] == 31.75 and shaft["measured_mm"] == pytest.approx(1.2504 * 25.4, abs=1e-12)
    assert shaft["compensated_mm"] == pytest.approx(compensated(1.2504 * 25.4, 19.2), abs=1e-12)
    assert (shaft["lower_tol_mm"], shaft["upper_tol_mm"]) == pytest.approx((-0.0127, 0.0127), abs=1e-15)
    groove = record(found, "GH-0001", "L_nge_Nut")  # cm
    assert groove["nominal_mm"] == 45.0 and groove["measured_mm"] == pytest.approx(45.02, abs=1e-12)
    chamfer = record(found, "GH-0002", "Winkel_Fase")  # °: delivered in degrees, never corrected
    assert chamfer["unit"] == "deg" and chamfer["compensation"] == "none"
    assert chamfer["compensated_mm"] == 44.81 and chamfer["correction_um"] == 0.0
    assert chamfer["verdict"] == "PASS"


def test_dfq_limits_decimal_commas_and_a_nominal_from_the_limits() -> None:
    found = records(FIXTURES / "housing.dfq")
    distance = record(found, "GH-0002", "Abstand_Bohrung_B-C")  # 64,000 / 63,950 / 64,050 / 63,981
    assert (distance["nominal_mm"], distance["tolerance_mm"], distance["measured_mm"]) == (64.0, 0.05, 63.981)
    thread = record(found, "GH-0001", "Tiefe_Gewinde_M8")  # allowances 0 / +0.50: asymmetric
    assert (thread["lower_tol_mm"], thread["upper_tol_mm"], thread["tolerance_mm"]) == (0.0, 0.5, None)
    flange = record(found, "GH-0001", "H_he_Flansch")  # only K2113: one-sided
    assert (flange["lower_tol_mm"], flange["upper_tol_mm"]) == (None, 0.2)
    pin = record(found, "GH-0001", "Abstand_Stift")  # no K2101: the middle of K2110 9.980 and K2111 10.020
    assert (pin["nominal_mm"], pin["lower_tol_mm"], pin["upper_tol_mm"]) == (10.0, -0.02, 0.02)
    journal = record(found, "GH-0001", "Durchmesser_Zapfen_g6")  # both limits below the nominal
    assert (journal["lower_tol_mm"], journal["upper_tol_mm"]) == (-0.02, -0.007)
    assert journal["deviation_um"] == pytest.approx((compensated(24.9874, 21.5) - 25.0) * 1000, abs=1e-9)
    assert journal["verdict"] == "PASS"


def test_dfq_times_are_local_in_the_configured_zone_across_dst() -> None:
    found = records(FIXTURES / "housing.dfq")
    stamps = {r["part_id"]: r["timestamp"] for r in found}
    assert stamps == {
        "GH-0001": "2026-03-15T07:14:07.000000Z",  # CET, UTC+1
        "GH-0002": "2026-03-28T13:02:30.000000Z",  # the day before the clocks go forward
        "4711-A-3": "2026-03-30T07:45:00.000000Z",  # CEST, UTC+2
    }
    utc = records(FIXTURES / "housing.dfq", IngestSettings(inputs=InputSettings(timezone="UTC")))
    assert {r["part_id"]: r["timestamp"] for r in utc}["4711-A-3"] == "2026-03-30T09:45:00.000000Z"
    bore = record(found, "GH-0001", "Bohrung__12_H7")
    moment = datetime(2026, 3, 15, 7, 14, 7, tzinfo=UTC)
    assert bore["measurement_id"] == measurement_id("3", "GH-0001", "Bohrung__12_H7", moment)


def test_the_part_catalogue_sets_material_and_compensation_by_k1001() -> None:
    inputs = InputSettings(timezone="Europe/Berlin", parts={"4711-A": PartSettings("STEEL_1020", True)})
    found = records(FIXTURES / "housing.dfq", IngestSettings(inputs=inputs))
    bore = record(found, "GH-0001", "Bohrung__12_H7")
    assert bore["material"] == "STEEL_1020" and bore["compensation"] == "source"
    assert bore["compensated_mm"] == 12.0071  # already corrected by the CMM software


# --- the pair: compact value lines, UTF-8 with BOM -------------------------------------------


def test_the_pair_gives_one_part_per_value_line() -> None:
    chunk = read(FIXTURES / "bracket.dfd")
    rows = chunk.rows
    assert len(rows) == 4 * 4 - 2  # 4 lines x 4 lengths/angles; one invalid (255), one empty value
    assert rows.part_id == ["B-220-1"] * 4 + ["B-220-2"] * 3 + ["B-220-3"] * 3 + ["B-220-4"] * 4
    assert list(rows.line) == [1] * 4 + [2] * 3 + [3] * 3 + [4] * 4  # lines of the .dfx
    assert set(rows.machine_id) == {"CMM-07"} and set(rows.source_file) == {"bracket.dfd"}
    assert rows.feature[:4] == ["__Bohrung_1", "Abstand_1_2", "Winkel__", "Position_Bohrung_1"]
    assert chunk.errors == [RowError(2, "K0002/2", "value '49.987' marked invalid (attribute 255) (in bracket.dfx)")]
    assert chunk.end_offset == (FIXTURES / "bracket.dfd").stat().st_size and chunk.end_line == 34


def test_pair_records_use_the_temperature_characteristic() -> None:
    found = records(FIXTURES / "bracket.dfd")
    bore = record(found, "B-220-4", "__Bohrung_1")
    assert bore["part_temp_c"] == 23.1 and bore["air_temp_c"] is None
    assert bore["compensated_mm"] == pytest.approx(compensated(10.0089, 23.1), abs=1e-12)
    assert (bore["lower_tol_mm"], bore["upper_tol_mm"]) == (0.0, 0.015)
    assert bore["timestamp"] == "2026-06-05T09:03:05.000000Z"  # 11:03:05 CEST
    position = record(found, "B-220-4", "Position_Bohrung_1")  # 44.2 µm over the 40 µm limit
    assert position["measured_mm"] == pytest.approx(0.0442, abs=1e-15) and position["verdict"] == "FAIL"


def test_a_file_without_temperature_is_taken_at_the_assumed_one(tmp_path: Path) -> None:
    path = write(tmp_path, "t.dfq", [*HEAD, "K0001/1 10.02", "K0004/0 01.07.2026/12:00:00"])
    (row,) = records(path)
    assert row["part_temp_c"] == 20.0 and row["flags"] == ["temperature_assumed"]
    assert row["compensated_mm"] == 10.02 and row["part_id"] == "P-7-1"
    assert row["machine_id"] == "CMM"  # no K0010: [inputs] machine_id


# --- forms and encodings ---------------------------------------------------------------------


def test_value_keys_with_value_numbers_and_per_characteristic_fields(tmp_path: Path) -> None:
    lines = [
        *HEAD[:1],
        "K0100 2",
        *HEAD[1:],
        "K2001/2 2",
        "K2002/2 Bore",
        "K2101/2 5",
        "K2110/2 4.99",
        "K2111/2 5.01",
        "K0001/1/2 10.05",
        "K0001/2/2 5.004",
        "K0004/1/2 7/2/26 1:05:09 PM",
        "K0004/2/2 2026-07-02T13:05:10",
        "K0014/2/2 S-99",
        "K0010/1/2 CMM-A",
        "K0001/1/1 10.01",
        "K0004/0/1 2026-07-01T08:00:00+00:00",
    ]
    path = write(tmp_path, "v.dfq", [line for line in lines if line != "K0100 1"], end="\n")
    rows = read(path).rows
    assert rows.part_id == ["P-7-1", "S-99", "S-99"]  # value set 1 first; K0014 of any characteristic
    assert list(rows.measured_mm) == [10.01, 10.05, 5.004]
    assert rows.timestamp == [
        "2026-07-01T08:00:00.000000Z",  # ISO with an offset: the zone is not applied
        "2026-07-02T11:05:09.000000Z",  # M/d/yy h:mm:ss PM, CEST
        "2026-07-02T11:05:10.000000Z",
    ]
    assert rows.machine_id == ["CMM", "CMM-A", "CMM"]


def test_the_dfq_reads_the_same_in_utf8_with_lf(tmp_path: Path) -> None:
    text = (FIXTURES / "housing.dfq").read_bytes().decode("cp1252").replace("\r\n", "\n")
    (tmp_path / "housing.dfq").write_bytes(text.encode("utf-8"))
    again = read(tmp_path / "housing.dfq")
    original = read(FIXTURES / "housing.dfq")
    assert again.rows.measurement_id == original.rows.measurement_id
    assert again.errors == original.errors


def test_a_single_characteristic_value_line_without_separators(tmp_path: Path) -> None:
    path = write(tmp_path, "s.dfq", [*HEAD, "10.03", "", "10.04\x140\x1402.07.2026/06:00:00"], encoding="cp1252")
    chunk = read(path)
    assert list(chunk.rows.measured_mm) == [10.04] and chunk.rows.part_id == ["P-7-2"]
    assert chunk.errors == [RowError(9, "K0001/1", "no date and time for this value")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15.03.2026/08:14:07", datetime(2026, 3, 15, 7, 14, 7, tzinfo=UTC)),
        ("15.03.26 08:14", datetime(2026, 3, 15, 7, 14, tzinfo=UTC)),
        ("3/15/2026 08:14:07", datetime(2026, 3, 15, 7, 14, 7, tzinfo=UTC)),
        ("3/15/26 12:14:07 AM", datetime(2026, 3, 14, 23, 14, 7, tzinfo=UTC)),
        ("2026-03-15 08:14:07", datetime(2026, 3, 15, 7, 14, 7, tzinfo=UTC)),
        ("2026-03-15T08:14:07Z", datetime(2026, 3, 15, 8, 14, 7, tzinfo=UTC)),
        ("25.10.2026/02:30:00", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),  # ambiguous: the first (CEST)
        ("31.02.2026/08:00:00", None),
        ("15.03.2026", None),
        ("13/15/26 08:00", None),
        ("gestern", None),
    ],
)
def test_time_forms(value: str, expected: datetime | None) -> None:
    moment = parse_time(value, BERLIN.inputs)
    assert (moment if moment is None else moment.astimezone(UTC)) == expected


def test_bad_values_are_row_errors_naming_line_and_key(tmp_path: Path) -> None:
    lines = [
        *HEAD,
        "K0001/1 abc",
        "K0002/1 0",  # attributes count per characteristic like values: one for each value set
        "K0004/0 01.07.2026/12:00:00",
        "K0001/1 10,01",
        "K0002/1 256",
        "K0004/0 01.07.2026/12:01:00",
        "K0001/1 10.02",
        "K0004/0 yesterday",
        "K0001/1 nan",
        "K0004/0 01.07.2026/12:03:00",
    ]
    chunk = read(write(tmp_path, "b.dfq", lines))
    assert len(chunk.rows) == 0
    assert chunk.errors == [
        RowError(9, "K0001/1", "not a number: 'abc'"),
        RowError(13, "K0002/1", "value '10,01' marked deleted (attribute 256)"),
        RowError(
            16,
            "K0004/0",
            "unreadable date/time 'yesterday' (expected dd.MM.yyyy/HH:mm:ss, M/d/yy HH:mm:ss or ISO 8601)",
        ),
        RowError(17, "K0001/1", "not a number: 'nan'"),
    ]


def test_an_unknown_unit_and_a_bad_limit_are_row_errors(tmp_path: Path) -> None:
    lines = [line.replace("K2142/1 mm", "K2142/1 furlong") for line in HEAD] + ["K0001/1 1", "K0004/0 2026-07-01 08:00"]
    chunk = read(write(tmp_path, "u.dfq", lines))
    assert chunk.errors == [RowError(3, "unit", "unknown unit 'furlong' of characteristic 'Länge'")]
    lines = [line.replace("K2113/1 0.1", "K2113/1 0.1.2") for line in HEAD] + ["K0001/1 1", "K0004/0 2026-07-01 08:00"]
    chunk = read(write(tmp_path, "l.dfq", lines))
    assert chunk.errors == [RowError(9, "K2113/1", "K2113 of characteristic 'Länge' (line 8) is not a number: '0.1.2'")]


def test_a_description_without_values_gives_nothing(tmp_path: Path) -> None:
    assert QdasSource(BERLIN).read(write(tmp_path, "d.dfq", HEAD)) is None


# --- rejected files --------------------------------------------------------------------------

MALFORMED = FIXTURES / "malformed"


MALFORMED_CASES: list[tuple[str, int | None, str]] = [
    ("truncated.dfq", 200, "truncated: the last line has no line end"),
    (
        "count_mismatch.dfq",
        1,
        "K0100 says '22' characteristics, the file defines 21 (truncated, or K0100 is wrong)",
    ),
    (
        "tab_separated_key.dfq",
        20,
        "malformed K-field line 'K2002/3\\tBreite' (expected 'Kxxxx[/n[/m]] value',"
        " the key and its value separated by one space)",
    ),
    ("no_part_number.dfq", None, "no part number (K1001)"),
    (
        "no_characteristic.dfq",
        None,
        "no characteristic defined (no K2xxx key with a characteristic number)",
    ),
    (
        "bom_but_windows1252.dfq",
        3,
        "not UTF-8 although the file starts with a UTF-8 BOM (invalid byte 0xe4)",
    ),
    ("utf16.dfq", 1, "UTF-16 text is not read (expected UTF-8 or Windows-1252)"),
    ("binary.dfq", 12, "binary data (control byte 0x00): not a Q-DAS text file"),
    (
        "semicolons.dfd",
        1,
        "in semicolons.dfx: value line holds 1 characteristic(s) where the description defines 5"
        " (truncated, or the wrong separators: characteristics are separated by 0x0F, their fields by 0x14)",
    ),
    (
        "undefined.dfd",
        1,
        "in undefined.dfx: a value of characteristic 6 (K0001/6), which the description does not define",
    ),
]
"""Each malformed fixture (the leader of its unit), the line and the reason it is rejected with."""


@pytest.mark.parametrize(("name", "line", "reason"), MALFORMED_CASES)
def test_malformed_files_are_rejected_naming_the_line_or_key(name: str, line: int | None, reason: str) -> None:
    with pytest.raises(FileRejected) as caught:
        QdasSource(BERLIN).read(MALFORMED / name)
    assert (caught.value.reason, caught.value.line) == (reason, line)


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([*HEAD, "K1001/2 P-8"], "K1001/2: a second part; one part (K1001) per file is read"),
        ([*HEAD, "K2002/1/3 a"], "K2002/1/3: a value number on a description key"),
        (
            [*HEAD, "K0001/2 1.5"],
            "a value of characteristic 2 (K0001/2), which the description does not define",
        ),
        (
            ["K0100 1", "K1001 P", "K2001/1 1", "K2001/2 2"],
            "K0100 says '1' characteristics, the file defines 2 (truncated, or K0100 is wrong)",
        ),
        ([*HEAD, "K0001/1 1\rK0001/1 2"], "a CR without LF (line ends must be CR LF or LF)"),
        ([*HEAD, "1,0;0;01.07.2026"], None),
    ],
)
def test_more_rejections(tmp_path: Path, lines: list[str], reason: str | None) -> None:
    path = write(tmp_path, "x.dfq", lines)
    if reason is None:  # one characteristic: a value line without separators is one value
        chunk = read(path)
        assert chunk.errors == [RowError(9, "K0001/1", "not a number: '1,0;0;01.07.2026'")]
        return
    with pytest.raises(FileRejected) as caught:
        QdasSource(BERLIN).read(path)
    assert caught.value.reason == reason


def test_description_keys_in_the_values_file_reject_the_pair(tmp_path: Path) -> None:
    write(tmp_path, "p.dfd", HEAD)
    write(tmp_path, "p.dfx", ["K0001/1 10.0", "K2101/1 11"])
    with pytest.raises(FileRejected) as caught:
        QdasSource(BERLIN).read(tmp_path / "p.dfd")
    assert caught.value.reason == "in p.dfx: description key K2101/1 in the values file (it belongs in p.dfd)"
    assert caught.value.line == 2


def test_values_given_twice_are_row_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "t.dfq", [*HEAD, "K0001/1/1 10.0", "K0001/1/1 10.1", "K0004/0/1 01.07.2026/12:00:00"])
    chunk = read(path)
    assert list(chunk.rows.measured_mm) == [10.0]
    assert chunk.errors == [RowError(10, "K0001/1", "given twice for value set 1 (first at line 9)")]
    assert math.isnan(chunk.rows.air_temp_c[0])


def test_record_batch_of_the_fixture_is_consistent() -> None:
    batch: RecordBatch = to_records(read(FIXTURES / "housing.dfq").rows, PhysicsConfig())
    assert len(set(batch.measurement_id)) == len(batch)  # distinct ids


def test_slash_zero_description_keys_apply_to_every_characteristic(tmp_path: Path) -> None:
    lines = [
        "K0100 2",
        "K1001 P-9",
        "K2142/0 µm",
        "K2113/0 5",
        "K2101/1 0",
        "K2101/2 1",
        "K2142/2 mm",
        "K0001/1 2.5",
        "K0001/2 1.004",
        "K0004/0 01.07.2026/12:00:00",
    ]
    rows = read(write(tmp_path, "z.dfq", lines, encoding="cp1252")).rows
    assert rows.feature == ["1", "2"]  # no K2001/K2002: the index
    assert list(rows.measured_mm) == pytest.approx([0.0025, 1.004])  # µm from /0; mm its own
    assert list(rows.upper_tol_mm) == pytest.approx([0.005, 5.0])


def test_an_empty_value_key_is_not_measured_but_keeps_the_count(tmp_path: Path) -> None:
    lines = [*HEAD, "K0001/1", "K0004/0 01.07.2026/12:00:00", "K0001/1 10.01", "K0004/0 01.07.2026/12:05:00"]
    chunk = read(write(tmp_path, "e.dfq", lines))
    assert chunk.rows.part_id == ["P-7-2"] and chunk.errors == []


@pytest.mark.parametrize(
    ("text", "places"), [("12", 0), ("12,345", 3), ("-0.5", 1), ("1e-3", 3), ("1.5E-03", 4), ("1.52e+01", 1)]
)
def test_decimal_places_as_written(text: str, places: int) -> None:
    assert decimals_of(text) == places


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("12,345", 12.345),
        (" -0.5 ", -0.5),
        ("+.5", 0.5),
        ("5.", 5.0),
        (",25", 0.25),
        ("1.5E-03", 0.0015),
        ("\u0661\u0662", 12.0),  # Arabic-Indic digits are digits to both float() and the pattern
        ("1e999", math.inf),  # written as a number: kept (the row builder rejects what is not finite)
        ("1_000", None),
        ("nan", None),
        ("inf", None),
        ("-Infinity", None),
        ("1,5.3", None),
        ("1,,5", None),
        ("1 5", None),
        ("0x10", None),
        ("", None),
    ],
)
def test_number_forms(text: str, number: float | None) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("5", 5),
        (" -12 ", -12),
        ("+7", 7),
        ("123456789", 123456789),
        ("1234567890", None),
        ("+", None),
        ("", None),
        ("1_0", None),
        ("1.0", None),
        ("--1", None),
        ("\u00b2", None),  # superscript two: a digit, not a decimal digit
    ],
)
def test_whole_number_forms(text: str, number: int | None) -> None:
    assert parse_int(text) == number


def test_limits_in_exponent_form_keep_their_size(tmp_path: Path) -> None:
    lines = ["K1001 P", "K2101/1 0", "K2110/1 -1e-3", "K2111/1 2E-3", "K0001/1 5e-4", "K0004/0 01.07.2026/12:00:00"]
    rows = read(write(tmp_path, "x.dfq", lines)).rows
    assert (rows.lower_tol_mm[0], rows.upper_tol_mm[0], rows.measured_mm[0]) == (-0.001, 0.002, 0.0005)
