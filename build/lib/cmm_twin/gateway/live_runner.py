"""`LiveRunner`: feeds a live sink (OPC UA tags, the page) straight from the pipeline.

The queue is bounded, and coalesces when full: the queued batches and the new one become one batch
holding the newest record of each (machine, feature) in arrival order. A live sink shows the newest
value, so an older value of the same characteristic is superseded anyway; what is never lost is the
newest value of any machine or characteristic, however many machines a burst (a backlog at
start-up) holds. The superseded records are counted and handed to the sink's `superseded`, so a
sink that keeps totals still counts them. At most `max_batches` batches are queued, and a coalesced
one holds at most one record per characteristic seen in the burst. Gateway health samples (the
internal health source) are handed over newest-only: a live view needs the present, not the past.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import numpy as np

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sink_lifecycle import SinkOpener
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.status import SinkState, SinkStatus
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.records import RecordBatch, newest_per_characteristic

log = logging.getLogger(__name__)


def _coalesced(batch: RecordBatch) -> tuple[RecordBatch, RecordBatch]:
    """(the newest record of each (machine_id, feature) of `batch`, in arrival order; the others)."""
    keep = np.zeros(len(batch), dtype=bool)
    keep[newest_per_characteristic(batch)] = True
    return batch.take(np.flatnonzero(keep)), batch.take(np.flatnonzero(~keep))


class LiveRunner:
    """Feeds a live sink from a bounded queue that coalesces by characteristic when full (see
    module doc)."""

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
        self.max_batches = max(1, max_batches or sink.live_queue_batches)
        self.queue: deque[tuple[int, RecordBatch]] = deque()
        """(offer number, batch), oldest first."""
        self._offered = 0
        self.superseded_rows = 0
        """Records coalesced away (a newer record of the same characteristic was queued)."""
        self._health: GatewayHealth | None = None
        self._rejected: dict[tuple[str, str], int] = {}
        """Characteristics whose newest row was rejected, to hand to the sink once the batches
        offered before the rejection (up to the offer number held) are written."""
        self._wake = asyncio.Event()

    def offer(self, batch: RecordBatch) -> None:
        """Queue `batch` without waiting; when full, the queue coalesces into the newest record
        per characteristic (the older ones go to the sink's `superseded`)."""
        self._offered += 1
        if len(self.queue) >= self.max_batches:
            kept, superseded = _coalesced(RecordBatch.concat([*(b for _, b in self.queue), batch]))
            self.queue.clear()
            batch = kept
            if len(superseded):
                self.superseded_rows += len(superseded)
                self._superseded(superseded)
        self.queue.append((self._offered, batch))
        self._wake.set()

    def offer_rejected(self, keys: list[tuple[str, str]]) -> None:
        """Tell the sink, once what is queued now is written, that the newest rows of these
        (machine_id, feature) were rejected."""
        self._rejected.update(dict.fromkeys(keys, self._offered))
        self._wake.set()

    def offer_health(self, sample: GatewayHealth) -> None:
        """Keep `sample` as the newest health to hand over (an older one not yet written is dropped)."""
        self._health = sample
        self._wake.set()

    @property
    def idle(self) -> bool:
        """Nothing queued."""
        return not self.queue

    async def run(self, stop: asyncio.Event) -> None:
        """Write queued batches until `stop` is set, then write what is queued and return."""
        if self.opener is not None and not await self.opener.open_retrying(stop):
            self._drain_unwritten()
            return
        self.status.state = SinkState.CONNECTED
        while not (stop.is_set() and not self.queue):
            if not self.queue and self._health is None and not self._rejected:
                self._wake.clear()
                await wait_or_stop(stop, None, self._wake)
                continue
            if self.queue:
                await self._write(self.queue.popleft()[1])
            if self._rejected:
                await self._write_rejected(self.queue[0][0] - 1 if self.queue else self._offered)
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

    async def _write_rejected(self, written: int) -> None:
        """Hand the sink the rejections made after no more than the first `written` offers."""
        keys = [key for key, mark in self._rejected.items() if mark <= written]
        if not keys:
            return
        for key in keys:
            del self._rejected[key]
        try:
            await self.sink.rejected(keys)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: marking rejected rows failed", self.sink.name)

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
        while self.queue:
            self._superseded(self.queue.popleft()[1])
