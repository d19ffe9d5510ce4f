"""InfluxDB line protocol of the historian (README, "The historian"): exact lines computed by hand,
escaping, NaN handling, precision, and a round trip through a small line-protocol parser."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pytest
from numpy.typing import NDArray

from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
    HealthSample,
    Precision,
    escape_tag,
    health_line,
    measurement_lines,
)
from cmm_twin.records import RecordBatch, canonical_timestamp

T0_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z: digits below the ms to test flooring


@dataclass(frozen=True)
class Row:
    """The historian-relevant values of one record (tags, fields, time); the rest is derived."""

    timestamp_ns: int
    machine_id: str
    feature: str
    material: str
    verdict: int
    measured_mm: float
    compensated_mm: float
    part_temp_c: float
    air_temp_c: float
    correction_um: float
    deviation_um: float
    uncertainty_um: float
    tolerance_mm: float = 0.01
    lower_tol_mm: float = -0.01
    upper_tol_mm: float = 0.01
    unit: str = "mm"


def batch_of(rows: list[Row]) -> RecordBatch:
    """A RecordBatch holding `rows` in order (fields the historian does not store are filler)."""
    n = len(rows)

    def floats(name: str) -> NDArray[np.float64]:
        return np.array([getattr(r, name) for r in rows], dtype=np.float64)

    return RecordBatch(
        measurement_id=[f"m-{i}" for i in range(n)],
        timestamp=[canonical_timestamp(datetime.fromtimestamp(r.timestamp_ns // 1000 / 1e6, UTC)) for r in rows],
        timestamp_ns=np.array([r.timestamp_ns for r in rows], dtype=np.int64),
        machine_id=[r.machine_id for r in rows],
        part_id=[f"P{i:04d}" for i in range(n)],
        feature=[r.feature for r in rows],
        material=[r.material for r in rows],
        cte_per_k=np.full(n, 23.6e-6),
        nominal_mm=np.full(n, 100.0),
        tolerance_mm=floats("tolerance_mm"),
        lower_tol_mm=floats("lower_tol_mm"),
        upper_tol_mm=floats("upper_tol_mm"),
        measured_mm=floats("measured_mm"),
        part_temp_c=floats("part_temp_c"),
        air_temp_c=floats("air_temp_c"),
        scale_temp_c=np.full(n, np.nan),
        compensated_mm=floats("compensated_mm"),
        correction_um=floats("correction_um"),
        deviation_um=floats("deviation_um"),
        uncertainty_um=floats("uncertainty_um"),
        verdict=np.array([r.verdict for r in rows], dtype=np.int8),
        flags=np.zeros(n, dtype=np.int32),
        unit=[r.unit for r in rows],
        compensation=np.array([2 if r.unit == "deg" else 0 for r in rows], dtype=np.int8),
        source_format=["csv"] * n,
        source_file=[f"file{i}.csv" for i in range(n)],
        file_rows=np.zeros(n, dtype=np.int32),
    )


ROW_A = Row(T0_NS, "CMM-01", "length_x", "AL6061", 0, 100.0118, 99.99995, 25.0, 24.0, -11.8, -0.05, 2.84)
ROW_B = Row(  # one-sided (an upper limit only): no symmetric tolerance, no lower limit
    T0_NS + 1_999_999,
    *("CMM-02", "bore_d", "STEEL_1020", 1, 25.0031, 25.00163, 0.1 + 0.2, math.nan, -1.25e-05, 1.63, 1.5),
    *(math.nan, math.nan, 0.005),
)
ROW_C = Row(  # an angle with an asymmetric zone
    T0_NS + 999_211, "CMM 03", "a,b=c", "x\\y", 2, 50.0, 49.999, 20.0, 19.5, 0.0, -1.0, 3.0, math.nan, -0.5, 0.25, "deg"
)
ROWS = [ROW_A, ROW_B, ROW_C]

LINE_A = (
    "cmm_measurement,machine_id=CMM-01,feature=length_x,material=AL6061,verdict=PASS,unit=mm "
    "measured_mm=100.0118,compensated_mm=99.99995,part_temp_c=25.0,air_temp_c=24.0,"
    "correction_um=-11.8,deviation_um=-0.05,uncertainty_um=2.84,tolerance_mm=0.01,lower_tol_mm=-0.01,upper_tol_mm=0.01 "
)
LINE_B = (
    "cmm_measurement,machine_id=CMM-02,feature=bore_d,material=STEEL_1020,verdict=FAIL,unit=mm "
    "measured_mm=25.0031,compensated_mm=25.00163,part_temp_c=0.30000000000000004,"
    "correction_um=-0.0000125,deviation_um=1.63,uncertainty_um=1.5,upper_tol_mm=0.005 "
)
LINE_C = (
    r"cmm_measurement,machine_id=CMM\ 03,feature=a\,b\=c,material=x\\y,verdict=UNCERTAIN,unit=deg "
    "measured_mm=50.0,compensated_mm=49.999,part_temp_c=20.0,air_temp_c=19.5,"
    "correction_um=0.0,deviation_um=-1.0,uncertainty_um=3.0,lower_tol_mm=-0.5,upper_tol_mm=0.25 "
)


# --- a tiny line-protocol parser, independent of the code under test ---------------------------


@dataclass(frozen=True)
class ParsedLine:
    measurement: str
    tags: dict[str, str]
    fields: dict[str, float | int]
    timestamp: int


def split_unescaped(text: str, separator: str) -> list[str]:
    """`text` split on `separator` where it is not escaped by a backslash (escapes are kept)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\([,= \\])", r"\1", text)


def parse_line(line: str) -> ParsedLine:
    """Measurement, tags, fields (float, or int with the `i` suffix) and timestamp of one line."""
    sections = split_unescaped(line, " ")
    assert len(sections) == 3, f"expected 'series fields timestamp': {line!r}"
    series, field_text, stamp = sections
    measurement, *tag_texts = split_unescaped(series, ",")
    tags: dict[str, str] = {}
    for text in tag_texts:
        key, value = split_unescaped(text, "=")
        assert value, f"empty tag value in {line!r}"
        tags[unescape(key)] = unescape(value)
    fields: dict[str, float | int] = {}
    for text in split_unescaped(field_text, ","):
        key, value = split_unescaped(text, "=")
        fields[unescape(key)] = int(value[:-1]) if value.endswith("i") else float(value)
    return ParsedLine(unescape(measurement), tags, fields, int(stamp))


# --- tests -------------------------------------------------------------------------------------


def test_names_are_the_contract_names() -> None:
    assert MEASUREMENT == "cmm_measurement"
    assert TAG_KEYS == ("machine_id", "feature", "material", "verdict", "unit")
    assert FIELD_KEYS == (
        "measured_mm",
        "compensated_mm",
        "part_temp_c",
        "air_temp_c",
        "correction_um",
        "deviation_um",
        "uncertainty_um",
        "tolerance_mm",
        "lower_tol_mm",
        "upper_tol_mm",
    )
    assert HEALTH_MEASUREMENT == "gateway_health"
    assert HEALTH_FIELD_KEYS == (
        "buffer_depth",
        "mes_connected",
        "historian_connected",
        "files_processed",
        "rows_rejected",
    )


def test_batch_gives_exactly_the_hand_computed_lines_in_ns() -> None:
    assert measurement_lines(batch_of(ROWS)) == [
        LINE_A + "1767225600123456789",
        LINE_B + "1767225600125456788",
        LINE_C + "1767225600124456000",
    ]
    assert measurement_lines(batch_of(ROWS), Precision.NS) == measurement_lines(batch_of(ROWS))


def test_ms_precision_floors_the_nanoseconds() -> None:
    assert measurement_lines(batch_of(ROWS), Precision.MS) == [
        LINE_A + "1767225600123",
        LINE_B + "1767225600125",  # ...125.456788 ms: floor, never rounded up into the future
        LINE_C + "1767225600124",
    ]
    just_below = replace(ROW_A, timestamp_ns=1_767_225_600_999_999_999)
    assert measurement_lines(batch_of([just_below]), Precision.MS)[0].endswith(" 1767225600999")


def test_precision_scale() -> None:
    stamps = np.array([0, 999_999, 1_000_000, T0_NS], dtype=np.int64)
    assert Precision.NS.scale(stamps).tolist() == [0, 999_999, 1_000_000, T0_NS]
    assert Precision.MS.scale(stamps).tolist() == [0, 0, 1, 1_767_225_600_123]
    assert Precision("ms") is Precision.MS
    assert str(Precision.NS) == "ns"


def test_nan_air_temperature_is_left_out_of_that_line_only() -> None:
    lines = measurement_lines(batch_of(ROWS))
    assert "air_temp_c=" in lines[0]
    assert "air_temp_c=" not in lines[1]
    assert "air_temp_c=" in lines[2]
    assert ",," not in lines[1]
    parsed = parse_line(lines[1])
    assert list(parsed.fields) == [k for k in FIELD_KEYS if k not in ("air_temp_c", "tolerance_mm", "lower_tol_mm")]


def test_missing_tolerance_and_limits_are_left_out_and_the_unit_is_a_tag() -> None:
    none = replace(ROW_A, tolerance_mm=math.nan, lower_tol_mm=math.nan, upper_tol_mm=math.nan, verdict=3)
    lower_only = replace(ROW_A, tolerance_mm=math.nan, upper_tol_mm=math.nan, lower_tol_mm=-0.002)
    lines = measurement_lines(batch_of([none, lower_only, replace(ROW_A, unit="deg")]))
    assert lines[0] == LINE_A.replace("PASS", "UNDEFINED").replace(
        ",tolerance_mm=0.01,lower_tol_mm=-0.01,upper_tol_mm=0.01", ""
    ) + str(T0_NS)
    assert lines[1].endswith(",uncertainty_um=2.84,lower_tol_mm=-0.002 " + str(T0_NS))
    assert parse_line(lines[2]).tags["unit"] == "deg"
    assert "unit" not in parse_line(lines[2]).fields


def test_nan_first_field_leaves_no_leading_comma() -> None:
    row = replace(ROW_A, measured_mm=math.nan)
    (line,) = measurement_lines(batch_of([row]))
    assert " compensated_mm=99.99995," in line
    assert list(parse_line(line).fields) == list(FIELD_KEYS[1:])


def test_nan_first_field_with_a_tag_ending_in_a_space_keeps_the_tags_intact() -> None:
    # The leading-comma fix-up in measurement_lines replaces the first " ," of the whole line, which
    # for a tag value ending in an (escaped) space is inside the tag set, not before the fields.
    row = replace(ROW_A, machine_id="CMM ", measured_mm=math.nan)
    (line,) = measurement_lines(batch_of([row]))
    assert line.startswith(r"cmm_measurement,machine_id=CMM\ ,feature=length_x,")
    parsed = parse_line(line)
    assert parsed.tags["machine_id"] == "CMM "
    assert list(parsed.fields) == list(FIELD_KEYS[1:])


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("CMM-01", "CMM-01"),
        ("CMM 01", r"CMM\ 01"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        ("a\\b", r"a\\b"),
        ("x y,z=w\\v", r"x\ y\,z\=w\\v"),
        ("two\nlines", r"two\ lines"),
        ("", ""),
    ],
)
def test_escape_tag(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


def test_special_characters_in_tags_are_escaped_and_parse_back() -> None:
    row = replace(ROW_A, machine_id="M 1,=\\", feature="f=1 2", material="a\\,b")
    (line,) = measurement_lines(batch_of([row]))
    assert line.startswith(
        r"cmm_measurement,machine_id=M\ 1\,\=\\,feature=f\=1\ 2,material=a\\\,b,verdict=PASS,unit=mm "
    )
    assert parse_line(line).tags == {
        "machine_id": "M 1,=\\",
        "feature": "f=1 2",
        "material": "a\\,b",
        "verdict": "PASS",
        "unit": "mm",
    }


@pytest.mark.parametrize(("code", "name"), [(0, "PASS"), (1, "FAIL"), (2, "UNCERTAIN"), (3, "UNDEFINED")])
def test_verdict_codes_become_tags(code: int, name: str) -> None:
    (line,) = measurement_lines(batch_of([replace(ROW_A, verdict=code)]))
    assert f",verdict={name},unit=mm " in line
    assert parse_line(line).tags["verdict"] == name
    assert "verdict" not in parse_line(line).fields


def test_repeated_tag_sets_share_a_prefix_without_mixing_rows() -> None:
    rows = [ROW_A, ROW_C, ROW_A, replace(ROW_A, verdict=1), ROW_C]
    parsed = [parse_line(line) for line in measurement_lines(batch_of(rows))]
    assert [p.tags["machine_id"] for p in parsed] == ["CMM-01", "CMM 03", "CMM-01", "CMM-01", "CMM 03"]
    assert [p.tags["verdict"] for p in parsed] == ["PASS", "UNCERTAIN", "PASS", "FAIL", "UNCERTAIN"]


def test_empty_batch_gives_no_lines() -> None:
    assert measurement_lines(RecordBatch.empty()) == []
    assert measurement_lines(RecordBatch.empty(), Precision.MS) == []


def test_lines_parse_back_to_the_batch_exactly() -> None:
    batch = batch_of(ROWS)
    lines = measurement_lines(batch)
    assert len(lines) == len(batch)
    for i, line in enumerate(lines):
        parsed = parse_line(line)
        assert parsed.measurement == MEASUREMENT
        assert list(parsed.tags) == list(TAG_KEYS)
        assert parsed.tags == {
            "machine_id": batch.machine_id[i],
            "feature": batch.feature[i],
            "material": batch.material[i],
            "verdict": ("PASS", "FAIL", "UNCERTAIN")[int(batch.verdict[i])],
            "unit": batch.unit[i],
        }
        assert parsed.timestamp == int(batch.timestamp_ns[i])
        for name in FIELD_KEYS:
            value = float(getattr(batch, name)[i])
            if math.isnan(value):
                assert name not in parsed.fields
            else:
                assert parsed.fields[name] == value  # exact: repr round-trips a float
                assert isinstance(parsed.fields[name], float)


def test_random_floats_round_trip_exactly() -> None:
    rng = np.random.default_rng(20260101)
    n = 200
    magnitudes = 10.0 ** rng.integers(-12, 12, size=n)
    values = [[float(v) for v in rng.standard_normal(10) * magnitudes[i]] for i in range(n)]
    rows = [
        Row(
            T0_NS + i * 1_000,
            f"CMM-{i % 3:02d}",
            "length_x",
            "AL6061",
            i % 3,
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            v[8],
            v[9],
        )
        for i, v in enumerate(values)
    ]
    rows[7] = replace(rows[7], air_temp_c=math.nan)
    batch = batch_of(rows)
    for i, line in enumerate(measurement_lines(batch)):
        parsed = parse_line(line)
        expected = {name: float(getattr(batch, name)[i]) for name in FIELD_KEYS}
        assert parsed.fields == {k: v for k, v in expected.items() if not math.isnan(v)}


def test_health_line_has_integer_fields_and_booleans_as_0_1() -> None:
    sample = HealthSample(
        timestamp_ns=T0_NS,
        buffer_depth=12,
        mes_connected=True,
        historian_connected=False,
        files_processed=3,
        rows_rejected=0,
    )
    assert sample.values() == (12, 1, 0, 3, 0)
    assert health_line(sample) == (
        "gateway_health buffer_depth=12i,mes_connected=1i,historian_connected=0i,files_processed=3i,"
        "rows_rejected=0i 1767225600123456789"
    )
    assert health_line(sample, Precision.MS) == (
        "gateway_health buffer_depth=12i,mes_connected=1i,historian_connected=0i,files_processed=3i,"
        "rows_rejected=0i 1767225600123"
    )
    parsed = parse_line(health_line(sample))
    assert parsed.measurement == HEALTH_MEASUREMENT
    assert parsed.tags == {}
    assert parsed.fields == {
        "buffer_depth": 12,
        "mes_connected": 1,
        "historian_connected": 0,
        "files_processed": 3,
        "rows_rejected": 0,
    }
    assert all(isinstance(v, int) for v in parsed.fields.values())
    assert parsed.timestamp == T0_NS


def test_health_line_flipped_booleans() -> None:
    sample = HealthSample(T0_NS, 0, False, True, 0, 7)
    assert parse_line(health_line(sample)).fields == {
        "buffer_depth": 0,
        "mes_connected": 0,
        "historian_connected": 1,
        "files_processed": 0,
        "rows_rejected": 7,
    }
