"""Opening and closing a sink for its runner: a sink that fails to open is retried with backoff
(as Telegraf does for a plugin's StartupError with retry), and its state says so meanwhile."""

from __future__ import annotations

import asyncio
import logging
import random

from cmm_twin.gateway.sinks.base import Sink, SinkStartError
from cmm_twin.gateway.state import DiskFullError, StateUnavailableError
from cmm_twin.gateway.status import SinkState, SinkStatus
from cmm_twin.gateway.waits import wait_or_stop

log = logging.getLogger(__name__)

OPEN_RETRY_MIN_S = 1.0
OPEN_RETRY_MAX_S = 60.0
"""Backoff between attempts to open a sink that failed to open (doubling, with jitter)."""


class SinkOpener:
    """Owns `open` and `close` of one sink; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        status: SinkStatus,
        retry_min_s: float = OPEN_RETRY_MIN_S,
        retry_max_s: float = OPEN_RETRY_MAX_S,
    ) -> None:
        self.sink = sink
        self.status = status
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.is_open = False
        self.attempts = 0
        self.attempted = asyncio.Event()
        """Set once the first attempt to open has ended (opened or failed)."""

    async def try_open(self) -> bool:
        """One attempt to open the sink; False (state `failed`, error logged) when it failed.
        The gateway's own local stores raise DiskFullError / StateUnavailableError on the first
        attempt: those stop the gateway with one line naming the file."""
        self.attempts += 1
        try:
            return await self._open()
        finally:
            self.attempted.set()

    async def _open(self) -> bool:
        try:
            await self.sink.open()
        except (StateUnavailableError, DiskFullError):
            if self.attempts == 1:
                raise
            return self._failed("the local store is unavailable", exc_info=False)
        except asyncio.CancelledError:
            raise
        except SinkStartError as exc:
            return self._failed(str(exc), exc_info=False)
        except Exception as exc:
            return self._failed(str(exc) or repr(exc), exc_info=True)
        self.is_open = True
        if self.status.state is SinkState.FAILED:  # its runner says what it does from here
            self.status.state = SinkState.STARTING
            self.status.last_error = None
        if self.attempts > 1:
            log.info("sink %s started (attempt %d)", self.sink.name, self.attempts)
        return True

    def _failed(self, reason: str, exc_info: bool) -> bool:
        first = self.status.state is not SinkState.FAILED or self.status.last_error != reason
        self.status.state = SinkState.FAILED
        self.status.last_error = reason
        if first:
            log.error(
                "sink %s could not start: %s (/health answers 503; retrying)",
                self.sink.name,
                reason,
                exc_info=exc_info and log.isEnabledFor(logging.DEBUG),
            )
        return False

    async def open_retrying(self, stop: asyncio.Event) -> bool:
        """Open the sink, retrying with backoff until it opens (True) or `stop` is set (False)."""
        delay_s = self.retry_min_s
        while not self.is_open:
            if self.attempts:
                await wait_or_stop(stop, random.uniform(delay_s / 2, delay_s))
                if stop.is_set():
                    return False
            delay_s = min(self.retry_max_s, delay_s * 2)
            if await self.try_open():
                return True
        return True

    async def close(self) -> None:
        """Close the sink if it is open (never raises); its state becomes `closed`."""
        if self.is_open:
            self.is_open = False
            try:
                await self.sink.close()
            except Exception:  # the contract says close never raises; a bug must not stop a shutdown
                log.exception("sink %s: unexpected error in close", self.sink.name)
            self.status.state = SinkState.CLOSED
