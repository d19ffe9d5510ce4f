"""The InfluxDB v2 historian (`--historian influx`): line protocol over the official
`influxdb-client` async API (aiohttp), on the same durable runner as the MES.

A batch becomes one request body built column-wise (see `lineprotocol`), followed by the
waiting `gateway_health` samples. Answers are classified by `sinks.http.classify_answer`:
204 Delivered; 401/403 Refused (check INFLUX_TOKEN) and 404 Refused (unknown org or bucket),
the data stays spooled; 413 Split; 400/422 naming lines that could not be parsed: those
records are dead-lettered with InfluxDB's message (others are sent again, harmlessly: the
same point); 429/5xx/timeouts Retry, honouring Retry-After.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import cast

import aiohttp
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks.base import Delivered, Retry, WriteOutcome
from cmm_twin.gateway.sinks.historian.base import HistorianSink, health_points
from cmm_twin.gateway.sinks.historian.lineprotocol import Precision, health_line, measurement_body
from cmm_twin.gateway.sinks.historian.settings import TOKEN_ENV
from cmm_twin.gateway.sinks.http import classify_answer, parse_retry_after, short_text
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

_WRITE_PRECISION = {
    Precision.NS: cast(WritePrecision, WritePrecision.NS),
    Precision.MS: cast(WritePrecision, WritePrecision.MS),
}
_REFUSED = {
    401: f"check {TOKEN_ENV}",
    403: f"check {TOKEN_ENV} (it needs write access to the bucket)",
    404: "check --influx-org and --influx-bucket",
    405: "check --influx-url",
}
_LINE_NUMBER = re.compile(r"\bline (\d+)")
_QUOTED_LINE = re.compile(r"unable to parse '(.*?)'")


class InfluxSink(HistorianSink):
    """Writes `cmm_measurement` and `gateway_health` points to an InfluxDB v2 bucket."""

    def __init__(
        self,
        url: str,
        org: str,
        bucket: str,
        token: str | None,
        precision: Precision = Precision.NS,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.url = url.rstrip("/")
        self.org = org
        self.bucket = bucket
        self.token = token
        self.precision = precision
        self.timeout_s = timeout_s
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None

    async def open(self) -> None:
        """Create the client; InfluxDB need not be up (the runner buffers until it is)."""
        if not self.token:
            log.warning("%s is not set: writing to %s without a token", TOKEN_ENV, self.url)
        self._client = InfluxDBClientAsync(
            url=self.url, token=self.token or "", org=self.org, timeout=int(self.timeout_s * 1000)
        )
        self._write_api = self._client.write_api()

    async def close(self) -> None:
        """Close the client; never raises."""
        client, self._client, self._write_api = self._client, None, None
        if client is not None:
            try:
                await client.close()  # type: ignore[no-untyped-call]
            except Exception:  # closing must not fail a shutdown
                log.debug("closing the InfluxDB client failed", exc_info=True)

    def prepare(self, batch: RecordBatch) -> bytes:
        """The batch's `cmm_measurement` lines."""
        return measurement_body(batch, self.precision)

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Write `batch` as one line-protocol request and classify InfluxDB's answer."""
        body = prepared if isinstance(prepared, bytes) else self.prepare(batch)
        return await self._post(body, len(batch))

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """Write `gateway_health` points as one request, classified as `write` is."""
        lines = [health_line(point, self.precision) for point in health_points(samples)]
        return await self._post("\n".join(lines).encode(), len(lines))

    async def _post(self, body: bytes, lines: int) -> WriteOutcome:
        assert self._write_api is not None, "write() before open()"
        if not body:
            return Delivered()
        try:
            await self._write_api.write(
                bucket=self.bucket, org=self.org, record=body, write_precision=_WRITE_PRECISION[self.precision]
            )
        except ApiException as exc:
            text = _text(exc.body)
            invalid = _invalid_lines(text, body.decode().split("\n")) if exc.status in (400, 422) else {}
            status = exc.status or 0
            return classify_answer(status, text, parse_retry_after(exc.retry_after), lines, _REFUSED, invalid)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Retry(f"{type(exc).__name__}: {exc}".rstrip(": "))
        return Delivered()

    async def ping(self) -> bool:
        """Ask InfluxDB's /ping whether it is reachable."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except Exception:  # the client logs and raises many kinds here; any failure is "unreachable"
            return False


def _text(body: object) -> str:
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")
    return "" if body is None else str(body)


def _invalid_lines(text: str, lines: list[str]) -> dict[int, str]:
    """{position: InfluxDB's message} for the lines a 400/422 names, by number or by content."""
    message = short_text(text)
    invalid = {int(n) - 1: message for n in _LINE_NUMBER.findall(text) if 0 < int(n) <= len(lines)}
    quoted = _QUOTED_LINE.findall(text)
    if quoted:
        position = {line: i for i, line in enumerate(lines)}
        invalid.update({position[q]: message for q in quoted if q in position})
    return invalid
