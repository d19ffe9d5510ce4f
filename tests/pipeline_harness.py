"""The pipeline without a whole gateway: a real StateStore, a real inbox folder, a publish
callback that collects the batches; and a toy second source (`*.txt`, one measured length per
line) that proves a format is a plugin."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.ingest.inbox import InboxQueue
from cmm_twin.gateway.ingest.pipeline import Pipeline
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.sources import FileRejected, ParsedChunk, RowError, Source
from cmm_twin.gateway.sources.characteristics import Characteristic, Part, Reading, RowBuilder
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.gateway.state import AsyncState, StateStore
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.records import RecordBatch

DEADLINE_S = 60.0
_START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)


class NumbersSource(Source):
    """Toy format: `*.txt`, one measured length (mm) per line, everything else fixed."""

    name = "numbers"
    patterns: ClassVar[tuple[str, ...]] = ("*.txt",)

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        data = path.read_bytes()
        if not data.strip():
            raise FileRejected("no numbers")
        lines = data.decode().splitlines()
        good: list[tuple[int, float]] = []
        errors: list[RowError] = []
        for number, text in enumerate(lines, start=1):
            try:
                good.append((number, float(text)))
            except ValueError:
                errors.append(RowError(number, "measured_mm", f"not a number: {text!r}"))
        # The neutral model every real format uses: one characteristic, one part per line.
        length = Characteristic("1", "len", "mm", 100.0, -0.05, 0.05, 1)
        readings = [
            Reading(
                length,
                Part(
                    f"{path.stem}-{line}",
                    machine_id="CMM-T",
                    timestamp=_START + timedelta(seconds=line % 60),
                    part_temp_c=20.0,
                ),
                value,
                line,
            )
            for line, value in good
        ]
        return RowBuilder(self.settings, "csv").build(readings, errors, path.name, len(data), len(lines))


class PairSource(NumbersSource):
    """Toy format of two files: `x.pair` leads, `x.vals` holds the numbers (as `NumbersSource`)."""

    name = "pair"
    patterns = ("*.pair", "*.vals")
    companion_wait_s = 0.5

    @classmethod
    def leader(cls, name: str) -> str:
        return name[: -len(".vals")] + ".pair" if name.endswith(".vals") else name

    @classmethod
    def companions(cls, name: str) -> tuple[str, ...]:
        return (name[: -len(".pair")] + ".vals",)

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        chunk = super().read(path.with_suffix(".vals"))
        assert chunk is not None
        return ParsedChunk(chunk.rows, chunk.errors, path.stat().st_size, 1)


WITH_NUMBERS: tuple[type[Source], ...] = (*SOURCES, NumbersSource)
WITH_PAIRS: tuple[type[Source], ...] = (*SOURCES, PairSource)


@dataclass
class Harness:
    """A running pipeline and what it published."""

    config: GatewayConfig
    state: AsyncState
    queue: InboxQueue
    pipeline: Pipeline
    batches: list[RecordBatch] = field(default_factory=list)

    def part_ids(self) -> list[str]:
        return [p for batch in self.batches for p in batch.part_id]


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_pipeline(
    config: GatewayConfig,
    sources: Sequence[type[Source]] = SOURCES,
    stop_after_batches: int | None = None,
    batches: list[RecordBatch] | None = None,
) -> AsyncIterator[Harness]:
    """Run a Pipeline on `config`'s inbox until the block ends (or after `stop_after_batches`)."""
    for directory in (config.inbox, config.archive, config.quarantine, config.state_dir):
        directory.mkdir(parents=True, exist_ok=True)
    state = AsyncState(StateStore(config.state_dir / "gateway.sqlite"))
    stop = asyncio.Event()
    collected: list[RecordBatch] = [] if batches is None else batches

    def publish(batch: RecordBatch) -> None:
        collected.append(batch)
        if stop_after_batches is not None and len(collected) >= stop_after_batches:
            stop.set()

    status = GatewayStatus()
    queue = InboxQueue(config.inbox, sources)
    pipeline = Pipeline(config, state, status, GatewayMetrics(status), publish, True, asyncio.Event())
    harness = Harness(config, state, queue, pipeline, collected)
    queue.rescan()
    watch = asyncio.create_task(queue.watch(stop))
    run = asyncio.create_task(pipeline.run(queue, stop))
    try:
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(watch, run), DEADLINE_S)
        state.close()
