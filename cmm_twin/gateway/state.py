"""Durable state of the gateway in one SQLite database under `state/` (WAL, synchronous=FULL).

It holds, so that kill -9 at any moment neither skips nor re-spools a row:
- the spool: every valid result record, in arrival order (`seq`), until every durable sink has
  acknowledged it;
- one acknowledgement cursor per durable sink (the highest `seq` it holds for good);
- ingest progress per inbox file (byte offset and line of the last committed chunk) and the row
  errors found so far, written in the SAME transaction as that chunk's records.

All methods are synchronous and must be called from one thread at a time; the gateway runs them
on a dedicated single-thread executor (`AsyncState`), so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

T = TypeVar("T")

_SPOOL_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RecordBatch))
"""One spool column per RecordBatch column."""
_TEXT_COLUMNS = {"measurement_id", "timestamp", "machine_id", "part_id", "feature", "material"}
_INT_COLUMNS = {"timestamp_ns": np.int64, "verdict": np.int8, "flags": np.int32}

MAX_STORED_ERRORS_PER_FILE = 1000
"""Row errors kept per file for its sidecar report; the rest are counted, not listed."""


@dataclass(frozen=True)
class FileProgress:
    """How far a file in the inbox has been committed."""

    name: str
    size: int
    mtime_ns: int
    offset: int
    line: int
    rows_ok: int
    rows_rejected: int
    complete: bool
    file_error: str | None


@dataclass(frozen=True)
class StoredRowError:
    """A row error kept for the sidecar report."""

    line: int
    column: str | None
    reason: str


@dataclass(frozen=True)
class SpoolPage:
    """Records read from the spool with their sequence numbers (ascending)."""

    seqs: np.ndarray[Any, np.dtype[np.int64]]
    records: RecordBatch


class StateStore:
    """The SQLite database of the gateway's durable state (see module docstring)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        columns = ", ".join(
            f"{c} {'TEXT' if c in _TEXT_COLUMNS else 'INTEGER' if c in _INT_COLUMNS else 'REAL'}"
            for c in _SPOOL_COLUMNS
        )
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, {columns});
            CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS files (
                name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, offset INTEGER, line INTEGER,
                rows_ok INTEGER, rows_rejected INTEGER, complete INTEGER, file_error TEXT);
            CREATE TABLE IF NOT EXISTS file_errors (name TEXT, line INTEGER, col TEXT, reason TEXT);
            CREATE INDEX IF NOT EXISTS file_errors_name ON file_errors (name);
            """
        )
        self._insert_sql = (
            f"INSERT INTO spool ({', '.join(_SPOOL_COLUMNS)}) VALUES ({', '.join('?' * len(_SPOOL_COLUMNS))})"
        )

    def close(self) -> None:
        """Close the database (committed data is already on disk)."""
        self._db.close()

    # -- ingest ---------------------------------------------------------------------------
    def commit(
        self,
        progress: Sequence[FileProgress],
        records: RecordBatch | None,
        errors: Mapping[str, Sequence[StoredRowError]],
        forget: Iterable[str] = (),
    ) -> None:
        """Spool `records`, add each file's `errors` and set each file's `progress`, all in one
        transaction.

        `records` is None when no durable sink is configured (nothing needs spooling). `forget`
        names finished files whose progress is dropped in the same transaction (before the new
        progress is written, so a file dropped again under the same name starts clean).
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for name in forget:
                db.execute("DELETE FROM files WHERE name = ?", (name,))
                db.execute("DELETE FROM file_errors WHERE name = ?", (name,))
            if records is not None and len(records):
                db.executemany(self._insert_sql, _rows_of(records))
            for name, file_errors in errors.items():
                stored = db.execute("SELECT COUNT(*) FROM file_errors WHERE name = ?", (name,)).fetchone()[0]
                room = max(0, MAX_STORED_ERRORS_PER_FILE - stored)
                db.executemany(
                    "INSERT INTO file_errors VALUES (?, ?, ?, ?)",
                    [(name, e.line, e.column, e.reason) for e in file_errors[:room]],
                )
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.name,
                        p.size,
                        p.mtime_ns,
                        p.offset,
                        p.line,
                        p.rows_ok,
                        p.rows_rejected,
                        int(p.complete),
                        p.file_error,
                    )
                    for p in progress
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def progress_of(self, name: str) -> FileProgress | None:
        """The committed progress of inbox file `name`, if any."""
        row = self._db.execute("SELECT * FROM files WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return FileProgress(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])

    def all_progress(self) -> list[FileProgress]:
        """Progress of every file the store knows of."""
        names = [r[0] for r in self._db.execute("SELECT name FROM files ORDER BY name")]
        return [p for n in names if (p := self.progress_of(n)) is not None]

    def errors_of(self, name: str) -> list[StoredRowError]:
        """Row errors stored for file `name`, by line."""
        rows = self._db.execute(
            "SELECT line, col, reason FROM file_errors WHERE name = ? ORDER BY line, rowid", (name,)
        ).fetchall()
        return [StoredRowError(line, col, reason) for line, col, reason in rows]

    def forget_files(self, names: Iterable[str]) -> None:
        """Drop progress and errors of files that have left the inbox (one transaction)."""
        names = list(names)
        if not names:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in names])
            db.executemany("DELETE FROM file_errors WHERE name = ?", [(n,) for n in names])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- spool ----------------------------------------------------------------------------
    def register_sinks(self, names: Sequence[str]) -> None:
        """Make sure each durable sink has a cursor; a new sink starts at the current end.

        Cursors of sinks no longer configured are dropped, so they do not pin the spool.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            end = db.execute("SELECT COALESCE(MAX(seq), 0) FROM spool").fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO cursors VALUES (?, ?)", [(n, end) for n in names])
            placeholders = ", ".join("?" * len(names))
            db.execute(f"DELETE FROM cursors WHERE sink NOT IN ({placeholders})", tuple(names))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.purge()

    def acked_seq(self, sink: str) -> int:
        """The highest sequence number `sink` has acknowledged."""
        row = self._db.execute("SELECT acked_seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        return int(row[0]) if row else 0

    def read_after(self, after_seq: int, limit: int) -> SpoolPage | None:
        """Up to `limit` records with seq > `after_seq`, in order; None when there are none."""
        rows = self._db.execute(
            f"SELECT seq, {', '.join(_SPOOL_COLUMNS)} FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        if not rows:
            return None
        columns = list(zip(*rows, strict=True))
        values: dict[str, Any] = {}
        for name, column in zip(_SPOOL_COLUMNS, columns[1:], strict=True):
            if name in _TEXT_COLUMNS:
                values[name] = list(column)
            elif name in _INT_COLUMNS:
                values[name] = np.array(column, dtype=_INT_COLUMNS[name])
            else:
                values[name] = np.array(column, dtype=np.float64)  # NULL (NaN stored) -> nan
        return SpoolPage(np.array(columns[0], dtype=np.int64), RecordBatch(**values))

    def ack(self, sink: str, seq: int) -> None:
        """Record that `sink` holds every record up to `seq` (durably)."""
        self._db.execute("UPDATE cursors SET acked_seq = MAX(acked_seq, ?) WHERE sink = ?", (seq, sink))

    def pending(self, sink: str) -> tuple[int, int | None]:
        """(records `sink` has not acknowledged, timestamp_ns of the oldest of them or None).

        Sequence numbers are contiguous and the spool is only trimmed from below, so the count is
        the distance between the newest record and the cursor: no table scan.
        """
        after = self.acked_seq(sink)
        newest = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM spool").fetchone()[0]
        if newest <= after:
            return 0, None
        oldest = self._db.execute(
            "SELECT timestamp_ns FROM spool WHERE seq > ? ORDER BY seq LIMIT 1", (after,)
        ).fetchone()
        return int(newest - after), (int(oldest[0]) if oldest else None)

    def purge(self) -> int:
        """Delete records every durable sink has acknowledged; returns how many."""
        floor = self._db.execute("SELECT MIN(acked_seq) FROM cursors").fetchone()[0]
        if floor is None:  # no durable sink: nothing is kept
            floor = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM spool").fetchone()[0]
        return self._db.execute("DELETE FROM spool WHERE seq <= ?", (floor,)).rowcount

    def spool_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list); deleting acknowledged
        records frees pages for reuse, so this falls as the spool drains."""
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)


def _rows_of(records: RecordBatch) -> Iterable[tuple[Any, ...]]:
    columns: list[list[Any]] = []
    for name in _SPOOL_COLUMNS:
        column = getattr(records, name)
        if isinstance(column, np.ndarray):
            values = column.tolist()
            if column.dtype.kind == "f" and np.isnan(column).any():
                values = [None if v != v else v for v in values]  # noqa: PLR0124 (NaN check)
            columns.append(values)
        else:
            columns.append(column)
    return zip(*columns, strict=True)


class AsyncState:
    """Runs StateStore calls on one dedicated thread, so they are serialised and off the loop."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Await `fn(*args)` run on the state thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Wait for calls in flight, then close the database."""
        self._executor.shutdown(wait=True)
        self.store.close()


def errors_report(
    name: str, progress: FileProgress | None, errors: Sequence[StoredRowError], file_error: str | None
) -> str:
    """The JSON sidecar `<name>.errors.json` for a quarantined file."""
    rows_rejected = progress.rows_rejected if progress else 0
    report = {
        "file": name,
        "file_error": file_error,
        "rows_ok": progress.rows_ok if progress else 0,
        "rows_rejected": rows_rejected,
        "errors": [{"line": e.line, "column": e.column, "reason": e.reason} for e in errors],
        "errors_not_listed": max(0, rows_rejected - len(errors)),
    }
    return json.dumps(report, indent=2)
