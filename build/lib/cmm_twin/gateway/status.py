"""Live figures of the gateway, read by /health, /metrics and the OPC UA `Gateway` object."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class SinkState(enum.StrEnum):
    """What a sink is doing now, as /health, /metrics and the page show it. Every value it takes:"""

    STARTING = "starting"
    """Not open yet: its runner is opening it (the first attempt)."""
    FAILED = "failed"
    """`open` failed (e.g. the OPC UA port is taken). The runner retries with backoff; meanwhile
    /health answers 503, and a durable sink's records stay spooled."""
    CONNECTED = "connected"
    """Open and delivering; for a durable sink, its last write or idle ping reached the receiver."""
    DISCONNECTED = "disconnected"
    """Idle, and the idle ping did not reach the receiver (nothing is waiting to be sent)."""
    BUFFERING = "buffering"
    """A write failed transiently (outage, timeout, 5xx): records stay spooled and are retried."""
    REFUSED = "refused"
    """The receiver refuses the gateway (401/403, wrong organisation or bucket): forwarding stopped,
    the data stays spooled, retried every `backoff_max_s` until the configuration is fixed."""
    CLOSED = "closed"
    """Closed at shutdown."""


@dataclass
class SinkStatus:
    """The live figures of one sink (see `SinkState` for its states)."""

    state: SinkState = SinkState.STARTING
    buffer_depth: int = 0
    oldest_age_s: float = 0.0
    rows_out: int = 0
    last_error: str | None = None
    durable: bool = False
    """Fed from the spool: its buffer depth counts spooled records it has not acknowledged."""
    info: Callable[[], dict[str, Any]] | None = None
    """More of what /health shows of this sink (the sink's `health_info`), or None."""


@dataclass
class GatewayStatus:
    """Counters and per-sink state; one instance per running gateway, mutated on the event loop."""

    started_monotonic: float = field(default_factory=time.monotonic)
    files_processed: int = 0
    rows_in: int = 0
    rows_rejected: int = 0
    sinks: dict[str, SinkStatus] = field(default_factory=dict)
    spool_bytes: int = 0
    intake_paused: bool = False
    """True while the spool is at its limit and new files wait in the inbox."""
    disk_full_in: dict[str, str] = field(default_factory=dict)
    """What cannot be written for lack of space now (what -> error); empty when there is room."""

    @property
    def disk_full(self) -> bool:
        """True while a write of the gateway's own files fails for lack of space."""
        return bool(self.disk_full_in)

    def disk_full_begin(self, what: str, error: str) -> None:
        """Note that `what` cannot be written for lack of space; the first one logs ONE warning."""
        if not self.disk_full_in:
            log.warning(
                "disk full: %s (%s). Intake paused: new files wait in the inbox; retrying until space is freed",
                what,
                error,
            )
        self.disk_full_in[what] = error

    def disk_full_end(self, what: str) -> None:
        """Note that `what` was written again; when nothing is short of space any more, log it."""
        if self.disk_full_in.pop(what, None) is not None and not self.disk_full_in:
            log.info("disk has room again: intake resumed, nothing was lost")

    @property
    def uptime_s(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self.started_monotonic

    @property
    def buffer_depth(self) -> int:
        """Records not yet acknowledged, all durable sinks together."""
        return sum(s.buffer_depth for s in self.sinks.values())

    def spooled(self, records: int) -> None:
        """Count newly spooled records in every durable sink's depth at once (its runner corrects
        the figure from the spool), so /health never shows an empty buffer for spooled records."""
        for sink in self.sinks.values():
            if sink.durable:
                sink.buffer_depth += records

    def connected(self, sink_name: str) -> bool:
        """True when the named sink exists and is delivering."""
        sink = self.sinks.get(sink_name)
        return sink is not None and sink.state is SinkState.CONNECTED
