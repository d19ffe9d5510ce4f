"""OPC UA HistoryRead of the characteristics from the embedded historian (docs/opcua.md, "History").

CompensatedLength, Deviation and Verdict of every characteristic
(`ns=<ns>;s=CMM/<machine_id>/Characteristics/<feature>/<Variable>`) are historized: a HistoryRead
with ReadRawModifiedDetails (IsReadModified false) reads the points of the SQLite historian
(`cmm_measurement`) through the same streamed query as `/api/v1/history`, so there is no second
copy of the data and every value is the one the history API answers for that point
(compensated_mm, deviation_um or the verdict), with SourceTimestamp = the measurement time and the
live variable's status rule (`characteristics.result_status`): Uncertain for an UNCERTAIN verdict
or an assumed part temperature, Good otherwise. A stored null (no nominal, so no deviation) reads NaN.

The time domain follows OPC UA Part 11: startTime included, endTime excluded; forward in time when
startTime < endTime or only startTime is given, newest first when only endTime is given or
endTime < startTime; startTime == endTime reads the value at that instant. At most
`MAX_VALUES_PER_READ` values (or NumValuesPerNode, if fewer) come per node and call, then a
continuation point. Continuation points are stateless (they hold the node and the next instant to
read, bound to the node), so the server keeps nothing per client and ReleaseContinuationPoints has
nothing to free. Bounding values (ReturnBounds) are not returned.

Anything else is refused per node, never with an exception: an unknown node BadNodeIdUnknown, a
node that is not historized, or other history details (processed, at-time, events, modified),
BadHistoryOperationUnsupported, a continuation point not made here (or for another node)
BadContinuationPointInvalid, fewer than two of startTime, endTime and NumValuesPerNode
BadArgumentsMissing, a store that cannot answer BadResourceUnavailable; TimestampsToReturn Neither
fails the whole call (BadInvalidTimestampArgument).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import sqlite3
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.server.history import HistoryManager
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

from cmm_twin.gateway.sinks.historian.lineprotocol import MEASUREMENT
from cmm_twin.gateway.sinks.historian.sqlite import HistoryQuery, HistoryStream
from cmm_twin.gateway.sinks.opcua.address_space import _EPOCH, ns_to_datetime, status
from cmm_twin.gateway.sinks.opcua.characteristics import result_status
from cmm_twin.physics.thermal import VERDICT_NAMES

log = logging.getLogger(__name__)

HistoryOpener = Callable[[HistoryQuery], AbstractAsyncContextManager[HistoryStream]]
"""Opens a streamed history query: `SqliteHistorianSink.stream`, the app's `HISTORY_KEY`."""

HISTORIZED: dict[str, str] = {
    "CompensatedLength": "compensated_mm",
    "Deviation": "deviation_um",
    "Verdict": "verdict",
}
"""The historized variables of a characteristic and the historian column each reads."""
MAX_VALUES_PER_READ = 2_000
"""Values per node and HistoryRead call at most; more come with a continuation point. asyncua encodes
the answer on the event loop (about 17 µs a value on a loaded 2-core machine): 2,000 values hold
the loop some 30 ms, 10,000 would hold it 170 ms, past the live data's latency goal."""
_MIN_NS, _MAX_NS = -(2**63), 2**63 - 1
_UNSPECIFIED = ua.get_win_epoch()
_CONTINUATION = struct.Struct(">4sB8sq")
"""magic, direction (0 forward, 1 newest first), the node's digest, the next instant to read (ns)."""
_MAGIC = b"cmmH"
_VERDICT_CODES = {name: code for code, name in enumerate(VERDICT_NAMES.tolist())}
_TICK_NS = 1000
"""asyncua carries DateTime in microseconds: an instant a client names covers its whole microsecond."""


@dataclass(frozen=True)
class HistorizedVariable:
    """A historized variable of one characteristic, from its NodeId."""

    machine_id: str
    feature: str
    variable: str

    @property
    def column(self) -> str:
        """The historian column the variable reads."""
        return HISTORIZED[self.variable]


def historized_variable(nodeid: ua.NodeId, ns: int) -> HistorizedVariable | None:
    """The characteristic and variable of `ns=<ns>;s=CMM/<m>/Characteristics/<f>/<Variable>` when the
    variable is historized; None for any other NodeId."""
    if nodeid.NamespaceIndex != ns or not isinstance(nodeid.Identifier, str):
        return None
    parts = nodeid.Identifier.split("/")
    if len(parts) != 5 or parts[0] != "CMM" or parts[2] != "Characteristics" or parts[4] not in HISTORIZED:
        return None
    if not parts[1] or not parts[3]:
        return None
    return HistorizedVariable(parts[1], parts[3], parts[4])


def datetime_ns(moment: dt.datetime) -> int:
    """Unix nanoseconds of an OPC UA DateTime (naive ones are UTC), clamped to the int64 range."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(_MIN_NS, min(_MAX_NS, (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000))


@dataclass(frozen=True)
class ReadWindow:
    """One page of a raw read: points with since_ns <= time < until_ns, the oldest `limit` of them
    (forward) or the newest (`reverse`, answered newest first)."""

    since_ns: int
    until_ns: int
    reverse: bool
    limit: int


def _digest(nodeid: ua.NodeId) -> bytes:
    return hashlib.blake2b(nodeid.to_string().encode(), digest_size=8).digest()


def continuation_point(nodeid: ua.NodeId, reverse: bool, next_ns: int) -> bytes:
    """A continuation point: read `nodeid` on from `next_ns` (forward: inclusive; newest first: exclusive)."""
    return _CONTINUATION.pack(_MAGIC, int(reverse), _digest(nodeid), next_ns)


def read_window(
    details: ua.ReadRawModifiedDetails, nodeid: ua.NodeId, cont: bytes | None, page_max: int = MAX_VALUES_PER_READ
) -> ReadWindow | ua.StatusCode:
    """The window of one raw read (first page, or the page a continuation point names; at most
    `page_max` values), or the status refusing it."""
    start = None if details.StartTime is None or details.StartTime <= _UNSPECIFIED else datetime_ns(details.StartTime)
    end = None if details.EndTime is None or details.EndTime <= _UNSPECIFIED else datetime_ns(details.EndTime)
    wanted = int(details.NumValuesPerNode or 0)
    if (start is None) + (end is None) + (wanted == 0) > 1:
        return status(StatusCodes.BadArgumentsMissing)
    limit = min(wanted, page_max) if wanted else page_max
    if start is not None and end is not None:
        if start == end:  # the value at that instant (Part 11: time flows forward)
            window = ReadWindow(start, min(start + _TICK_NS, _MAX_NS), False, limit)
        elif start < end:
            window = ReadWindow(start, end, False, limit)
        else:  # newest first from start (included) down to end (excluded)
            window = ReadWindow(min(end + _TICK_NS, _MAX_NS), min(start + _TICK_NS, _MAX_NS), True, limit)
    elif start is not None:
        window = ReadWindow(start, _MAX_NS, False, limit)
    else:
        assert end is not None
        window = ReadWindow(_MIN_NS, end, True, limit)
    if not cont:
        return window
    return _resume(window, nodeid, cont)


def _resume(window: ReadWindow, nodeid: ua.NodeId, cont: bytes) -> ReadWindow | ua.StatusCode:
    invalid = status(StatusCodes.BadContinuationPointInvalid)
    if len(cont) != _CONTINUATION.size:
        return invalid
    magic, reverse, digest, next_ns = _CONTINUATION.unpack(cont)
    if magic != _MAGIC or bool(reverse) != window.reverse or digest != _digest(nodeid):
        return invalid
    if not window.since_ns <= next_ns <= window.until_ns:
        return invalid
    if window.reverse:
        return ReadWindow(window.since_ns, next_ns, True, window.limit)
    return ReadWindow(next_ns, window.until_ns, False, window.limit)


def _rows_to_values(column: int, is_verdict: bool) -> Callable[[list[tuple[Any, ...]]], list[tuple[int, ua.DataValue]]]:
    """Builds (time_ns, DataValue) per row of a page (on the history reader's thread)."""
    vtype = ua.VariantType.String if is_verdict else ua.VariantType.Double

    def encode(rows: list[tuple[Any, ...]]) -> list[tuple[int, ua.DataValue]]:
        out = []
        for row in rows:
            time_ns, verdict, flags = row[0], row[4], row[-1]
            value = row[column]
            if not is_verdict and value is None:
                value = math.nan
            out.append(
                (
                    time_ns,
                    ua.DataValue(
                        Value=ua.Variant(value, vtype),
                        StatusCode=result_status(_VERDICT_CODES[verdict], flags or 0),
                        SourceTimestamp=cast("ua.DateTime", ns_to_datetime(time_ns)),
                    ),
                )
            )
        return out

    return encode


class StoreHistory(HistoryManager):
    """asyncua's history manager answering HistoryRead from the embedded historian (module doc).
    `opener` None (no embedded historian): every read is BadHistoryOperationUnsupported."""

    def __init__(
        self, iserver: InternalServer, opener: HistoryOpener | None, ns: int, page_max: int = MAX_VALUES_PER_READ
    ) -> None:
        super().__init__(iserver)
        self.opener = opener
        self.ns = ns
        self.page_max = page_max

    async def read_history(self, params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        """One result per node to read, in order; never raises but for TimestampsToReturn Neither."""
        if params.TimestampsToReturn not in (
            ua.TimestampsToReturn.Source,
            ua.TimestampsToReturn.Server,
            ua.TimestampsToReturn.Both,
        ):
            raise ServiceError(StatusCodes.BadInvalidTimestampArgument)
        results = []
        for item in params.NodesToRead:
            try:
                results.append(await self._read_one(params, item))
            except Exception:  # a reading bug must not fail the other nodes nor the server
                log.exception("OPC UA HistoryRead of %s failed", item.NodeId.to_string())
                results.append(_failed(StatusCodes.BadInternalError))
        return results

    async def _read_one(self, params: ua.HistoryReadParameters, item: ua.HistoryReadValueId) -> ua.HistoryReadResult:
        details = params.HistoryReadDetails
        target = historized_variable(item.NodeId, self.ns)
        if target is None or item.NodeId not in self.iserver.aspace:
            known = item.NodeId in self.iserver.aspace
            return _failed(StatusCodes.BadHistoryOperationUnsupported if known else StatusCodes.BadNodeIdUnknown)
        if not isinstance(details, ua.ReadRawModifiedDetails) or self.opener is None:
            return _failed(StatusCodes.BadHistoryOperationUnsupported)
        if params.ReleaseContinuationPoints:  # stateless: nothing held to release
            return ua.HistoryReadResult(StatusCode=ua.StatusCode(), HistoryData=ua.HistoryData())
        if details.IsReadModified:  # values are never modified: there is no modified history
            return ua.HistoryReadResult(StatusCode=status(StatusCodes.GoodNoData), HistoryData=ua.HistoryModifiedData())
        window = read_window(details, item.NodeId, item.ContinuationPoint, self.page_max)
        if isinstance(window, ua.StatusCode):
            return ua.HistoryReadResult(StatusCode=window)
        try:
            values, more, last_ns = await self._read_window(target, window)
        except (sqlite3.Error, RuntimeError) as exc:  # the store failed or is closed
            log.warning("OPC UA HistoryRead of %s: history store unavailable: %s", item.NodeId.to_string(), exc)
            return _failed(StatusCodes.BadResourceUnavailable)
        result = ua.HistoryReadResult(StatusCode=ua.StatusCode(), HistoryData=ua.HistoryData(DataValues=values))
        if more and values:
            next_ns = last_ns if window.reverse else last_ns + 1
            result.ContinuationPoint = continuation_point(item.NodeId, window.reverse, next_ns)
        return result

    async def _read_window(
        self, target: HistorizedVariable, window: ReadWindow
    ) -> tuple[list[ua.DataValue], bool, int]:
        """The values of one page (in answer order), whether more follow, and the time of the last."""
        assert self.opener is not None
        is_verdict = target.column == "verdict"
        fields = ("flags",) if is_verdict else (target.column, "flags")
        query = HistoryQuery(
            MEASUREMENT,
            window.since_ns,
            window.until_ns,
            fields,
            machine_id=target.machine_id,
            limit=window.limit,
            feature=target.feature,
            oldest=not window.reverse,
        )
        pairs: list[tuple[int, ua.DataValue]] = []
        async with self.opener(query) as stream:
            column = 1 + list(stream.names).index("verdict" if is_verdict else target.column)
            async for page in stream.pages(_rows_to_values(column, is_verdict)):
                pairs.extend(page)
            more = stream.truncated
        if window.reverse:
            pairs.reverse()
        return [value for _, value in pairs], more, (pairs[-1][0] if pairs else 0)


def _failed(code: int) -> ua.HistoryReadResult:
    return ua.HistoryReadResult(StatusCode=status(code))


async def install_history(
    server: Server, opener: HistoryOpener | None, ns: int, page_max: int = MAX_VALUES_PER_READ
) -> StoreHistory:
    """Answer HistoryRead on `server` from the historian `opener` (None: no embedded historian, reads
    are refused), at most `page_max` values per node and call. Call after the address space is
    built, before `server.start()`."""
    manager = StoreHistory(server.iserver, opener, ns, page_max)
    await manager.init()
    server.iserver.history_manager = manager
    return manager


__all__: Sequence[str] = (
    "HISTORIZED",
    "MAX_VALUES_PER_READ",
    "HistorizedVariable",
    "StoreHistory",
    "historized_variable",
    "install_history",
    "read_window",
)
