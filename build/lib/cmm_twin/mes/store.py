"""The mock MES's durable store: SQLite in WAL mode with synchronous=FULL, run off the event loop.

Every SQLite call runs on one dedicated thread (a `SqliteWorker` owning the connection), so the
event loop keeps answering (e.g. /health, served from in-memory counters) while a batch commits. A
batch is one transaction: its records are all stored, or none are.

Schema: `measurements(seq INTEGER PRIMARY KEY, measurement_id TEXT NOT NULL, record TEXT NOT NULL)`
where `seq` is the arrival order and `record` the record's JSON text, `counters(name, value)`
holding the number of duplicate records received since the database was created, and
`conflicts(measurement_id, stored_record, received_record, received_at)`.

measurement_id is unique by construction, not by a SQLite UNIQUE index: the store keeps the
stored ids with their seq in memory (loaded at open, updated after each commit, reloaded when
`PRAGMA data_version` shows another connection wrote) and inserts only new ids, inside the batch's
write transaction. A UNIQUE index on random UUIDs dirties about one index page per record, so each
500-record commit wrote ~2 MB of WAL: 10-17 us per record on the 2-core reference machine, which
alone kept ingest under the 40,000 records/s goal. Without it the table only appends. Memory:
~170 bytes per id.

Re-measurement: a measurement is identified by its measurement_id (machine, part, feature, time)
and the first value received is the record. A received record whose id is already stored (or
appears earlier in the same batch) is a duplicate when its values are the same, and a conflict
when they differ (`first_difference`). Only such records are compared, reading the stored ones by
seq, so a batch of new ids costs nothing more. A batch with a conflict stores nothing: each of its
conflicts is kept (once) in `conflicts` with both records, and the batch is answered 409.

Records stored before the record gained `lower_tol_mm`, `upper_tol_mm`, `unit`, `compensation`,
`source_format` and `source_file` lack those fields. Compared with a record that has them (a
gateway replaying its spool after an upgrade), a missing field counts as what it meant then
(`LEGACY_DEFAULTS`: limits -tol/+tol, `mm`, `gateway`, `csv`); `source_file` was not recorded at
all, so it is compared only when both records have it. The same measurement is then a duplicate,
while a changed value in a field both know still makes a conflict.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from cmm_twin.errors import CmmTwinError
from cmm_twin.records import RESULT_FIELDS
from cmm_twin.sqlite_worker import SqliteWorker, rollback, write_transaction

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS measurements ("
    " seq INTEGER PRIMARY KEY,"
    " measurement_id TEXT NOT NULL,"
    " record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('duplicates', 0)",
    "CREATE TABLE IF NOT EXISTS conflicts ("
    " id INTEGER PRIMARY KEY,"
    " measurement_id TEXT NOT NULL,"
    " stored_record TEXT NOT NULL,"
    " received_record TEXT NOT NULL,"
    " received_at TEXT NOT NULL,"
    " UNIQUE (measurement_id, received_record))",
)
_INSERT: Final = "INSERT INTO measurements (measurement_id, record) VALUES (?, ?)"
_LAST_SEQ: Final = "SELECT COALESCE(MAX(seq), 0) FROM measurements"
_RECORDS_BY_SEQ: Final = "SELECT seq, record FROM measurements WHERE seq IN ({})"
_INSERT_CONFLICT: Final = (
    "INSERT OR IGNORE INTO conflicts (measurement_id, stored_record, received_record, received_at) VALUES (?, ?, ?, ?)"
)
_COUNT_CONFLICTS: Final = "SELECT COUNT(*) FROM conflicts"
_COUNT_DUPLICATES: Final = "UPDATE counters SET value = value + ? WHERE name = 'duplicates'"
_PAGE: Final = "SELECT seq, record FROM measurements WHERE seq > ? ORDER BY seq LIMIT ?"
_IDS: Final = "SELECT measurement_id, seq FROM measurements ORDER BY seq DESC"  # the first seq of an id wins
_SQL_VARIABLES: Final = 500
"""Seqs per `IN (...)` query (well under SQLite's limit on bound variables)."""
COMPARED_FIELDS: Final = tuple(name for name in RESULT_FIELDS if name != "measurement_id")
"""The fields that must be equal for a record with a stored id to be a duplicate, not a conflict."""
LEGACY_DEFAULTS: Final[dict[str, Callable[[Mapping[str, Any]], Any]]] = {
    "lower_tol_mm": lambda r: -r["tolerance_mm"] if _is_number(r.get("tolerance_mm")) else None,
    "upper_tol_mm": lambda r: r.get("tolerance_mm"),
    "unit": lambda r: "mm",
    "compensation": lambda r: "gateway",
    "source_format": lambda r: "csv",
}
"""Value of a field a record stored before the field existed lacks: what every record meant then
(a symmetric tolerance, a length in mm compensated by the gateway, read from the CSV inbox)."""
UNRECORDED_FIELDS: Final = frozenset({"source_file"})
"""Fields older records lack and nothing can stand in for: compared only when both records have them."""
_DUPLICATES: Final = "SELECT value FROM counters WHERE name = 'duplicates'"
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000
"""Checkpoint the WAL every ~40 MB rather than SQLite's 4 MB: fewer, larger checkpoints."""
CACHE_KIB: Final = 65_536

T = TypeVar("T")


class StoreError(CmmTwinError):
    """The database cannot be opened or used (not SQLite, unwritable, newer schema...)."""


@dataclass(frozen=True)
class Conflict:
    """A received record whose measurement_id is stored with other values."""

    index: int
    """Position of the received record in its batch."""
    measurement_id: str
    field: str
    """The first field (in record order) whose values differ."""
    stored: Any
    received: Any


_ConflictRow = tuple[Conflict, str, str, str, str]
"""A conflict and its `conflicts` row: measurement_id, stored record, received record, received at."""


@dataclass(frozen=True)
class InsertResult:
    """What `MeasurementStore.insert` did: stored records and duplicates, or (nothing stored) conflicts."""

    accepted: int
    duplicates: int
    conflicts: list[Conflict] = field(default_factory=list)


def _same_instant(a: Any, b: Any) -> bool:
    try:
        return bool(datetime.fromisoformat(a) == datetime.fromisoformat(b))
    except (TypeError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def field_value(record: Mapping[str, Any], name: str) -> Any:
    """The record's value of `name`; for a record from before the field existed, LEGACY_DEFAULTS'."""
    if name in record or name not in LEGACY_DEFAULTS:
        return record.get(name)
    return LEGACY_DEFAULTS[name](record)


def first_difference(stored: Mapping[str, Any], received: Mapping[str, Any]) -> str | None:
    """The first of COMPARED_FIELDS whose values differ, or None when the records agree.

    Numbers compare by value (100 == 100.0), times as instants (`Z` == `+00:00`), flags as sets.
    A field a record lacks (stored before the field existed) counts as its LEGACY_DEFAULTS value;
    UNRECORDED_FIELDS are compared only when both records have them.
    """
    for name in COMPARED_FIELDS:
        if name in UNRECORDED_FIELDS and (name not in stored or name not in received):
            continue
        a, b = field_value(stored, name), field_value(received, name)
        if a == b and (type(a) is bool) == (type(b) is bool):  # a JSON true is no number 1
            continue
        if name == "timestamp" and _same_instant(a, b):
            continue
        if (
            name == "flags"
            and isinstance(a, list)
            and isinstance(b, list)
            and sorted(map(str, a)) == sorted(map(str, b))
        ):
            continue
        return name
    return None


class MeasurementStore:
    """Durable, de-duplicating store of result records (JSON text keyed by measurement_id).

    `count`, `duplicates` and `conflicts` are kept in memory (read at open, updated after each
    commit), so reading them never waits for SQLite. Use as an async context manager, or
    open() / close().
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.duplicates = 0
        self.conflicts = 0
        self._worker: SqliteWorker | None = None
        self._conn: sqlite3.Connection | None = None
        # owned by the store's thread:
        self._ids: dict[str, int] = {}
        """Stored measurement_id -> seq of its record."""
        self._duplicates_total = 0
        self._conflicts_total = 0
        self._data_version = 0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, func: Callable[[], T]) -> T:
        assert self._worker is not None, "store used before open() or after close()"
        return await self._worker.call(func)

    async def open(self) -> None:
        """Open (creating if needed) the database; raises StoreError."""
        self._worker = SqliteWorker("mes-sqlite", self._close)
        try:
            self.count, self.duplicates, self.conflicts = await self._run(self._open)
            log.debug(
                "%s: %d records, %d duplicates and %d conflicts received so far",
                self.path,
                self.count,
                self.duplicates,
                self.conflicts,
            )
        except BaseException:
            await self.close()
            raise

    def _open(self) -> tuple[int, int, int]:
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
            with write_transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
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
        return len(self._ids), self._duplicates_total, self._conflicts_total

    def _load(self) -> None:
        """Read the stored ids and the counters (in the store's thread)."""
        conn = self._conn
        assert conn is not None
        self._ids = dict(conn.execute(_IDS))
        self._duplicates_total = int(conn.execute(_DUPLICATES).fetchone()[0])
        self._conflicts_total = int(conn.execute(_COUNT_CONFLICTS).fetchone()[0])
        self._data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])

    async def close(self) -> None:
        """Close the database and stop its thread; safe to call twice."""
        if self._worker is None:
            return
        worker, self._worker = self._worker, None
        await worker.aclose()

    def _close(self) -> None:
        """Close the connection, if open (on the store's thread, after the calls in flight)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def insert(self, rows: Sequence[tuple[str, str]]) -> InsertResult:
        """Store `(measurement_id, record_json)` rows in one transaction, or none of them.

        A row whose measurement_id is already stored (or appears earlier in `rows`) is a duplicate
        when its values agree (`first_difference`) and is not stored again; when they differ it is
        a conflict: then nothing of `rows` is stored, each conflict is kept in `conflicts` and the
        result lists them. Returns only after the COMMIT is durable (synchronous=FULL).
        """
        if not rows:
            return InsertResult(0, 0)
        result, self.count, self.duplicates, self.conflicts = await self._run(lambda: self._insert(rows))
        return result

    def _insert(self, rows: Sequence[tuple[str, str]]) -> tuple[InsertResult, int, int, int]:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")  # the write lock: no other writer until COMMIT
        try:
            if int(conn.execute("PRAGMA data_version").fetchone()[0]) != self._data_version:
                log.warning("%s was changed by another connection: reloading its measurement ids", self.path)
                self._load()
            stored = self._ids
            fresh_ids: dict[str, int] = {}  # new id -> position of its first row
            repeats: list[int] = []  # positions of rows whose id is stored or earlier in `rows`
            for i, row in enumerate(rows):
                if row[0] in stored or row[0] in fresh_ids:
                    repeats.append(i)
                else:
                    fresh_ids[row[0]] = i
            conflicts = self._find_conflicts(rows, repeats, fresh_ids) if repeats else []
            if conflicts:
                before = conn.total_changes
                conn.executemany(_INSERT_CONFLICT, [row[1:] for row in conflicts])
                added = conn.total_changes - before
                conn.execute("COMMIT")
                self._conflicts_total += added
                found = [conflict for conflict, *_ in conflicts]
                return InsertResult(0, 0, found), len(stored), self._duplicates_total, self._conflicts_total
            first_seq = int(conn.execute(_LAST_SEQ).fetchone()[0]) + 1
            consecutive = True
            fresh = rows if not repeats else [rows[i] for i in fresh_ids.values()]
            if fresh:
                conn.executemany(_INSERT, fresh)
                # under the write lock, SQLite numbers the new rows on from the largest seq
                consecutive = conn.execute("SELECT last_insert_rowid()").fetchone()[0] == first_seq + len(fresh) - 1
            if repeats:
                conn.execute(_COUNT_DUPLICATES, (len(repeats),))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        self._duplicates_total += len(repeats)
        if consecutive:
            stored.update(zip(fresh_ids, range(first_seq, first_seq + len(fresh_ids)), strict=True))
        else:  # never seen: read the seqs (and counters) back rather than guess them
            self._load()
        result = InsertResult(len(fresh_ids), len(repeats))
        return result, len(self._ids), self._duplicates_total, self._conflicts_total

    def _find_conflicts(
        self, rows: Sequence[tuple[str, str]], repeats: list[int], fresh_ids: Mapping[str, int]
    ) -> list[_ConflictRow]:
        """The repeated rows whose values differ from the first record of their id (stored, or
        earlier in `rows`), each with what the `conflicts` table keeps of it."""
        conn = self._conn
        assert conn is not None
        seqs = sorted({self._ids[rows[i][0]] for i in repeats if rows[i][0] in self._ids})
        stored_texts: dict[int, str] = {}
        for start in range(0, len(seqs), _SQL_VARIABLES):
            chunk = seqs[start : start + _SQL_VARIABLES]
            stored_texts.update(conn.execute(_RECORDS_BY_SEQ.format(",".join("?" * len(chunk))), chunk))
        received_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        conflicts: list[_ConflictRow] = []
        for i in repeats:
            measurement_id, received_text = rows[i]
            seq = self._ids.get(measurement_id)
            first_text = stored_texts.get(seq) if seq is not None else rows[fresh_ids[measurement_id]][1]
            if first_text is None or first_text == received_text:
                continue  # an exact replay (or a row another connection removed): a duplicate
            first, received = json.loads(first_text), json.loads(received_text)
            name = first_difference(first, received)
            if name is not None:
                conflict = Conflict(i, measurement_id, name, field_value(first, name), field_value(received, name))
                conflicts.append((conflict, measurement_id, first_text, received_text, received_at))
        return conflicts

    async def page(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` stored `(seq, record_json)` with seq > after_seq, in arrival order."""
        return await self._run(lambda: self._page(after_seq, limit))

    def _page(self, after_seq: int, limit: int) -> list[tuple[int, str]]:
        assert self._conn is not None
        return self._conn.execute(_PAGE, (after_seq, limit)).fetchall()
