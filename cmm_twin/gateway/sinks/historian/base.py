"""What the two historian sinks share: the sink name and the queue of `gateway_health` samples.

The gateway takes a health sample every few seconds (`offer_health`). A historian sends the
waiting samples with its next batch of measurements, or on its own while idle, and forgets them
only once the receiver holds them, so the buffer's rise and fall during an outage of the
historian itself is written when it comes back. The queue is bounded: past `max_samples` the
oldest sample is dropped (counted), as a newer sample supersedes it for health anyway.
"""

from __future__ import annotations

import logging
from collections import deque

from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.sinks.historian.lineprotocol import FIELD_KEYS, TAG_KEYS, HealthSample

log = logging.getLogger(__name__)

HISTORIAN_SINK_NAME = "historian"
MAX_HEALTH_SAMPLES = 20_000
"""About 28 hours of samples at the default 5 s interval."""


class HistorianSink(Sink):
    """A durable sink that also keeps the gateway's health history."""

    name = HISTORIAN_SINK_NAME
    durable = True
    columns = ("timestamp_ns", *TAG_KEYS, *FIELD_KEYS)

    def __init__(self, max_samples: int = MAX_HEALTH_SAMPLES) -> None:
        self._health: deque[HealthSample] = deque(maxlen=max_samples)
        self.health_dropped = 0

    def offer_health(self, sample: HealthSample) -> None:
        """Queue a health sample to be written with the next write (or ping)."""
        if len(self._health) == self._health.maxlen:
            self.health_dropped += 1
        self._health.append(sample)

    def pending_health(self) -> list[HealthSample]:
        """The samples waiting to be written, oldest first."""
        return list(self._health)

    def health_written(self, samples: list[HealthSample]) -> None:
        """Forget `samples` (a prefix of what `pending_health` returned) once the receiver holds them."""
        if not samples:
            return
        newest_ns = samples[-1].timestamp_ns
        while self._health and self._health[0].timestamp_ns <= newest_ns:
            self._health.popleft()
