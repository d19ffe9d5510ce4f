"""The mock MES's durable store: SQLite in WAL mode with synchronous=FULL, run off the event loop.

Every SQLite call runs on one dedicated thread (a single-thread executor owning the connection),
so the event loop keeps answering (e.g. /health, served from in-memory counters) while a batch
commits. A batch is one transaction: its records are all stored, or none are.

Schema: `measurements(seq INTEGER PRIMARY KEY, measurement_id TEXT NOT NULL, record TEXT NOT NULL)`
where `seq` is the arrival order and `record` the record's JSON text, plus `counters(name, value)`
holding the number of duplicate records received since the database was created.

measurement_id is unique by construction, not by a SQLite UNIQUE index: the store keeps the set of
stored ids in memory (loaded at open, updated after each commit, reloaded when `PRAGMA data_version`
shows another connection wrote) and inserts only new ids, inside the batch's write transaction. A
UNIQUE index on random UUIDs dirties about one index page per record, so each 500-record commit
wrote ~2 MB of WAL: 10-17 us per record on the 2-core reference machine, which alone kept ingest
under the 40,000 records/s goal. Without it the table only appends. Memory: ~120 bytes per id.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

from cmm_twin.errors import CmmTwinError

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS measurements ("
    " seq INTEGER PRIMARY KEY,"
    " measurement_id TEXT NOT NULL,"
    " record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('duplicates', 0)",
)
_INSERT: Final = "INSERT INTO measurements (measurement_id, record) VALUES (?, ?)"
_COUNT_DUPLICATES: Final = "UPDATE counters SET value = value + ? WHERE name = 'duplicates'"
_PAGE: Final = "SELECT seq, record FROM measurements WHERE seq > ? ORDER BY seq LIMIT ?"
_IDS: Final = "SELECT measurement_id FROM measurements"
_DUPLICATES: Final = "SELECT value FROM counters WHERE name = 'duplicates'"
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
"""Checkpoint the WAL every ~40 MB rather than SQLite's 4 MB: fewer, larger checkpoints."""
CACHE_KIB: Final = 65_536

T = TypeVar("T")


class StoreError(CmmTwinError):
    """The database cannot be opened or used (not SQLite, unwritable, newer schema...)."""


class MeasurementStore:
    """Durable, de-duplicating store of result records (JSON text keyed by measurement_id).

    `count` and `duplicates` are kept in memory (read at open, updated after each commit), so
    reading them never waits for SQLite. Use as an async context manager, or open() / close().
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.duplicates = 0
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # owned by the store's thread:
        self._ids: set[str] = set()
        self._duplicates_total = 0
        self._data_version = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, func: Callable[[], T]) -> T:
        assert self._executor is not None, "store used before open() or after close()"
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def open(self) -> None:
        """Open (creating if needed) the database; raises StoreError."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mes-sqlite")
        try:
            self.count, self.duplicates = await self._run(self._open)
            log.debug("%s: %d records, %d duplicates received so far", self.path, self.count, self.duplicates)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> tuple[int, int]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)  # explicit BEGIN/COMMIT
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this program's")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            self._conn = conn
            self._load()
        except sqlite3.Error as exc:
            self._conn = None
            conn.close()
            raise StoreError(f"cannot use {self.path}: {exc}") from None
        except BaseException:
            self._conn = None
            conn.close()
            raise
        return len(self._ids), self._duplicates_total

    def _load(self) -> None:
        """Read the stored ids and the duplicate counter (in the store's thread)."""
        conn = self._conn
        assert conn is not None
        self._ids = {row[0] for row in conn.execute(_IDS)}
        self._duplicates_total = int(conn.execute(_DUPLICATES).fetchone()[0])
        self._data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def close(self) -> None:
        """Close the database and stop its thread; safe to call twice."""
        if self._executor is None:
            return
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _close(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = None

    async def insert(self, rows: Sequence[tuple[str, str]]) -> tuple[int, int]:
        """Store `(measurement_id, record_json)` rows in one transaction; returns (accepted, duplicates).

        A row whose measurement_id is already stored (or appears earlier in `rows`) is a duplicate
        and is not stored again. Returns only after the COMMIT is durable (synchronous=FULL).
        """
        if not rows:
            return 0, 0
        accepted, duplicates, self.count, self.duplicates = await self._run(lambda: self._insert(rows))
        return accepted, duplicates

    def _insert(self, rows: Sequence[tuple[str, str]]) -> tuple[int, int, int, int]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")  # the write lock: no other writer until COMMIT
        try:
            if int(conn.execute("PRAGMA data_version").fetchone()[0]) != self._data_version:
                log.warning("%s was changed by another connection: reloading its measurement ids", self.path)
                self._load()
            stored = self._ids
            fresh_ids: set[str] = set()
            fresh = []
            for row in rows:
                if row[0] not in stored and row[0] not in fresh_ids:
                    fresh_ids.add(row[0])
                    fresh.append(row)
            duplicates = len(rows) - len(fresh)
            if fresh:
                conn.executemany(_INSERT, fresh)
            if duplicates:
                conn.execute(_COUNT_DUPLICATES, (duplicates,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        stored |= fresh_ids
        self._duplicates_total += duplicates
        return len(fresh), duplicates, len(stored), self._duplicates_total

    async def page(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` stored `(seq, record_json)` with seq > after_seq, in arrival order."""
        return await self._run(lambda: self._page(after_seq, limit))

    def _page(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        assert self._conn is not None
        return self._conn.execute(_PAGE, (after_seq, limit)).fetchall()
