"""The embedded historian (`--historian sqlite`, the default): a SQLite time-series store under
`state/` with the same measurements, tags and fields as the InfluxDB line protocol.

A point is keyed as in InfluxDB, by measurement, tag set and timestamp. A measurement point is
stored once: the first one received for its machine, feature and time is kept, as in the MES
(which refuses a re-measurement with another value, even another verdict: the gateway then
dead-letters it), so a replayed batch (after a crash before its acknowledgement) changes nothing.
part_id is not part of the key (nor an InfluxDB tag): one machine measures one feature of one part
at a time, so machine, feature and time identify the measurement. Rows are keyed by time first,
so writes append and both the retention purge and time-range queries use the key.
All database work runs on one dedicated thread (`HistoryStore` is not thread-safe on its own).

Besides the line protocol's tags and fields, a `cmm_measurement` row keeps every other field of the
result record (`RECORD_FIELDS`), so `/api/v1/history` can answer with whole records; the record's
`timestamp` is the point's `time`. The `unit` tag is not part of the key (the key of a history
created before it stays as it was). A history of an earlier version is migrated when opened: the
missing columns are added (ALTER TABLE ADD COLUMN), and its rows read `unit` `mm`, `compensation`
`gateway` and `source_format` `csv` (what every record was then) and null for what was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks.base import Delivered, Retry, WriteOutcome
from cmm_twin.gateway.sinks.historian.base import HistorianSink, health_points
from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
    HealthSample,
)
from cmm_twin.gateway.sinks.historian.schema import (
    COLUMN_TYPES,
    KEY_TAGS,
    MEASUREMENT_KEYS,
    MEASUREMENT_TAGS,
    RECORD_FIELDS,
    measurement_rows,
)
from cmm_twin.gateway.state import DiskFullError, is_disk_full, translated
from cmm_twin.records import RecordBatch
from cmm_twin.sqlite_worker import SqliteWorker, connect, rollback

log = logging.getLogger(__name__)
T = TypeVar("T")

NS_PER_DAY = 86_400 * 10**9
PURGE_INTERVAL_S = 600.0
PAGE_ROWS = 2_000
"""Points a streamed history answer reads and encodes at a time."""
MAX_STREAMS = 4
"""History answers streamed at once (more wait their turn): at most MAX_STREAMS x PAGE_ROWS points
of queries are in memory at any time."""

_HELD_IN_SPAN = f"SELECT time_ns, machine_id, feature FROM {MEASUREMENT} WHERE time_ns BETWEEN ? AND ? LIMIT ?"
_HELD_AT = f"SELECT time_ns, machine_id, feature FROM {MEASUREMENT} WHERE time_ns IN ({{}})"
_TIMES_PER_QUERY = 500


@dataclass(frozen=True)
class HistoryQuery:
    """One history request: points of `measurement` with since_ns <= time < until_ns, of one machine
    and one feature when given; the newest `limit` of them, or the oldest with `oldest`."""

    measurement: str
    since_ns: int
    until_ns: int
    fields: tuple[str, ...]
    machine_id: str | None = None
    limit: int = 10_000
    feature: str | None = None
    oldest: bool = False


@dataclass(frozen=True)
class HistoryResult:
    """The newest (or oldest) `limit` points of a query, oldest first; `truncated` when others were left out."""

    time_ns: list[int]
    tags: dict[str, list[str]]
    fields: dict[str, list[float | int | None]]
    truncated: bool


class HistoryStore:
    """The SQLite time-series tables `cmm_measurement` and `gateway_health`."""

    def __init__(self, path: Path, retention_days: float = 30.0) -> None:
        """Open (or create) the store; StateUnavailableError when the file is corrupt or cannot be
        written, DiskFullError when there is no space to create it."""
        self.path = path
        self.retention_ns = int(retention_days * NS_PER_DAY)
        self._db = connect(path)
        remedy = (
            f"move it aside (e.g. `mv {path} {path}.corrupt`) and start again: the gateway creates a new "
            "history; the MES and the spool are not affected"
        )
        try:
            with translated(path, remedy):
                self._open_tables()
        except BaseException:
            self._db.close()
            raise

    def _open_tables(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        definitions = ", ".join(f"{name} {kind}" for name, kind in COLUMN_TYPES.items())
        health = ", ".join(f"{f} INTEGER NOT NULL" for f in HEALTH_FIELD_KEYS)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {MEASUREMENT} (time_ns INTEGER NOT NULL, {definitions},
                PRIMARY KEY (time_ns, {", ".join(KEY_TAGS)})) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS {HEALTH_MEASUREMENT} (time_ns INTEGER PRIMARY KEY, {health});
            """
        )
        self._add_missing_columns()
        columns = ("time_ns", *COLUMN_TYPES)
        self._insert_measurement = (
            f"INSERT OR IGNORE INTO {MEASUREMENT} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        health_columns = ("time_ns", *HEALTH_FIELD_KEYS)
        self._insert_health = (
            f"INSERT OR REPLACE INTO {HEALTH_MEASUREMENT} ({', '.join(health_columns)}) "
            f"VALUES ({', '.join('?' * len(health_columns))})"
        )

    def _add_missing_columns(self) -> None:
        """Add the columns a history of an earlier version lacks (its rows read their defaults or null)."""
        present = {str(row[1]) for row in self._db.execute(f"PRAGMA table_info({MEASUREMENT})")}
        missing = [name for name in COLUMN_TYPES if name not in present]
        if missing:
            self._db.execute("BEGIN")
            try:
                for name in missing:
                    self._db.execute(f"ALTER TABLE {MEASUREMENT} ADD COLUMN {name} {COLUMN_TYPES[name]}")
                self._db.execute("COMMIT")
            except BaseException:
                rollback(self._db)
                raise
            log.info("history %s: added the columns %s", self.path, ", ".join(missing))

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def write(self, batch: RecordBatch, health: Sequence[HealthSample] = ()) -> None:
        """Store `batch` and `health` in one transaction (committed when this returns); raises
        DiskFullError, with nothing stored, when there is no space."""
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                if len(batch):
                    db.executemany(self._insert_measurement, self._first_points(batch))
                if health:
                    db.executemany(self._insert_health, [(s.timestamp_ns, *s.values()) for s in health])
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise DiskFullError(self.path, str(exc)) from exc
            raise

    def _first_points(self, batch: RecordBatch) -> Iterable[tuple[Any, ...]]:
        """The rows of `batch` to store: none of a measurement point already held (same time,
        machine and feature) or repeated earlier in the batch. The first value is kept, even when a
        re-measurement has another verdict or material (other tags, so the key alone would keep both)."""
        rows: Iterable[tuple[Any, ...]] = measurement_rows(batch)
        times: list[int] = batch.timestamp_ns.tolist()
        identities = list(zip(times, batch.machine_id, batch.feature, strict=True))
        held = self._held_points(times)
        if not held and len(set(identities)) == len(identities):
            return rows
        first: list[tuple[Any, ...]] = []
        for identity, row in zip(identities, rows, strict=True):
            if identity not in held:
                held.add(identity)
                first.append(row)
        return first

    def _held_points(self, times: list[int]) -> set[tuple[int, str, str]]:
        """(time_ns, machine_id, feature) of the stored points at any of `times`.

        One range read over the batch's time span (new points come after the stored ones, so it
        finds few); when the span holds many other points (an old file among new ones), one
        key lookup per distinct time instead."""
        cap = 4 * len(times) + 1_000
        found = self._db.execute(_HELD_IN_SPAN, (min(times), max(times), cap + 1)).fetchall()
        if len(found) <= cap:
            return set(found)
        held: set[tuple[int, str, str]] = set()
        distinct = sorted(set(times))
        for start in range(0, len(distinct), _TIMES_PER_QUERY):
            chunk = distinct[start : start + _TIMES_PER_QUERY]
            held.update(self._db.execute(_HELD_AT.format(",".join("?" * len(chunk))), chunk))
        return held

    def purge(self, now_ns: int | None = None) -> int:
        """Delete points older than the retention; returns how many (0 when the disk is too full
        even for the deletion: it is tried again at the next purge)."""
        cutoff = (time.time_ns() if now_ns is None else now_ns) - self.retention_ns
        deleted = 0
        try:
            for table in (MEASUREMENT, HEALTH_MEASUREMENT):
                deleted += self._db.execute(f"DELETE FROM {table} WHERE time_ns < ?", (cutoff,)).rowcount
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            log.debug("history purge postponed: %s", exc)
        return deleted

    def query(self, q: HistoryQuery) -> HistoryResult:
        """The newest `q.limit` points matching `q`, oldest first (names are checked by the caller)."""
        db = self._db
        db.execute("BEGIN")
        try:
            plan = _ReadPlan(q)
            count, truncated, cursor = plan.open(db)
            rows = cursor.fetchall()
        finally:
            db.execute("COMMIT")
        assert len(rows) == count
        return plan.result(rows, truncated)


class _ReadPlan:
    """The SQL of one history query, read oldest first from its first point on.

    The newest `limit` points in primary-key order: the first of them (the boundary) is found by
    walking the key backwards `limit - 1` points, then the points are read forwards from it. Both
    run inside one read transaction, so the count announced first is the count that follows. With
    `oldest`, the first `limit` points from `since_ns` on, read at once (`limit + 1` of them, to
    know whether more follow): for OPC UA's pages of at most 10,000, not for the HTTP API.

    There is no index by characteristic: a query for one machine and feature reads every point of
    its time range (about 8 M points/s); an index (machine_id, feature, time_ns) would make it read
    only that characteristic's points, but makes every write 2 to 7 times slower
    (docs/opcua.md, "History").
    """

    def __init__(self, q: HistoryQuery) -> None:
        self.q = q
        self.tags = MEASUREMENT_TAGS[q.measurement]
        key = ("time_ns", *MEASUREMENT_KEYS[q.measurement])  # the table's primary key
        where = "time_ns >= ? AND time_ns < ?"
        self.params: list[Any] = [q.since_ns, q.until_ns]
        if q.machine_id is not None:
            where += " AND machine_id = ?"
            self.params.append(q.machine_id)
        if q.feature is not None:
            where += " AND feature = ?"
            self.params.append(q.feature)
        table = q.measurement
        self.boundary_sql = (
            f"SELECT {', '.join(key)} FROM {table} WHERE {where} "
            f"ORDER BY {', '.join(f'{k} DESC' for k in key)} LIMIT 2 OFFSET ?"
        )
        self.count_sql = f"SELECT COUNT(*) FROM {table} WHERE {where}"
        select = f"SELECT {', '.join(('time_ns', *self.tags, *q.fields))} FROM {table} WHERE {where}"
        order = f"ORDER BY {', '.join(key)}"
        self.all_sql = f"{select} {order}"
        self.from_sql = f"{select} AND ({', '.join(key)}) >= ({', '.join('?' * len(key))}) {order}"

    def open(self, db: sqlite3.Connection) -> tuple[int, bool, sqlite3.Cursor | _ReadRows]:
        """(count, truncated, a cursor over the points oldest first); call inside a transaction."""
        limit = self.q.limit
        if self.q.oldest:  # one pass (without an index by characteristic, each pass reads the whole range)
            rows = db.execute(f"{self.all_sql} LIMIT ?", (*self.params, limit + 1)).fetchall()
            return min(len(rows), limit), len(rows) > limit, _ReadRows(rows[:limit])
        boundary = db.execute(self.boundary_sql, (*self.params, limit - 1)).fetchall()
        if not boundary:
            count = int(db.execute(self.count_sql, self.params).fetchone()[0])
            return count, False, db.execute(self.all_sql, self.params)
        return limit, len(boundary) > 1, db.execute(self.from_sql, (*self.params, *boundary[0]))

    def result(self, rows: list[tuple[Any, ...]], truncated: bool) -> HistoryResult:
        """The rows as a HistoryResult (column lists)."""
        width = 1 + len(self.tags) + len(self.q.fields)
        values: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]
        return HistoryResult(
            time_ns=values[0],
            tags={t: values[1 + i] for i, t in enumerate(self.tags)},
            fields={f: values[1 + len(self.tags) + i] for i, f in enumerate(self.q.fields)},
            truncated=truncated,
        )


class _ReadRows:
    """Points already read (an `oldest` query reads its at most `limit + 1` at once), served as a cursor."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._at = 0

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        page = self._rows[self._at : self._at + size]
        self._at += len(page)
        return page

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.fetchmany(len(self._rows))


class HistorySnapshot:
    """One history query read in pages from a consistent snapshot of the store: its own read-only
    connection in one read transaction (WAL: the historian keeps writing meanwhile). Blocking:
    every method runs on a worker thread, one call at a time."""

    def __init__(self, path: Path, q: HistoryQuery) -> None:
        self.names = (*MEASUREMENT_TAGS[q.measurement], *q.fields)
        """Column names of the rows after `time_ns`: tags, then fields."""
        self._db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("BEGIN")
            self.count, self.truncated, self._cursor = _ReadPlan(q).open(self._db)
        except BaseException:
            self._db.close()
            raise
        self._left = self.count

    def fetch(self, rows: int) -> list[tuple[Any, ...]]:
        """The next at most `rows` points, oldest first ([] at the end): (time_ns, *names)."""
        page = self._cursor.fetchmany(min(rows, self._left)) if self._left > 0 else []
        self._left -= len(page)
        return page

    def close(self) -> None:
        """End the read transaction and close the connection."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("COMMIT")
        self._db.close()


class StreamSlots:
    """At most `limit` history streams at once (`peak`: the most there ever were), all read on one
    worker thread: the reads hold the GIL for most of their work, so more threads would not make
    them faster, only add a malloc arena each to the gateway's memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.peak = 0
        self._free = asyncio.Semaphore(limit)
        self._reader = SqliteWorker("history-read")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the reading thread."""
        return await self._reader.call(fn, *args)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block (waits while all are taken)."""
        async with self._free:
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                yield
            finally:
                self.active -= 1


class HistoryStream:
    """An open history query: `count` and `truncated` first, then the points in pages."""

    def __init__(self, snapshot: HistorySnapshot, slots: StreamSlots) -> None:
        self._snapshot = snapshot
        self._slots = slots
        self.count = snapshot.count
        self.truncated = snapshot.truncated
        self.names = snapshot.names

    async def pages(self, encode: Callable[[list[tuple[Any, ...]]], T], rows: int = PAGE_ROWS) -> AsyncIterator[T]:
        """Each page of at most `rows` points, oldest first, passed through `encode` on the worker
        thread (so building a page's JSON does not hold up the event loop)."""
        snapshot = self._snapshot

        def next_page() -> T | None:
            page = snapshot.fetch(rows)
            return encode(page) if page else None

        while (encoded := await self._slots.run(next_page)) is not None:
            yield encoded


class SqliteHistorianSink(HistorianSink):
    """Writes measurements and health samples into a HistoryStore; answers history queries."""

    columns = ("timestamp_ns", *TAG_KEYS, *FIELD_KEYS, *RECORD_FIELDS)

    def __init__(self, path: Path, retention_days: float = 30.0) -> None:
        super().__init__()
        self.path = path
        self.retention_days = retention_days
        self._store: HistoryStore | None = None
        self._worker = SqliteWorker("history")
        self._last_purge = -math.inf
        self.streams = StreamSlots(MAX_STREAMS)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.call(fn, *args)

    async def open(self) -> None:
        """Open (or create) the store and apply the retention once."""
        self._store = await self._call(HistoryStore, self.path, self.retention_days)
        await self._purge_if_due()

    async def close(self) -> None:
        """Close the store; never raises."""
        store, self._store = self._store, None
        try:
            if store is not None:
                await self._call(store.close)
        except Exception:  # closing must not fail a shutdown
            log.debug("closing the history store failed", exc_info=True)
        await self._worker.aclose()

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Store `batch`; Delivered once committed. Raises DiskFullError when there is no space
        (the runner reports it and retries)."""
        return await self._store_points(batch, ())

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """Store `gateway_health` points; Delivered once committed (DiskFullError as `write`)."""
        return await self._store_points(RecordBatch.empty(), health_points(samples))

    async def _store_points(self, batch: RecordBatch, health: Sequence[HealthSample]) -> WriteOutcome:
        assert self._store is not None, "write() before open()"
        try:
            await self._call(self._store.write, batch, health)
        except sqlite3.Error as exc:  # disk full, I/O error: keep the records spooled and retry
            return Retry(f"history store: {exc}")
        await self._purge_if_due()
        return Delivered()

    async def ping(self) -> bool:
        """The store is local: reachable while it is open."""
        return self._store is not None

    def add_routes(self, app: web.Application) -> None:
        """Answer /api/v1/history from this store (streamed, see `stream`)."""
        from cmm_twin.gateway.web import HISTORY_KEY  # noqa: PLC0415 (web imports this module)

        app[HISTORY_KEY] = self.stream

    async def query(self, q: HistoryQuery) -> HistoryResult:
        """Run a history query on the store's thread."""
        if self._store is None:
            raise RuntimeError("the history store is closed")
        return await self._call(self._store.query, q)

    @contextlib.asynccontextmanager
    async def stream(self, q: HistoryQuery) -> AsyncIterator[HistoryStream]:
        """A history query read in pages from a snapshot (`HistoryStream`). At most
        `MAX_STREAMS` run at once (the others wait their turn), so at most MAX_STREAMS x
        PAGE_ROWS points are in memory whatever the number of clients."""
        if self._store is None:
            raise RuntimeError("the history store is closed")
        async with self.streams.slot():
            snapshot = await self.streams.run(HistorySnapshot, self.path, q)
            try:
                yield HistoryStream(snapshot, self.streams)
            finally:
                await self.streams.run(snapshot.close)

    async def _purge_if_due(self) -> None:
        if self._store is None or time.monotonic() - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = time.monotonic()
        deleted = await self._call(self._store.purge)
        if deleted:
            log.info("history: %d points older than %g days deleted", deleted, self.retention_days)
