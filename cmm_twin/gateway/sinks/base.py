"""The sink interface and the outcomes a sink reports (docs/architecture.md, "Sinks").

Shaped after Telegraf's output plugins and Vector's acknowledgements: a sink only opens, writes a
batch and classifies the outcome, and closes. One runner (`cmm_twin.gateway.runner`) owns
opening (retried with backoff when it fails), batching, ordering, buffering, backoff,
dead-lettering and acknowledgement. Gateway health reaches a sink through the same runner
(`health_interval_s`, `write_health`): no sink is called from anywhere else.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.status import SinkState
from cmm_twin.records import RecordBatch

__all__ = [
    "Delivered",
    "Refused",
    "Rejected",
    "Retry",
    "Sink",
    "SinkStartError",
    "SinkState",
    "Split",
    "WriteOutcome",
]


@dataclass(frozen=True)
class Delivered:
    """The receiver holds every record of the batch (durably, for a durable sink)."""


@dataclass(frozen=True)
class Retry:
    """A transient failure (connection, timeout, 5xx, 408, 429): send the same batch again later.

    `retry_after_s` is the receiver's own wish (`Retry-After`), honoured by the runner.
    """

    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Split:
    """The batch is too large for the receiver (413): send it again in smaller parts."""

    reason: str


@dataclass(frozen=True)
class Rejected:
    """The receiver refused some records as invalid and stored nothing of the batch.

    `invalid` maps a position in the batch to the receiver's reason. The runner moves those
    records to the dead-letter file and sends the others again.
    """

    invalid: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    """The receiver refuses us (401/403, wrong configuration): stop loudly, keep the data."""

    reason: str


WriteOutcome = Delivered | Retry | Split | Rejected | Refused


class SinkStartError(CmmTwinError):
    """`open` failed in a way worth retrying (a port taken, a server not up yet); the message says
    what. Any other exception from `open` is retried the same way; this one is logged without a
    traceback."""


class Sink(abc.ABC):
    """A destination of result records.

    Contract (the runner keeps it, implementations rely on it):
    - `open` is awaited before any `write`. If it raises, the sink's state is `failed` (/health
      answers 503) and the runner calls `open` again with backoff until it succeeds, so a failed
      `open` must leave nothing half-started behind.
    - `write` is never called concurrently with itself, and never after `close`; `prepare` may run
      on another thread at any time between `open` and `close`.
    - `write` classifies what happened and returns an outcome; it raises only for bugs (the
      runner logs an unexpected exception and treats it as `Retry`).
    - A durable sink returns `Delivered` only when the receiver holds the records for good; the
      runner then acknowledges them in the spool, so a crash before that re-sends them
      (at-least-once, de-duplicated downstream by `measurement_id`).
    - `close` is awaited once after a successful `open`, also after a failed write, and must not
      raise.
    - `write_health` is called only when `health_interval_s` is set, never concurrently with
      `write`, with the gateway's health samples oldest first (a live sink gets the newest one).
    - `add_routes` is called once, before `open`, while the HTTP application is built.
    """

    name: str = "sink"
    durable: bool = True
    """Durable sinks are fed from the spool and acknowledged; live ones (OPC UA) get the newest rows."""
    columns: tuple[str, ...] | None = None
    """The record columns `write` uses (None: all); the runner reads only these from the spool
    and leaves the others blank."""
    batch_size: int | None = None
    """Records per `write` for a durable sink (None: the gateway's `[sinks] batch_size`)."""
    health_interval_s: float | None = None
    """Seconds between the gateway health samples this sink wants (None: none)."""
    opens_in_background: bool = False
    """True for a sink whose `open` takes seconds (the OPC UA server's address space): it opens in
    its runner's task once HTTP and the intake are up, and /health shows it `starting` meanwhile.
    Other sinks open before HTTP starts."""
    live_queue_batches: int = 2
    """For a live sink: batches its runner holds before it coalesces them to the newest record per
    characteristic (see `superseded`)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect or start serving."""

    def prepare(self, batch: RecordBatch) -> object:
        """Encode `batch` for `write` (e.g. its request body), or None (the default: `write`
        encodes). The runner calls it on a worker thread while the previous batch is on the
        wire, so it must be pure: no I/O, no shared state."""
        return None

    @abc.abstractmethod
    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Deliver `batch` (in order) and classify the outcome; `prepared` is what `prepare`
        returned for this very batch, or None (then `write` encodes it itself)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every resource; never raises."""

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """Deliver gateway health samples, oldest first. A durable sink's runner forgets them only
        on `Delivered` and offers them again later otherwise. The default ignores them."""
        return Delivered()

    def superseded(self, batch: RecordBatch) -> None:
        """For a live sink: the records of `batch` were coalesced away unwritten by its runner under
        load (a newer record of the same characteristic supersedes each). A sink that keeps totals
        counts them here; the default does nothing."""
        return

    def health_info(self) -> dict[str, Any]:
        """More of what /health shows in this sink's entry (e.g. a part that degraded); the
        default: nothing."""
        return {}

    async def rejected(self, keys: Sequence[tuple[str, str]]) -> None:
        """For a live sink: the newest rows of these (machine_id, feature) were rejected (after
        the records written before); a sink that shows values marks them. The default does nothing."""
        return

    def add_routes(self, app: web.Application) -> None:
        """Serve HTTP routes of this sink from the gateway's application (the page, the history
        API); the default serves none."""
        return

    def describe(self) -> str | None:
        """One line for the start-up log (e.g. an endpoint and its security), or None."""
        return None

    async def ping(self) -> bool | None:
        """Whether the receiver is reachable, asked while idle to show connectivity; None when
        the sink cannot tell (the default). Never called concurrently with `write`."""
        return None
