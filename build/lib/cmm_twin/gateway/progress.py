"""Ingest progress: how far each inbox file has been committed, and the row errors found so far.

It lives in the gateway's state database beside the spool (`spool.py`), on the same connection:
a file's progress (byte offset and line of its last committed chunk) is written in the SAME
transaction as that chunk's records (`StateStore.commit`), so a restart resumes exactly after
the last committed chunk, neither skipping nor re-spooling a row (see docs/architecture.md,
'Delivery guarantees').

Synchronous: every method runs on the state database's worker thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cmm_twin.sqlite_worker import Database, DiskFullError, write_transaction

log = logging.getLogger(__name__)

MAX_STORED_ERRORS_PER_FILE = 1000
"""Row errors kept per file for its sidecar report; the rest are counted, not listed."""

PROGRESS_SCHEMA = """
    CREATE TABLE IF NOT EXISTS files (
        name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, offset INTEGER, line INTEGER,
        rows_ok INTEGER, rows_rejected INTEGER, complete INTEGER, file_error TEXT);
    CREATE TABLE IF NOT EXISTS file_errors (name TEXT, line INTEGER, col TEXT, reason TEXT);
    CREATE INDEX IF NOT EXISTS file_errors_name ON file_errors (name);
"""


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
    """A row error kept for the sidecar report (with its row's machine and feature when known:
    not stored, so a file resumed after a restart reports them as None)."""

    line: int
    column: str | None
    reason: str
    machine_id: str | None = field(default=None, compare=False)
    feature: str | None = field(default=None, compare=False)


class IngestProgress:
    """The `files` and `file_errors` tables of the state database."""

    def __init__(self, database: Database) -> None:
        """The progress of `database` (its tables already created: `PROGRESS_SCHEMA`)."""
        self._database = database
        self._db = database.db
        self.pending_forget: set[str] = set()
        """Finished files whose progress could not be dropped yet (disk full): they are treated
        as forgotten and dropped with the next commit that succeeds."""

    def to_forget(self, names: Iterable[str]) -> set[str]:
        """`names` and the files whose progress is still waiting to be dropped."""
        return self.pending_forget | set(names)

    def write(
        self, progress: Sequence[FileProgress], errors: Mapping[str, Sequence[StoredRowError]], forget: Iterable[str]
    ) -> None:
        """Inside the caller's write transaction: drop the progress of the `forget` files (first,
        so a file dropped again under the same name starts clean), add each file's `errors` (up to
        MAX_STORED_ERRORS_PER_FILE) and set each file's `progress`."""
        db = self._db
        for name in forget:
            db.execute("DELETE FROM files WHERE name = ?", (name,))
            db.execute("DELETE FROM file_errors WHERE name = ?", (name,))
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

    def progress_of(self, name: str) -> FileProgress | None:
        """The committed progress of inbox file `name`, if any."""
        if name in self.pending_forget:
            return None
        row = self._db.execute("SELECT * FROM files WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return FileProgress(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])

    def all_progress(self) -> list[FileProgress]:
        """Progress of every file the store knows of."""
        rows = self._db.execute("SELECT name FROM files ORDER BY name")
        names = [r[0] for r in rows if r[0] not in self.pending_forget]
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
        forget = list(self.to_forget(names))
        if not forget:
            return
        try:
            with self._database.translated(), write_transaction(self._db) as db:
                db.executemany("DELETE FROM files WHERE name = ?", [(n,) for n in forget])
                db.executemany("DELETE FROM file_errors WHERE name = ?", [(n,) for n in forget])
        except DiskFullError as exc:
            self.pending_forget = set(forget)
            log.debug("progress of %d finished files not dropped yet: %s", len(forget), exc)
            return
        self.pending_forget = set()


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
