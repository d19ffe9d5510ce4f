"""The embedded historian (`--historian sqlite`, the default): a SQLite time-series store under
`state/` with the same measurements, tags and fields as the InfluxDB line protocol.

A point is identified as in InfluxDB, by measurement, tag set and timestamp, so a replayed batch
(after a crash before its acknowledgement) replaces itself instead of doubling. Rows are keyed
by time first, so writes append and both the retention purge and time-range queries use the key.
All database work runs on one dedicated thread (`HistoryStore` is not thread-safe on its own).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cmm_twin.gateway.historian.base import HistorianSink
from cmm_twin.gateway.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
    HealthSample,
)
from cmm_twin.gateway.sinks.base import Delivered, Retry, WriteOutcome
from cmm_twin.gateway.state import DiskFullError, StateUnavailableError, is_disk_full, unusable_database
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)
T = TypeVar("T")

NS_PER_DAY = 86_400 * 10**9
PURGE_INTERVAL_S = 600.0
MEASUREMENT_FIELDS: dict[str, tuple[str, ...]] = {MEASUREMENT: FIELD_KEYS, HEALTH_MEASUREMENT: HEALTH_FIELD_KEYS}
MEASUREMENT_TAGS: dict[str, tuple[str, ...]] = {MEASUREMENT: TAG_KEYS, HEALTH_MEASUREMENT: ()}


@dataclass(frozen=True)
class HistoryQuery:
    """One history request: points of `measurement` with since_ns <= time < until_ns."""

    measurement: str
    since_ns: int
    until_ns: int
    fields: tuple[str, ...]
    machine_id: str | None = None
    limit: int = 10_000


@dataclass(frozen=True)
class HistoryResult:
    """The newest `limit` points of a query, oldest first; `truncated` when older ones were left out."""

    time_ns: list[int]
    tags: dict[str, list[str]]
    fields: dict[str, list[float | int | None]]
    truncated: bool


class HistoryStore:
    """The SQLite time-series tables `cmm_measurement` and `gateway_health`."""

    def __init__(self, path: Path, retention_days: float = 30.0) -> None:
        """Open (or create) the store; StateUnavailableError when the file is corrupt or cannot be
        written, DiskFullError when there is no space to create it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_ns = int(retention_days * NS_PER_DAY)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            message = f"cannot be opened ({exc}); check that {path.parent} is writable"
            raise StateUnavailableError(path, message) from exc
        try:
            self._open_tables()
        except sqlite3.Error as exc:
            self._db.close()
            if is_disk_full(exc):
                raise DiskFullError(path, str(exc)) from exc
            remedy = (
                f"move it aside (e.g. `mv {path} {path}.corrupt`) and start again: the gateway creates a new "
                "history; the MES and the spool are not affected"
            )
            unusable = unusable_database(path, exc, remedy)
            if unusable is not None:
                raise unusable from exc
            raise

    def _open_tables(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        tags = ", ".join(f"{t} TEXT NOT NULL" for t in TAG_KEYS)
        fields = ", ".join(f"{f} REAL" for f in FIELD_KEYS)
        health = ", ".join(f"{f} INTEGER NOT NULL" for f in HEALTH_FIELD_KEYS)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {MEASUREMENT} (time_ns INTEGER NOT NULL, {tags}, {fields},
                PRIMARY KEY (time_ns, {", ".join(TAG_KEYS)})) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS {HEALTH_MEASUREMENT} (time_ns INTEGER PRIMARY KEY, {health});
            """
        )
        columns = ("time_ns", *TAG_KEYS, *FIELD_KEYS)
        self._insert_measurement = (
            f"INSERT OR REPLACE INTO {MEASUREMENT} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        )
        health_columns = ("time_ns", *HEALTH_FIELD_KEYS)
        self._insert_health = (
            f"INSERT OR REPLACE INTO {HEALTH_MEASUREMENT} ({', '.join(health_columns)}) "
            f"VALUES ({', '.join('?' * len(health_columns))})"
        )

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
                    db.executemany(self._insert_measurement, _measurement_rows(batch))
                if health:
                    db.executemany(self._insert_health, [(s.timestamp_ns, *s.values()) for s in health])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back already (e.g. after SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                raise DiskFullError(self.path, str(exc)) from exc
            raise

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
        tags = MEASUREMENT_TAGS[q.measurement]
        columns = ["time_ns", *tags, *q.fields]
        where = "time_ns >= ? AND time_ns < ?"
        params: list[Any] = [q.since_ns, q.until_ns]
        if q.machine_id is not None:
            where += " AND machine_id = ?"
            params.append(q.machine_id)
        rows = self._db.execute(
            f"SELECT {', '.join(columns)} FROM {q.measurement} WHERE {where} ORDER BY time_ns DESC LIMIT ?",
            (*params, q.limit + 1),
        ).fetchall()
        truncated = len(rows) > q.limit
        rows = rows[: q.limit][::-1]
        values: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in columns]
        return HistoryResult(
            time_ns=values[0],
            tags={t: values[1 + i] for i, t in enumerate(tags)},
            fields={f: values[1 + len(tags) + i] for i, f in enumerate(q.fields)},
            truncated=truncated,
        )


def _measurement_rows(batch: RecordBatch) -> Any:
    columns: list[list[Any]] = [
        batch.timestamp_ns.tolist(),
        batch.machine_id,
        batch.feature,
        batch.material,
        VERDICT_NAMES[batch.verdict].tolist(),
    ]
    for name in FIELD_KEYS:
        column = getattr(batch, name)
        values = column.tolist()
        if not np.isfinite(column).all():
            values = [v if np.isfinite(v) else None for v in values]
        columns.append(values)
    return zip(*columns, strict=True)


class SqliteHistorianSink(HistorianSink):
    """Writes measurements and health samples into a HistoryStore; answers history queries."""

    def __init__(self, path: Path, retention_days: float = 30.0) -> None:
        super().__init__()
        self.path = path
        self.retention_days = retention_days
        self._store: HistoryStore | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._last_purge = -math.inf

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

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
        self._executor.shutdown(wait=False)

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Store `batch` with the waiting health samples; Delivered once committed. Raises
        DiskFullError when there is no space (the runner reports it and retries)."""
        assert self._store is not None, "write() before open()"
        health = self.pending_health()
        try:
            await self._call(self._store.write, batch, health)
        except sqlite3.Error as exc:  # disk full, I/O error: keep the records spooled and retry
            return Retry(f"history store: {exc}")
        self.health_written(health)
        await self._purge_if_due()
        return Delivered()

    async def ping(self) -> bool:
        """Write waiting health samples (the store is local: reachable unless the disk fails)."""
        if self._store is None:
            return False
        if not self.pending_health():
            return True
        try:
            return isinstance(await self.write(RecordBatch.empty()), Delivered)
        except DiskFullError:  # the samples stay queued; the store itself is reachable
            return True

    async def query(self, q: HistoryQuery) -> HistoryResult:
        """Run a history query on the store's thread."""
        if self._store is None:
            raise RuntimeError("the history store is closed")
        return await self._call(self._store.query, q)

    async def _purge_if_due(self) -> None:
        if self._store is None or time.monotonic() - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = time.monotonic()
        deleted = await self._call(self._store.purge)
        if deleted:
            log.info("history: %d points older than %g days deleted", deleted, self.retention_days)
