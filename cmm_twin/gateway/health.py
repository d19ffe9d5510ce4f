"""Gateway health as an internal source (like Vector's `internal_metrics`).

When a sink's interval comes round (`Sink.health_interval_s`) the `HealthSource` takes a
`GatewayHealth` snapshot of the gateway's figures and offers it to that sink's runner; between two
due times it sleeps (an idle gateway wakes only when a sample is due). The runners deliver it
through the same sink interface as the measurements (`Sink.write_health`): a live runner hands over
the newest sample; a durable runner keeps a bounded queue of samples and forgets them only once the
receiver holds them, so the rise and fall of the buffer during an outage of the receiver itself is
written when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cmm_twin.gateway.status import GatewayStatus, SinkState
from cmm_twin.gateway.waits import wait_or_stop

log = logging.getLogger(__name__)

TICK_S = 0.25
"""Samples due within this much of each other are taken together (one snapshot, one wake-up)."""


@dataclass(frozen=True)
class GatewayHealth:
    """The gateway's figures at one instant (immutable: safe to keep in a queue)."""

    timestamp_ns: int
    buffer_depth: int
    """Records not yet acknowledged, all durable sinks together."""
    oldest_age_s: float
    """Age of the oldest unacknowledged record of any sink (0 when none)."""
    files_processed: int
    rows_in: int
    rows_rejected: int
    sink_states: Mapping[str, SinkState]

    def connected(self, sink_name: str) -> bool:
        """True when the named sink exists and was delivering."""
        return self.sink_states.get(sink_name) is SinkState.CONNECTED

    def state_of(self, sink_name: str) -> SinkState | None:
        """The named sink's state, or None when there is no such sink."""
        return self.sink_states.get(sink_name)

    @classmethod
    def of(cls, status: GatewayStatus, timestamp_ns: int | None = None) -> GatewayHealth:
        """A snapshot of `status` now (or at `timestamp_ns`)."""
        return cls(
            timestamp_ns=time.time_ns() if timestamp_ns is None else timestamp_ns,
            buffer_depth=status.buffer_depth,
            oldest_age_s=max((s.oldest_age_s for s in status.sinks.values()), default=0.0),
            files_processed=status.files_processed,
            rows_in=status.rows_in,
            rows_rejected=status.rows_rejected,
            sink_states={name: sink.state for name, sink in status.sinks.items()},
        )


class HealthConsumer(Protocol):
    """What the source feeds: a runner whose sink wants health."""

    def offer_health(self, sample: GatewayHealth) -> None:
        """Take `sample` (never waits)."""


class HealthSource:
    """Samples the gateway's status and offers it to each consumer at its own interval."""

    def __init__(self, status: GatewayStatus, consumers: Sequence[tuple[HealthConsumer, float]]) -> None:
        self.status = status
        self._consumers = list(consumers)
        self._due = [0.0 for _ in self._consumers]

    def tick(self, now_monotonic: float | None = None) -> None:
        """Offer a fresh snapshot to every consumer whose interval has passed."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        sample: GatewayHealth | None = None
        for index, (consumer, interval_s) in enumerate(self._consumers):
            if now < self._due[index]:
                continue
            # Aligned to the interval (minus a little, for the tick's own jitter): a slow loop
            # never makes the samples drift further and further apart.
            self._due[index] = now + interval_s - TICK_S / 2
            sample = sample or GatewayHealth.of(self.status)
            consumer.offer_health(sample)

    async def run(self, stop: asyncio.Event) -> None:
        """Offer samples as they fall due until `stop` is set; sleep in between."""
        while not stop.is_set():
            self.tick()
            if not self._due:
                await stop.wait()
                return
            await wait_or_stop(stop, min(self._due) - time.monotonic() + TICK_S / 2)
