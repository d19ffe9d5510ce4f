"""The embedded SQLite historian: HistoryStore, SqliteHistorianSink, the `/api/v1/history`
parameters and document, and the real gateway serving the history over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import pytest

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks.base import Delivered
from cmm_twin.gateway.sinks.historian import sqlite as sqlite_module
from cmm_twin.gateway.sinks.historian.api import (
    DEFAULT_LIMIT,
    DEFAULT_SPAN_NS,
    HistoryParamError,
    history_document,
    iso_ns,
    parse_history_params,
    parse_time_ns,
)
from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
    HealthSample,
)
from cmm_twin.gateway.sinks.historian.schema import MEASUREMENT_FIELDS, RECORD_FIELDS
from cmm_twin.gateway.sinks.historian.sqlite import (
    NS_PER_DAY,
    HistoryQuery,
    HistoryResult,
    HistoryStore,
    SqliteHistorianSink,
)
from cmm_twin.gateway.status import SinkState
from cmm_twin.records import RecordBatch
from tests.gateway_harness import (
    HEADER,
    RecordingSink,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    wait_for,
)
from tests.test_lineprotocol import ROW_A, ROW_B, ROW_C, ROWS, T0_NS, batch_of

FAR_FUTURE_NS = 2**62
NOW_NS = 1_795_766_400 * 10**9  # 2026-11-27T08:00:00Z


def all_of(measurement: str = MEASUREMENT, **overrides: Any) -> HistoryQuery:
    """A query over all time and all fields of `measurement` (overrides as keywords)."""
    fields = MEASUREMENT_FIELDS[measurement]
    base: dict[str, Any] = {"since_ns": 0, "until_ns": FAR_FUTURE_NS, "fields": fields}
    return HistoryQuery(measurement=measurement, **{**base, **overrides})


def row_count(path: Path, table: str) -> int:
    """Rows of `table`, read with a connection of its own."""
    with sqlite3.connect(path) as db:
        count: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    db.close()
    return count


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[HistoryStore]:
    history = HistoryStore(db_path)
    yield history
    history.close()


# --- HistoryStore ------------------------------------------------------------------------------


def test_batch_is_stored_and_queried_back_value_by_value(store: HistoryStore) -> None:
    store.write(batch_of(ROWS))
    result = store.query(all_of())
    # Oldest first: A (T0), C (T0 + 999_211 ns), B (T0 + 1_999_999 ns).
    assert result.time_ns == [1_767_225_600_123_456_789, 1_767_225_600_124_456_000, 1_767_225_600_125_456_788]
    assert result.tags == {
        "machine_id": ["CMM-01", "CMM 03", "CMM-02"],
        "feature": ["length_x", "a,b=c", "bore_d"],
        "material": ["AL6061", "x\\y", "STEEL_1020"],
        "verdict": ["PASS", "UNCERTAIN", "FAIL"],
        "unit": ["mm", "deg", "mm"],
    }
    assert result.fields == {
        "measured_mm": [100.0118, 50.0, 25.0031],
        "compensated_mm": [99.99995, 49.999, 25.00163],
        "part_temp_c": [25.0, 20.0, 0.30000000000000004],
        "air_temp_c": [24.0, 19.5, None],  # NaN is stored as NULL
        "correction_um": [-11.8, 0.0, -1.25e-05],
        "deviation_um": [-0.05, -1.0, 1.63],
        "uncertainty_um": [2.84, 3.0, 1.5],
        "tolerance_mm": [0.01, None, None],
        "lower_tol_mm": [-0.01, -0.5, None],
        "upper_tol_mm": [0.01, 0.25, 0.005],
        # the rest of the record
        "measurement_id": ["m-0", "m-2", "m-1"],
        "part_id": ["P0000", "P0002", "P0001"],
        "cte_per_k": [23.6e-6] * 3,
        "nominal_mm": [100.0] * 3,
        "scale_temp_c": [None] * 3,
        "flags": [0, 0, 0],  # the bit mask (the history API answers names)
        "compensation": ["gateway", "none", "gateway"],
        "source_format": ["csv"] * 3,
        "source_file": ["file0.csv", "file2.csv", "file1.csv"],
    }
    assert result.truncated is False


def test_subset_of_fields_and_empty_result(store: HistoryStore) -> None:
    store.write(batch_of(ROWS))
    result = store.query(all_of(fields=("compensated_mm",), machine_id="CMM-02"))
    assert result.time_ns == [ROW_B.timestamp_ns]
    assert result.tags == {
        "machine_id": ["CMM-02"],
        "feature": ["bore_d"],
        "material": ["STEEL_1020"],
        "verdict": ["FAIL"],
        "unit": ["mm"],
    }
    assert result.fields == {"compensated_mm": [25.00163]}
    empty = store.query(all_of(machine_id="nobody"))
    assert empty == HistoryResult(
        time_ns=[],
        tags={t: [] for t in TAG_KEYS},
        fields={f: [] for f in MEASUREMENT_FIELDS[MEASUREMENT]},
        truncated=False,
    )


def test_writing_the_same_batch_again_does_not_double_points(store: HistoryStore, db_path: Path) -> None:
    batch = batch_of(ROWS)
    store.write(batch)
    store.write(batch)
    store.write(RecordBatch.concat([batch.take([2, 0]), batch]))
    assert row_count(db_path, MEASUREMENT) == 3
    assert len(store.query(all_of()).time_ns) == 3
    # Same machine, feature and time is the same measurement: the first value stays (as in the MES),
    # also when a re-measurement has another verdict (another tag set), alone or in one batch.
    first = store.query(all_of(machine_id="CMM-01")).fields["measured_mm"]
    store.write(batch_of([replace(ROW_A, measured_mm=100.0119)]))
    store.write(batch_of([replace(ROW_A, measured_mm=100.0519, verdict=2)]))
    fresh = replace(ROW_A, timestamp_ns=ROW_A.timestamp_ns + 1)
    store.write(batch_of([fresh, replace(fresh, measured_mm=100.0519, verdict=2)]))
    result = store.query(all_of(machine_id="CMM-01"))
    assert result.fields["measured_mm"] == [*first, ROW_A.measured_mm]
    assert row_count(db_path, MEASUREMENT) == 4


OLD_FIELDS = (
    *("measured_mm", "compensated_mm", "part_temp_c", "air_temp_c", "correction_um", "deviation_um"),
    "uncertainty_um",
)
OLD_SCHEMA = f"""
    CREATE TABLE {MEASUREMENT} (time_ns INTEGER NOT NULL, machine_id TEXT NOT NULL, feature TEXT NOT NULL,
        material TEXT NOT NULL, verdict TEXT NOT NULL, {", ".join(f"{f} REAL" for f in OLD_FIELDS)},
        PRIMARY KEY (time_ns, machine_id, feature, material, verdict)) WITHOUT ROWID;
    CREATE TABLE {HEALTH_MEASUREMENT} (time_ns INTEGER PRIMARY KEY, buffer_depth INTEGER NOT NULL,
        mes_connected INTEGER NOT NULL, historian_connected INTEGER NOT NULL, files_processed INTEGER NOT NULL,
        rows_rejected INTEGER NOT NULL);
    INSERT INTO {MEASUREMENT} VALUES ({T0_NS}, 'CMM-01', 'length_x', 'AL6061', 'PASS', 100.0118, 99.99995, 25.0, 24.0,
        -11.8, -0.05, 2.84);
"""
"""The history of the version before the record gained limits, unit, compensation and source fields."""


def test_a_history_of_the_earlier_version_is_migrated_and_its_rows_read_defaults(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(db_path)) as old:
        old.executescript(OLD_SCHEMA)
    store = HistoryStore(db_path)
    try:
        later = replace(ROW_A, timestamp_ns=T0_NS + 1, tolerance_mm=math.nan, lower_tol_mm=math.nan, unit="deg")
        store.write(batch_of([ROW_A, later]))  # ROW_A is the old row's measurement: kept once
        q = HistoryQuery(MEASUREMENT, 0, FAR_FUTURE_NS, MEASUREMENT_FIELDS[MEASUREMENT], None, 10)
        old_point, new_point = history_document(q, store.query(q))["points"]
    finally:
        store.close()
    assert old_point == {
        "time": "2026-01-01T00:00:00.123456Z",
        **{"machine_id": "CMM-01", "feature": "length_x", "material": "AL6061", "verdict": "PASS", "unit": "mm"},
        **dict(zip(FIELD_KEYS[:7], (100.0118, 99.99995, 25.0, 24.0, -11.8, -0.05, 2.84), strict=True)),
        **dict.fromkeys(("tolerance_mm", "lower_tol_mm", "upper_tol_mm"), None),  # not stored then: unknown
        **dict.fromkeys(("measurement_id", "part_id", "cte_per_k", "nominal_mm", "scale_temp_c", "flags"), None),
        **{"compensation": "gateway", "source_format": "csv", "source_file": None},
    }
    assert {k: new_point[k] for k in ("unit", "tolerance_mm", "lower_tol_mm", "upper_tol_mm", "flags")} == {
        "unit": "deg",
        "tolerance_mm": None,
        "lower_tol_mm": None,
        "upper_tol_mm": 0.01,
        "flags": [],
    }
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        key = [row[1] for row in db.execute(f"PRAGMA table_info({MEASUREMENT})") if row[5]]
        assert key == ["time_ns", "machine_id", "feature", "material", "verdict"]  # the key is unchanged
        assert row_count(db_path, MEASUREMENT) == 2
    reopened = HistoryStore(db_path)  # nothing more to add
    reopened.close()


def test_flags_are_answered_as_names_and_an_empty_source_file_as_null(store: HistoryStore) -> None:
    batch = batch_of([ROW_A, replace(ROW_A, timestamp_ns=T0_NS + 1)])
    batch = dataclasses.replace(batch, flags=np.array([0b10011, 0], dtype=np.int32), source_file=["a.dfq", ""])
    store.write(batch)
    q = HistoryQuery(MEASUREMENT, 0, FAR_FUTURE_NS, ("flags", "source_file"), None, 10)
    points = history_document(q, store.query(q))["points"]
    assert [p["flags"] for p in points] == [
        ["part_temp_out_of_rated_range", "part_not_soaked", "timestamp_from_file"],
        [],
    ]
    assert [p["source_file"] for p in points] == ["a.dfq", None]  # "": spooled before the field existed


def test_points_differing_only_in_a_tag_are_distinct(store: HistoryStore) -> None:
    rows = [ROW_A, replace(ROW_A, feature="length_y"), replace(ROW_A, machine_id="CMM-09")]
    store.write(batch_of(rows))
    assert len(store.query(all_of()).time_ns) == 3


def test_points_survive_reopening(db_path: Path) -> None:
    first = HistoryStore(db_path)
    first.write(batch_of(ROWS))
    first.close()
    second = HistoryStore(db_path)
    try:
        assert len(second.query(all_of()).time_ns) == 3
    finally:
        second.close()


def test_query_by_machine_id(store: HistoryStore) -> None:
    more = [replace(ROW_A, timestamp_ns=T0_NS + 10_000_000, measured_mm=100.02), *ROWS]
    store.write(batch_of(more))
    result = store.query(all_of(machine_id="CMM-01", fields=("measured_mm",)))
    assert result.time_ns == [T0_NS, T0_NS + 10_000_000]
    assert result.tags["machine_id"] == ["CMM-01", "CMM-01"]
    assert result.fields == {"measured_mm": [100.0118, 100.02]}
    assert store.query(all_of(machine_id="CMM 03")).tags["feature"] == ["a,b=c"]


def test_since_is_inclusive_and_until_exclusive(store: HistoryStore) -> None:
    store.write(batch_of(ROWS))
    a, c, b = ROW_A.timestamp_ns, ROW_C.timestamp_ns, ROW_B.timestamp_ns
    assert store.query(all_of(since_ns=c, until_ns=b)).time_ns == [c]
    assert store.query(all_of(since_ns=a, until_ns=a + 1)).time_ns == [a]
    assert store.query(all_of(since_ns=a + 1, until_ns=b + 1)).time_ns == [c, b]
    assert store.query(all_of(since_ns=a, until_ns=b)).time_ns == [a, c]
    assert store.query(all_of(since_ns=b + 1, until_ns=FAR_FUTURE_NS)).time_ns == []


def test_limit_gives_the_newest_points_oldest_first(store: HistoryStore) -> None:
    rows = [replace(ROW_A, timestamp_ns=T0_NS + i * 1_000, measured_mm=100.0 + i) for i in range(10)]
    store.write(batch_of(rows))
    newest = store.query(all_of(limit=3, fields=("measured_mm",)))
    assert newest.time_ns == [T0_NS + 7_000, T0_NS + 8_000, T0_NS + 9_000]
    assert newest.fields == {"measured_mm": [107.0, 108.0, 109.0]}
    assert newest.truncated is True
    assert store.query(all_of(limit=9)).truncated is True
    exact = store.query(all_of(limit=10))
    assert (len(exact.time_ns), exact.truncated) == (10, False)
    assert store.query(all_of(limit=11)).truncated is False
    window = store.query(all_of(limit=2, until_ns=T0_NS + 5_000))
    assert (window.time_ns, window.truncated) == ([T0_NS + 3_000, T0_NS + 4_000], True)


def test_purge_deletes_only_points_older_than_the_retention(db_path: Path) -> None:
    store = HistoryStore(db_path, retention_days=1.0)
    try:
        stamps = [NOW_NS - 2 * NS_PER_DAY, NOW_NS - NS_PER_DAY - 1, NOW_NS - NS_PER_DAY, NOW_NS - 1, NOW_NS]
        rows = [replace(ROW_A, timestamp_ns=t) for t in stamps]
        health = [HealthSample(t, 0, False, True, 0, 0) for t in stamps]
        store.write(batch_of(rows), health)
        assert store.purge(now_ns=NOW_NS) == 4  # two measurements, two health samples
        kept = stamps[2:]  # exactly at the cutoff is still inside the retention
        assert store.query(all_of()).time_ns == kept
        assert store.query(all_of(HEALTH_MEASUREMENT)).time_ns == kept
        assert store.purge(now_ns=NOW_NS) == 0
    finally:
        store.close()


def test_gateway_health_samples_round_trip(store: HistoryStore) -> None:
    samples = [
        HealthSample(T0_NS, 5, True, False, 1, 0),
        HealthSample(T0_NS + 5 * 10**9, 0, False, True, 2, 7),
    ]
    store.write(RecordBatch.empty(), samples)
    result = store.query(all_of(HEALTH_MEASUREMENT))
    assert result.time_ns == [T0_NS, T0_NS + 5 * 10**9]
    assert result.tags == {}
    assert result.fields == {
        "buffer_depth": [5, 0],
        "mes_connected": [1, 0],
        "historian_connected": [0, 1],
        "files_processed": [1, 2],
        "rows_rejected": [0, 7],
    }
    assert all(isinstance(v, int) for column in result.fields.values() for v in column)
    assert store.query(all_of(HEALTH_MEASUREMENT, fields=("files_processed",), limit=1)).fields == {
        "files_processed": [2]
    }
    store.write(RecordBatch.empty(), samples)  # a replayed sample replaces itself
    assert len(store.query(all_of(HEALTH_MEASUREMENT)).time_ns) == 2
    assert store.query(all_of()).time_ns == []


# --- SqliteHistorianSink -----------------------------------------------------------------------


@pytest.fixture
async def sink(db_path: Path) -> AsyncIterator[SqliteHistorianSink]:
    historian = SqliteHistorianSink(db_path)
    await historian.open()
    yield historian
    await historian.close()


async def test_sink_writes_batches_and_health_samples(sink: SqliteHistorianSink) -> None:
    assert sink.name == "historian"
    assert sink.durable is True
    assert await sink.write(batch_of(ROWS)) == Delivered()
    assert (await sink.query(all_of())).fields["measured_mm"] == [100.0118, 50.0, 25.0031]
    assert await sink.ping() is True  # the store is local: reachable while open
    assert (await sink.query(all_of(HEALTH_MEASUREMENT))).time_ns == []
    states = {"mes": SinkState.CONNECTED, "historian": SinkState.CONNECTED}
    samples = [
        GatewayHealth(T0_NS, 3, 0.0, 1, 3, 0, states),
        GatewayHealth(T0_NS + 1, 0, 0.0, 2, 3, 0, {"historian": SinkState.BUFFERING}),
    ]
    assert await sink.write_health(samples) == Delivered()
    result = await sink.query(all_of(HEALTH_MEASUREMENT))
    assert result.time_ns == [T0_NS, T0_NS + 1]
    assert result.fields["buffer_depth"] == [3, 0]
    assert result.fields["files_processed"] == [1, 2]
    assert result.fields["mes_connected"] == [1, 0]
    assert result.fields["historian_connected"] == [1, 0]


async def test_closed_sink_is_unreachable_and_does_not_answer_queries(db_path: Path) -> None:
    historian = SqliteHistorianSink(db_path)
    await historian.open()
    await historian.close()
    assert await historian.ping() is False
    with pytest.raises(RuntimeError):
        await historian.query(all_of())


async def test_sink_applies_the_retention_when_it_opens(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = time.time_ns() - 3 * NS_PER_DAY
    store = HistoryStore(db_path)
    store.write(batch_of([replace(ROW_A, timestamp_ns=old)]), [HealthSample(old, 0, False, True, 0, 0)])
    store.close()
    # A gateway started by an edge device at boot: time.monotonic() (time since boot) is small.
    fake_time = SimpleNamespace(monotonic=lambda: 5.0, time_ns=time.time_ns)
    monkeypatch.setattr(sqlite_module, "time", fake_time)
    historian = SqliteHistorianSink(db_path, retention_days=1.0)
    await historian.open()
    try:
        assert (await historian.query(all_of())).time_ns == []
        assert (await historian.query(all_of(HEALTH_MEASUREMENT))).time_ns == []
    finally:
        await historian.close()


# --- parse_history_params, parse_time_ns, iso_ns, history_document -----------------------------


def test_defaults_are_the_last_hour_up_to_now() -> None:
    q = parse_history_params({}, now_ns=NOW_NS)
    assert q == HistoryQuery(MEASUREMENT, NOW_NS - 3600 * 10**9, NOW_NS, (*FIELD_KEYS, *RECORD_FIELDS), None, 10_000)
    assert (DEFAULT_SPAN_NS, DEFAULT_LIMIT) == (3600 * 10**9, 10_000)
    before = time.time_ns()
    q = parse_history_params({})
    after = time.time_ns()
    assert before <= q.until_ns <= after
    assert q.until_ns - q.since_ns == DEFAULT_SPAN_NS


def test_health_measurement_defaults_to_its_fields() -> None:
    q = parse_history_params({"measurement": "gateway_health"}, now_ns=NOW_NS)
    assert (q.measurement, q.fields, q.machine_id) == (HEALTH_MEASUREMENT, HEALTH_FIELD_KEYS, None)


def test_all_parameters_given() -> None:
    q = parse_history_params(
        {
            "measurement": "cmm_measurement",
            "machine_id": "CMM-01",
            "since": "2026-11-27T08:00:00Z",
            "until": "2026-11-27T10:30:00.25+02:00",
            "fields": " compensated_mm, measured_mm,,compensated_mm ",
            "limit": "5",
        },
        now_ns=0,
    )
    assert q == HistoryQuery(
        MEASUREMENT,
        1_795_766_400 * 10**9,
        (1_795_766_400 + 1800) * 10**9 + 250_000_000,
        ("compensated_mm", "measured_mm"),
        "CMM-01",
        5,
    )


def test_until_alone_moves_the_default_hour() -> None:
    q = parse_history_params({"until": "1795766400"}, now_ns=0)
    assert (q.since_ns, q.until_ns) == (NOW_NS - DEFAULT_SPAN_NS, NOW_NS)


@pytest.mark.parametrize(
    ("text", "expected_ns"),
    [
        ("2026-11-27T08:00:00Z", 1_795_766_400 * 10**9),
        ("2026-11-27T10:00:00+02:00", 1_795_766_400 * 10**9),
        ("2026-11-27T03:00:00-05:00", 1_795_766_400 * 10**9),
        ("2026-11-27T08:00:00.123456Z", 1_795_766_400 * 10**9 + 123_456_000),
        ("2026-01-01T00:00:00.999999+00:00", 1_767_225_600 * 10**9 + 999_999_000),
        ("1795766400", 1_795_766_400 * 10**9),
        (" 1795766400 ", 1_795_766_400 * 10**9),
        ("1795766400.5", 1_795_766_400 * 10**9 + 500_000_000),
        ("0", 0),
    ],
)
def test_parse_time_ns(text: str, expected_ns: int) -> None:
    assert parse_time_ns(text, "since") == expected_ns


def test_unix_seconds_with_a_fraction_are_exact(store: HistoryStore) -> None:
    # Points carry microsecond timestamps, so `since` in Unix seconds with microseconds must hit them exactly.
    assert parse_time_ns("1767225600.000001", "since") == 1_767_225_600_000_001_000
    assert parse_time_ns("1767225600.123", "since") == 1_767_225_600_123_000_000
    point = replace(ROW_A, timestamp_ns=1_767_225_600_000_001_000)
    store.write(batch_of([point]))
    q = parse_history_params({"since": "1767225600.000001", "until": "1767225601"})
    assert store.query(q).time_ns == [point.timestamp_ns]  # since is inclusive


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"machine": "CMM-01"}, "machine"),
        ({"limit": "5", "zzz": "1", "aaa": "2"}, "aaa"),
        ({"measurement": "cmm"}, "measurement"),
        ({"measurement": "CMM_MEASUREMENT"}, "measurement"),
        ({"fields": "measured_mm,temperature"}, "fields"),
        ({"measurement": "gateway_health", "fields": "measured_mm"}, "fields"),
        ({"fields": "buffer_depth"}, "fields"),
        ({"measurement": "gateway_health", "machine_id": "CMM-01"}, "machine_id"),
        ({"since": "2026-11-27T08:00:00Z", "until": "2026-11-27T08:00:00Z"}, "since"),
        ({"since": "2026-11-27T09:00:00Z", "until": "2026-11-27T08:00:00Z"}, "since"),
        ({"since": "1795766400"}, "since"),  # default until (now_ns) is before it
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"since": "2026-11-27T08:00:00"}, "since"),
        ({"until": "2026-11-27T08:00:00"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"until": "nan"}, "until"),
        ({"since": "inf"}, "since"),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(HistoryParamError) as info:
        parse_history_params(params, now_ns=NOW_NS - 3600 * 10**9)
    assert info.value.parameter == parameter
    assert info.value.reason
    assert str(info.value).startswith(f"{parameter}: ")


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"until": "9999-12-31T23:59:59Z"}, "until"),
        ({"since": "0001-01-01T00:00:00Z"}, "since"),
        ({"since": "-1e11"}, "since"),
    ],
)
def test_times_outside_the_int64_nanosecond_range_are_refused_or_usable(
    store: HistoryStore, params: dict[str, str], parameter: str
) -> None:
    # Either a HistoryParamError naming the parameter (HTTP 400) or a query the store can run;
    # never an exception from SQLite (HTTP 500).
    try:
        q = parse_history_params(params, now_ns=NOW_NS)
    except HistoryParamError as exc:
        assert exc.parameter == parameter
        return
    store.write(batch_of(ROWS))
    assert store.query(q).time_ns == [ROW_A.timestamp_ns, ROW_C.timestamp_ns, ROW_B.timestamp_ns]


def test_limit_bounds_are_accepted() -> None:
    assert parse_history_params({"limit": "1"}, now_ns=NOW_NS).limit == 1
    assert parse_history_params({"limit": "100000"}, now_ns=NOW_NS).limit == 100_000


def test_empty_values_mean_the_default() -> None:
    q = parse_history_params({"machine_id": "", "fields": " ", "limit": "", "since": "", "until": ""}, now_ns=NOW_NS)
    assert q == parse_history_params({}, now_ns=NOW_NS)


def test_iso_ns() -> None:
    assert iso_ns(T0_NS) == "2026-01-01T00:00:00.123456Z"
    assert iso_ns(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_ns(NOW_NS + 999) == "2026-11-27T08:00:00.000000Z"


def test_history_document(store: HistoryStore) -> None:
    store.write(batch_of(ROWS))
    q = HistoryQuery(MEASUREMENT, T0_NS, NOW_NS, ("air_temp_c",), None, 2)
    doc = history_document(q, store.query(q))
    assert doc == {
        "measurement": "cmm_measurement",
        "machine_id": None,
        "since": "2026-01-01T00:00:00.123456Z",
        "until": "2026-11-27T08:00:00.000000Z",
        "fields": ["air_temp_c"],
        "count": 2,
        "truncated": True,
        "points": [
            {
                "time": "2026-01-01T00:00:00.124456Z",
                "machine_id": "CMM 03",
                "feature": "a,b=c",
                "material": "x\\y",
                "verdict": "UNCERTAIN",
                "unit": "deg",
                "air_temp_c": 19.5,
            },
            {
                "time": "2026-01-01T00:00:00.125456Z",
                "machine_id": "CMM-02",
                "feature": "bore_d",
                "material": "STEEL_1020",
                "verdict": "FAIL",
                "unit": "mm",
                "air_temp_c": None,
            },
        ],
    }


# --- the real gateway over real HTTP -----------------------------------------------------------


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with session.get(url, params=params) as response:
        return response.status, await response.json()


async def poll_json(
    session: aiohttp.ClientSession, url: str, predicate: Callable[[Any], bool], what: str, **params: str
) -> Any:
    """GET `url` every 50 ms until `predicate` holds for its JSON; fail after 60 s."""
    deadline = time.monotonic() + 60.0
    while True:
        _, body = await get_json(session, url, **params)
        if predicate(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last answer: {body}")
        await asyncio.sleep(0.05)


def recent_rows() -> tuple[list[str], list[str]]:
    """CSV lines of 4 parts within the last hour (3 on CMM-07, one without air temperature, 1 on
    CMM-08) and their canonical timestamps."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    stamps = [
        (base + timedelta(seconds=i, microseconds=250_000 * i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ") for i in range(4)
    ]
    lines = [
        csv_row("P1", timestamp=stamps[0], machine_id="CMM-07", measured_mm="100.0118", part_temp_c="25.0"),
        csv_row("P2", timestamp=stamps[1], machine_id="CMM-07", measured_mm="100.0234", part_temp_c="26.5"),
        csv_row("P3", timestamp=stamps[2], machine_id="CMM-07", measured_mm="99.9871", air_temp_c=""),
        csv_row("P4", timestamp=stamps[3], machine_id="CMM-08", measured_mm="100.0005"),
    ]
    return lines, stamps


def delivered(n: int) -> Callable[[Any], bool]:
    """/health predicate: `n` rows in and the historian holds them all."""

    def check(health: Any) -> bool:
        historian = health["sinks"]["historian"]
        return bool(
            health["rows_in"] == n
            and historian["buffer_depth"] == 0
            and historian["rows_out"] == n
            and historian["state"] == "connected"
        )

    return check


async def test_gateway_serves_the_history_over_http(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, historian="sqlite", health_interval_s=0.1)
    recorder = RecordingSink()
    lines, stamps = recent_rows()
    async with running_gateway(config, recorder) as gateway, aiohttp.ClientSession() as session:
        base = f"http://127.0.0.1:{gateway.http_port}"
        drop_file(config.inbox, "history.csv", HEADER + "".join(lines))
        await poll_json(session, f"{base}/health", delivered(4), "the historian to hold 4 rows")
        await wait_for(lambda: len(recorder.records) == 4, what="the recorder to hold 4 rows")
        expected = sorted((r for r in recorder.records if r["machine_id"] == "CMM-07"), key=lambda r: r["timestamp"])
        assert [r["timestamp"] for r in expected] == stamps[:3]

        status, doc = await get_json(
            session, f"{base}/api/v1/history", machine_id="CMM-07", fields="measured_mm,compensated_mm"
        )
        assert status == 200
        assert doc["measurement"] == "cmm_measurement"
        assert doc["machine_id"] == "CMM-07"
        assert doc["fields"] == ["measured_mm", "compensated_mm"]
        assert (doc["count"], doc["truncated"]) == (3, False)
        assert doc["points"] == [
            {
                "time": r["timestamp"],
                "machine_id": "CMM-07",
                "feature": r["feature"],
                "material": r["material"],
                "verdict": r["verdict"],
                "unit": "mm",
                "measured_mm": r["measured_mm"],
                "compensated_mm": r["compensated_mm"],
            }
            for r in expected
        ]
        assert [p["measured_mm"] for p in doc["points"]] == [100.0118, 100.0234, 99.9871]
        assert all(isinstance(p["compensated_mm"], float) and math.isfinite(p["compensated_mm"]) for p in doc["points"])

        status, doc = await get_json(session, f"{base}/api/v1/history")  # defaults: all machines, all fields
        assert status == 200
        assert doc["count"] == 4
        by_time = {r["timestamp"]: r for r in recorder.records}
        for point in doc["points"]:  # every field of the record, its timestamp as `time`
            record = by_time[point["time"]]
            assert point == {"time": record["timestamp"], **{k: v for k, v in record.items() if k != "timestamp"}}
        assert [p["air_temp_c"] for p in doc["points"]] == [24.0, 24.0, None, 24.0]

        status, doc = await get_json(session, f"{base}/api/v1/history", since=stamps[1], until=stamps[3], limit="1")
        assert status == 200
        assert [p["time"] for p in doc["points"]] == [stamps[2]]
        assert doc["truncated"] is True

        health = await poll_json(
            session,
            f"{base}/api/v1/history",
            lambda d: any(p["files_processed"] >= 1 for p in d["points"]),
            "a gateway_health point with files_processed 1",
            measurement="gateway_health",
        )
        assert health["measurement"] == "gateway_health"
        assert health["fields"] == list(HEALTH_FIELD_KEYS)
        for point in health["points"]:
            assert set(point) == {"time", *HEALTH_FIELD_KEYS}
            assert all(isinstance(point[k], int) for k in HEALTH_FIELD_KEYS)
            assert point["mes_connected"] == 0  # no MES configured
            assert point["historian_connected"] in (0, 1)
            assert point["rows_rejected"] == 0
        assert health["points"][-1]["files_processed"] == 1
        assert [p["time"] for p in health["points"]] == sorted(p["time"] for p in health["points"])

        for params, parameter in [
            ({"limit": "0"}, "limit"),
            ({"bogus": "1"}, "bogus"),
            ({"measurement": "gateway_health", "machine_id": "CMM-07"}, "machine_id"),
            ({"since": "2026-11-27T08:00:00"}, "since"),
            ({"fields": "measured_mm,nope"}, "fields"),
        ]:
            status, body = await get_json(session, f"{base}/api/v1/history", **params)
            assert status == 400, params
            assert body["parameter"] == parameter
            assert isinstance(body["error"], str) and body["error"]


async def test_history_endpoint_is_404_without_the_embedded_historian(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, historian="none")
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as session:
        assert gateway.sink("historian") is None
        status, body = await get_json(session, f"http://127.0.0.1:{gateway.http_port}/api/v1/history")
        assert status == 404
        assert "error" in body
        _, health = await get_json(session, f"http://127.0.0.1:{gateway.http_port}/health")
        assert "historian" not in health["sinks"]


async def test_replayed_file_leaves_no_duplicate_points(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, historian="sqlite", health_interval_s=0.1)
    lines, stamps = recent_rows()
    content = HEADER + "".join(lines)
    for run, name in enumerate(["first.csv", "again.csv"]):
        async with running_gateway(config) as gateway, aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{gateway.http_port}"
            drop_file(config.inbox, name, content)
            await poll_json(session, f"{base}/health", delivered(4), f"run {run}: the historian to hold 4 rows")
            status, doc = await get_json(session, f"{base}/api/v1/history")
            assert status == 200
            assert [p["time"] for p in doc["points"]] == stamps, f"run {run}"
    assert (config.archive / "first.csv").exists()
    assert (config.archive / "again.csv").exists()
    assert row_count(config.history_path, MEASUREMENT) == 4


async def test_out_of_range_times_are_not_a_server_error(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, historian="sqlite")
    async with running_gateway(config) as gateway, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{gateway.http_port}/api/v1/history"
        for params, parameter in [
            ({"until": "9999-12-31T23:59:59Z"}, "until"),
            ({"since": "-1e11"}, "since"),
        ]:
            status, body = await get_json(session, url, **params)
            assert status in (200, 400), (params, status, body)
            if status == 400:
                assert body["parameter"] == parameter
