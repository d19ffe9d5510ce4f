"""The sink runners on their own: a durable runner over a real spool (SQLite in tmp_path) feeding a
fake sink whose outcomes are scripted, and a live runner feeding a fake live sink. No gateway, no
network: each test drives one duty of the runner (see docs/architecture.md, "The plugin
contracts" and "Delivery guarantees") and asserts what reached the sink, the spool and the log."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from cmm_twin.gateway.live_runner import LiveRunner
from cmm_twin.gateway.runner import DurableRunner, RunnerSettings
from cmm_twin.gateway.sinks.base import Delivered, Refused, Rejected, Retry, Sink, Split, WriteOutcome
from cmm_twin.gateway.state import AsyncState, StateStore
from cmm_twin.gateway.status import GatewayStatus, SinkState, SinkStatus
from cmm_twin.records import RecordBatch
from tests.test_opcua_sink import make_batch

DEADLINE_S = 60.0
SINK = "fake"
FAST = RunnerSettings(batch_size=2, backoff_min_s=0.01, backoff_max_s=0.05)

Step = WriteOutcome | BaseException
"""A scripted answer of the fake sink: an outcome to return, or an exception to raise."""


def records(n: int) -> RecordBatch:
    """`n` records m-0 .. m-(n-1), in that order."""
    base = time.time_ns()
    return make_batch([(f"CMM-0{i % 3 + 1}", base + i * 1000, 100.0 + i * 1e-4, "PASS") for i in range(n)])


class ScriptedSink(Sink):
    """Answers each write with the next scripted step, then `Delivered`; remembers every batch."""

    def __init__(self, *script: Step, durable: bool = True, columns: tuple[str, ...] | None = None) -> None:
        self.name = SINK
        self.durable = durable
        self.columns = columns
        self.script = list(script)
        self.writes: list[list[str]] = []
        """measurement_id of each record of each write, in call order."""
        self.refusing: str | None = None
        """While set, every write is refused with this reason (the script waits)."""
        self.refused = 0

    async def open(self) -> None:
        return None

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        self.writes.append(list(batch.measurement_id))
        if self.refusing is not None:
            self.refused += 1
            return Refused(self.refusing)
        step = self.script.pop(0) if self.script else Delivered()
        if isinstance(step, BaseException):
            raise step
        return step

    async def close(self) -> None:
        return None


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AsyncState]:
    store = StateStore(tmp_path / "state" / "gateway.sqlite")
    store.register_sinks([SINK])
    async_state = AsyncState(store)
    yield async_state
    async_state.close()


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    """Wait (60 s at most) until `condition` holds."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"still waiting after {DEADLINE_S:.0f} s: {what}"
        await asyncio.sleep(0.01)


class Running:
    """A durable runner over `state` started as a task; `stop()` sets its stop event and waits."""

    def __init__(self, sink: Sink, state: AsyncState, settings: RunnerSettings = FAST) -> None:
        self.delivered: list[str] = []
        self.status = SinkStatus(durable=True)
        self.runner = DurableRunner(
            sink,
            state,
            self.status,
            settings,
            asyncio.Event(),
            on_delivered=lambda name, batch: self.delivered.extend(batch.measurement_id),
            gateway_status=GatewayStatus(),
        )
        self.state = state
        self.stop_event = asyncio.Event()
        self.task = asyncio.ensure_future(self.runner.run(self.stop_event))

    async def acked(self) -> int:
        return await self.state.call(self.state.store.acked_seq, SINK)

    async def wait_acked(self, seq: int) -> None:
        async def done() -> bool:
            assert not self.task.done() or self.task.exception() is None
            return await self.acked() >= seq

        await until(done, f"acknowledged up to seq {seq}")

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, DEADLINE_S)


async def spool(state: AsyncState, batch: RecordBatch) -> None:
    await state.call(state.store.commit, [], batch, {})


async def test_delivers_in_order_in_batches_and_acknowledges(state: AsyncState) -> None:
    await spool(state, records(5))
    sink = ScriptedSink()
    run = Running(sink, state)
    await run.wait_acked(5)
    await run.stop()
    assert sink.writes == [["m-0", "m-1"], ["m-2", "m-3"], ["m-4"]]
    assert run.delivered == [f"m-{i}" for i in range(5)]
    assert run.status.rows_out == 5
    assert run.status.state is SinkState.CONNECTED
    await run.runner.refresh_status()
    assert run.status.buffer_depth == 0


async def test_retry_resends_the_same_batch_after_retry_after(
    state: AsyncState, caplog: pytest.LogCaptureFixture
) -> None:
    await spool(state, records(4))
    retry_after_s = 0.3
    sink = ScriptedSink(Retry("503 busy", retry_after_s=retry_after_s), Retry("503 busy", retry_after_s=retry_after_s))
    sent_at: list[float] = []
    write = sink.write

    async def timed_write(batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        sent_at.append(time.monotonic())
        return await write(batch, prepared)

    sink.write = timed_write  # type: ignore[method-assign]
    settings = RunnerSettings(batch_size=2, backoff_min_s=0.01, backoff_max_s=1.0)
    with caplog.at_level(logging.INFO, logger="cmm_twin.gateway.runner"):
        run = Running(sink, state, settings)
        await run.wait_acked(4)
        await run.stop()
    assert sink.writes == [["m-0", "m-1"]] * 3 + [["m-2", "m-3"]], "the same batch again, then the next"
    assert run.delivered == ["m-0", "m-1", "m-2", "m-3"]
    # A lower bound only (a busy machine can only make the gap longer): the backoff of 10..20 ms
    # was raised to the receiver's Retry-After. The 10 ms margin is the event loop's clock resolution.
    assert sent_at[1] - sent_at[0] >= retry_after_s - 0.01
    assert sent_at[2] - sent_at[1] >= retry_after_s - 0.01
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Network Lost! Buffering..." in m for m in messages) == 1, "once per outage"
    assert sum("Flushing buffer..." in m for m in messages) == 1
    assert run.status.state is SinkState.CONNECTED and run.status.last_error is None


async def test_split_halves_until_the_receiver_accepts(state: AsyncState) -> None:
    await spool(state, records(4))

    class OneAtATime(ScriptedSink):
        async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
            self.writes.append(list(batch.measurement_id))
            return Split("413 too large") if len(batch) > 1 else Delivered()

    sink = OneAtATime()
    run = Running(sink, state, RunnerSettings(batch_size=4, backoff_min_s=0.01, backoff_max_s=0.05))
    await run.wait_acked(4)
    await run.stop()
    assert sink.writes == [
        ["m-0", "m-1", "m-2", "m-3"],
        ["m-0", "m-1"],
        ["m-0"],
        ["m-1"],
        ["m-2", "m-3"],
        ["m-2"],
        ["m-3"],
    ]
    assert run.delivered == ["m-0", "m-1", "m-2", "m-3"]
    assert run.runner.dead_lettered == 0


@pytest.mark.parametrize("columns", [None, ("measurement_id", "timestamp_ns")], ids=["all-columns", "few-columns"])
async def test_rejected_records_go_to_the_dead_letter_file_and_the_rest_is_delivered(
    state: AsyncState, tmp_path: Path, columns: tuple[str, ...] | None
) -> None:
    await spool(state, records(4))
    dead = tmp_path / "dead-letters.jsonl"
    sink = ScriptedSink(Rejected({1: "feature: unknown"}), columns=columns)
    settings = RunnerSettings(batch_size=4, backoff_min_s=0.01, backoff_max_s=0.05, dead_letter_path=dead)
    run = Running(sink, state, settings)
    await run.wait_acked(4)
    await run.stop()
    assert sink.writes == [["m-0", "m-1", "m-2", "m-3"], ["m-0", "m-2", "m-3"]]
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert len(lines) == 1 and run.runner.dead_lettered == 1
    assert lines[0]["sink"] == SINK and lines[0]["reason"] == "feature: unknown"
    # The whole record, also when the sink reads only a few columns from the spool.
    assert lines[0]["record"]["measurement_id"] == "m-1"
    assert lines[0]["record"]["part_id"] == "P0001" and lines[0]["record"]["feature"] == "length_1"


async def test_refused_keeps_the_data_spooled_and_resumes_when_accepted(
    state: AsyncState, caplog: pytest.LogCaptureFixture
) -> None:
    await spool(state, records(3))
    sink = ScriptedSink()
    sink.refusing = "401 Unauthorized"
    with caplog.at_level(logging.INFO, logger="cmm_twin.gateway.runner"):
        run = Running(sink, state)
        await until(lambda: sink.refused >= 3 and run.status.state is SinkState.REFUSED, "refused three times")
        assert run.status.last_error == "401 Unauthorized"
        assert await run.acked() == 0
        assert (await state.call(state.store.pending, SINK))[0] == 3, "everything stays spooled"
        assert run.delivered == []
        sink.refusing = None  # the token is fixed
        await run.wait_acked(3)
        await run.stop()
    assert run.delivered == ["m-0", "m-1", "m-2"]
    assert run.status.state is SinkState.CONNECTED
    assert sum("refuses the gateway" in r.getMessage() for r in caplog.records) == 1, "said once, not per try"
    assert all(ids == ["m-0", "m-1"] for ids in sink.writes[:-2]), "the refused batch is the one sent again"


async def test_a_sink_that_raises_is_retried_and_logged_once_with_its_name(
    state: AsyncState, caplog: pytest.LogCaptureFixture
) -> None:
    await spool(state, records(2))
    sink = ScriptedSink(RuntimeError("bug in the sink"))
    with caplog.at_level(logging.INFO, logger="cmm_twin.gateway.runner"):
        run = Running(sink, state)
        await run.wait_acked(2)
        await run.stop()
    assert sink.writes == [["m-0", "m-1"], ["m-0", "m-1"]]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == f"{SINK}: unexpected error in write"
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], RuntimeError)
    assert run.delivered == ["m-0", "m-1"]


async def test_stop_mid_batch_leaves_it_spooled_and_the_next_runner_sends_it_again(state: AsyncState) -> None:
    await spool(state, records(4))
    first = ScriptedSink(Delivered(), *[Retry("connection refused")] * 1000)
    run = Running(first, state)
    await until(lambda: len(first.writes) >= 3, "the second batch tried twice")
    await run.stop()
    assert await run.acked() == 2, "the first batch is acknowledged, the second is not"
    assert run.delivered == ["m-0", "m-1"]

    second = ScriptedSink()
    rerun = Running(second, state)
    await rerun.wait_acked(4)
    await rerun.stop()
    assert second.writes == [["m-2", "m-3"]], "at-least-once: the batch in hand is sent again, nothing skipped"


class LiveSink(ScriptedSink):
    """A live sink (like OPC UA tags): the live runner ignores outcomes, only exceptions count."""

    def __init__(self, *script: Step) -> None:
        super().__init__(*script, durable=False)


async def test_live_runner_coalesces_when_full_and_writes_what_is_queued_on_stop() -> None:
    sink = LiveSink()
    status = SinkStatus()
    delivered: list[str] = []
    runner = LiveRunner(sink, status, max_batches=2, on_delivered=lambda _, b: delivered.extend(b.measurement_id))
    batches = [make_batch([("CMM-01", time.time_ns() + i, 100.0, "PASS")]) for i in range(3)]
    stamps = [int(b.timestamp_ns[0]) for b in batches]
    for batch in batches:
        runner.offer(batch)
    assert runner.superseded_rows == 2, "the third batch coalesced the queue: one characteristic, the newest stays"
    stop = asyncio.Event()
    stop.set()  # stopping already: the queued batches are still written
    written: list[int] = []
    write = sink.write

    async def recording_write(batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        written.append(int(batch.timestamp_ns[0]))
        return await write(batch, prepared)

    sink.write = recording_write  # type: ignore[method-assign]
    await asyncio.wait_for(runner.run(stop), DEADLINE_S)
    assert written == stamps[2:], "only the newest value of the characteristic is written"
    assert status.rows_out == 1 and len(delivered) == 1
    assert runner.idle


async def test_live_runner_never_loses_the_newest_value_of_any_characteristic_in_a_burst() -> None:
    """A backlog of many machines at start-up: 40 batches of 12 machines x 3 features offered before
    the sink writes anything; every characteristic's newest record is written, in arrival order."""
    sink = LiveSink()
    status = SinkStatus()
    runner = LiveRunner(sink, status, max_batches=2)
    base = time.time_ns()
    offered: list[tuple[str, str, int]] = []
    for b in range(40):
        machines = [f"CMM-{(b * 5 + k) % 12:02d}" for k in range(6)]  # each batch: 6 of the 12 machines
        rows = [(m, base + b * 100 + k, 100.0, "PASS") for k, m in enumerate(machines)]
        batch = make_batch(rows, feature=[f"F{(b + k) % 3}" for k in range(6)])
        offered += zip(batch.machine_id, batch.feature, batch.timestamp_ns.tolist(), strict=True)
        runner.offer(batch)
    newest = {(m, f): t for m, f, t in offered}
    assert len(newest) == 36, "the burst covers every machine and feature"
    written: list[tuple[str, str, int]] = []
    write = sink.write

    async def recording_write(batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        written.extend(zip(batch.machine_id, batch.feature, batch.timestamp_ns.tolist(), strict=True))
        return await write(batch, prepared)

    sink.write = recording_write  # type: ignore[method-assign]
    stop = asyncio.Event()
    stop.set()
    await asyncio.wait_for(runner.run(stop), DEADLINE_S)
    assert {(m, f): t for m, f, t in written} == newest, "the newest value of every characteristic arrives"
    assert [t for *_, t in written] == sorted(t for *_, t in written), "in arrival order"
    assert runner.superseded_rows + len(written) == len(offered)
    assert len(runner.queue) == 0 and len(written) <= 36 + 6, "bounded: one record per characteristic, plus a batch"


async def test_live_runner_logs_a_failing_write_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    sink = LiveSink(RuntimeError("tag write failed"))
    status = SinkStatus()
    runner = LiveRunner(sink, status, max_batches=4)
    stop = asyncio.Event()
    task = asyncio.ensure_future(runner.run(stop))
    with caplog.at_level(logging.INFO, logger="cmm_twin.gateway.runner"):
        runner.offer(records(2))
        runner.offer(records(3))
        await until(lambda: len(sink.writes) == 2 and status.rows_out == 3, "both batches written")
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert status.state is SinkState.CONNECTED
    assert status.rows_out == 3, "the failed batch is skipped, not counted"
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].getMessage().startswith(f"{SINK}: ")
    assert runner.superseded_rows == 0
