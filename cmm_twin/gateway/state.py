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

Beside the database, `state/spool-marker.json` names the database (a random id stored in it) and
the spool's high-water mark, so a database that was reset (truncated, its WAL deleted, replaced)
is noticed at start instead of silently forgetting spooled records (see `SpoolMarker`).

A write that fails for lack of space raises `DiskFullError` (the transaction rolled back, nothing
half-committed); a database that cannot be opened raises `StateUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from cmm_twin.durable_io import write_atomically
from cmm_twin.errors import CmmTwinError
from cmm_twin.records import INT_COLUMNS, RECORD_COLUMNS, TEXT_COLUMNS, RecordBatch

log = logging.getLogger(__name__)

T = TypeVar("T")


SPOOL_CHUNK_ROWS = 1000
"""Records per spool row at most: a page read decodes whole chunks, so they stay small."""
MAX_STORED_ERRORS_PER_FILE = 1000
"""Row errors kept per file for its sidecar report; the rest are counted, not listed."""
MARKER_NAME = "spool-marker.json"
MARKER_ACK_INTERVAL_S = 1.0
"""The marker is rewritten after every commit that spools records; after an acknowledgement only
when everything is acknowledged, or at most this often."""
MARKER_BLOCK_BYTES = 512
RECOVER_COMMAND = "python -m cmm_twin.gateway.recover --data-dir {data_dir}"


class DiskFullError(CmmTwinError):
    """A write of the gateway's own files failed for lack of space (ENOSPC, SQLITE_FULL). Nothing
    of the write is kept; the caller retries once space returns."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: no space left on the device ({detail})")
        self.path = path


class StateUnavailableError(CmmTwinError):
    """A database or directory of the gateway cannot be used (corrupt, read-only, reset); the
    message names the file and what to do."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class SpoolResetError(StateUnavailableError):
    """The state database no longer holds the spool the marker recorded: records may be lost."""


_FULL_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE}
"""SQLITE_IOERR_SHMSIZE: growing the WAL index failed (SQLite reports ENOSPC there as an I/O error)."""
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_ACCESS_CODES = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc` means a write failed for lack of space (typed, errno or SQLite code)."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and (code in _FULL_CODES or code & 0xFF == sqlite3.SQLITE_FULL)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def unusable_database(path: Path, exc: sqlite3.Error, remedy: str) -> StateUnavailableError | None:
    """The typed error for a database that is corrupt or cannot be written, None for other errors."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _CORRUPT_CODES:
        return StateUnavailableError(path, f"is not a usable SQLite database ({exc}); {remedy}")
    if code in _ACCESS_CODES:
        return StateUnavailableError(
            path, f"cannot be opened for writing ({exc}); give the gateway's user write access to {path.parent}"
        )
    return None


@contextlib.contextmanager
def translated(path: Path, remedy: str | None = None) -> Iterator[None]:
    """Raise DiskFullError for lack of space and StateUnavailableError for a corrupt or read-only
    database inside the block (`remedy` says what to do about a corrupt one; default: the state
    database's recovery command); other errors pass unchanged."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, str(exc)) from exc
        if remedy is None:
            remedy = (
                f"run `{recover_command(path.parent.parent)}` (it sets the file aside and puts back into the "
                "inbox the files whose records may not have been delivered), then start the gateway again"
            )
        unusable = unusable_database(path, exc, remedy)
        if unusable is not None:
            raise unusable from exc
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, exc.strerror or str(exc)) from exc
        raise


def recover_command(data_dir: Path) -> str:
    """The command that re-delivers what a reset or corrupt state database may have lost."""
    return RECOVER_COMMAND.format(data_dir=data_dir)


@dataclass
class SpoolMarker:
    """What the gateway last knew of its spool, kept in a small JSON file beside the database.

    Created once per start atomically and durably (rename, fsync); then updated in place (one
    write of a 512-byte block, no fsync, no rename: a rename over a file makes some file systems
    flush it, which cost about 1 ms per commit) AFTER the commit it describes returns. So whatever
    survives a crash or power cut is this version or an older one: a stale marker can only
    UNDER-state the high-water mark and the time everything was last acknowledged. Under-stating
    is the safe direction: at start a database holding less than `high_seq` is certainly reset,
    and the recovery re-ingests MORE archive files than needed (the MES de-duplicates), never
    fewer. A torn block reads as unreadable: with an intact database the marker is written anew,
    with a new one the start is refused.
    """

    db_id: str
    high_seq: int = 0
    """Highest sequence number spooled (records 1..high_seq were committed)."""
    acked: dict[str, int] = field(default_factory=dict)
    all_acked_ns: int | None = None
    """Wall time at which every durable sink was known to hold every record spooled before it:
    files archived before then are delivered everywhere. None: never known (recover all)."""

    @staticmethod
    def read(path: Path) -> SpoolMarker | None:
        """The marker at `path`; None when absent. Raises ValueError when it cannot be read."""
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} cannot be read: {exc}") from exc
        try:
            return SpoolMarker(
                db_id=str(raw["db_id"]),
                high_seq=int(raw["high_seq"]),
                acked={str(k): int(v) for k, v in dict(raw.get("acked", {})).items()},
                all_acked_ns=None if raw.get("all_acked_ns") is None else int(raw["all_acked_ns"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path} cannot be read: {exc!r}") from exc

    def encode(self) -> bytes:
        """The file's bytes: JSON padded with spaces to whole 512-byte blocks."""
        body = orjson.dumps(
            {
                "database": "gateway.sqlite",
                "db_id": self.db_id,
                "high_seq": self.high_seq,
                "acked": self.acked,
                "all_acked_ns": self.all_acked_ns,
            }
        )
        size = -(-(len(body) + 1) // MARKER_BLOCK_BYTES) * MARKER_BLOCK_BYTES
        return body + b" " * (size - len(body) - 1) + b"\n"

    def create(self, path: Path) -> int:
        """Replace the marker file atomically and durably; returns a descriptor for `update`."""
        write_atomically(path, self.encode())
        return os.open(path, os.O_WRONLY)

    def update(self, fd: int) -> None:
        """Overwrite the marker in place (no fsync: see the class docstring)."""
        data = self.encode()
        os.pwrite(fd, data, 0)
        if os.fstat(fd).st_size != len(data):
            os.ftruncate(fd, len(data))


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

    def __init__(self, path: Path, check_marker: bool = True) -> None:
        """Open (or create) the database at `path`. With `check_marker`, refuse a database that
        does not hold the spool `state/spool-marker.json` records (SpoolResetError)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.marker_path = path.parent / MARKER_NAME
        self._pending_forget: set[str] = set()
        """Finished files whose progress could not be dropped yet (disk full): they are treated
        as forgotten and dropped with the next commit that succeeds."""
        self._marker_written = 0.0
        self._marker_fd: int | None = None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            message = f"cannot be opened ({exc}); check that {path.parent} is writable"
            raise StateUnavailableError(path, message) from exc
        try:
            with translated(path):
                new = self._open_schema()
                self.marker = self._checked_marker(new, check_marker)
        except BaseException:
            self._db.close()
            raise

    def _open_schema(self) -> bool:
        """Create missing tables; True when the database was empty (new)."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        new = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
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
            CREATE TABLE IF NOT EXISTS identity (id INTEGER PRIMARY KEY CHECK (id = 0), db_id TEXT NOT NULL);
            """
        )
        self._db.execute("INSERT OR IGNORE INTO identity VALUES (0, ?)", (uuid.uuid4().hex,))
        self.db_id = str(self._db.execute("SELECT db_id FROM identity").fetchone()[0])
        self._insert_sql = (
            f"INSERT INTO spool_chunks (last_seq, first_seq, {', '.join(RECORD_COLUMNS)}) "
            f"VALUES ({', '.join('?' * (len(RECORD_COLUMNS) + 2))})"
        )
        self._migrate_row_spool()
        return bool(new)

    def _checked_marker(self, new: bool, check: bool) -> SpoolMarker:
        """The marker for this database; raises SpoolResetError when (with `check`) the marker
        shows a spool this database does not hold."""
        newest = self._newest_seq()
        try:
            marker = SpoolMarker.read(self.marker_path)
        except ValueError as exc:
            if check and new:
                raise self._reset_error("was created afresh", None) from exc
            log.warning("%s; it is written anew from %s", exc, self.path)
            marker = None
        if check and marker is not None:
            if new:
                raise self._reset_error("was created afresh", marker)
            if marker.db_id != self.db_id:
                raise self._reset_error("is not the database the gateway used before (its id differs)", marker)
            if marker.high_seq > newest:
                raise self._reset_error(f"holds records up to seq {newest} only", marker)
        if new or marker is None or not check:
            marker = SpoolMarker(self.db_id, newest, {}, time.time_ns() if new else None)
        marker.db_id = self.db_id
        self.marker = marker
        self._update_marker(force=True)
        return marker

    def _reset_error(self, problem: str, marker: SpoolMarker | None) -> SpoolResetError:
        if marker is None:
            recorded = f"{self.marker_path} cannot be read"
        else:
            floor = min(marker.acked.values(), default=marker.high_seq)
            recorded = (
                f"{self.marker_path} records a spool up to seq {marker.high_seq} "
                f"({max(0, marker.high_seq - floor)} not acknowledged by every sink)"
            )
        return SpoolResetError(
            self.path,
            f"{problem}, but {recorded}: spooled records may be lost, so the gateway does not start. "
            f"Run `{recover_command(self.path.parent.parent)}` to re-deliver the files archived since "
            "everything was last acknowledged, then start the gateway again",
        )

    # -- marker ---------------------------------------------------------------------------
    def _update_marker(self, force: bool = False, high_seq: int | None = None) -> None:
        """Refresh the marker from the database and rewrite it (always with `force` or when all is
        acknowledged, else at most every MARKER_ACK_INTERVAL_S). Never raises: a marker that
        cannot be written stays older, which is the safe direction (see SpoolMarker)."""
        marker = self.marker
        try:
            if high_seq is None:
                now_ns = time.time_ns()  # taken BEFORE the reads: files archived before it are acknowledged
                marker.high_seq = self._newest_seq()
                marker.acked = {str(k): int(v) for k, v in self._db.execute("SELECT sink, acked_seq FROM cursors")}
                if min(marker.acked.values(), default=marker.high_seq) >= marker.high_seq:
                    marker.all_acked_ns = now_ns
                    force = True
            else:
                marker.high_seq = high_seq
            if not force and time.monotonic() - self._marker_written < MARKER_ACK_INTERVAL_S:
                return
            if self._marker_fd is None:
                self._marker_fd = marker.create(self.marker_path)
            else:
                marker.update(self._marker_fd)
            self._marker_written = time.monotonic()
        except (OSError, sqlite3.Error) as exc:
            log.debug("%s not updated: %s", self.marker_path, exc)

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
            self._rollback()
            raise
        log.info("spool moved to the chunked format (records up to seq %d)", after)

    def close(self) -> None:
        """Close the database (committed data is already on disk) after a last marker update."""
        with contextlib.suppress(sqlite3.Error):
            self._update_marker(force=True)
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None
        self._db.close()

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already (it may after SQLITE_FULL)."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

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
        forget = self._pending_forget | set(forget)
        high_seq: int | None = None
        try:
            with translated(self.path):
                high_seq = self._commit(progress, records, errors, forget)
        except BaseException:
            self._pending_forget = forget  # dropped with the next commit that succeeds
            raise
        self._pending_forget = set()
        if high_seq is not None:
            self._update_marker(force=True, high_seq=high_seq)

    def _commit(
        self,
        progress: Sequence[FileProgress],
        records: RecordBatch | None,
        errors: Mapping[str, Sequence[StoredRowError]],
        forget: Iterable[str],
    ) -> int | None:
        """The transaction of `commit`; returns the new high-water seq when records were spooled."""
        db = self._db
        high_seq: int | None = None
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
                high_seq = first + len(records) - 1
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
            self._rollback()
            raise
        return high_seq

    def progress_of(self, name: str) -> FileProgress | None:
        """The committed progress of inbox file `name`, if any."""
        if name in self._pending_forget:
            return None
        row = self._db.execute("SELECT * FROM files WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return FileProgress(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])

    def all_progress(self) -> list[FileProgress]:
        """Progress of every file the store knows of."""
        rows = self._db.execute("SELECT name FROM files ORDER BY name")
        names = [r[0] for r in rows if r[0] not in self._pending_forget]
        return [p for n in names if (p := self.progress_of(n)) is not None]

    def errors_of(self, name: str) -> list[StoredRowError]:
        """Row errors stored for file `name`, by line."""
        rows = self._db.execute(
            "SELECT line, col, reason FROM file_errors WHERE name = ? ORDER BY line, rowid", (name,)
        ).fetchall()
        return [StoredRowError(line, col, reason) for line, col, reason in rows]

    def forget_files(self, names: Iterable[str]) -> None:
        """Drop progress and errors of files that have left the inbox (one transaction). When the
        disk is full they are dropped with the next commit instead (and treated as gone now)."""
        names = list(self._pending_forget | set(names))
        if not names:
            return
        db = self._db
        try:
            with translated(self.path):
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in names])
                    db.executemany("DELETE FROM file_errors WHERE name = ?", [(n,) for n in names])
                    db.execute("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
        except DiskFullError as exc:
            self._pending_forget = set(names)
            log.debug("progress of %d finished files not dropped yet: %s", len(names), exc)
            return
        self._pending_forget = set()

    # -- spool ----------------------------------------------------------------------------
    def register_sinks(self, names: Sequence[str]) -> None:
        """Make sure each durable sink has a cursor; a new sink starts at the current end.

        Cursors of sinks no longer configured are dropped, so they do not pin the spool.
        """
        db = self._db
        with translated(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                end = self._newest_seq()
                db.executemany("INSERT OR IGNORE INTO cursors VALUES (?, ?)", [(n, end) for n in names])
                placeholders = ", ".join("?" * len(names))
                db.execute(f"DELETE FROM cursors WHERE sink NOT IN ({placeholders})", tuple(names))
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        self._update_marker(force=True)
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
        """Record that `sink` holds every record up to `seq` (durably). Raises DiskFullError (the
        cursor unchanged) when there is no space for it."""
        with translated(self.path):
            self._db.execute("UPDATE cursors SET acked_seq = MAX(acked_seq, ?) WHERE sink = ?", (seq, sink))
        self._update_marker()

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
        """Delete records every durable sink has acknowledged (whole chunks); returns how many
        (0 when the disk is too full even for the deletion: it is tried again next time)."""
        try:
            with translated(self.path):
                return self._purge()
        except DiskFullError as exc:
            log.debug("spool purge postponed: %s", exc)
            return 0

    def _purge(self) -> int:
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
