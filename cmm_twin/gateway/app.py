"""The gateway service: wires the inbox, the pipeline, the sink runners, OPC UA and HTTP together."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cmm_twin import __version__
from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.ingest.inbox import InboxQueue
from cmm_twin.gateway.ingest.pipeline import Pipeline
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.runner import DurableRunner, LiveRunner, RunnerSettings, wait_or_stop
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.sinks.historian.base import HistorianSink
from cmm_twin.gateway.sinks.historian.lineprotocol import HealthSample
from cmm_twin.gateway.sinks.historian.sqlite import SqliteHistorianSink
from cmm_twin.gateway.sinks.mes.sink import MesSink
from cmm_twin.gateway.sinks.opcua.sink import OpcUaSettings, OpcUaSink
from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.state import AsyncState, DiskFullError, StateStore, StateUnavailableError
from cmm_twin.gateway.status import GatewayStatus, SinkState, SinkStatus
from cmm_twin.gateway.web import HttpServer, build_app
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 0.25
PAGE_QUEUE_BATCHES = 4
"""Batches queued for the live page's sink: it takes them at once, so this only rides out a
commit group of many small files published together; past it the oldest batch is dropped (the
page shows the newest; its verdict counts never miss a batch: `_publish` counts them). Bounded
small, as a 1,000-row batch is a few hundred kB."""
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
        self.metrics = GatewayMetrics(self.status)
        self.opcua: OpcUaSink | None = None
        if config.opcua_enabled:
            self.opcua = OpcUaSink(
                OpcUaSettings.from_env(
                    config.opcua_endpoint,
                    config.opcua_allow_anonymous,
                    config.state_dir,
                    self.environ,
                    trust_dir=config.opcua_trust_dir,
                )
            )
        self.page = PageFeed(config.quarantine)
        """The live page's sink (always on: it only keeps a bounded ring in memory)."""
        sinks: list[Sink] = [self.opcua] if self.opcua else []
        sinks.append(self.page)
        if config.mes_url is not None:
            sinks.append(MesSink.from_env(config.mes_url, self.environ))
        self.historian = self._historian_sink()
        if self.historian is not None:
            sinks.append(self.historian)
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

    def _historian_sink(self) -> HistorianSink | None:
        config = self.config
        if config.historian == "sqlite":
            return SqliteHistorianSink(config.history_path, config.history_retention_days)
        if config.historian == "influx":
            # Imported only when used: influxdb-client costs about 16 MB of RSS.
            from cmm_twin.gateway.sinks.historian.influx import InfluxSink  # noqa: PLC0415

            assert config.influx_url and config.influx_org and config.influx_bucket  # checked by load_config
            return InfluxSink.from_env(
                config.influx_url, config.influx_org, config.influx_bucket, config.influx_precision, self.environ
            )
        return None

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
            for sink in self.sinks:
                self.status.sinks[sink.name] = SinkStatus(durable=sink.durable)
                try:
                    await sink.open()
                except (StateUnavailableError, DiskFullError):
                    raise  # a local database the gateway owns: one line naming the file, exit 2
                except Exception as exc:
                    self.status.sinks[sink.name].state = SinkState.FAILED
                    self.status.sinks[sink.name].last_error = str(exc)
                    log.error("sink %s could not start: %s (/health answers 503)", sink.name, exc)
                    continue
                stack.push_async_callback(sink.close)

            historian = self.historian
            history = None
            if isinstance(historian, SqliteHistorianSink) and self.status.sinks[historian.name].state != "failed":
                history = historian.stream
            http = HttpServer(
                build_app(self.status, self.metrics, self._health_extra, history, page=self.page),
                *config.http,
                allowed_hosts=config.http_allowed_hosts,
            )
            try:
                await http.start()
            except OSError as exc:
                raise GatewayStartError(f"--http: cannot listen on {config.http[0]}:{config.http[1]}: {exc}") from None
            stack.push_async_callback(http.stop)
            self.http_port = http.port

            spooled = asyncio.Event()
            self._live = [
                LiveRunner(
                    s,
                    self.status.sinks[s.name],
                    max_batches=PAGE_QUEUE_BATCHES if s is self.page else 2,
                    on_delivered=self._delivered,
                )
                for s in self.sinks
                if not s.durable and self.status.sinks[s.name].state != "failed"
            ]
            self._durable = [
                DurableRunner(
                    s,
                    state,
                    self.status.sinks[s.name],
                    RunnerSettings(
                        batch_size=self._batch_size(s),
                        page_size=max(1000, self._batch_size(s)),
                        backoff_min_s=config.sink_backoff_min_s,
                        backoff_max_s=config.sink_backoff_max_s,
                        dead_letter_path=config.state_dir / "dead_letter.jsonl",
                    ),
                    spooled,
                    on_delivered=self._delivered,
                    gateway_status=self.status,
                )
                for s in durable
                if self.status.sinks[s.name].state != "failed"
            ]
            queue = InboxQueue(config.inbox)
            queue.rescan()
            self.pipeline = Pipeline(config, state, self.status, self.metrics, self._publish, bool(durable), spooled)
            for runner in self._durable:  # /health tells the spooled backlog from its first answer
                await runner.refresh_status()
            self._log_ready()
            self.ready.set()
            inner_stop = asyncio.Event()
            exit_code = 0
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(queue.watch(inner_stop))
                tasks.create_task(self.pipeline.run(queue, inner_stop))
                for live in self._live:
                    tasks.create_task(live.run(inner_stop))
                for runner in self._durable:
                    tasks.create_task(runner.run(inner_stop))
                tasks.create_task(self._status_loop(state, inner_stop))
                exit_code = await self._supervise(stop, inner_stop, queue)
            log.info(
                "gateway stopped: %d files, %d rows in, %d rejected, %d buffered",
                self.status.files_processed,
                self.status.rows_in,
                self.status.rows_rejected,
                self.status.buffer_depth,
            )
            return exit_code

    async def _supervise(self, stop: asyncio.Event, inner_stop: asyncio.Event, queue: InboxQueue) -> int:
        """Wait for `stop`, or in --once mode for everything to be delivered; then stop the tasks."""
        exit_code = 0
        try:
            while not stop.is_set():
                await wait_or_stop(stop, 0.05)
                if self.config.once:
                    done = self._once_done(queue)
                    if done is not None:
                        exit_code = done
                        break
        finally:
            inner_stop.set()
        return exit_code

    def _once_done(self, queue: InboxQueue) -> int | None:
        assert self.pipeline is not None
        if any(self.status.sinks[r.sink.name].state == "refused" for r in self._durable):
            log.error("--once: a sink refuses the gateway; %d records stay spooled", self.status.buffer_depth)
            return 1
        if not self.pipeline.idle.is_set() or len(queue):
            return None
        # The page is a view, not a destination: --once does not wait for it.
        if any(not live.queue.empty() for live in self._live if live.sink is not self.page):
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

    def _batch_size(self, sink: Sink) -> int:
        return self.config.historian_batch_size if isinstance(sink, HistorianSink) else self.config.sink_batch_size

    def _publish(self, records: RecordBatch) -> None:
        self.page.count(records)
        for live in self._live:
            live.offer(records)

    def _delivered(self, sink_name: str, records: RecordBatch) -> None:
        self.metrics.rows_out.labels(sink_name).inc(len(records))
        now_ns = time.time_ns()
        latency = self.metrics.latency.labels(sink_name)
        # One observation per batch (its newest record) keeps this off the per-row hot path.
        latency.observe(max(0.0, (now_ns - int(records.timestamp_ns.max())) / 1e9))

    async def _status_loop(self, state: AsyncState, stop: asyncio.Event) -> None:
        """Keep OPC UA diagnostics current, sample health for the historian and trim the spool."""
        last_purge = time.monotonic()
        last_health = -math.inf
        while not stop.is_set():
            self.page.sample_health(self.status)
            if self.historian is not None and time.monotonic() - last_health >= self.config.health_interval_s:
                last_health = time.monotonic()
                self.historian.offer_health(self.health_sample())
            if self.opcua is not None and self.status.sinks[self.opcua.name].state != "failed":
                try:
                    await self.opcua.write_health([GatewayHealth.of(self.status)])
                except Exception:
                    log.exception("updating the OPC UA Gateway object failed")
            if time.monotonic() - last_purge > PURGE_INTERVAL_S:
                await state.call(state.store.purge)
                last_purge = time.monotonic()
            await wait_or_stop(stop, STATUS_INTERVAL_S)

    def health_sample(self) -> HealthSample:
        """The gateway's health now, as a `gateway_health` point."""
        status = self.status
        return HealthSample(
            timestamp_ns=time.time_ns(),
            buffer_depth=status.buffer_depth,
            mes_connected=status.connected("mes"),
            historian_connected=status.connected("historian"),
            files_processed=status.files_processed,
            rows_rejected=status.rows_rejected,
        )

    def _health_extra(self) -> dict[str, Any]:
        return {"version": __version__}

    def _log_ready(self) -> None:
        config = self.config
        opcua = self.opcua
        log.info(
            "gateway ready: inbox %s | HTTP http://%s:%d/health | OPC UA %s | sinks %s",
            config.inbox,
            config.http[0],
            self.http_port,
            f"{opcua.endpoint_url} ({opcua.security_summary()})" if opcua else "off",
            ", ".join(f"{s.name}={self.status.sinks[s.name].state}" for s in self.sinks) or "none",
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
