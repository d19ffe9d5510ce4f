"""SQLite off the event loop: one connection used from one dedicated thread, and what its errors mean.

`SqliteWorker` is the one thread boundary of every SQLite database of cmm-twin (the gateway's
state, the embedded historian, the mock MES's store): `await worker.call(fn, *args)` runs
`fn(*args)` on the worker's single thread, so calls are serialised, run in the order they were
made, and never block the event loop. `close` (or `aclose`) refuses later calls with
`WorkerClosedError`, lets the work in flight finish, then closes the connection on the same thread.

`translated` turns the SQLite and OS errors of a block into the typed errors the gateway reports:
`DiskFullError` for lack of space (the write rolled back, nothing half-committed) and
`StateUnavailableError` for a database that is corrupt or cannot be written. `Database` bundles a
connection with its path and remedy, and opens write transactions that roll back cleanly.
See docs/architecture.md, 'Delivery guarantees'.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cmm_twin.errors import CmmTwinError

T = TypeVar("T")


class WorkerClosedError(CmmTwinError, RuntimeError):
    """A call reached a SqliteWorker that is closed (or closing): the database is no longer in use."""


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


class SqliteWorker:
    """One dedicated thread on which every call touching one SQLite connection runs, in order."""

    def __init__(self, name: str, closing: Callable[[], object] | None = None) -> None:
        """`name` prefixes the thread's name (seen in stack dumps); `closing` (e.g. closing the
        connection) runs on the thread when the worker closes, after the calls in flight."""
        self.name = name
        self._closing = closing
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once `close` or `aclose` has begun: new calls are refused."""
        return self._closed

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Await `fn(*args)` run on the worker's thread (after every call made before it).
        An exception raised by `fn` reaches the caller unchanged; WorkerClosedError once closed."""
        if self._closed:
            raise WorkerClosedError(f"the {self.name} database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Refuse new calls, wait (blocking) for the calls in flight, run `closing` on the worker's
        thread and stop it; an exception of `closing` reaches the caller. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        done = self._executor.submit(self._closing) if self._closing is not None else None
        self._executor.shutdown(wait=True)
        if done is not None:
            done.result()

    async def aclose(self) -> None:
        """`close` without blocking the event loop. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._closing is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._closing)
        finally:
            self._executor.shutdown(wait=False)


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
def translated(path: Path, remedy: str) -> Iterator[None]:
    """Raise DiskFullError for lack of space and StateUnavailableError for a corrupt or read-only
    database inside the block (`remedy` says what to do about a corrupt one); other errors pass
    unchanged."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, str(exc)) from exc
        unusable = unusable_database(path, exc, remedy)
        if unusable is not None:
            raise unusable from exc
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(path, exc.strerror or str(exc)) from exc
        raise


def connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the database at `path` in autocommit mode (transactions are explicit), for
    use from a SqliteWorker's thread; StateUnavailableError when it cannot be opened."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        message = f"cannot be opened ({exc}); check that {path.parent} is writable"
        raise StateUnavailableError(path, message) from exc


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already (it may after SQLITE_FULL)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`BEGIN IMMEDIATE` (the write lock) before the block and COMMIT after it; rolled back when
    the block (or the COMMIT) raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise


class Database:
    """A SQLite connection with its path and the remedy named when it is found corrupt."""

    def __init__(self, path: Path, remedy: str) -> None:
        """Open (or create) the database at `path` (see `connect`)."""
        self.path = path
        self.remedy = remedy
        self.db = connect(path)

    def translated(self) -> contextlib.AbstractContextManager[None]:
        """`translated` for this database."""
        return translated(self.path, self.remedy)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()
