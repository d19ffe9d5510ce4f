"""The mock MES as an aiohttp application: routes, auth, fault injection, JSON errors.

Contract (README, 'The MES path'; `GET /openapi.json`, built in `openapi.py`, describes it exactly):
- `POST /api/v1/measurements`: a JSON array of result records, or one record object, sent as
  `Content-Type: application/json` (else 415: a browser cannot send that type cross-site without
  a CORS preflight, which this server never grants). 200 `{"accepted": a, "duplicates": d}` only
  after the batch is committed; 422 `{"errors": [{"index", "field", "message"}]}` stores nothing of
  the batch; 409 `{"conflicts": [{"index", "measurement_id", "field", "stored", "received"}]}` when
  a record's measurement_id is stored with other values (a re-measurement: the first value is the
  record; both are kept in the `conflicts` table) stores nothing of the batch either; 400 malformed
  JSON; 413 body too large; 503 `{"error": "injected failure"}` with `Retry-After: 1` (fault
  injection, before anything is stored).
- `GET /api/v1/measurements?after=SEQ&limit=N`, `GET /api/v1/stats`, `GET /health`, `GET /openapi.json`.
- With a token configured (MES_TOKEN) every /api/ route needs `Authorization: Bearer <token>`, else 401.
- Every error is JSON `{"error": "..."}` (404, 405 too); an unexpected exception is logged and answered
  500 JSON as a last resort.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import operator
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from cmm_twin.mes.fields import MAX_BATCH_RECORDS
from cmm_twin.mes.openapi import (
    DEFAULT_PAGE_LIMIT,
    HEALTH_PATH,
    JSON_TYPE,
    MAX_PAGE_LIMIT,
    MAX_SEQ,
    MEASUREMENTS_PATH,
    OPENAPI_PATH,
    RETRY_AFTER_S,
    STATS_PATH,
    openapi_document,
)
from cmm_twin.mes.store import MeasurementStore
from cmm_twin.mes.validation import (
    MalformedBodyError,
    ensure_unique_keys,
    parse_body,
    record_texts,
    validate_records,
)

__all__ = [
    "CONFIG",
    "FAULTS",
    "MEASUREMENTS_PATH",
    "STORE",
    "MesConfig",
    "create_app",
    "error_response",
    "get_health",
    "get_measurements",
    "get_openapi",
    "get_stats",
    "post_measurements",
    "unknown_machines",
]

log = logging.getLogger(__name__)

_DIGITS: Final = re.compile(r"[0-9]{1,19}").fullmatch
_ID_OF: Final = operator.itemgetter("measurement_id")


@dataclass(frozen=True)
class MesConfig:
    """The validated configuration of one mock MES run."""

    db: Path
    host: str = "127.0.0.1"
    port: int = 8000
    fail_rate: float = 0.0
    latency_ms: float = 0.0
    seed: int = 0
    max_body_mb: float = 16.0
    log_level: str = "INFO"
    token: str | None = None
    """Bearer token required on /api/ routes (from MES_TOKEN); None: no auth."""
    known_machines: frozenset[str] | None = None
    """Master data: when set, records of other machines are answered 422 (a business rule)."""

    @property
    def max_body_bytes(self) -> int:
        """Largest accepted request body."""
        return max(1, int(self.max_body_mb * 1024 * 1024))


STORE: Final = web.AppKey("store", MeasurementStore)
CONFIG: Final = web.AppKey("config", MesConfig)
FAULTS: Final = web.AppKey("faults", random.Random)


def create_app(config: MesConfig) -> web.Application:
    """The mock MES application; its store opens on startup and closes on cleanup."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_middleware(config)])
    app[CONFIG] = config
    app[STORE] = MeasurementStore(config.db)
    app[FAULTS] = random.Random(config.seed)
    app.cleanup_ctx.append(_store_context)
    app.router.add_post(MEASUREMENTS_PATH, post_measurements)
    app.router.add_get(MEASUREMENTS_PATH, get_measurements)
    app.router.add_get(STATS_PATH, get_stats)
    app.router.add_get(HEALTH_PATH, get_health)
    app.router.add_get(OPENAPI_PATH, get_openapi)
    return app


async def _store_context(app: web.Application) -> AsyncIterator[None]:
    async with app[STORE]:
        yield


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """`{"error": message}` with `status`."""
    return web.json_response({"error": message}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _middleware(config: MesConfig) -> Middleware:
    latency_s = config.latency_ms / 1000.0
    token = config.token.encode("utf-8", "surrogateescape") if config.token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Latency and bearer auth on /api/; every HTTP error as JSON; never an unhandled exception."""
        try:
            if request.path.startswith("/api/"):
                if latency_s > 0:
                    await asyncio.sleep(latency_s)
                if token is not None and not _authorized(request, token):
                    return error_response(
                        401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
                    )
            return await handler(request)
        except web.HTTPException as exc:
            return _json_http_error(request, exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(500, "internal error (logged by the MES)")

    return middleware


def _authorized(request: web.Request, token: bytes) -> bool:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token) and scheme.lower() == "bearer"


def _json_http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    status = exc.status
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if status == 404:
        message = f"no such path: {request.path}"
    elif status == 405:
        message = f"method {request.method} not allowed on {request.path} (allowed: {exc.headers.get('Allow', '')})"
    elif status == 413:
        message = f"request body larger than {request.app[CONFIG].max_body_bytes} bytes (--max-body-mb)"
    else:
        message = exc.text or exc.reason
        if status >= 500:
            log.error("HTTP %d answering %s %s: %s", status, request.method, request.path, message)
    return error_response(status, message, headers)


async def post_measurements(request: web.Request) -> web.Response:
    """Validate a batch of records and store all of it, or none (see the module docstring)."""
    config = request.app[CONFIG]
    if request.content_type != JSON_TYPE:
        given = request.headers.get("Content-Type", "none")
        return error_response(415, f"Content-Type must be {JSON_TYPE} (optionally with charset), got {given[:80]!r}")
    if config.fail_rate > 0 and request.app[FAULTS].random() < config.fail_rate:
        return error_response(503, "injected failure", headers={"Retry-After": str(RETRY_AFTER_S)})
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(config.max_body_bytes, request.content_length)
    body = await request.read()
    started = time.perf_counter()
    try:
        parsed = parse_body(body)
    except MalformedBodyError as exc:
        log.warning("batch rejected: malformed JSON: %s", exc)
        return error_response(400, f"malformed JSON: {exc}")
    records = parsed.records
    if len(records) > MAX_BATCH_RECORDS:
        return error_response(413, f"batch of {len(records)} records exceeds {MAX_BATCH_RECORDS}: split it")
    errors, invalid = validate_records(records)
    if not errors and config.known_machines is not None:
        errors = unknown_machines(records, config.known_machines)
        invalid = len(errors)
    try:
        ensure_unique_keys(parsed, records_valid=not errors)
    except MalformedBodyError as exc:
        log.warning("batch rejected: malformed JSON: %s", exc)
        return error_response(400, f"malformed JSON: {exc}")
    if errors:
        log.warning("batch rejected: %d of %d records invalid, nothing stored", invalid, len(records))
        return web.json_response({"errors": errors}, status=422)
    rows = list(zip(map(_ID_OF, records), record_texts(parsed), strict=True))
    result = await request.app[STORE].insert(rows)
    if result.conflicts:
        for conflict in result.conflicts:
            log.warning(
                "batch rejected: record %d (%s) conflicts with the stored one (%s: stored %r, received %r)",
                conflict.index,
                conflict.measurement_id,
                conflict.field,
                conflict.stored,
                conflict.received,
            )
        log.warning("batch rejected: %d of %d records conflict, nothing stored", len(result.conflicts), len(rows))
        return web.json_response({"conflicts": [dataclasses.asdict(c) for c in result.conflicts]}, status=409)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    log.info(
        "batch: accepted=%d duplicates=%d records=%d ms=%.1f", result.accepted, result.duplicates, len(rows), elapsed_ms
    )
    return web.json_response({"accepted": result.accepted, "duplicates": result.duplicates})


def unknown_machines(records: list[dict[str, Any]], known: frozenset[str]) -> list[dict[str, Any]]:
    """422 errors for valid records whose machine the MES does not know (--known-machines)."""
    return [
        {"index": i, "field": "machine_id", "message": f"unknown machine {r['machine_id']!r} (not in --known-machines)"}
        for i, r in enumerate(records)
        if r["machine_id"] not in known
    ]


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if _DIGITS(raw) is None or not low <= int(raw) <= high:
        raise _BadQueryError(f"{name} must be a whole number {low}..{high}, got {raw[:40]!r}")
    return int(raw)


class _BadQueryError(ValueError):
    pass


async def get_measurements(request: web.Request) -> web.Response:
    """Stored records with seq > `after`, at most `limit`, in arrival order, each with its `seq`."""
    try:
        after = _query_int(request, "after", 0, 0, MAX_SEQ)
        limit = _query_int(request, "limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    except _BadQueryError as exc:
        return error_response(400, str(exc))
    rows = await request.app[STORE].page(after, limit)
    # each stored text is a JSON object `{...}`: put "seq" first without parsing it again
    body = "[" + ",".join(f'{{"seq":{seq},{text[1:]}' for seq, text in rows) + "]"
    return web.Response(text=body, content_type=JSON_TYPE)


async def get_stats(request: web.Request) -> web.Response:
    """`{"count": n, "duplicates": d, "conflicts": c}`: stored records, and duplicates and conflicting
    records received since the db was created."""
    store = request.app[STORE]
    return web.json_response({"count": store.count, "duplicates": store.duplicates, "conflicts": store.conflicts})


async def get_health(request: web.Request) -> web.Response:
    """`{"status": "ok", "count": n}` (no token needed, never waits for the database)."""
    return web.json_response({"status": "ok", "count": request.app[STORE].count})


async def get_openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of this server."""
    return web.json_response(openapi_document(request.app[CONFIG]))
