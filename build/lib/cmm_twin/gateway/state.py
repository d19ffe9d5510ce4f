"""Durable state of the gateway in one SQLite database under `state/` (WAL, synchronous=FULL).

It holds, so that kill -9 at any moment neither skips nor re-spools a row:
- the spool (`spool.py`): every valid result record until every durable sink has acknowledged
  it, with one acknowledgement cursor per durable sink and the marker file beside the database;
- the ingest progress (`progress.py`): per inbox file the byte offset and line of the last
  committed chunk and the row errors found so far, written in the SAME transaction as that
  chunk's records (`StateStore.commit`).

`StateStore` opens the database and holds both on its one connection; its methods are
synchronous and run on the state's worker thread: `AsyncState` (a `SqliteWorker`), so the event
loop never blocks on disk (`await state.call(state.store.X, ...)`).

A write that fails for lack of space raises `DiskFullError` (the transaction rolled back, nothing
half-committed); a database that cannot be opened raises `StateUnavailableError`. See
docs/architecture.md, 'Delivery guarantees'.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cmm_twin import sqlite_worker
from cmm_twin.gateway.progress import (
    PROGRESS_SCHEMA,
    FileProgress,
    IngestProgress,
    StoredRowError,
    errors_report,
)
from cmm_twin.gateway.spool import (
    MARKER_NAME,
    SPOOL_CHUNK_ROWS,
    SPOOL_SCHEMA,
    Spool,
    SpoolMarker,
    SpoolPage,
    SpoolResetError,
    recover_command,
)
from cmm_twin.records import RecordBatch
from cmm_twin.sqlite_worker import (
    Database,
    DiskFullError,
    SqliteWorker,
    StateUnavailableError,
    is_disk_full,
    write_transaction,
)

__all__ = [
    "MARKER_NAME",
    "SPOOL_CHUNK_ROWS",
    "AsyncState",
    "DiskFullError",
    "FileProgress",
    "SpoolMarker",
    "SpoolResetError",
    "StateStore",
    "StateUnavailableError",
    "StoredRowError",
    "errors_report",
    "is_disk_full",
    "state_remedy",
    "translated",
]


def state_remedy(data_dir: Path) -> str:
    """What to do about a corrupt state database under `data_dir`."""
    return (
        f"run `{recover_command(data_dir)}` (it sets the file aside and puts back into the "
        "inbox the files whose records may not have been delivered), then start the gateway again"
    )


def translated(path: Path, remedy: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Raise DiskFullError for lack of space and StateUnavailableError for a corrupt or read-only
    database inside the block (`remedy` says what to do about a corrupt one; default: the state
    database's recovery command); other errors pass unchanged."""
    return sqlite_worker.translated(path, state_remedy(path.parent.parent) if remedy is None else remedy)


_IDENTITY_SCHEMA = "CREATE TABLE IF NOT EXISTS identity (id INTEGER PRIMARY KEY CHECK (id = 0), db_id TEXT NOT NULL);"


class StateStore:
    """The SQLite database of the gateway's durable state: the spool and the ingest progress on
    one connection (see the module docstring). Every method runs on the state's worker thread."""

    def __init__(self, path: Path, check_marker: bool = True) -> None:
        """Open (or create) the database at `path`. With `check_marker`, refuse a database that
        does not hold the spool `state/spool-marker.json` records (SpoolResetError)."""
        self.path = path
        self.marker_path = path.parent / MARKER_NAME
        self._database = Database(path, state_remedy(path.parent.parent))
        try:
            with self._database.translated():
                new = self._open_schema()
                self.spool = Spool(self._database, self.db_id, self.marker_path)
                self.progress = IngestProgress(self._database)
                self.spool.add_missing_columns()
                self.spool.migrate_row_spool()
                self.spool.check_marker(new, check_marker)
        except BaseException:
            self._database.close()
            raise

    def _open_schema(self) -> bool:
        """Create missing tables; True when the database was empty (new)."""
        db = self._database.db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        new = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        db.executescript(SPOOL_SCHEMA + PROGRESS_SCHEMA + _IDENTITY_SCHEMA)
        db.execute("INSERT OR IGNORE INTO identity VALUES (0, ?)", (uuid.uuid4().hex,))
        self.db_id = str(db.execute("SELECT db_id FROM identity").fetchone()[0])
        return bool(new)

    @property
    def marker(self) -> SpoolMarker:
        """What the spool's marker file last recorded (see SpoolMarker)."""
        return self.spool.marker

    def close(self) -> None:
        """Close the database (committed data is already on disk) after a last marker update."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self.spool.close_marker()
        finally:
            self._database.close()

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
        dropped = self.progress.to_forget(forget)
        high_seq: int | None = None
        try:
            with self._database.translated(), write_transaction(self._database.db):
                if records is not None and len(records):
                    high_seq = self.spool.append(records)
                self.progress.write(progress, errors, dropped)
        except BaseException:
            self.progress.pending_forget = dropped  # dropped with the next commit that succeeds
            raise
        self.progress.pending_forget = set()
        if high_seq is not None:
            self.spool.update_marker(force=True, high_seq=high_seq)

    # -- the ingest progress (see progress.py) ---------------------------------------------
    def progress_of(self, name: str) -> FileProgress | None:
        """The committed progress of inbox file `name`, if any."""
        return self.progress.progress_of(name)

    def all_progress(self) -> list[FileProgress]:
        """Progress of every file the store knows of."""
        return self.progress.all_progress()

    def errors_of(self, name: str) -> list[StoredRowError]:
        """Row errors stored for file `name`, by line."""
        return self.progress.errors_of(name)

    def forget_files(self, names: Iterable[str]) -> None:
        """Drop progress and errors of files that have left the inbox (see IngestProgress)."""
        self.progress.forget_files(names)

    # -- the spool (see spool.py) ----------------------------------------------------------
    def register_sinks(self, names: Sequence[str]) -> None:
        """Give each durable sink a cursor and drop those of sinks no longer configured."""
        self.spool.register_sinks(names)

    def acked_seq(self, sink: str) -> int:
        """The highest sequence number `sink` has acknowledged."""
        return self.spool.acked_seq(sink)

    def read_after(self, after_seq: int, limit: int, columns: Sequence[str] | None = None) -> SpoolPage | None:
        """Up to `limit` records with seq > `after_seq`, in order; None when there are none."""
        return self.spool.read_after(after_seq, limit, columns)

    def read_seqs(self, seqs: Sequence[int]) -> RecordBatch:
        """The full records with these sequence numbers, in seq order."""
        return self.spool.read_seqs(seqs)

    def ack(self, sink: str, seq: int) -> None:
        """Record that `sink` holds every record up to `seq` (durably; DiskFullError when not)."""
        self.spool.ack(sink, seq)

    def pending(self, sink: str) -> tuple[int, int | None]:
        """(records `sink` has not acknowledged, timestamp_ns of the oldest of them or None)."""
        return self.spool.pending(sink)

    def purge(self) -> int:
        """Delete records every durable sink has acknowledged; returns how many."""
        return self.spool.purge()

    def spool_bytes(self) -> int:
        """Bytes of the database in use (pages not on the free list)."""
        return self.spool.spool_bytes()


class AsyncState(SqliteWorker):
    """The state's worker: StateStore calls run on its one thread, serialised and off the loop."""

    def __init__(self, store: StateStore) -> None:
        """Run `store`'s calls; `close` waits for the calls in flight, then closes `store`."""
        super().__init__("state", store.close)
        self.store = store
