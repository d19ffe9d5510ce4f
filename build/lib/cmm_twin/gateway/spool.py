"""The spool: every valid result record, in arrival order (`seq`), until every durable sink has
acknowledged it (see docs/architecture.md, 'Delivery guarantees').

It lives in the gateway's state database (`state/gateway.sqlite`) beside the ingest progress
(`progress.py`), on the same connection, so the records of a chunk and the progress of its file
commit in one transaction (`StateStore.commit`). It is stored by column: one row per committed
chunk of records, each column a BLOB (numbers as raw little-endian arrays, text as a JSON list),
so a sink reads a page of records at the cost of a few decodes instead of one Python object per
value. Each durable sink has one acknowledgement cursor (the highest `seq` it holds for good);
chunks every cursor has passed are purged.

Beside the database, `state/spool-marker.json` names the database (a random id stored in it) and
the spool's high-water mark, so a database that was reset (truncated, its WAL deleted, replaced)
is noticed at start instead of silently forgetting spooled records (see `SpoolMarker`).

Synchronous: every method runs on the state database's worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from cmm_twin.durable_io import write_atomically
from cmm_twin.records import INT_COLUMNS, RECORD_COLUMNS, TEXT_COLUMNS, RecordBatch
from cmm_twin.sqlite_worker import Database, DiskFullError, StateUnavailableError, write_transaction

log = logging.getLogger(__name__)

SPOOL_CHUNK_ROWS = 1000
"""Records per spool row at most: a page read decodes whole chunks, so they stay small."""
MARKER_NAME = "spool-marker.json"
MARKER_ACK_INTERVAL_S = 1.0
"""The marker is rewritten after every commit that spools records; after an acknowledgement only
when everything is acknowledged, or at most this often."""
MARKER_BLOCK_BYTES = 512
RECOVER_COMMAND = "python -m cmm_twin.gateway.recover --data-dir {data_dir}"


def recover_command(data_dir: Path) -> str:
    """The command that re-delivers what a reset or corrupt state database may have lost."""
    return RECOVER_COMMAND.format(data_dir=data_dir)


class SpoolResetError(StateUnavailableError):
    """The state database no longer holds the spool the marker recorded: records may be lost."""


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
class SpoolPage:
    """Records read from the spool with their sequence numbers (ascending)."""

    seqs: np.ndarray[Any, np.dtype[np.int64]]
    records: RecordBatch


ADDED_COLUMNS = ("lower_tol_mm", "upper_tol_mm", "unit", "compensation", "source_format", "source_file", "file_rows")
"""Record columns added after the spool's first chunked version: nullable in a migrated table, and
blank (`RecordBatch.with_blanks`, limits from `tolerance_mm`) in chunks spooled before them."""
_FIRST_COLUMNS = tuple(c for c in RECORD_COLUMNS if c not in ADDED_COLUMNS)
_BLOBS = ", ".join(f"{c} BLOB NOT NULL" for c in RECORD_COLUMNS)
SPOOL_SCHEMA = f"""
    CREATE TABLE IF NOT EXISTS spool_chunks (last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, {_BLOBS});
    CREATE TABLE IF NOT EXISTS spool_meta (id INTEGER PRIMARY KEY CHECK (id = 0), next_seq INTEGER NOT NULL);
    INSERT OR IGNORE INTO spool_meta VALUES (0, 1);
    CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);
"""
_INSERT_CHUNK = (
    f"INSERT INTO spool_chunks (last_seq, first_seq, {', '.join(RECORD_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (len(RECORD_COLUMNS) + 2))})"
)


class Spool:
    """The spool's tables (`spool_chunks`, `spool_meta`, `cursors`) and its marker file."""

    def __init__(self, database: Database, db_id: str, marker_path: Path) -> None:
        """The spool of `database` (its tables already created: `SPOOL_SCHEMA`)."""
        self._database = database
        self._db = database.db
        self.path = database.path
        self.db_id = db_id
        self.marker_path = marker_path
        self.marker = SpoolMarker(db_id)
        self._marker_written = 0.0
        self._marker_fd: int | None = None

    # -- marker ---------------------------------------------------------------------------
    def check_marker(self, new: bool, check: bool) -> SpoolMarker:
        """Read the marker and write it anew for this database; raises SpoolResetError when (with
        `check`) the marker shows a spool this database (`new`: created afresh) does not hold."""
        newest = self.newest_seq()
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
        self.update_marker(force=True)
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

    def update_marker(self, force: bool = False, high_seq: int | None = None) -> None:
        """Refresh the marker from the database and rewrite it (always with `force` or when all is
        acknowledged, else at most every MARKER_ACK_INTERVAL_S). Never raises: a marker that
        cannot be written stays older, which is the safe direction (see SpoolMarker)."""
        marker = self.marker
        try:
            if high_seq is None:
                now_ns = time.time_ns()  # taken BEFORE the reads: files archived before it are acknowledged
                marker.high_seq = self.newest_seq()
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

    def close_marker(self) -> None:
        """A last marker update, then close its file (the database stays open)."""
        try:
            self.update_marker(force=True)
        finally:
            if self._marker_fd is not None:
                os.close(self._marker_fd)
                self._marker_fd = None

    # -- writing --------------------------------------------------------------------------
    def append(self, records: RecordBatch) -> int:
        """Spool `records` (not empty) inside the caller's write transaction; returns the new
        high-water seq. The caller rewrites the marker after its COMMIT (`update_marker`)."""
        db = self._db
        first = db.execute("SELECT next_seq FROM spool_meta").fetchone()[0]
        db.executemany(
            _INSERT_CHUNK,
            [
                _chunk_row(first + start, records.take(slice(start, start + SPOOL_CHUNK_ROWS)))
                for start in range(0, len(records), SPOOL_CHUNK_ROWS)
            ],
        )
        db.execute("UPDATE spool_meta SET next_seq = ?", (first + len(records),))
        return int(first + len(records) - 1)

    def register_sinks(self, names: Sequence[str]) -> None:
        """Make sure each durable sink has a cursor; a new sink starts at the current end.

        Cursors of sinks no longer configured are dropped, so they do not pin the spool.
        """
        with self._database.translated(), write_transaction(self._db) as db:
            end = self.newest_seq()
            db.executemany("INSERT OR IGNORE INTO cursors VALUES (?, ?)", [(n, end) for n in names])
            placeholders = ", ".join("?" * len(names))
            db.execute(f"DELETE FROM cursors WHERE sink NOT IN ({placeholders})", tuple(names))
        self.update_marker(force=True)
        self.purge()

    def ack(self, sink: str, seq: int) -> None:
        """Record that `sink` holds every record up to `seq` (durably). Raises DiskFullError (the
        cursor unchanged) when there is no space for it."""
        with self._database.translated():
            self._db.execute("UPDATE cursors SET acked_seq = MAX(acked_seq, ?) WHERE sink = ?", (seq, sink))
        self.update_marker()

    def purge(self) -> int:
        """Delete records every durable sink has acknowledged (whole chunks); returns how many
        (0 when the disk is too full even for the deletion: it is tried again next time)."""
        try:
            with self._database.translated():
                return self._purge()
        except DiskFullError as exc:
            log.debug("spool purge postponed: %s", exc)
            return 0

    def _purge(self) -> int:
        floor = self._db.execute("SELECT MIN(acked_seq) FROM cursors").fetchone()[0]
        if floor is None:  # no durable sink: nothing is kept
            floor = self.newest_seq()
        deleted = self._db.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM spool_chunks WHERE last_seq <= ?", (floor,)
        ).fetchone()[0]
        self._db.execute("DELETE FROM spool_chunks WHERE last_seq <= ?", (floor,))
        return int(deleted)

    def add_missing_columns(self) -> None:
        """Add the record columns a spool of an earlier version lacks (nullable: its chunks decode
        them blank)."""
        present = {str(row[1]) for row in self._db.execute("PRAGMA table_info(spool_chunks)")}
        missing = [c for c in RECORD_COLUMNS if c not in present]
        if missing:
            with write_transaction(self._db):
                for name in missing:
                    self._db.execute(f"ALTER TABLE spool_chunks ADD COLUMN {name} BLOB")
            log.info("spool: added the record columns %s", ", ".join(missing))

    def migrate_row_spool(self) -> None:
        """Move records from the spool of earlier versions (one row per record) into chunks."""
        db = self._db
        if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool'").fetchone() is None:
            return
        with write_transaction(db):
            after = 0
            while rows := db.execute(
                f"SELECT seq, {', '.join(_FIRST_COLUMNS)} FROM spool WHERE seq > ? ORDER BY seq LIMIT 10000", (after,)
            ).fetchall():
                after = rows[-1][0]
                columns = list(zip(*rows, strict=True))
                values: dict[str, Any] = {
                    name: list(col) if name in TEXT_COLUMNS else np.array(col, dtype=_dtype(name))
                    for name, col in zip(_FIRST_COLUMNS, columns[1:], strict=True)
                }
                db.execute(_INSERT_CHUNK, _chunk_row(int(rows[0][0]), _with_added_blank(len(rows), values)))
            counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
            db.execute(
                "UPDATE spool_meta SET next_seq = MAX(next_seq, ?)", (max(after, counter[0] if counter else 0) + 1,)
            )
            db.execute("DROP TABLE spool")
        log.info("spool moved to the chunked format (records up to seq %d)", after)

    # -- reading --------------------------------------------------------------------------
    def acked_seq(self, sink: str) -> int:
        """The highest sequence number `sink` has acknowledged."""
        row = self._db.execute("SELECT acked_seq FROM cursors WHERE sink = ?", (sink,)).fetchone()
        return int(row[0]) if row else 0

    def newest_seq(self) -> int:
        """The sequence number of the newest record ever spooled (0: none yet)."""
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

    def pending(self, sink: str) -> tuple[int, int | None]:
        """(records `sink` has not acknowledged, timestamp_ns of the oldest of them or None).

        Sequence numbers are contiguous and the spool is only trimmed from below, so the count is
        the distance between the newest record and the cursor: no scan.
        """
        after = self.acked_seq(sink)
        newest = self.newest_seq()
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


def _decode(blobs: Sequence[bytes | None], names: Sequence[str], rows: int) -> RecordBatch:
    """A chunk's records from its column BLOBs (columns not in `names`, or NULL, blank)."""
    values: dict[str, Any] = {}
    for name, blob in zip(names, blobs, strict=True):
        if blob is None:  # spooled before the column existed
            continue
        if name in TEXT_COLUMNS:
            values[name] = orjson.loads(blob)
        else:
            values[name] = np.frombuffer(blob, dtype=_wire(name)).astype(_dtype(name))
    if "lower_tol_mm" not in values and "lower_tol_mm" in names:
        return _with_added_blank(rows, values)
    return RecordBatch.with_blanks(rows, values)


def _with_added_blank(rows: int, values: dict[str, Any]) -> RecordBatch:
    """Records spooled before `ADDED_COLUMNS`: blank, their limits the symmetric tolerance's."""
    if "tolerance_mm" in values:
        tolerance = values["tolerance_mm"]
        values = {**values, "lower_tol_mm": -tolerance, "upper_tol_mm": tolerance.copy()}
    return RecordBatch.with_blanks(rows, values)
