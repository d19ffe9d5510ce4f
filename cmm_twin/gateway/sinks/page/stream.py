"""HTTP side of the live page: `GET /`, `GET /static/{name}`, `GET /api/v1/rejects` and the
Server-Sent Events stream `GET /api/v1/events`.

SSE stream (`text/event-stream`, one JSON object per `data:` line):

- on connect, `event: snapshot` (with `id: <boot>-<last_id>`): `records` (the ring, oldest
  first, of one machine with `?machine_id=`), `last_id`, `resumed` (true when a valid
  `Last-Event-ID` let the stream resume: `records` then holds only what came after it and the
  client keeps what it has), `counts`, `tolerances`, `health` (the /health document plus `time`,
  `t` and `buffered_sinks`), `buffer_history` (one sample a second, the last ten minutes, with each
  durable sink's depth and state: `feed.health_sample`), `rejects`,
  `history` (whether `/api/v1/history` is served), `machine_id`, `ring_capacity`, `server_time`, `t`;
- then, at most once a second and only when something changed: `event: records` (with an `id:`)
  `{"records", "last_id", "gap", "counts"}`; `event: health` (as the snapshot's `health`);
  `event: rejects` `{"rejects"}`;
- a comment `: heartbeat` when nothing was written for 15 s.

At most `MAX_CLIENTS` streams at once (503 beyond). Each client is served by its own request
task and every write is awaited, so a slow client slows only itself; one that takes no data for
`WRITE_TIMEOUT_S` is dropped. The app's `on_shutdown` hook ends every stream, so stopping the
gateway never waits on an open page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from cmm_twin.gateway.sinks.page.auth import auth_middleware
from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.gateway.web import HEALTH_DOC_KEY, HISTORY_KEY, STATUS_KEY

log = logging.getLogger(__name__)

PAGE_DIR = Path(__file__).parent
STATIC_TYPES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
}
"""The only files served, with their content types (all UTF-8)."""
MAX_CLIENTS = 20
TICK_S = 1.0
HEARTBEAT_S = 15.0
WRITE_TIMEOUT_S = 30.0
RETRY_MS = 3000
"""The `retry:` the stream announces: how long a browser waits before reconnecting."""
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

HealthReader = Callable[[], dict[str, Any]]


def _now() -> tuple[str, int]:
    now = time.time()
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", int(now * 1000)


def sse_event(event: str, data: Any, event_id: str | None = None) -> bytes:
    """One SSE message: `event:`, optional `id:`, one `data:` line of JSON (orjson: NaN -> null)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class EventStreams:
    """The state shared by all SSE clients of one app: the feed, the client count, `closing`."""

    def __init__(
        self, feed: PageFeed, health: HealthReader, history: Callable[[], bool], max_clients: int = MAX_CLIENTS
    ) -> None:
        self.feed = feed
        self.health = health
        self.history = history
        self.max_clients = max_clients
        self.clients = 0
        self.closing = asyncio.Event()

    async def on_shutdown(self, app: web.Application) -> None:
        """aiohttp on_shutdown hook: end every open stream now."""
        self.closing.set()

    def health_event(self) -> dict[str, Any]:
        """The /health document with the wall time it was taken (`time` ISO, `t` epoch ms) and
        `buffered_sinks`, the names of the sinks that have a buffer (the durable ones)."""
        iso, ms = _now()
        status = self.feed.status
        buffered = sorted(name for name, s in status.sinks.items() if s.durable) if status is not None else []
        return {"time": iso, "t": ms, "buffered_sinks": buffered, **self.health()}

    def event_id(self, last_id: int) -> str:
        """The SSE id of a stream position: `<boot>-<last_id>`."""
        return f"{self.feed.boot}-{last_id}"

    def resume_from(self, last_event_id: str | None) -> int | None:
        """The record id a reconnecting client has seen up to, if the ring can continue from it."""
        if not last_event_id:
            return None
        boot, _, number = last_event_id.strip().partition("-")
        if boot != self.feed.boot or not number.isdigit():
            return None
        after = int(number)
        if not self.feed.first_id - 1 <= after <= self.feed.last_id:
            return None
        return after


STREAMS_KEY = web.AppKey("page_streams", EventStreams)


def _health_key(health: dict[str, Any]) -> Any:
    """What counts as a change of health: everything but the clock and the age of the oldest record."""
    sinks = {name: {k: v for k, v in s.items() if k != "oldest_age_s"} for name, s in health["sinks"].items()}
    return orjson.dumps({k: v for k, v in health.items() if k not in ("uptime_s", "time", "t", "sinks")}), sinks


class _Client:
    """One SSE connection."""

    def __init__(self, hub: EventStreams, request: web.Request, response: web.StreamResponse) -> None:
        self.hub = hub
        self.request = request
        self.response = response
        self.machine_id = request.query.get("machine_id") or None
        self.last_write = time.monotonic()

    async def send(self, data: bytes) -> None:
        """Write and wait until the transport took it (a slow client slows only itself)."""
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await self.response.write(data)
        self.last_write = time.monotonic()

    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def run(self, resume: int | None) -> None:
        hub, feed = self.hub, self.hub.feed
        rejects_version, rejects = await feed.rejects.current()
        health = hub.health_event()
        last_id = feed.last_id
        records, _ = feed.records_after(0 if resume is None else resume, self.machine_id)
        server_time, t = _now()
        snapshot = {
            "server_time": server_time,
            "t": t,
            "machine_id": self.machine_id,
            "resumed": resume is not None,
            "last_id": last_id,
            "ring_capacity": feed.capacity,
            "records": records,
            "counts": feed.counts_copy(),
            "tolerances": feed.tolerances,
            "health": health,
            "buffer_history": list(feed.health),
            "rejects": rejects,
            "history": hub.history(),
        }
        await self.send(f"retry: {RETRY_MS}\n\n".encode() + sse_event("snapshot", snapshot, hub.event_id(last_id)))
        health_key = _health_key(health)
        while True:
            await wait_or_stop(hub.closing, TICK_S)
            if hub.closing.is_set() or self.gone():
                return
            if feed.last_id != last_id:
                records, gap = feed.records_after(last_id, self.machine_id)
                last_id = feed.last_id
                if records or gap:
                    body = {"records": records, "last_id": last_id, "gap": gap, "counts": feed.counts_copy()}
                    await self.send(sse_event("records", body, hub.event_id(last_id)))
            health = hub.health_event()
            key = _health_key(health)
            if key != health_key:
                health_key = key
                await self.send(sse_event("health", health))
            version, rejects = await feed.rejects.current()
            if version != rejects_version:
                rejects_version = version
                await self.send(sse_event("rejects", {"rejects": rejects}))
            if time.monotonic() - self.last_write >= HEARTBEAT_S:
                await self.send(b": heartbeat\n\n")


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/events`: the page's SSE stream (see the module docstring)."""
    hub = request.app[STREAMS_KEY]
    if hub.closing.is_set():
        return web.json_response({"error": "the gateway is stopping"}, status=503)
    if hub.clients >= hub.max_clients:
        log.info("live page: %d streams open, refusing one more from %s", hub.clients, request.remote)
        return web.json_response(
            {"error": f"too many live page streams (at most {hub.max_clients}); try again later"},
            status=503,
            headers={"Retry-After": "10"},
        )
    resume = hub.resume_from(request.headers.get("Last-Event-ID") or request.query.get("last_event_id"))
    response = web.StreamResponse(headers={"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    hub.clients += 1
    client = _Client(hub, request, response)
    try:
        await response.prepare(request)
        await client.run(resume)
    except ConnectionError:  # the client went away: nothing to report
        log.debug("live page stream from %s closed by the client", request.remote)
    except TimeoutError:
        log.warning("live page stream from %s took no data for %.0f s: dropped", request.remote, WRITE_TIMEOUT_S)
        if request.transport is not None:
            request.transport.abort()
    finally:
        hub.clients -= 1
    return response


async def rejects(request: web.Request) -> web.Response:
    """`GET /api/v1/rejects`: `{"rejects": [...]}`, the newest quarantine reports first."""
    _, entries = await request.app[STREAMS_KEY].feed.rejects.current()
    return web.json_response({"rejects": entries}, dumps=lambda v: orjson.dumps(v).decode())


class StaticFiles:
    """The page's files, read once at start-up; only the names of STATIC_TYPES are served."""

    def __init__(self, directory: Path = PAGE_DIR) -> None:
        self.files: dict[str, bytes] = {}
        for name in STATIC_TYPES:
            try:
                self.files[name] = (directory / name).read_bytes()
            except OSError as exc:
                log.error("live page file missing, GET / will answer 503: %s", exc)

    def response(self, name: str) -> web.Response:
        if name not in STATIC_TYPES or name == "index.html":
            raise web.HTTPNotFound()
        return self._serve(name)

    def _serve(self, name: str) -> web.Response:
        body = self.files.get(name)
        if body is None:
            return web.Response(status=503, text=f"{name} is missing from the installation")
        response = web.Response(body=body, headers=SECURITY_HEADERS)
        response.content_type = STATIC_TYPES[name]
        response.charset = "utf-8"
        return response

    async def index(self, request: web.Request) -> web.Response:
        """`GET /`."""
        return self._serve("index.html")

    async def static(self, request: web.Request) -> web.Response:
        """`GET /static/{name}`: app.js or style.css, nothing else."""
        return self.response(request.match_info["name"])


def add_page_routes(app: web.Application, feed: PageFeed) -> EventStreams:
    """Serve the page, its files, the SSE stream and the rejects list from `app` (the gateway's
    application: its /health document and whether it serves /api/v1/history come from there), and
    require the feed's token on every route but /health when it has one."""
    if feed.auth is not None:
        app.middlewares.append(auth_middleware(feed.auth))
    feed.status = app.get(STATUS_KEY)
    hub = EventStreams(feed, app[HEALTH_DOC_KEY], lambda: app.get(HISTORY_KEY) is not None)
    app[STREAMS_KEY] = hub
    app.on_shutdown.append(hub.on_shutdown)
    files = StaticFiles()
    app.router.add_get("/", files.index)
    app.router.add_get("/static/{name}", files.static)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/rejects", rejects)
    return hub
