"""The inbox queue on its own: order, names, scans and watch events, claimed names, readiness."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from cmm_twin.gateway.ingest import inbox
from cmm_twin.gateway.ingest.inbox import InboxQueue
from tests.pipeline_harness import WITH_NUMBERS


def touch(path: Path, mtime_ns: int, text: str = "x\n") -> Path:
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_rescan_queues_claimed_names_oldest_first(tmp_path: Path) -> None:
    base = 1_700_000_000_000_000_000
    touch(tmp_path / "b.csv", base + 1)
    touch(tmp_path / "a.csv", base + 2)
    touch(tmp_path / "c.csv", base)
    touch(tmp_path / ".hidden.csv", base)
    touch(tmp_path / "notes.txt", base)
    queue = InboxQueue(tmp_path)
    assert queue.rescan()
    assert [p.name for p in queue.due(exclude=tmp_path / "none", limit=10)] == ["c.csv", "b.csv", "a.csv"]
    first, wait_s = queue.next_ready()
    assert first == queue.inbox / "c.csv" and wait_s == 0.0


def test_the_queue_is_keyed_by_name_and_keeps_places(tmp_path: Path) -> None:
    queue = InboxQueue(tmp_path)
    queue.add([tmp_path / "a.csv", tmp_path / "b.csv"])
    queue.add([Path("/elsewhere/a.csv"), tmp_path / "c.csv"])  # the same name: already queued
    assert len(queue) == 3
    assert queue.next_ready()[0] == queue.inbox / "a.csv"
    queue.later(queue.inbox / "a.csv", 60.0)  # others go first meanwhile
    assert queue.next_ready()[0] == queue.inbox / "b.csv"
    queue.done(queue.inbox / "b.csv")
    queue.done(queue.inbox / "c.csv")
    path, wait_s = queue.next_ready()
    assert path is None and 0.0 < wait_s <= 60.0


def test_an_ignored_name_comes_back_only_after_it_has_gone(tmp_path: Path) -> None:
    (tmp_path / "x.csv").mkdir()
    queue = InboxQueue(tmp_path)
    queue.rescan()
    queue.ignore(queue.inbox / "x.csv")
    queue.rescan()
    assert len(queue) == 0
    (tmp_path / "x.csv").rmdir()
    queue.rescan()
    touch(tmp_path / "x.csv", 1)
    queue.rescan()
    assert len(queue) == 1


def test_claimed_names_follow_the_sources(tmp_path: Path) -> None:
    touch(tmp_path / "lengths.TXT", 1)
    touch(tmp_path / "rows.CSV", 2)
    touch(tmp_path / "rows.csv.tmp", 3)
    queue = InboxQueue(tmp_path, WITH_NUMBERS)
    queue.rescan()
    assert [p.name for p in queue.due(tmp_path / "none", 10)] == ["lengths.TXT", "rows.CSV"]
    plain = InboxQueue(tmp_path)  # CSV only
    plain.rescan()
    assert [p.name for p in plain.due(tmp_path / "none", 10)] == ["rows.CSV"]


async def test_a_watch_event_queues_a_file_without_a_rescan(tmp_path: Path) -> None:
    queue = InboxQueue(tmp_path)
    stop = asyncio.Event()
    watch = asyncio.create_task(queue.watch(stop))
    try:
        await asyncio.sleep(0.5)  # the watcher is set up
        touch(tmp_path / "event.csv", 1)
        touch(tmp_path / "ignored.txt", 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while len(queue) == 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert queue.next_ready()[0] == queue.inbox / "event.csv"
        assert len(queue) == 1
    finally:
        stop.set()
        await watch


def test_readiness_waits_for_a_file_to_settle_and_keeps_what_it_saw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "writer_has_it_open", lambda path: None)  # no lease: the settle rule
    path = touch(tmp_path / "slow.csv", 1)
    queue = InboxQueue(tmp_path)
    first = queue.readiness.check(path, 0.2)
    assert not first.ready and 0.0 < first.wait_s <= 0.2
    time.sleep(0.25)
    ready = queue.readiness.check(path, 0.2)  # the same checker remembers the first look
    assert ready.ready and ready.size == 2
    assert not InboxQueue(tmp_path).readiness.check(path, 0.2).ready  # another queue saw nothing yet
