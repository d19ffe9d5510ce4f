"""HTTP side of the gateway (aiohttp): /health, /metrics, /api/v1/history, /api/v1/capability and the
live page (`/`, `/static/{name}`, `/api/v1/events`, `/api/v1/rejects`; see `cmm_twin.gateway.sinks.page`)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.quality.report import capability_document, health_section
from cmm_twin.gateway.sinks.base import Sink
from cmm_twin.gateway.sinks.historian.api import (
    STREAM_TAIL,
    HistoryParamError,
    PointsEncoder,
    parse_history_params,
    stream_head,
)
from cmm_twin.gateway.sinks.historian.sqlite import HistoryQuery, HistoryStream
from cmm_twin.gateway.status import GatewayStatus, SinkState

log = logging.getLogger(__name__)

STATUS_KEY = web.AppKey("status", GatewayStatus)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
ExtraHealth = Callable[[], dict[str, Any]]
EXTRA_KEY: web.AppKey[ExtraHealth] = web.AppKey("extra")
HealthDocument = Callable[[], dict[str, Any]]
HEALTH_DOC_KEY: web.AppKey[HealthDocument] = web.AppKey("health_document")
"""Reads the /health document (for sinks serving it in their own way, like the page)."""
HistoryOpener = Callable[[HistoryQuery], AbstractAsyncContextManager[HistoryStream]]
"""Opens a streamed history query (`SqliteHistorianSink.stream`)."""
HISTORY_KEY: web.AppKey[HistoryOpener] = web.AppKey("history")
"""Set by the sink that answers /api/v1/history (the embedded historian); absent: 404."""
QUALITY_KEY = web.AppKey("quality", QualityMonitor)
"""The capability monitor (`/api/v1/capability`; sinks showing capability read it from here)."""
HISTORY_WRITE_TIMEOUT_S = 30.0
"""A history client that takes no data this long is dropped (its snapshot and slot are freed)."""
SHUTDOWN_TIMEOUT_S = 2.0
"""How long stopping waits for a request still in progress before cancelling it (the page's
streams end at once through the app's on_shutdown hook; this is the backstop)."""
MAX_CONNECTIONS = 256
"""HTTP connections served at once; beyond, new ones are refused (503) and closed at once."""
HEADER_TIMEOUT_S = 10.0
"""A connection that has not sent complete request headers this long after opening (or after its
previous response) is closed."""
WARNING_INTERVAL_S = 60.0


def health_document(
    status: GatewayStatus, extra: dict[str, Any], quality: QualityMonitor | None = None
) -> tuple[dict[str, Any], int]:
    """The /health JSON and its HTTP status: 503 when a sink failed to start, else 200.
    `disk_full` is true while the gateway's own writes fail for lack of space (intake is paused
    then, and `disk_full_in` says what waits for space). With `quality`, `compensation_health`
    is `degraded` while a characteristic's thermal-slope alarm is on, and lists the alarms (the
    gateway itself still works: 200)."""
    failed = [name for name, sink in status.sinks.items() if sink.state is SinkState.FAILED]
    body: dict[str, Any] = {
        "status": "failed" if failed else "ok",
        "uptime_s": round(status.uptime_s, 3),
        "files_processed": status.files_processed,
        "rows_in": status.rows_in,
        "rows_rejected": status.rows_rejected,
        "buffer_depth": status.buffer_depth,
        "spool_mb": round(status.spool_bytes / 1e6, 3),
        "intake_paused": status.intake_paused or status.disk_full,
        "disk_full": status.disk_full,
        "disk_full_in": sorted(status.disk_full_in),
        "sinks": {
            name: {
                "state": sink.state,
                "buffer_depth": sink.buffer_depth,
                "oldest_age_s": round(sink.oldest_age_s, 3),
                "rows_out": sink.rows_out,
                "last_error": sink.last_error,
                **(sink.info() if sink.info is not None else {}),
            }
            for name, sink in status.sinks.items()
        },
        **({"compensation_health": health_section(quality)} if quality is not None else {}),
        **extra,
    }
    return body, (503 if failed else 200)


async def _health(request: web.Request) -> web.Response:
    body, code = health_document(request.app[STATUS_KEY], request.app[EXTRA_KEY](), request.app.get(QUALITY_KEY))
    return web.json_response(body, status=code)


async def _capability(request: web.Request) -> web.Response:
    """`GET /api/v1/capability` (docs/capability.md); 404 when the gateway has no monitor."""
    monitor = request.app.get(QUALITY_KEY)
    if monitor is None:
        return web.json_response({"error": "no capability monitor in this gateway"}, status=404)
    return web.json_response(capability_document(monitor))


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS_KEY].exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def _history(request: web.Request) -> web.StreamResponse:
    """The history answer, streamed: read and encoded a page at a time from one snapshot, so a big
    answer costs a page of memory and never holds up the event loop (see SqliteHistorianSink.stream)."""
    opener = request.app.get(HISTORY_KEY)
    if opener is None:
        return web.json_response(
            {"error": "no embedded historian: this gateway runs with --historian influx or none"}, status=404
        )
    try:
        query = parse_history_params(request.query)
    except HistoryParamError as exc:
        return web.json_response({"error": exc.reason, "parameter": exc.parameter}, status=400)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        async with opener(query) as stream:
            await response.prepare(request)
            await _write(response, stream_head(query, stream.count, stream.truncated))
            async for chunk in stream.pages(PointsEncoder(stream.names)):
                await _write(response, chunk)
            await _write(response, STREAM_TAIL)
    except (sqlite3.Error, RuntimeError) as exc:  # the store failed or is closing
        if response.prepared:  # a partial answer must not look complete: cut the connection
            log.warning("history: answer cut short: %s", exc)
            if request.transport is not None:
                request.transport.abort()
            return response
        return web.json_response({"error": f"history store unavailable: {exc}"}, status=503)
    except TimeoutError:
        log.warning("history: a client took no data for %g s; its answer is dropped", HISTORY_WRITE_TIMEOUT_S)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, chunk: bytes) -> None:
    async with asyncio.timeout(HISTORY_WRITE_TIMEOUT_S):
        await response.write(chunk)


def build_app(
    status: GatewayStatus,
    metrics: GatewayMetrics,
    extra: Callable[[], dict[str, Any]],
    sinks: Sequence[Sink] = (),
    quality: QualityMonitor | None = None,
) -> web.Application:
    """The aiohttp application serving the gateway's HTTP API, with the routes each sink adds
    (`quality`, set before the sinks add theirs, is there for them to read: `QUALITY_KEY`)."""
    app = web.Application()
    app[STATUS_KEY] = status
    app[METRICS_KEY] = metrics
    app[EXTRA_KEY] = extra
    app[HEALTH_DOC_KEY] = lambda: health_document(status, extra(), quality)[0]
    if quality is not None:
        app[QUALITY_KEY] = quality
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/history", _history)
    app.router.add_get("/api/v1/capability", _capability)
    for sink in sinks:
        sink.add_routes(app)
    return app


class _RateLimitedWarning:
    """A warning logged at most once per `interval_s`, counting what it held back."""

    def __init__(self, interval_s: float = WARNING_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last = -math.inf
        self._held = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._held += 1
            return
        held, self._held, self._last = self._held, 0, now
        suffix = f" ({held} more since the last warning)" if held else ""
        log.warning(message + suffix, *args)


class ConnectionGate:
    """A protocol factory for the HTTP listener that serves at most `max_connections` connections
    at once: past that, a new connection gets a short 503 and is closed at once (its descriptor is
    freed), and a warning is logged at most once a minute. `factory` makes the real protocol
    (aiohttp's request handler) for each admitted connection."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], max_connections: int) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.active = 0
        self.peak = 0
        self.refused = 0
        self._warn = _RateLimitedWarning()

    def __call__(self) -> asyncio.Protocol:
        return _GatedProtocol(self)

    def admit(self, transport: asyncio.BaseTransport) -> asyncio.Protocol | None:
        """The protocol serving `transport`, or None after refusing it (the cap is reached)."""
        if self.active >= self.max_connections:
            self.refused += 1
            self._warn(
                "HTTP: %d connections open, the most the gateway serves at once: refusing new ones "
                "(idle connections are closed after %g s without a complete request)",
                self.active,
                HEADER_TIMEOUT_S,
            )
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_BUSY_RESPONSE)
            transport.close()
            return None
        self.active += 1
        self.peak = max(self.peak, self.active)
        return self._factory()

    def release(self) -> None:
        """An admitted connection ended."""
        self.active -= 1


_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 26\r\n"
    b"Retry-After: 10\r\nConnection: close\r\n\r\ntoo many open connections\n"
)


class _GatedProtocol(asyncio.Protocol):
    """One accepted connection: handed to the real protocol when the gate admits it."""

    __slots__ = ("_gate", "_inner")

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate
        self._inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner = self._gate.admit(transport)
        if self._inner is not None:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            self._gate.release()
            inner.connection_lost(exc)


def host_of(header: str) -> str:
    """The host name of a Host header, lower case, without port, brackets or a trailing dot."""
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else ":x"
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return text  # malformed: refused as it is
        return text[1:end]
    name, sep, port = text.rpartition(":")
    if not sep:
        return text.rstrip(".")
    if not port.isdigit() or ":" in name:
        return text
    return name.rstrip(".")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class HostCheck:
    """Which Host headers the gateway answers (a defence against DNS rebinding: a web page whose
    name was made to resolve to the gateway would send its own name as Host).

    Always: `localhost` and loopback addresses (any port). Bound to one address: that address too.
    Bound to a wildcard (0.0.0.0 or ::): also this host's name and any IP address (an address
    cannot be rebound). Plus the names of `--http-allowed-hosts` (e.g. a reverse proxy's name).
    """

    def __init__(self, bind_host: str, allowed: Sequence[str] = ()) -> None:
        bind_ip = _ip(bind_host.strip("[]"))
        self.wildcard = bind_host in ("", "0.0.0.0", "::") or (bind_ip is not None and bind_ip.is_unspecified)
        names = {"localhost", *(host_of(name) for name in allowed if name.strip())}
        if bind_ip is None:
            names.add(host_of(bind_host))
        if self.wildcard:
            hostname = socket.gethostname().lower().rstrip(".")
            names.update({hostname, hostname.split(".")[0]} - {""})
        self.names = frozenset(n for n in names if _ip(n) is None)
        self.addresses = frozenset(
            ip for ip in (_ip(n) for n in (*names, bind_host.strip("[]"))) if ip is not None and not ip.is_unspecified
        )

    def allows(self, header: str | None) -> bool:
        """True when a request with this Host header (None: no header) is answered."""
        if header is None:
            return True  # not a browser (browsers always send Host): nothing to rebind
        name = host_of(header)
        ip = _ip(name)
        if ip is None:
            return name in self.names
        return ip.is_loopback or self.wildcard or ip in self.addresses


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_middleware(check: HostCheck) -> Middleware:
    warn = _RateLimitedWarning()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host")
        if check.allows(header):
            return await handler(request)
        warn("HTTP: refused a request for host %r (421): not a name of this gateway; see --http-allowed-hosts", header)
        return web.json_response(
            {"error": f"misdirected request: host {header!r} is not served here (see --http-allowed-hosts)"},
            status=421,
        )

    return middleware


class HttpServer:
    """Serves `build_app` on host:port; `port` is the real port (useful with port 0).

    Against a hostile network: at most `max_connections` connections at once (`ConnectionGate`),
    a connection must send complete request headers within `header_timeout_s` of opening (or of
    its previous response) or it is closed, and only the Host names of `HostCheck` are answered
    (421 otherwise). A request in progress (e.g. the page's event stream) is never cut by the
    header timeout.
    """

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        allowed_hosts: Sequence[str] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.host_check = HostCheck(host, allowed_hosts or ())
        app.middlewares.insert(0, _host_middleware(self.host_check))  # before the token check: 421 first
        # aiohttp arms its keep-alive timer when a connection opens and whenever a response is done,
        # and closes the connection when it fires while the handler still waits for a request: that
        # is the header timeout (a handler busy with a request, e.g. an event stream, is not cut).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, keepalive_timeout=header_timeout_s
        )
        self.max_connections = max_connections
        self.gate: ConnectionGate | None = None
        self._listener: asyncio.Server | None = None
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        self.gate = ConnectionGate(server, self.max_connections)
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self.gate, self.host, self.port, reuse_address=True
            )
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving."""
        if self._listener is not None:
            self._listener.close()
        await self._runner.cleanup()
