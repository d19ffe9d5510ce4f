"""HTTP side of the gateway (aiohttp): /health, /metrics, /api/v1/history and the live page
(`/`, `/static/{name}`, `/api/v1/events`, `/api/v1/rejects`; see `cmm_twin.gateway.page`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cmm_twin.gateway.historian.api import HistoryParamError, history_document, parse_history_params
from cmm_twin.gateway.historian.sqlite import HistoryQuery, HistoryResult
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.page.feed import PageFeed
from cmm_twin.gateway.page.stream import add_page_routes
from cmm_twin.gateway.status import GatewayStatus

log = logging.getLogger(__name__)

STATUS_KEY = web.AppKey("status", GatewayStatus)
METRICS_KEY = web.AppKey("metrics", GatewayMetrics)
ExtraHealth = Callable[[], dict[str, Any]]
EXTRA_KEY: web.AppKey[ExtraHealth] = web.AppKey("extra")
HistoryReader = Callable[[HistoryQuery], Awaitable[HistoryResult]]
HISTORY_KEY: web.AppKey[HistoryReader | None] = web.AppKey("history")
SHUTDOWN_TIMEOUT_S = 2.0
"""How long stopping waits for a request still in progress before cancelling it (the page's
streams end at once through the app's on_shutdown hook; this is the backstop)."""


def health_document(status: GatewayStatus, extra: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The /health JSON and its HTTP status: 503 when a sink failed to start, else 200.
    `disk_full` is true while the gateway's own writes fail for lack of space (intake is paused
    then, and `disk_full_in` says what waits for space)."""
    failed = [name for name, sink in status.sinks.items() if sink.state == "failed"]
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
            }
            for name, sink in status.sinks.items()
        },
        **extra,
    }
    return body, (503 if failed else 200)


async def _health(request: web.Request) -> web.Response:
    body, code = health_document(request.app[STATUS_KEY], request.app[EXTRA_KEY]())
    return web.json_response(body, status=code)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS_KEY].exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def _history(request: web.Request) -> web.Response:
    reader = request.app[HISTORY_KEY]
    if reader is None:
        return web.json_response(
            {"error": "no embedded historian: this gateway runs with --historian influx or none"}, status=404
        )
    try:
        query = parse_history_params(request.query)
    except HistoryParamError as exc:
        return web.json_response({"error": exc.reason, "parameter": exc.parameter}, status=400)
    return web.json_response(history_document(query, await reader(query)))


def build_app(
    status: GatewayStatus,
    metrics: GatewayMetrics,
    extra: Callable[[], dict[str, Any]],
    history: HistoryReader | None = None,
    page: PageFeed | None = None,
) -> web.Application:
    """The aiohttp application serving the gateway's HTTP API (history only with a reader, the
    live page only with its feed)."""
    app = web.Application()
    app[STATUS_KEY] = status
    app[METRICS_KEY] = metrics
    app[EXTRA_KEY] = extra
    app[HISTORY_KEY] = history
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/history", _history)
    if page is not None:
        add_page_routes(app, page, lambda: health_document(status, extra())[0], history is not None)
    return app


class HttpServer:
    """Serves `build_app` on host:port; `port` is the real port (useful with port 0)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        self.host = host
        self.port = port

    async def start(self) -> None:
        """Bind and serve; raises OSError when the address cannot be bound."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
