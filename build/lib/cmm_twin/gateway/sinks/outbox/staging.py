"""The outbox's own small database (`state/outbox.sqlite`): records of input files whose last
record has not arrived yet, and the files already written.

A file's records can arrive over several batches (the runner's batches do not follow files). The
records of a file still open are staged here, so an acknowledged batch is never needed again;
when the file's last record arrives (it carries the file's count of records, `file_rows`), its
staged records and that batch's make its output. `written` remembers the last record of every
file written: a batch replayed after a crash (written, not yet acknowledged) that holds only the
file's tail finds its file already written and writes nothing, rather than a shorter file; the
same file dropped again in full is written again (the same content).

Synchronous: used from the outbox's worker thread only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from cmm_twin.sqlite_worker import connect, write_transaction

_SCHEMA = """
    CREATE TABLE IF NOT EXISTS staged (
        source_file TEXT NOT NULL, measurement_id TEXT NOT NULL, record BLOB NOT NULL,
        PRIMARY KEY (source_file, measurement_id));
    CREATE TABLE IF NOT EXISTS written (source_file TEXT PRIMARY KEY, last_id TEXT NOT NULL);
"""


class Staging:
    """Staged records by input file, and the files written (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.db = connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def stage(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep `records` (result-record dicts) until their file's last record arrives; a record
        staged before (a replay) is kept once."""
        with write_transaction(self.db):
            self.db.executemany(
                "INSERT OR IGNORE INTO staged (source_file, measurement_id, record) VALUES (?, ?, ?)",
                [(r["source_file"], r["measurement_id"], orjson.dumps(r)) for r in records],
            )

    def staged(self, source_file: str) -> list[dict[str, Any]]:
        """The staged records of `source_file`, in the order they were staged."""
        rows = self.db.execute(
            "SELECT record FROM staged WHERE source_file = ? ORDER BY rowid", (source_file,)
        ).fetchall()
        return [orjson.loads(row[0]) for row in rows]

    def already_written(self, source_file: str, last_id: str) -> bool:
        """Whether `source_file` was written with `last_id` as its last record (a replay)."""
        row = self.db.execute("SELECT last_id FROM written WHERE source_file = ?", (source_file,)).fetchone()
        return row is not None and row[0] == last_id

    def finish(self, source_file: str, last_id: str) -> None:
        """`source_file` is written: drop its staged records, remember its last record."""
        with write_transaction(self.db):
            self.db.execute("DELETE FROM staged WHERE source_file = ?", (source_file,))
            self.db.execute(
                "INSERT OR REPLACE INTO written (source_file, last_id) VALUES (?, ?)", (source_file, last_id)
            )

    def staged_count(self) -> int:
        """Records staged (waiting for their file's last record)."""
        return int(self.db.execute("SELECT COUNT(*) FROM staged").fetchone()[0])

    def close(self) -> None:
        self.db.close()
