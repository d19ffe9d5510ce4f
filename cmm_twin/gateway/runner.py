"""The sink runners: the one place that owns opening, batching, ordering, buffering, backoff,
dead-lettering and acknowledgement (docs/architecture.md, "Delivery guarantees").

- `DurableRunner` feeds a durable sink (MES, historian) from the spool in `state/`: it reads a
  bounded page of records into an in-memory deque, sends them in order in batches, retries with
  exponential backoff and jitter (honouring `Retry-After`), splits batches the receiver finds too
  large, dead-letters records the receiver rejects as invalid, and acknowledges a batch in the
  spool only when the sink reports `Delivered`. Memory stays bounded whatever the backlog.
  When the disk is full (the acknowledgement, a dead-letter line or the sink's own store cannot
  be written), it says so once through `GatewayStatus.disk_full_begin` and retries with backoff:
  a failed acknowledgement leaves the cursor where it was, so nothing is skipped. Gateway health
  samples wait in a bounded queue and are written between batches or while idle, and forgotten
  only once the receiver holds them.
- `LiveRunner` (`cmm_twin.gateway.live_runner`) feeds a live sink (OPC UA tags, the page).

Both open their sink through a `SinkOpener`, which retries a sink that fails to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.live_runner import LiveRunner
from cmm_twin.gateway.sink_lifecycle import SinkOpener
from cmm_twin.gateway.sinks.base import Delivered, Refused, Rejected, Retry, Sink, Split, WriteOutcome
from cmm_twin.gateway.state import AsyncState, DiskFullError, is_disk_full
from cmm_twin.gateway.status import GatewayStatus, SinkState, SinkStatus
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.records import RecordBatch

__all__ = ["DurableRunner", "LiveRunner", "RunnerSettings"]

log = logging.getLogger(__name__)

STATUS_REFRESH_S = 0.25
"""How often a busy durable runner refreshes its buffer depth and oldest age."""
IDLE_PING_S = 10.0
"""How often an idle durable runner asks its sink whether the receiver is reachable (an idle edge
gateway must not keep a core busy: every wake-up costs; a new record wakes the runner at once)."""
DISK_RETRY_MIN_S = 0.5
DISK_RETRY_MAX_S = 5.0
"""Backoff of a write retried because the disk is full (space is freed by a person: seconds matter)."""
MAX_HEALTH_SAMPLES = 20_000
"""Health samples a durable runner keeps while its receiver is away: about 28 hours at 5 s. Past
it the oldest is dropped (counted): a newer sample supersedes it for health anyway."""


class _DiskFull(NamedTuple):
    """The sink's own store could not be written for lack of space (not an outage of a receiver)."""

    reason: str


class _Batch(NamedTuple):
    seqs: NDArray[np.int64]
    records: RecordBatch
    prepared: object


@dataclass(frozen=True)
class RunnerSettings:
    """How a durable sink is fed."""

    batch_size: int = 500
    page_size: int = 1000
    """Records read from the spool at a time: the bound of the in-memory deque."""
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    dead_letter_path: Path | None = None


class DurableRunner:
    """Feeds one durable sink from the spool; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        state: AsyncState,
        status: SinkStatus,
        settings: RunnerSettings,
        new_data: asyncio.Event,
        on_delivered: Callable[[str, RecordBatch], None] | None = None,
        gateway_status: GatewayStatus | None = None,
        opener: SinkOpener | None = None,
    ) -> None:
        self.sink = sink
        self.opener = opener
        """Opens the sink first (retrying) when given; None: the sink is open already."""
        self.on_delivered = on_delivered
        self.gateway_status = gateway_status if gateway_status is not None else GatewayStatus()
        """Where a full disk is reported (its own instance when the runner runs alone)."""
        self.state = state
        self.status = status
        self.settings = settings
        self.new_data = new_data
        self.buffer: deque[_Batch] = deque()
        """Batches in hand with their spool sequence numbers and what the sink prepared."""
        self._outage = False
        self._backlog_at_start = False
        self._flush_started: float | None = None
        self._refused_reason: str | None = None
        self._attempt = 0
        self.dead_lettered = 0
        self.health: deque[GatewayHealth] = deque(maxlen=MAX_HEALTH_SAMPLES)
        """Health samples offered and not yet held by the receiver, oldest first."""
        self.health_dropped = 0
        self._health_error: str | None = None

    def offer_health(self, sample: GatewayHealth) -> None:
        """Queue a health sample for the sink (written between batches or while idle)."""
        if len(self.health) == self.health.maxlen:
            self.health_dropped += 1
        self.health.append(sample)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; a batch in hand is finished or left spooled, never lost."""
        store = self.state.store
        name = self.sink.name
        if self.opener is not None and not await self.opener.open_retrying(stop):
            return  # stopping before the sink ever opened: everything stays spooled
        read_seq = await self.state.call(store.acked_seq, name)
        await self.refresh_status()
        # A backlog spooled before this start is an outage not yet over: say "Flushing buffer..."
        # when it starts to drain (or "Network Lost!" first, if the receiver is still away).
        self._backlog_at_start = self.status.buffer_depth > 0
        # The spool read (and the sink's encoding) of the next page and the acknowledgement of
        # the last batch run on the state thread while the next batch is on the wire: one of
        # each in flight at most.
        next_page: asyncio.Future[list[_Batch] | None] | None = None
        ack: asyncio.Future[None] | None = None
        refreshed = time.monotonic()
        try:
            while not stop.is_set():
                if not self.buffer:
                    if next_page is None:
                        self.new_data.clear()
                        next_page = asyncio.ensure_future(self.state.call(self._read_page, read_seq))
                    page = await next_page
                    next_page = None
                    if page is None:
                        if ack is not None:
                            await ack
                            ack = None
                        await self.refresh_status()
                        self._check_drained()
                        await self._idle(stop)
                        continue
                    read_seq = int(page[-1].seqs[-1])
                    self.status.buffer_depth = max(self.status.buffer_depth, sum(len(b.seqs) for b in page))
                    self.buffer.extend(page)
                if len(self.buffer) == 1 and next_page is None:  # read ahead while the last batch is sent
                    self.new_data.clear()
                    next_page = asyncio.ensure_future(self.state.call(self._read_page, read_seq))
                seqs, batch, prepared = self.buffer[0]
                last_seq = int(seqs[-1])
                if not await self._deliver(batch, seqs, stop, prepared):
                    return  # stopping: the batch stays spooled and is sent after restart
                self.buffer.popleft()
                if ack is not None:
                    await ack
                ack = asyncio.ensure_future(self._ack(last_seq, stop))
                self.status.rows_out += len(batch)
                if self.on_delivered is not None:
                    self.on_delivered(name, batch)
                if self.health:
                    await self._write_health()
                if time.monotonic() - refreshed > STATUS_REFRESH_S:
                    await self.refresh_status()
                    refreshed = time.monotonic()
        finally:
            for pending in (ack, next_page):
                if pending is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(pending)

    async def _ack(self, seq: int, stop: asyncio.Event) -> None:
        """Acknowledge up to `seq` in the spool; while the disk is full, retry with backoff. When
        stopping first, the cursor stays behind and those records are sent again after a restart
        (the receiver de-duplicates): never skipped."""
        what = f"{self.sink.name} acknowledgement"
        delay_s = DISK_RETRY_MIN_S
        while True:
            try:
                await self.state.call(self.state.store.ack, self.sink.name, seq)
            except DiskFullError as exc:
                self.gateway_status.disk_full_begin(what, str(exc))
                if stop.is_set():
                    return
                await wait_or_stop(stop, delay_s)
                delay_s = min(DISK_RETRY_MAX_S, delay_s * 2)
                continue
            self.gateway_status.disk_full_end(what)
            return

    def _check_drained(self) -> None:
        if self._flush_started is not None and self.status.buffer_depth == 0:
            log.info(
                "buffer drained: %s is up to date (%.1f s after it came back)",
                self.sink.name,
                time.monotonic() - self._flush_started,
            )
            self._flush_started = None

    async def _idle(self, stop: asyncio.Event) -> None:
        """Wait for new records; meanwhile ask the sink whether its receiver is reachable."""
        if not self._outage and self._refused_reason is None:
            # Written health proves the receiver reachable; otherwise (none, or not written) ask.
            reachable = True if self.health and await self._write_health() else await self.sink.ping()
            if reachable is not None:
                self.status.state = SinkState.CONNECTED if reachable else SinkState.DISCONNECTED
        await wait_or_stop(stop, IDLE_PING_S, self.new_data)

    async def _write_health(self) -> bool:
        """Write the waiting health samples; True when the receiver holds them (they are then
        forgotten; otherwise they wait for the next batch or idle moment)."""
        samples = list(self.health)
        try:
            outcome = await self.sink.write_health(samples)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._health_failed(str(exc) if is_disk_full(exc) else f"unexpected error: {exc!r}")
            return False
        match outcome:
            case Delivered():
                self._forget_health(samples[-1].timestamp_ns)
                self._health_error = None
                return True
            case Rejected(invalid=invalid):
                reason = next(iter(invalid.values()), "rejected without a reason")
                log.warning("%s refused %d health samples: %s", self.sink.name, len(samples), reason)
                self._forget_health(samples[-1].timestamp_ns)
                return True
            case Retry(reason=reason) | Split(reason=reason) | Refused(reason=reason):
                self._health_failed(reason)
        return False

    def _health_failed(self, reason: str) -> None:
        if reason != self._health_error:
            log.warning("%s: health samples not written (%s); kept for the next attempt", self.sink.name, reason)
        self._health_error = reason

    def _forget_health(self, newest_ns: int) -> None:
        """Forget the samples up to `newest_ns` (others may have arrived during the write)."""
        while self.health and self.health[0].timestamp_ns <= newest_ns:
            self.health.popleft()

    async def refresh_status(self) -> None:
        """Update buffer depth and oldest age from the spool."""
        depth, oldest_ns = await self.state.call(self.state.store.pending, self.sink.name)
        self.status.buffer_depth = depth
        self.status.oldest_age_s = max(0.0, time.time() - oldest_ns / 1e9) if oldest_ns is not None else 0.0

    def _read_page(self, after_seq: int) -> list[_Batch] | None:
        """On the state thread: the next page of the spool in batches, each prepared by the sink."""
        page = self.state.store.read_after(after_seq, self.settings.page_size, self.sink.columns)
        if page is None:
            return None
        batches = []
        for start in range(0, len(page.seqs), self.settings.batch_size):
            part = slice(start, start + self.settings.batch_size)
            batch = page.records.take(part)
            batches.append(_Batch(page.seqs[part], batch, self._prepare(batch)))
        return batches

    def _prepare(self, batch: RecordBatch) -> object:
        try:
            return self.sink.prepare(batch)
        except Exception:  # a sink bug must not stop delivery: write() encodes it again
            log.exception("%s: unexpected error in prepare", self.sink.name)
            return None

    async def _deliver(
        self, batch: RecordBatch, seqs: NDArray[np.int64], stop: asyncio.Event, prepared: object = None
    ) -> bool:
        """Send `batch` until it is delivered or dead-lettered (True), or `stop` is set (False);
        `prepared` is the sink's encoding of this exact batch (dropped once the batch changes)."""
        disk_delay_s = DISK_RETRY_MIN_S
        while True:
            outcome = await self._write(batch, prepared)
            if isinstance(outcome, _DiskFull):
                self.gateway_status.disk_full_begin(self.sink.name, outcome.reason)
                self.status.last_error = outcome.reason
                await wait_or_stop(stop, disk_delay_s)
                disk_delay_s = min(DISK_RETRY_MAX_S, disk_delay_s * 2)
                if stop.is_set():
                    return False
                continue
            self.gateway_status.disk_full_end(self.sink.name)
            match outcome:
                case Delivered():
                    self._recovered(len(batch))
                    return True
                case Rejected(invalid=invalid):
                    rest = await self._reject(batch, seqs, invalid, stop)
                    if isinstance(rest, bool):
                        return rest
                    batch, seqs, prepared = rest.records, rest.seqs, None
                case Split(reason=reason):
                    return await self._split(batch, seqs, reason, stop)
                case Retry(reason=reason, retry_after_s=retry_after_s):
                    self._lost(reason)
                    if not await self._backoff(stop, retry_after_s):
                        return False
                case Refused(reason=reason):
                    if not await self._refused(reason, stop):
                        return False

    async def _reject(
        self, batch: RecordBatch, seqs: NDArray[np.int64], invalid: Mapping[int, str], stop: asyncio.Event
    ) -> _Batch | bool:
        """Dead-letter the records the receiver named invalid; the rest to send again, True when
        none is left, False when `stop` came first."""
        self._recovered(len(batch))
        if not invalid:  # nothing named: cannot make progress by retrying
            invalid = dict.fromkeys(range(len(batch)), "rejected without a reason")
        if not await self._dead_letter(batch, seqs, invalid, stop):
            return False
        keep = np.array([i for i in range(len(batch)) if i not in invalid], dtype=np.intp)
        if not len(keep):
            return True
        return _Batch(seqs[keep], batch.take(keep), None)

    async def _split(self, batch: RecordBatch, seqs: NDArray[np.int64], reason: str, stop: asyncio.Event) -> bool:
        """Send `batch` again in two halves (a single record too large is dead-lettered)."""
        if len(batch) == 1:
            return await self._dead_letter(batch, seqs, {0: f"too large for the receiver: {reason}"}, stop)
        half = len(batch) // 2
        log.info("%s: batch of %d too large (%s), splitting", self.sink.name, len(batch), reason)
        for part in (slice(0, half), slice(half, None)):
            if not await self._deliver(batch.take(part), seqs[part], stop):
                return False
        return True

    async def _refused(self, reason: str, stop: asyncio.Event) -> bool:
        """Say once that the receiver refuses us, then wait `backoff_max_s`; False when stopping."""
        await self.refresh_status()
        if self._refused_reason != reason:
            log.error(
                "%s refuses the gateway: %s. Forwarding stopped; %d records stay spooled until fixed",
                self.sink.name,
                reason,
                self.status.buffer_depth,
            )
        self._refused_reason = reason
        self.status.state = SinkState.REFUSED
        self.status.last_error = reason
        await wait_or_stop(stop, self.settings.backoff_max_s)
        return not stop.is_set()

    async def _write(self, batch: RecordBatch, prepared: object) -> WriteOutcome | _DiskFull:
        try:
            return await self.sink.write(batch, prepared)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_disk_full(exc):  # a local store (the embedded historian) is out of space
                return _DiskFull(str(exc))
            # a sink bug must not stop delivery: log it and retry
            log.exception("%s: unexpected error in write", self.sink.name)
            return Retry(f"unexpected error: {exc!r}")

    def _lost(self, reason: str) -> None:
        if not self._outage:
            self._outage = True
            log.warning("Network Lost! Buffering... (%s: %s)", self.sink.name, reason)
        self.status.state = SinkState.BUFFERING
        self.status.last_error = reason

    def _recovered(self, batch_len: int) -> None:
        self._attempt = 0
        self._refused_reason = None
        if self._outage or self._backlog_at_start:
            self._outage = self._backlog_at_start = False
            self._flush_started = time.monotonic()
            log.info("Flushing buffer... (%s: %d records buffered)", self.sink.name, self.status.buffer_depth)
        self.status.state = SinkState.CONNECTED
        self.status.last_error = None

    async def _backoff(self, stop: asyncio.Event, retry_after_s: float | None) -> bool:
        """Exponential backoff with full jitter, at least `retry_after_s`; False when stopping."""
        settings = self.settings
        ceiling = min(settings.backoff_max_s, settings.backoff_min_s * 2**self._attempt)
        delay = random.uniform(settings.backoff_min_s, max(settings.backoff_min_s, ceiling))
        if retry_after_s is not None:
            delay = min(max(delay, retry_after_s), settings.backoff_max_s)
        self._attempt += 1
        await self.refresh_status()
        await wait_or_stop(stop, delay)
        return not stop.is_set()

    async def _dead_letter(
        self, batch: RecordBatch, seqs: NDArray[np.int64], invalid: Mapping[int, str], stop: asyncio.Event
    ) -> bool:
        """Append the invalid records (in full) with their reasons to the dead-letter file (fsynced;
        retried while the disk is full: the batch is acknowledged only after its dead letters).
        False when `stop` came before they could be written."""
        if self.sink.columns is not None:  # the batch holds only the sink's columns: read the rest
            positions = sorted(invalid)
            full = await self.state.call(self.state.store.read_seqs, seqs[positions].tolist())
            invalid = {j: invalid[i] for j, i in enumerate(positions)}
            batch = full
        records = batch.to_dicts()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = [
            json.dumps({"sink": self.sink.name, "time": now, "reason": reason, "record": records[i]})
            for i, reason in sorted(invalid.items())
        ]
        path = self.settings.dead_letter_path
        if path is not None and not await self._append_retrying(path, lines, stop):
            return False
        self.dead_lettered += len(lines)
        for i, reason in sorted(invalid.items()):
            log.warning(
                "%s rejected record %s (%s): moved to %s",
                self.sink.name,
                records[i]["measurement_id"],
                reason,
                path if path is not None else "nowhere (no dead-letter file configured)",
            )
        return True

    async def _append_retrying(self, path: Path, lines: list[str], stop: asyncio.Event) -> bool:
        """Append `lines` to `path`; while the disk is full, retry with backoff. False when `stop`
        came first (the batch is then not acknowledged: it is rejected again after a restart)."""
        what = f"{self.sink.name} dead letters"
        delay_s = DISK_RETRY_MIN_S
        while True:
            try:
                await self.state.call(_append_lines, path, lines)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.gateway_status.disk_full_begin(what, f"{path}: {exc.strerror}")
                await wait_or_stop(stop, delay_s)
                if stop.is_set():
                    return False
                delay_s = min(DISK_RETRY_MAX_S, delay_s * 2)
                continue
            self.gateway_status.disk_full_end(what)
            return True


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines and fsync; on failure the file is cut back, so no half line stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = memoryview("".join(line + "\n" for line in lines).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
