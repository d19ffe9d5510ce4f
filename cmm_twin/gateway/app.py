"""The gateway service: wires the inbox, the pipeline, the sink runners, the health source and
HTTP together. It knows sinks only through the `Sink` interface and the plugin registry."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cmm_twin import __version__
from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.health import HealthSource
from cmm_twin.gateway.ingest.inbox import InboxQueue
from cmm_twin.gateway.ingest.pipeline import Pipeline
from cmm_twin.gateway.live_runner import LiveRunner
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.quality import QualityMonitor, history
from cmm_twin.gateway.runner import DurableRunner, RunnerSettings
from cmm_twin.gateway.sink_lifecycle import SinkOpener
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.sinks.registry import SINK_PLUGINS
from cmm_twin.gateway.state import AsyncState, DiskFullError, StateStore, StateUnavailableError
from cmm_twin.gateway.status import GatewayStatus, SinkState, SinkStatus
from cmm_twin.gateway.summary import Summary
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.gateway.web import HttpServer, build_app
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 5.0


class GatewayStartError(CmmTwinError):
    """The gateway cannot start (e.g. the HTTP address is taken); the message names the setting."""


class Gateway:
    """One running gateway. `run(stop)` serves until `stop` is set (or, with --once, until done)."""

    def __init__(
        self,
        config: GatewayConfig,
        extra_sinks: Sequence[Sink] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.status = GatewayStatus()
        self.quality = QualityMonitor(config.quality)
        self.metrics = GatewayMetrics(self.status, self.quality)
        sinks: list[Sink] = []
        for plugin in SINK_PLUGINS:
            if plugin.name in config.sinks_off:
                continue
            sink = plugin.build(config, self.environ)
            if sink is not None:
                sinks.append(sink)
        sinks += extra_sinks
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise GatewayStartError(f"two sinks share a name: {names}")
        self.sinks = sinks
        self.http_port: int | None = None
        self.ready = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self._live: list[LiveRunner] = []
        self._durable: list[DurableRunner] = []
        self._delivery = asyncio.Event()
        """Set by every delivery: the spool has acknowledged records to trim."""

    def sink(self, name: str) -> Sink | None:
        """The sink of that name, or None when it is off."""
        return next((s for s in self.sinks if s.name == name), None)

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until `stop` (exit code 0), or with `once` until the inbox is delivered (0; 1 when
        a file was quarantined, a row rejected, a record dead-lettered or a sink refused the gateway)."""
        config = self.config
        # Lease probes (see ingest.inbox) may make the kernel send SIGIO; it must not end the process.
        with contextlib.suppress(ValueError):  # not the main thread: nothing to set there
            signal.signal(signal.SIGIO, signal.SIG_IGN)
        for directory in (config.inbox, config.archive, config.quarantine, config.state_dir):
            _check_writable(directory)
        state = AsyncState(StateStore(config.state_dir / "gateway.sqlite"))
        try:
            return await self._serve(state, stop)
        finally:
            state.close()

    async def _serve(self, state: AsyncState, stop: asyncio.Event) -> int:
        config = self.config
        durable = [s for s in self.sinks if s.durable]
        await state.call(state.store.register_sinks, [s.name for s in durable])
        async with contextlib.AsyncExitStack() as stack:
            openers: dict[str, SinkOpener] = {}
            for sink in self.sinks:
                status = self.status.sinks[sink.name] = SinkStatus(durable=sink.durable, info=sink.health_info)
                opener = openers[sink.name] = SinkOpener(
                    sink, status, retry_min_s=config.sink_backoff_min_s, retry_max_s=config.sink_backoff_max_s
                )
                stack.push_async_callback(opener.close)
            http = HttpServer(
                build_app(self.status, self.metrics, self._health_extra, self.sinks, self.quality),
                *config.http,
                allowed_hosts=config.http_allowed_hosts,
            )
            # A sink that fails here is retried by its runner; a slow one opens in its runner's task.
            for opener in openers.values():
                if not opener.sink.opens_in_background:
                    await opener.try_open()
            try:
                await http.start()
            except OSError as exc:
                raise GatewayStartError(f"--http: cannot listen on {config.http[0]}:{config.http[1]}: {exc}") from None
            stack.push_async_callback(http.stop)
            self.http_port = http.port
            # Capability and alarms survive a restart: before the intake starts and before OPC UA
            # opens (it shows them at once).
            await asyncio.to_thread(history.rebuild_from_config, self.quality, config)

            spooled = asyncio.Event()
            self._live = [
                LiveRunner(s, self.status.sinks[s.name], on_delivered=self._delivered, opener=openers[s.name])
                for s in self.sinks
                if not s.durable
            ]
            self._durable = [
                DurableRunner(
                    s,
                    state,
                    self.status.sinks[s.name],
                    self._runner_settings(s),
                    spooled,
                    on_delivered=self._delivered,
                    gateway_status=self.status,
                    opener=openers[s.name],
                )
                for s in durable
            ]
            runners: list[LiveRunner | DurableRunner] = [*self._live, *self._durable]
            health = HealthSource(
                self.status,
                [(r, r.sink.health_interval_s) for r in runners if r.sink.health_interval_s is not None],
            )
            queue = InboxQueue(config.inbox)
            queue.rescan()
            self.pipeline = Pipeline(
                config,
                state,
                self.status,
                self.metrics,
                self._publish,
                bool(durable),
                spooled,
                self.quality,
                on_rejected=self._rejected,
            )
            for durable_runner in self._durable:  # /health tells the spooled backlog from its first answer
                await durable_runner.refresh_status()
            # Start-up leaves about 450,000 long-lived objects (asyncua's standard address space
            # mostly). Frozen, they are no longer scanned by every full collection, which would
            # otherwise stop every thread for a few hundred ms under load (a history query's
            # garbage triggers one). Nothing is freed or leaked by this: they live for the process.
            gc.freeze()
            inner_stop = asyncio.Event()
            exit_code = 0
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._announce_ready([o for o in openers.values() if o.sink.opens_in_background]))
                tasks.create_task(queue.watch(inner_stop))
                tasks.create_task(self.pipeline.run(queue, inner_stop))
                for runner in runners:
                    tasks.create_task(runner.run(inner_stop))
                tasks.create_task(health.run(inner_stop))
                tasks.create_task(self._purge_loop(state, inner_stop))
                tasks.create_task(Summary(self.status, self.metrics, config.options["log_summary_s"]).run(inner_stop))
                exit_code = await self._supervise(stop, inner_stop, queue)
            log.info(
                "gateway stopped: %d files, %d rows in, %d rejected, %d buffered",
                self.status.files_processed,
                self.status.rows_in,
                self.status.rows_rejected,
                self.status.buffer_depth,
            )
            return exit_code

    async def _announce_ready(self, background: Sequence[SinkOpener]) -> None:
        """Say "gateway ready" (and set `ready`) once the sinks opening in the background have
        made their first attempt; HTTP and the intake run already."""
        for opener in background:
            await opener.attempted.wait()
        if background:
            gc.freeze()  # what the slow sinks built at start-up lives on, as the rest (see _serve)
        self._log_ready()
        self.ready.set()

    def _runner_settings(self, sink: Sink) -> RunnerSettings:
        config = self.config
        batch_size = sink.batch_size or config.sink_batch_size
        return RunnerSettings(
            batch_size=batch_size,
            page_size=max(1000, batch_size),
            backoff_min_s=config.sink_backoff_min_s,
            backoff_max_s=config.sink_backoff_max_s,
            dead_letter_path=config.state_dir / "dead_letter.jsonl",
        )

    async def _supervise(self, stop: asyncio.Event, inner_stop: asyncio.Event, queue: InboxQueue) -> int:
        """Wait for `stop`, or in --once mode for everything to be delivered; then stop the tasks."""
        exit_code = 0
        try:
            if not self.config.once:
                await stop.wait()  # nothing to look at meanwhile: an idle gateway stays asleep
            while not stop.is_set():
                await wait_or_stop(stop, 0.05)
                done = self._once_done(queue)
                if done is not None:
                    exit_code = done
                    break
        finally:
            inner_stop.set()
        return exit_code

    def _once_done(self, queue: InboxQueue) -> int | None:
        assert self.pipeline is not None
        stuck = {SinkState.REFUSED: "refuses the gateway", SinkState.FAILED: "cannot start"}
        for runner in self._durable:
            state = self.status.sinks[runner.sink.name].state
            if state in stuck:
                name, depth = runner.sink.name, self.status.buffer_depth
                log.error("--once: sink %s %s; %d records stay spooled", name, stuck[state], depth)
                return 1
        if not self.pipeline.idle.is_set() or len(queue) > len(self.pipeline.unfinished):
            return None  # files the source calls unfinished (a chr without END) stay in the inbox
        # A live sink that cannot start (OPC UA's port taken) does not hold up --once: it only
        # shows the newest values.
        if any(not live.idle for live in self._live if live.status.state is not SinkState.FAILED):
            return None
        if any(self.status.sinks[r.sink.name].buffer_depth or r.buffer for r in self._durable):
            return None
        quarantined = self.metrics.registry.get_sample_value("cmm_files_processed_total", {"destination": "quarantine"})
        dead_lettered = sum(r.dead_lettered for r in self._durable)
        if quarantined or self.status.rows_rejected or dead_lettered:
            log.error(
                "--once: %d files quarantined, %d rows rejected, %d records dead-lettered: exit 1",
                quarantined or 0,
                self.status.rows_rejected,
                dead_lettered,
            )
            return 1
        return 0

    def _publish(self, records: RecordBatch) -> None:
        for live in self._live:
            live.offer(records)

    def _rejected(self, keys: list[tuple[str, str]]) -> None:
        for live in self._live:
            live.offer_rejected(keys)

    def _delivered(self, sink_name: str, records: RecordBatch) -> None:
        self._delivery.set()
        self.metrics.rows_out.labels(sink_name).inc(len(records))
        now_ns = time.time_ns()
        latency = self.metrics.latency.labels(sink_name)
        # One observation per batch (its newest record) keeps this off the per-row hot path.
        latency.observe(max(0.0, (now_ns - int(records.timestamp_ns.max())) / 1e9))

    async def _purge_loop(self, state: AsyncState, stop: asyncio.Event) -> None:
        """Trim from the spool what every durable sink has acknowledged: a few seconds after a
        delivery (one trim serves every delivery of those seconds); asleep while nothing is delivered."""
        while not stop.is_set():
            await wait_or_stop(stop, None, self._delivery)
            await wait_or_stop(stop, PURGE_INTERVAL_S)  # the acknowledgement follows the delivery
            self._delivery.clear()
            await state.call(state.store.purge)

    def _health_extra(self) -> dict[str, Any]:
        return {"version": __version__}

    def _log_ready(self) -> None:
        config = self.config
        sinks = []
        for sink in self.sinks:
            described = sink.describe()
            state = self.status.sinks[sink.name].state
            sinks.append(f"{sink.name}={state}" + (f" ({described})" if described else ""))
        log.info(
            "gateway ready: inbox %s | HTTP http://%s:%d/health | sinks %s",
            config.inbox,
            config.http[0],
            self.http_port,
            ", ".join(sinks) or "none",
        )


def _check_writable(directory: Path) -> None:
    """Create `directory` if needed and make sure the gateway can create files in it; raises
    StateUnavailableError naming it (read-only mount, wrong owner) or DiskFullError."""
    probe = directory / f".cmm-twin-write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(directory, exc.strerror or str(exc)) from None
        raise StateUnavailableError(
            directory,
            f"cannot be written ({exc.strerror or exc}): give the gateway's user write access to it "
            "(or choose another --data-dir)",
        ) from None
