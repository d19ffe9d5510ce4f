"""`GET /api/v1/history`: parameters and the JSON answer of the embedded historian's query API.

Parameters (all optional):
- `measurement`: `cmm_measurement` (default) or `gateway_health`;
- `machine_id`: only this machine (cmm_measurement only);
- `feature`: only this feature (cmm_measurement only; with `machine_id`, one characteristic);
- `since`, `until`: ISO 8601 with an offset (`2026-11-27T08:00:00Z`) or Unix seconds; default the
  last hour up to now; `since` is inclusive, `until` exclusive;
- `fields`: comma-separated field names (default all fields of the measurement: for
  `cmm_measurement` the line protocol's fields and every other field of the result record);
- `limit`: at most this many points, the newest (default 10,000, at most 100,000).
"""

from __future__ import annotations

import decimal
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.sinks.historian.lineprotocol import MEASUREMENT
from cmm_twin.gateway.sinks.historian.schema import MEASUREMENT_FIELDS, MEASUREMENT_TAGS
from cmm_twin.gateway.sinks.historian.sqlite import HistoryQuery, HistoryResult
from cmm_twin.physics.thermal import flag_names

DEFAULT_SPAN_NS = 3600 * 10**9
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1
PARAMETERS = ("measurement", "machine_id", "feature", "since", "until", "fields", "limit")


class HistoryParamError(CmmTwinError):
    """A query parameter is invalid; `parameter` names it."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


def parse_time_ns(value: str, parameter: str) -> int:
    """Unix nanoseconds from ISO 8601 with an offset, or from Unix seconds (exact decimals)."""
    text = value.strip()
    try:
        seconds = decimal.Decimal(text)
    except decimal.InvalidOperation:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise HistoryParamError(
                parameter, f"expected ISO 8601 (e.g. 2026-11-27T08:00:00Z) or Unix seconds, got {value!r}"
            ) from None
        if moment.tzinfo is None:
            raise HistoryParamError(parameter, f"needs a UTC offset or Z: {value!r}") from None
        time_ns = (moment - _EPOCH) // timedelta(microseconds=1) * 1000
    else:
        if not seconds.is_finite():
            raise HistoryParamError(parameter, f"not a finite number: {value!r}")
        time_ns = int(seconds * 10**9)
    if not _MIN_NS <= time_ns <= _MAX_NS:
        raise HistoryParamError(parameter, f"out of range (1677-09-21 .. 2262-04-11): {value!r}")
    return time_ns


def parse_history_params(params: Mapping[str, str], now_ns: int | None = None) -> HistoryQuery:
    """A HistoryQuery from the request's query parameters, or HistoryParamError naming the bad one."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise HistoryParamError(unknown[0], f"unknown parameter (expected {', '.join(PARAMETERS)})")
    measurement = params.get("measurement", MEASUREMENT)
    if measurement not in MEASUREMENT_FIELDS:
        raise HistoryParamError("measurement", f"expected one of {', '.join(MEASUREMENT_FIELDS)}, got {measurement!r}")
    known = MEASUREMENT_FIELDS[measurement]
    fields = known
    if params.get("fields", "").strip():
        fields = tuple(dict.fromkeys(f.strip() for f in params["fields"].split(",") if f.strip()))
        wrong = [f for f in fields if f not in known]
        if wrong:
            raise HistoryParamError("fields", f"{wrong[0]!r} is not a field of {measurement} ({', '.join(known)})")
    machine_id = params.get("machine_id") or None
    if machine_id is not None and "machine_id" not in MEASUREMENT_TAGS[measurement]:
        raise HistoryParamError("machine_id", f"{measurement} has no machine_id tag")
    feature = params.get("feature") or None
    if feature is not None and "feature" not in MEASUREMENT_TAGS[measurement]:
        raise HistoryParamError("feature", f"{measurement} has no feature tag")
    now_ns = time.time_ns() if now_ns is None else now_ns
    until_ns = parse_time_ns(params["until"], "until") if params.get("until") else now_ns
    since_ns = parse_time_ns(params["since"], "since") if params.get("since") else until_ns - DEFAULT_SPAN_NS
    if since_ns >= until_ns:
        raise HistoryParamError("since", "must be before until")
    limit = DEFAULT_LIMIT
    if params.get("limit"):
        try:
            limit = int(params["limit"])
        except ValueError:
            raise HistoryParamError("limit", f"expected an integer, got {params['limit']!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise HistoryParamError("limit", f"must be 1..{MAX_LIMIT}, got {limit}")
    return HistoryQuery(measurement, since_ns, until_ns, fields, machine_id, limit, feature)


def iso_ns(time_ns: int) -> str:
    """Unix nanoseconds as ISO 8601 UTC with microseconds and Z."""
    moment = _EPOCH + timedelta(microseconds=time_ns // 1000)  # exact, no float rounding
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_head(q: HistoryQuery, count: int, truncated: bool) -> dict[str, Any]:
    """The answer's members before `points`: the query as understood (`feature` only when it was
    asked for), `count` and `truncated`."""
    return {
        "measurement": q.measurement,
        "machine_id": q.machine_id,
        **({"feature": q.feature} if q.feature is not None else {}),
        "since": iso_ns(q.since_ns),
        "until": iso_ns(q.until_ns),
        "fields": list(q.fields),
        "count": count,
        "truncated": truncated,
    }


def points_of(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """One JSON object per row `(time_ns, *values of names)`; `flags` (stored as a bit mask) as
    the record's list of names (null for a point stored before flags were)."""
    points = [{"time": iso_ns(row[0]), **dict(zip(names, row[1:], strict=True))} for row in rows]
    if "flags" in names:
        names_of: dict[int, list[str]] = {}
        for point in points:
            mask = point["flags"]
            if mask is not None:
                if mask not in names_of:
                    names_of[mask] = flag_names(mask)
                point["flags"] = names_of[mask]
    return points


def history_document(q: HistoryQuery, result: HistoryResult) -> dict[str, Any]:
    """The JSON answer: the query as understood and the points, oldest first, one object each."""
    names = [*result.tags, *result.fields]
    columns = [result.time_ns, *result.tags.values(), *result.fields.values()]
    points = points_of(names, zip(*columns, strict=True))
    return {**history_head(q, len(points), result.truncated), "points": points}


def stream_head(q: HistoryQuery, count: int, truncated: bool) -> bytes:
    """The start of the streamed answer, up to and including the `[` of `points`; the points follow
    (`PointsEncoder`), then `STREAM_TAIL`: the same document as `history_document`."""
    return orjson.dumps(history_head(q, count, truncated))[:-1] + b',"points":['


STREAM_TAIL = b"]}"


class PointsEncoder:
    """Encodes pages of rows as the comma-separated points of a streamed answer."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._first = True

    def __call__(self, rows: list[tuple[Any, ...]]) -> bytes:
        body = orjson.dumps(points_of(self.names, rows))[1:-1]
        if self._first:
            self._first = False
            return body
        return b"," + body
