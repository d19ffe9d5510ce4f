"""An edge gateway that stays asleep when idle and answers early (issue 16, part 2).

The figures (idle CPU, start-up seconds, RSS) are in bench/bench_footprint.py; these tests check the
mechanisms: the inbox is watched by inotify events (no polling loop), with watchfiles where inotify
is unavailable, and HTTP and the intake run while a slow sink (OPC UA) is still being built.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.ingest import inbox
from cmm_twin.gateway.ingest.inbox import InboxQueue
from cmm_twin.gateway.ingest.inotify import DirectoryWatch
from cmm_twin.gateway.sinks.base import Delivered, Sink, WriteOutcome
from cmm_twin.gateway.sinks.deferred import DeferredSink
from cmm_twin.records import RecordBatch
from tests.gateway_harness import csv_row, drop_file, gateway_config, wait_for

HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,air_temp_c\n"


def read_all(watch: DirectoryWatch) -> list[str]:
    names, overflow = watch.read()
    assert not overflow
    return names


def test_directory_watch_reports_arrivals_and_the_directory_going(tmp_path: Path) -> None:
    inbox_dir = tmp_path / "inbox"
    inbox_dir.mkdir()
    watch = DirectoryWatch(inbox_dir)
    try:
        assert read_all(watch) == []  # nothing waiting: never blocks
        (tmp_path / "a.tmp").write_text("x")
        (tmp_path / "a.tmp").rename(inbox_dir / "renamed.csv")  # IN_MOVED_TO
        (inbox_dir / "written.csv").write_text("x")  # IN_CREATE, then IN_CLOSE_WRITE
        assert read_all(watch) == ["renamed.csv", "written.csv", "written.csv"]
        for path in inbox_dir.iterdir():
            path.unlink()
        inbox_dir.rmdir()
        with pytest.raises(OSError):
            watch.read()
    finally:
        watch.close()
        watch.close()  # idempotent


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "watchfiles"])
async def test_the_inbox_queues_a_renamed_file_from_events_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inotify: bool
) -> None:
    monkeypatch.setattr(inbox, "RESCAN_INTERVAL_S", 3600.0)  # only an event can queue the file
    if not inotify:

        def unavailable(directory: Path) -> DirectoryWatch:
            raise OSError(errno.ENOSYS, "inotify is Linux only")

        monkeypatch.setattr(inbox, "DirectoryWatch", unavailable)
    queue = InboxQueue(tmp_path)
    stop = asyncio.Event()
    watch = asyncio.create_task(queue.watch(stop))
    try:
        await asyncio.sleep(1.0)  # the watch is set up (and its first scan found nothing)
        assert len(queue) == 0
        drop_file(tmp_path, "event.csv", "x\n")
        drop_file(tmp_path, "ignored.txt", "x\n")
        await wait_for(lambda: len(queue) == 1, what="the renamed file queued")
        assert queue.next_ready()[0] == queue.inbox / "event.csv"
    finally:
        stop.set()
        await watch


class LiveRecorder(Sink):
    """A live sink that keeps the records it gets."""

    name = "slow"
    durable = False

    def __init__(self) -> None:
        self.rows = 0

    async def open(self) -> None:
        pass

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        self.rows += len(batch)
        return Delivered()

    async def close(self) -> None:
        pass


def get_health(port: int | None) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def test_http_and_the_intake_run_while_a_slow_sink_is_still_being_built(tmp_path: Path) -> None:
    release = threading.Event()
    real = LiveRecorder()

    def build_slowly() -> Sink:  # runs in a thread, like the import of asyncua
        assert release.wait(60), "never released"
        return real

    deferred = DeferredSink("slow", build_slowly, durable=False, health_interval_s=None)
    config = gateway_config(tmp_path)
    drop_file(config.inbox, "first.csv", HEADER + csv_row("P1") + csv_row("P2", feature="length_y"))
    gateway = Gateway(config, extra_sinks=[deferred], environ={})
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        await wait_for(lambda: gateway.http_port is not None, what="HTTP listening")
        port = gateway.http_port
        health = await asyncio.to_thread(get_health, port)
        assert health["sinks"]["slow"]["state"] == "starting"
        await wait_for(lambda: gateway.status.rows_in == 2, what="the intake reading the waiting file")
        assert not gateway.ready.is_set() and deferred.target is None and real.rows == 0
        release.set()
        await asyncio.wait_for(gateway.ready.wait(), 60)
        await wait_for(lambda: real.rows == 2, what="the rows read meanwhile reaching the slow sink")
        health = await asyncio.to_thread(get_health, port)
        assert health["sinks"]["slow"]["state"] == "connected"
        assert deferred.target is real
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 60)
    assert os.listdir(config.inbox) == []
