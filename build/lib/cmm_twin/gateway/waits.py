"""The one way the gateway's loops wait: until a stop event (or another event) is set, or a time
has passed."""

from __future__ import annotations

import asyncio


async def wait_or_stop(stop: asyncio.Event, timeout_s: float | None, *others: asyncio.Event) -> None:
    """Sleep up to `timeout_s` (None: no limit), returning early when `stop` or any of `others`
    is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, *others)]
    try:
        timeout = None if timeout_s is None else max(0.0, timeout_s)
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
