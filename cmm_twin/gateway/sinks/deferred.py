"""A stand-in for a sink whose implementation is heavy to load (the OPC UA server: asyncua costs
0.5-1 s of imports before its address space is built).

The gateway starts with the stand-in: HTTP and the intake come up without waiting for the import.
The first `open` imports and builds the real sink in a thread, then opens it; from then on every
call goes to it. Before that, what a runner may call early is harmless: `superseded` and
`rejected` have nothing to update yet (the real sink starts from the newest records anyway), and
`health_info`, `describe` and `ping` say nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cmm_twin.gateway.sinks.base import Sink, WriteOutcome
from cmm_twin.records import RecordBatch

if TYPE_CHECKING:
    from aiohttp import web

    from cmm_twin.gateway.health import GatewayHealth


class DeferredSink(Sink):
    """Builds the real sink with `factory` at the first `open` (see the module docstring). The
    real sink must have the same name, durability, health interval and live queue length (the
    runner reads them before the first `open`), and add no HTTP routes
    (its `add_routes` is called after HTTP started, to let it take what it needs from the app)."""

    opens_in_background = True

    def __init__(
        self, name: str, factory: Callable[[], Sink], *, durable: bool, health_interval_s: float | None
    ) -> None:
        self.name = name
        self.durable = durable
        self.health_interval_s = health_interval_s
        self._factory = factory
        self._app: web.Application | None = None
        self.target: Sink | None = None
        """The real sink, once the first `open` built it."""

    def build(self) -> Sink:
        """The real sink, built on the first call (imports its module: call it off the event loop)."""
        if self.target is None:
            target = self._factory()
            declared = (self.name, self.durable, self.health_interval_s, self.live_queue_batches)
            if (target.name, target.durable, target.health_interval_s, target.live_queue_batches) != declared:
                raise RuntimeError(f"deferred sink {self.name}: the real sink differs from its stand-in")
            if self._app is not None:
                target.add_routes(self._app)
            self.target = target
        return self.target

    async def open(self) -> None:
        """Build the real sink in a thread (first call), then open it."""
        target = self.target if self.target is not None else await asyncio.to_thread(self.build)
        await target.open()

    def _real(self) -> Sink:
        if self.target is None:
            raise RuntimeError(f"sink {self.name} used before it was opened")
        return self.target

    def prepare(self, batch: RecordBatch) -> object:
        """The real sink's `prepare`."""
        return self._real().prepare(batch)

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """The real sink's `write`."""
        return await self._real().write(batch, prepared)

    async def close(self) -> None:
        """The real sink's `close` (only ever after an `open` that succeeded)."""
        if self.target is not None:
            await self.target.close()

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """The real sink's `write_health`."""
        return await self._real().write_health(samples)

    def superseded(self, batch: RecordBatch) -> None:
        """The real sink's `superseded`; nothing before it exists."""
        if self.target is not None:
            self.target.superseded(batch)

    def health_info(self) -> dict[str, Any]:
        """The real sink's, or nothing yet."""
        return self.target.health_info() if self.target is not None else {}

    async def rejected(self, keys: Sequence[tuple[str, str]]) -> None:
        """The real sink's `rejected`; nothing before it exists."""
        if self.target is not None:
            await self.target.rejected(keys)

    def add_routes(self, app: web.Application) -> None:
        """Keep the app for the real sink."""
        self._app = app

    def describe(self) -> str | None:
        """The real sink's description, or none yet."""
        return self.target.describe() if self.target is not None else None

    async def ping(self) -> bool | None:
        """The real sink's `ping`, or unknown yet."""
        return await self.target.ping() if self.target is not None else None
