"""The MES sink: POSTs result records to the plant MES over HTTP (aiohttp), in order.

It only sends a batch and classifies the answer (README, "The MES path"); the runner owns the
spool, batching, backoff and acknowledgement (docs/architecture.md, "Delivery guarantees"):

| answer | outcome |
|---|---|
| 200 (2xx) | Delivered (the MES committed the batch; duplicates by `measurement_id` are fine) |
| connection error, timeout, 5xx, 408, 429 | Retry (honouring `Retry-After`) |
| 401, 403 | Refused: forwarding stops loudly, the data stays spooled until the token is fixed |
| 404, 405 | Refused: the URL is wrong (dead-lettering would throw good data away) |
| 413 | Split the batch |
| 422 with `errors[].index` | Rejected: those records go to the dead-letter file with the MES's reason |
| 409 with `conflicts[].index` | Rejected: the MES holds other values for those measurements |
| other 4xx (or a 422/409 that names no record) | Split until one record is left, then Rejected |

A 409 is a re-measurement: the first value received stays the record (in the MES and the embedded
historian alike), and the later one goes to the dead-letter file with both values. The MES stores
nothing of a batch it answers 422 or 409, so the runner sends the other records again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import orjson

from cmm_twin.gateway.sinks.base import Retry, Sink, WriteOutcome
from cmm_twin.gateway.sinks.http import classify_answer, parse_retry_after
from cmm_twin.gateway.sinks.mes.settings import TOKEN_ENV
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

MEASUREMENTS_PATH = "/api/v1/measurements"
HEALTH_PATH = "/health"


class MesSink(Sink):
    """Delivers records to `POST {base_url}/api/v1/measurements`; see the module docstring."""

    name = "mes"
    durable = True

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the HTTP session; the MES need not be up (the runner buffers until it is)."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s, connect=min(5.0, self.timeout_s)),
            connector=aiohttp.TCPConnector(limit=2),
        )

    async def close(self) -> None:
        """Close the session; never raises."""
        if self._session is not None:
            try:
                await self._session.close()
            except Exception:  # closing must not fail a shutdown
                log.debug("closing the MES session failed", exc_info=True)
            self._session = None

    def prepare(self, batch: RecordBatch) -> bytes:
        """The request body: the records as one JSON array."""
        return orjson.dumps(batch.to_dicts())

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """POST `batch` as one JSON array and classify the answer."""
        assert self._session is not None, "write() before open()"
        body = prepared if isinstance(prepared, bytes) else self.prepare(batch)
        try:
            async with self._session.post(self.base_url + MEASUREMENTS_PATH, data=body) as response:
                status = response.status
                text = await response.text()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Retry(f"{type(exc).__name__}: {exc}".rstrip(": "))
        return classify(status, text, retry_after, len(batch))

    async def ping(self) -> bool:
        """True when the MES answers GET /health (used to show connectivity while idle)."""
        if self._session is None:
            return False
        try:
            async with self._session.get(self.base_url + HEALTH_PATH) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False


def classify(status: int, text: str, retry_after_s: float | None, batch_len: int) -> WriteOutcome:
    """The outcome of an MES answer (see the module docstring)."""
    if status == 422:
        invalid = _invalid_records(text, batch_len)
    elif status == 409:
        invalid = _conflicting_records(text, batch_len)
    else:
        invalid = {}
    return classify_answer(status, text, retry_after_s, batch_len, _REFUSED, invalid)


_REFUSED = {401: f"check {TOKEN_ENV}", 403: f"check {TOKEN_ENV}", 404: "check --mes-url", 405: "check --mes-url"}


def _invalid_records(text: str, batch_len: int) -> dict[int, str]:
    """{index: "field: message"} from a 422 body `{"errors": [{index, field, message}]}`."""
    invalid: dict[int, str] = {}
    for index, error in _indexed_items(text, "errors", batch_len):
        message = f"{error.get('field')}: {error.get('message')}"
        invalid[index] = f"{invalid[index]}; {message}" if index in invalid else message
    return invalid


def _conflicting_records(text: str, batch_len: int) -> dict[int, str]:
    """{index: reason} from a 409 body `{"conflicts": [{index, measurement_id, field, stored, received}]}`."""
    return {
        index: (
            "conflict: the MES holds another value for this measurement "
            f"(field {conflict.get('field')}: stored {conflict.get('stored')!r} received {conflict.get('received')!r})"
        )
        for index, conflict in _indexed_items(text, "conflicts", batch_len)
    }


def _indexed_items(text: str, key: str, batch_len: int) -> list[tuple[int, dict[str, Any]]]:
    """The objects of the list `key` of a JSON body whose `index` is a position in the batch."""
    try:
        items = json.loads(text)[key]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(items, list):
        return []
    found: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < batch_len:
            found.append((index, item))
    return found
