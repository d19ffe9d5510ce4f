"""SqliteWorker, the one thread boundary of every SQLite database, and the translation of SQLite
errors into DiskFullError / StateUnavailableError (real SQLite files, real threads)."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cmm_twin.gateway.state import AsyncState, StateStore
from cmm_twin.sqlite_worker import (
    DiskFullError,
    SqliteWorker,
    StateUnavailableError,
    WorkerClosedError,
    connect,
    is_disk_full,
    translated,
    write_transaction,
)

DEADLINE_S = 60.0


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition()` until true (generous deadline: the suite runs on loaded machines)."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        await asyncio.sleep(0.005)


async def test_calls_run_on_one_thread_off_the_loop_in_the_order_made() -> None:
    worker = SqliteWorker("test")
    seen: list[tuple[int, int]] = []

    def record(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * i

    try:
        results = await asyncio.gather(*(worker.call(record, i) for i in range(200)))
    finally:
        worker.close()
    assert results == [i * i for i in range(200)]
    assert [i for i, _ in seen] == list(range(200))
    threads = {thread for _, thread in seen}
    assert len(threads) == 1
    assert threads != {threading.get_ident()}, "the calls must not run on the event loop's thread"


async def test_an_exception_of_fn_reaches_the_caller_and_the_worker_goes_on() -> None:
    worker = SqliteWorker("test")

    class BoomError(Exception):
        pass

    boom = BoomError("disk on fire")

    def fail() -> None:
        raise boom

    try:
        with pytest.raises(BoomError) as caught:
            await worker.call(fail)
        assert caught.value is boom
        assert await worker.call(len, "after") == 5
    finally:
        worker.close()


async def test_close_waits_for_the_call_in_flight_then_closes_and_refuses_new_calls() -> None:
    events: list[str] = []
    started, gate = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert gate.wait(DEADLINE_S)
        events.append("work")
        return "done"

    worker = SqliteWorker("test", closing=lambda: events.append("closing"))
    in_flight = asyncio.ensure_future(worker.call(slow))
    await wait_for(started.is_set, "the slow call starting")
    closing = asyncio.ensure_future(asyncio.to_thread(worker.close))
    await wait_for(lambda: worker.closed, "the close beginning")
    with pytest.raises(WorkerClosedError, match="the test database is closed"):
        await worker.call(len, "too late")
    assert events == [], "close must not run `closing` while a call is in flight"
    gate.set()
    assert await in_flight == "done"
    await closing
    assert events == ["work", "closing"]
    worker.close()  # a second close does nothing
    assert events == ["work", "closing"]


async def test_aclose_closes_on_the_worker_thread_without_blocking_the_loop() -> None:
    threads: list[int] = []
    worker = SqliteWorker("test", closing=lambda: threads.append(threading.get_ident()))
    call_thread = await worker.call(threading.get_ident)
    await worker.aclose()
    await worker.aclose()
    assert threads == [call_thread]
    with pytest.raises(WorkerClosedError):
        await worker.call(len, "x")
    assert isinstance(WorkerClosedError("x"), RuntimeError), "callers that catch RuntimeError keep working"


async def test_state_worker_closes_its_store_after_the_calls_in_flight(tmp_path: Path) -> None:
    state = AsyncState(StateStore(tmp_path / "state" / "gateway.sqlite"))
    await state.call(state.store.register_sinks, ["mes"])
    assert await state.call(state.store.acked_seq, "mes") == 0
    state.close()
    with pytest.raises(WorkerClosedError):
        await state.call(state.store.acked_seq, "mes")
    with pytest.raises(sqlite3.ProgrammingError):  # the connection is closed
        state.store.acked_seq("mes")


def full_database(path: Path) -> sqlite3.Connection:
    """A database that cannot grow past a few pages: the next big write fails with SQLITE_FULL."""
    db = connect(path)
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 8")
    return db


def test_lack_of_space_becomes_disk_full_error_and_the_write_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "full.sqlite"
    db = full_database(path)
    with pytest.raises(DiskFullError) as caught, translated(path, "remedy"), write_transaction(db):
        db.execute("INSERT INTO t VALUES (zeroblob(4096))")
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert caught.value.path == path
    assert "no space left" in str(caught.value)
    assert is_disk_full(caught.value) and is_disk_full(caught.value.__cause__ or caught.value)
    assert not db.in_transaction
    assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0, "nothing of the transaction is kept"
    db.close()


async def test_translation_through_the_worker(tmp_path: Path) -> None:
    path = tmp_path / "full.sqlite"
    worker = SqliteWorker("test")
    db = await worker.call(full_database, path)

    def too_big() -> None:
        with translated(path, "remedy"):
            db.execute("INSERT INTO t VALUES (zeroblob(100000))")

    try:
        with pytest.raises(DiskFullError):
            await worker.call(too_big)
    finally:
        await worker.call(db.close)
        await worker.aclose()


def test_a_corrupt_database_becomes_state_unavailable_naming_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a SQLite database, only text pretending to be one " * 100)
    db = connect(path)
    with pytest.raises(StateUnavailableError, match="move it aside") as caught, translated(path, "move it aside"):
        db.execute("SELECT * FROM sqlite_master").fetchall()
    assert str(path) in str(caught.value)
    db.close()


def test_the_state_store_names_the_recovery_command_for_a_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "data" / "state" / "gateway.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage " * 1000)
    with pytest.raises(StateUnavailableError, match=r"cmm_twin\.gateway\.recover --data-dir"):
        StateStore(path)


def test_other_errors_pass_unchanged(tmp_path: Path) -> None:
    db = connect(tmp_path / "ok.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="syntax error"), translated(tmp_path, "remedy"):
        db.execute("SELEKT 1")
    with pytest.raises(OSError) as caught, translated(tmp_path, "remedy"):
        raise OSError(errno.EACCES, "denied")
    assert not isinstance(caught.value, DiskFullError)
    with pytest.raises(DiskFullError), translated(tmp_path, "remedy"):
        raise OSError(errno.ENOSPC, "No space left on device")
    db.close()


def test_a_database_that_cannot_be_opened(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory.sqlite"
    directory.mkdir()
    with pytest.raises(StateUnavailableError, match="cannot be opened"):
        connect(directory)
