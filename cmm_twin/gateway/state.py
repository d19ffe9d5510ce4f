"""Durable state of the gateway in one SQLite database under `state/` (WAL, synchronous=FULL).

It holds, so that kill -9 at any moment neither skips nor re-spools a row:
- the spool: every valid result record, in arrival order (`seq`), until every durable sink has
  acknowledged it. It is stored by column: one row per committed chunk of records, each column
  a BLOB (numbers as raw little-endian arrays, text as a JSON list), so a sink reads a page of
  records at the cost of a few decodes instead of one Python object per value;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from cmm_twin.records import INT_COLUMNS, RECORD_COLUMNS, TEXT_COLUMNS, RecordBatch

log = logging.getLogger(__name__)

T = TypeVar("T")


SPOOL_CHUNK_ROWS = 1000
"""Records per spool row at most: a page read decodes whole chunks, so they stay small."""
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
        blobs = ", ".join(f"{c} BLOB NOT NULL" for c in RECORD_COLUMNS)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS spool_chunks (
                last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, {blobs});
            CREATE TABLE IF NOT EXISTS spool_meta (id INTEGER PRIMARY KEY CHECK (id = 0), next_seq INTEGER NOT NULL);
            INSERT OR IGNORE INTO spool_meta VALUES (0, 1);
            CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS files (
                name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, offset INTEGER, line INTEGER,
                rows_ok INTEGER, rows_rejected INTEGER, complete INTEGER, file_error TEXT);
            CREATE TABLE IF NOT EXISTS file_errors (name TEXT, line INTEGER, col TEXT, reason TEXT);
            CREATE INDEX IF NOT EXISTS file_errors_name ON file_errors (name);
            """
        )
        self._insert_sql = (
            f"INSERT INTO spool_chunks (last_seq, first_seq, {', '.join(RECORD_COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(RECORD_COLUMNS) + 2))})"
        )
        self._migrate_row_spool()

    def _migrate_row_spool(self) -> None:
        """Move records from the spool of earlier versions (one row per record) into chunks."""
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool'").fetchone() is None:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            after = 0
            while rows := db.execute(
                f"SELECT seq, {', '.join(RECORD_COLUMNS)} FROM spool WHERE seq > ? ORDER BY seq LIMIT 10000", (after,)
            ).fetchall():
                after = rows[-1][0]
                columns = list(zip(*rows, strict=True))
                values: dict[str, Any] = {
                    name: list(col) if name in TEXT_COLUMNS else np.array(col, dtype=_dtype(name))
                    for name, col in zip(RECORD_COLUMNS, columns[1:], strict=True)
                }
                db.execute(self._insert_sql, _chunk_row(int(rows[0][0]), RecordBatch(**values)))
            counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
            db.execute(
                "UPDATE spool_meta SET next_seq = MAX(next_seq, ?)", (max(after, counter[0] if counter else 0) + 1,)
            )
            db.execute("DROP TABLE spool")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("spool moved to the chunked format (records up to seq %d)", after)

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
                first = db.execute("SELECT next_seq FROM spool_meta").fetchone()[0]
                db.executemany(
                    self._insert_sql,
                    [
                        _chunk_row(first + start, records.take(slice(start, start + SPOOL_CHUNK_ROWS)))
                        for start in range(0, len(records), SPOOL_CHUNK_ROWS)
                    ],
                )
                db.execute("UPDATE spool_meta SET next_seq = ?", (first + len(records),))
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
            end = self._newest_seq()
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

    def _newest_seq(self) -> int:
        return int(self._db.execute("SELECT next_seq FROM spool_meta").fetchone()[0]) - 1

    def read_after(self, after_seq: int, limit: int, columns: Sequence[str] | None = None) -> SpoolPage | None:
        """Up to `limit` records with seq > `after_seq`, in order; None when there are none.

        With `columns`, only those are decoded (the others are blank): a sink that sends a few
        columns does not pay for the rest."""
        names = RECORD_COLUMNS if columns is None else tuple(c for c in RECORD_COLUMNS if c in columns)
        cursor = self._db.execute(
            f"SELECT first_seq, last_seq, {', '.join(names)} FROM spool_chunks WHERE last_seq > ? ORDER BY last_seq",
            (after_seq,),
        )
        parts: list[RecordBatch] = []
        seqs: list[np.ndarray[Any, np.dtype[np.int64]]] = []
        taken = 0
        while taken < limit and (row := cursor.fetchone()) is not None:
            first, last = int(row[0]), int(row[1])
            start = max(0, after_seq + 1 - first)
            stop = min(last - first + 1, start + limit - taken)
            chunk = _decode(row[2:], names, last - first + 1)
            parts.append(chunk.take(slice(start, stop)))
            seqs.append(np.arange(first + start, first + stop, dtype=np.int64))
            taken += stop - start
        cursor.close()
        if not parts:
            return None
        return SpoolPage(np.concatenate(seqs), parts[0] if len(parts) == 1 else RecordBatch.concat(parts))

    def read_seqs(self, seqs: Sequence[int]) -> RecordBatch:
        """The full records with these sequence numbers, in seq order (e.g. for dead letters)."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return RecordBatch.empty()
        rows = self._db.execute(
            f"SELECT first_seq, last_seq, {', '.join(RECORD_COLUMNS)} FROM spool_chunks "
            "WHERE last_seq >= ? AND first_seq <= ? ORDER BY last_seq",
            (wanted[0], wanted[-1]),
        ).fetchall()
        parts = []
        for row in rows:
            first, last = int(row[0]), int(row[1])
            inside = [s - first for s in wanted if first <= s <= last]
            if inside:
                parts.append(_decode(row[2:], RECORD_COLUMNS, last - first + 1).take(inside))
        return RecordBatch.concat(parts) if parts else RecordBatch.empty()

    def ack(self, sink: str, seq: int) -> None:
        """Record that `sink` holds every record up to `seq` (durably)."""
        self._db.execute("UPDATE cursors SET acked_seq = MAX(acked_seq, ?) WHERE sink = ?", (seq, sink))

    def pending(self, sink: str) -> tuple[int, int | None]:
        """(records `sink` has not acknowledged, timestamp_ns of the oldest of them or None).

        Sequence numbers are contiguous and the spool is only trimmed from below, so the count is
        the distance between the newest record and the cursor: no scan.
        """
        after = self.acked_seq(sink)
        newest = self._newest_seq()
        if newest <= after:
            return 0, None
        row = self._db.execute(
            "SELECT first_seq, last_seq, timestamp_ns FROM spool_chunks WHERE last_seq > ? ORDER BY last_seq LIMIT 1",
            (after,),
        ).fetchone()
        if row is None:
            return int(newest - after), None
        stamps = np.frombuffer(row[2], dtype=np.int64)
        return int(newest - after), int(stamps[max(0, after + 1 - int(row[0]))])

    def purge(self) -> int:
        """Delete records every durable sink has acknowledged (whole chunks); returns how many."""
        floor = self._db.execute("SELECT MIN(acked_seq) FROM cursors").fetchone()[0]
        if floor is None:  # no durable sink: nothing is kept
            floor = self._newest_seq()
        deleted = self._db.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM spool_chunks WHERE last_seq <= ?", (floor,)
        ).fetchone()[0]
        self._db.execute("DELETE FROM spool_chunks WHERE last_seq <= ?", (floor,))
        return int(deleted)

    def spool_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list); deleting acknowledged
        records frees pages for reuse, so this falls as the spool drains."""
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)


def _dtype(name: str) -> type[np.generic]:
    return INT_COLUMNS.get(name, np.float64)


def _wire(name: str) -> np.dtype[Any]:
    """The stored (little-endian) dtype of a numeric column."""
    return np.dtype(_dtype(name)).newbyteorder("<")


def _chunk_row(first_seq: int, records: RecordBatch) -> tuple[Any, ...]:
    """The spool_chunks row of `records` numbered from `first_seq`: each column as one BLOB."""
    blobs: list[bytes] = []
    for name in RECORD_COLUMNS:
        column = getattr(records, name)
        if name in TEXT_COLUMNS:
            blobs.append(orjson.dumps(column))
        else:
            blobs.append(
                np.ascontiguousarray(column, dtype=_dtype(name)).astype(f"<{np.dtype(_dtype(name)).str[1:]}").tobytes()
            )
    return (first_seq + len(records) - 1, first_seq, *blobs)


def _decode(blobs: Sequence[bytes], names: Sequence[str], rows: int) -> RecordBatch:
    """A chunk's records from its column BLOBs (columns not in `names` blank)."""
    values: dict[str, Any] = {}
    for name, blob in zip(names, blobs, strict=True):
        if name in TEXT_COLUMNS:
            values[name] = orjson.loads(blob)
        else:
            values[name] = np.frombuffer(blob, dtype=_wire(name)).astype(_dtype(name))
    return RecordBatch.with_blanks(rows, values)


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
