"""`LiveRunner`: feeds a live sink (OPC UA tags, the page) straight from the pipeline.

The queue is bounded: when it is full the OLDEST batch is dropped on purpose (a tag shows the
newest measurement, so an older value is superseded anyway), counted, and handed to the sink's
`superseded` so a sink that keeps totals still counts it. Gateway health samples (the internal
health source) are handed over newest-only: a live view needs the present, not the past.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sink_lifecycle import SinkOpener
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.status import SinkState, SinkStatus
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)


class LiveRunner:
    """Feeds a live sink from a bounded queue; drops the oldest batch when full (see module doc)."""

    def __init__(
        self,
        sink: Sink,
        status: SinkStatus,
        max_batches: int | None = None,
        on_delivered: Callable[[str, RecordBatch], None] | None = None,
        opener: SinkOpener | None = None,
    ) -> None:
        self.sink = sink
        self.on_delivered = on_delivered
        self.status = status
        self.opener = opener
        """Opens the sink first (retrying) when given; None: the sink is open already."""
        self.queue: asyncio.Queue[RecordBatch] = asyncio.Queue(maxsize=max_batches or sink.live_queue_batches)
        self.dropped_batches = 0
        self._health: GatewayHealth | None = None
        self._wake = asyncio.Event()

    def offer(self, batch: RecordBatch) -> None:
        """Queue `batch` without waiting; when full, the oldest queued batch makes room."""
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                dropped = self.queue.get_nowait()
                self.dropped_batches += 1
                self._superseded(dropped)
        self.queue.put_nowait(batch)
        self._wake.set()

    def offer_health(self, sample: GatewayHealth) -> None:
        """Keep `sample` as the newest health to hand over (an older one not yet written is dropped)."""
        self._health = sample
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing queued."""
        return self.queue.empty()

    async def run(self, stop: asyncio.Event) -> None:
        """Write queued batches until `stop` is set, then write what is queued and return."""
        if self.opener is not None and not await self.opener.open_retrying(stop):
            self._drain_unwritten()
            return
        self.status.state = SinkState.CONNECTED
        while not (stop.is_set() and self.queue.empty()):
            if self.queue.empty() and self._health is None:
                self._wake.clear()
                await wait_or_stop(stop, None, self._wake)
                continue
            if not self.queue.empty():
                await self._write(self.queue.get_nowait())
            if self._health is not None:
                sample, self._health = self._health, None
                await self._write_health(sample)

    async def _write(self, batch: RecordBatch) -> None:
        try:
            await self.sink.write(batch)
            self.status.rows_out += len(batch)
            if self.on_delivered is not None:
                self.on_delivered(self.sink.name, batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: write failed; the values of this batch are skipped", self.sink.name)

    async def _write_health(self, sample: GatewayHealth) -> None:
        try:
            await self.sink.write_health([sample])
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: writing the gateway's health failed", self.sink.name)

    def _superseded(self, batch: RecordBatch) -> None:
        try:
            self.sink.superseded(batch)
        except Exception:  # a sink bug must not stop the pipeline that offers batches
            log.exception("%s: unexpected error in superseded", self.sink.name)

    def _drain_unwritten(self) -> None:
        """Stopping before the sink ever opened: what is queued is superseded, not lost silently."""
        while not self.queue.empty():
            self._superseded(self.queue.get_nowait())
