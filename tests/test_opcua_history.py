"""OPC UA HistoryRead from the embedded historian: a real asyncua server and client, a real SQLite
store filled through the historian sink, answers compared with what `/api/v1/history` returns."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from cmm_twin.gateway.sinks.historian.api import HistoryParamError, history_document, parse_history_params
from cmm_twin.gateway.sinks.historian.lineprotocol import MEASUREMENT
from cmm_twin.gateway.sinks.historian.sqlite import HistoryQuery, SqliteHistorianSink
from cmm_twin.gateway.sinks.opcua.history import (
    MAX_VALUES_PER_READ,
    HistoryOpener,
    continuation_point,
    historized_variable,
    install_history,
)
from cmm_twin.physics.thermal import VERDICT_NAMES, Flag
from cmm_twin.records import RecordBatch

TIMEOUT_S = 60.0
T0_NS = 1_795_766_400_000_000_000  # 2026-11-27T08:00:00Z
STEP_NS = 1_000_000_000
NAMESPACE_URI = "urn:cmm-twin"
_CODES = {name: i for i, name in enumerate(VERDICT_NAMES.tolist())}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def batch(machine_id: str, feature: str, stamps_ns: Sequence[int], *, start: int = 0, unit: str = "mm") -> RecordBatch:
    """Records of one characteristic at `stamps_ns`: compensated 100 + k µm (k counted from
    `start`), every 7th UNCERTAIN, every 11th with an assumed temperature, every 13th without a
    deviation (NaN)."""
    n = len(stamps_ns)
    k = np.arange(start, start + n)
    deviation = k * 1.0
    deviation[k % 13 == 0] = np.nan
    verdicts = ["UNCERTAIN" if i % 7 == 0 else "PASS" for i in k.tolist()]
    return RecordBatch.with_blanks(
        n,
        {
            "measurement_id": [f"{machine_id}-{feature}-{i}" for i in k.tolist()],
            "timestamp": [""] * n,
            "timestamp_ns": np.asarray(stamps_ns, dtype=np.int64),
            "machine_id": [machine_id] * n,
            "part_id": [f"P{i:05d}" for i in k.tolist()],
            "feature": [feature] * n,
            "material": ["AL6061"] * n,
            "compensated_mm": 100.0 + k * 1e-3,
            "measured_mm": 100.01 + k * 1e-3,
            "deviation_um": deviation,
            "uncertainty_um": np.full(n, 2.5),
            "verdict": np.array([_CODES[v] for v in verdicts], dtype=np.int8),
            "flags": np.where(k % 11 == 0, int(Flag.TEMPERATURE_ASSUMED), 0).astype(np.int32),
            "unit": [unit] * n,
        },
    )


def nid(identifier: str | int, ns: int = 0) -> ua.NodeId:
    return ua.NodeId(cast("ua.String", identifier), cast("ua.Int16", ns))


def ns_of(moment: dt.datetime | None) -> int:
    assert moment is not None
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def at(time_ns: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=time_ns // 1000)


def char_id(ns: int, machine_id: str, feature: str, variable: str | None = None) -> ua.NodeId:
    text = f"CMM/{machine_id}/Characteristics/{feature}" + (f"/{variable}" if variable else "")
    return nid(text, ns)


async def add_characteristic(server: Server, ns: int, machine_id: str, feature: str) -> None:
    """The contract's nodes of one characteristic (what the OPC UA sink builds), made here."""
    objects = server.nodes.objects
    cmm = server.get_node(nid("CMM", ns))
    try:
        await cmm.read_browse_name()
    except UaError:
        cmm = await objects.add_folder(nid("CMM", ns), ua.QualifiedName("CMM", ns))
    machine = server.get_node(nid(f"CMM/{machine_id}", ns))
    try:
        await machine.read_browse_name()
        folder = server.get_node(nid(f"CMM/{machine_id}/Characteristics", ns))
    except UaError:
        machine = await cmm.add_object(nid(f"CMM/{machine_id}", ns), ua.QualifiedName(machine_id, ns))
        folder = await machine.add_folder(
            nid(f"CMM/{machine_id}/Characteristics", ns), ua.QualifiedName("Characteristics", ns)
        )
    obj = await folder.add_object(char_id(ns, machine_id, feature), ua.QualifiedName(feature, ns))
    for name, value, vtype in (
        ("MeasuredLength", 0.0, ua.VariantType.Double),
        ("CompensatedLength", 0.0, ua.VariantType.Double),
        ("Deviation", 0.0, ua.VariantType.Double),
        ("Verdict", "", ua.VariantType.String),
    ):
        var = await obj.add_variable(char_id(ns, machine_id, feature, name), ua.QualifiedName(name, ns), value, vtype)
        if name != "MeasuredLength":
            await var.write_attribute(AttributeIds.Historizing, ua.DataValue(ua.Variant(True)))
            await var.set_attr_bit(AttributeIds.AccessLevel, ua.AccessLevel.HistoryRead)


async def new_server() -> tuple[Server, int]:
    """An initialised asyncua server on a port of its choice (not started) and the index of urn:cmm-twin."""
    server = Server()
    await server.init()
    server.iserver.disabled_clock = True  # no once-a-second clock task for stop() to wait for
    server.set_endpoint("opc.tcp://127.0.0.1:0/cmm-twin/")
    return server, await server.register_namespace(NAMESPACE_URI)


@asynccontextmanager
async def started(server: Server) -> AsyncIterator[Client]:
    """Start `server` and connect a client to it; both are stopped at the end."""
    await server.start()
    try:
        client = Client(
            f"opc.tcp://127.0.0.1:{server.bserver.port if server.bserver else 0}/cmm-twin/", timeout=TIMEOUT_S
        )
        await client.connect()
        try:
            yield client
        finally:
            await client.disconnect()
    finally:
        await server.stop()


@asynccontextmanager
async def serving(
    opener: HistoryOpener | None, characteristics: Sequence[tuple[str, str]], page_max: int = MAX_VALUES_PER_READ
) -> AsyncIterator[Client]:
    """A started server answering history from `opener` (at most `page_max` values a call), and a
    client connected to it."""
    server, ns = await new_server()
    for machine_id, feature in characteristics:
        await add_characteristic(server, ns, machine_id, feature)
    await install_history(server, opener, ns, page_max)
    async with started(server) as client:
        yield client


@pytest.fixture
async def historian(tmp_path: Path) -> AsyncIterator[SqliteHistorianSink]:
    sink = SqliteHistorianSink(tmp_path / "history.sqlite")
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


def details(
    start: dt.datetime | None = None, end: dt.datetime | None = None, values: int = 0
) -> ua.ReadRawModifiedDetails:
    d = ua.ReadRawModifiedDetails()
    d.IsReadModified = False
    d.StartTime = start or ua.get_win_epoch()
    d.EndTime = end or ua.get_win_epoch()
    d.NumValuesPerNode = values
    d.ReturnBounds = False
    return d


async def read_pages(node: Node, d: ua.ReadRawModifiedDetails) -> tuple[list[ua.DataValue], int]:
    """Every value of a read, following continuation points; (values, number of calls)."""
    values: list[ua.DataValue] = []
    cont: bytes | None = None
    calls = 0
    while True:
        result = await node.history_read(d, cont)
        calls += 1
        assert result.StatusCode.is_good(), result.StatusCode
        values.extend(result.HistoryData.DataValues)
        cont = result.ContinuationPoint
        if not cont:
            return values, calls


async def api_points(sink: SqliteHistorianSink, **params: str) -> list[dict[str, Any]]:
    """The points `/api/v1/history` answers for these parameters."""
    query = parse_history_params({"limit": "100000", **params})
    points: list[dict[str, Any]] = history_document(query, await sink.query(query))["points"]
    return points


def as_api(values: list[ua.DataValue]) -> list[tuple[str, Any, int]]:
    """(ISO time as the API writes it, value or None for NaN, status code) of each DataValue."""
    out: list[tuple[str, Any, int]] = []
    for v in values:
        assert v.SourceTimestamp is not None and v.Value is not None and v.StatusCode is not None
        value = v.Value.Value
        if isinstance(value, float) and math.isnan(value):
            value = None
        out.append((v.SourceTimestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), value, int(v.StatusCode.value)))
    return out


def expected_status(point: dict[str, Any]) -> int:
    uncertain = point["verdict"] == "UNCERTAIN" or "temperature_assumed" in (point["flags"] or [])
    return StatusCodes.Uncertain if uncertain else StatusCodes.Good


async def fill(sink: SqliteHistorianSink) -> None:
    """10,000 points of CMM-01/D1 (every 10 s, 123 ns past the second), interleaved with 2,000 of
    CMM-01/D2 and 2,000 of CMM.02/D1 (the same feature on another machine)."""
    main = [T0_NS + i * 10 * STEP_NS + 123 for i in range(10_000)]
    for start in range(0, 10_000, 2_500):
        await sink.write(batch("CMM-01", "D1", main[start : start + 2_500], start=start))
    await sink.write(batch("CMM-01", "D2", [T0_NS + i * 50 * STEP_NS + 7 * STEP_NS for i in range(2_000)]))
    await sink.write(batch("CMM.02", "D1", [T0_NS + i * 50 * STEP_NS + 3 * STEP_NS for i in range(2_000)]))


async def test_10000_values_in_pages_equal_the_history_api(historian: SqliteHistorianSink) -> None:
    await fill(historian)
    span = {"since": "2026-11-27T08:00:00Z", "until": "2026-11-29T08:00:00Z"}
    points = await api_points(
        historian, machine_id="CMM-01", feature="D1", fields="compensated_mm,deviation_um,flags", **span
    )
    assert len(points) == 10_000
    start, end = dt.datetime(2026, 11, 27, 8, tzinfo=dt.UTC), dt.datetime(2026, 11, 29, 8, tzinfo=dt.UTC)
    characteristics = [("CMM-01", "D1"), ("CMM-01", "D2"), ("CMM.02", "D1")]
    async with serving(historian.stream, characteristics, page_max=3_000) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        for variable, field in (
            ("CompensatedLength", "compensated_mm"),
            ("Deviation", "deviation_um"),
            ("Verdict", "verdict"),
        ):
            node = client.get_node(char_id(ns, "CMM-01", "D1", variable))
            values, calls = await read_pages(node, details(start, end, 1_000))
            assert calls == 10
            assert as_api(values) == [(p["time"], p[field], expected_status(p)) for p in points]
        # NumValuesPerNode 0 (all) or above the server's page size: pages of the server's size.
        node = client.get_node(char_id(ns, "CMM-01", "D1", "CompensatedLength"))
        values, calls = await read_pages(node, details(start, end))
        assert calls == 4
        assert [v for _, v, _ in as_api(values)] == [p["compensated_mm"] for p in points]
        # The same feature on another machine, and another feature: only their own points.
        for machine_id, feature in (("CMM.02", "D1"), ("CMM-01", "D2")):
            other = await api_points(historian, machine_id=machine_id, feature=feature, fields="compensated_mm", **span)
            node = client.get_node(char_id(ns, machine_id, feature, "CompensatedLength"))
            values, _ = await read_pages(node, details(start, end, 700))
            assert len(values) == len(other) == 2_000
            assert [(t, v) for t, v, _ in as_api(values)] == [(p["time"], p["compensated_mm"]) for p in other]


async def test_time_domain_bounds_and_direction(historian: SqliteHistorianSink) -> None:
    stamps = [T0_NS + i * STEP_NS for i in range(10)]  # 08:00:00 .. 08:00:09
    await historian.write(batch("M1", "F", stamps))
    async with serving(historian.stream, [("M1", "F")]) as client:
        node = client.get_node(char_id(await client.get_namespace_index(NAMESPACE_URI), "M1", "F", "CompensatedLength"))

        async def read(d: ua.ReadRawModifiedDetails) -> list[int]:
            values, _ = await read_pages(node, d)
            return [ns_of(v.SourceTimestamp) for v in values]

        # startTime included, endTime excluded, forward.
        assert await read(details(at(stamps[2]), at(stamps[5]))) == stamps[2:5]
        # startTime == endTime: the value at that instant.
        assert await read(details(at(stamps[4]), at(stamps[4]))) == [stamps[4]]
        # only startTime: forward from it, NumValuesPerNode values, no continuation point.
        first = await node.history_read(details(at(stamps[6]), None, 3))
        assert [ns_of(v.SourceTimestamp) for v in first.HistoryData.DataValues] == stamps[6:9]
        # only endTime: newest first, before endTime.
        last = await node.history_read(details(None, at(stamps[5]), 3))
        assert [ns_of(v.SourceTimestamp) for v in last.HistoryData.DataValues] == stamps[4:1:-1]
        # endTime < startTime: newest first, startTime included, endTime excluded; in pages of 2.
        assert await read(details(at(stamps[8]), at(stamps[3]), 2)) == stamps[8:3:-1]
        # Pages forward in a range: each continuation point resumes where the last page ended.
        assert await read(details(at(stamps[0]), at(stamps[9]), 4)) == stamps[0:9]
        # Nothing in the range: Good, no value, no continuation point.
        empty = await node.history_read(details(at(stamps[9] + STEP_NS), at(stamps[9] + 5 * STEP_NS)))
        assert empty.StatusCode.is_good() and empty.HistoryData.DataValues == [] and not empty.ContinuationPoint


async def history_status(client: Client, nodeid: ua.NodeId, d: Any, cont: bytes | None = None, **params: Any) -> int:
    valueid = ua.HistoryReadValueId()
    valueid.NodeId = nodeid
    valueid.ContinuationPoint = cont
    request = ua.HistoryReadParameters()
    request.HistoryReadDetails = d
    request.TimestampsToReturn = params.get("timestamps", ua.TimestampsToReturn.Source)
    request.ReleaseContinuationPoints = params.get("release", False)
    request.NodesToRead.append(valueid)
    result = (await client.uaclient.history_read(request))[0]
    return int(result.StatusCode.value)


async def test_what_is_not_historized_or_unknown_is_refused_with_a_bad_status(historian: SqliteHistorianSink) -> None:
    await historian.write(batch("M1", "F", [T0_NS + i * STEP_NS for i in range(5)]))
    async with serving(historian.stream, [("M1", "F")]) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        good = char_id(ns, "M1", "F", "Deviation")
        window = details(at(T0_NS), at(T0_NS + 10 * STEP_NS))
        assert await history_status(client, good, window) == StatusCodes.Good
        refused = {
            "not historized": (char_id(ns, "M1", "F", "MeasuredLength"), window, None),
            "an object": (char_id(ns, "M1", "F"), window, None),
            "a standard node": (nid(ObjectIds.Server_ServerStatus_CurrentTime), window, None),
            "unknown characteristic": (char_id(ns, "M1", "G", "Deviation"), window, None),
            "unknown node": (nid("no/such/node", ns), window, None),
            "processed": (good, ua.ReadProcessedDetails(), None),
            "events": (good, ua.ReadEventDetails(), None),
            "two of three missing": (good, details(at(T0_NS)), None),
            "foreign continuation point": (good, window, b"\x00" * 8),
            "another node's continuation point": (
                good,
                window,
                continuation_point(char_id(ns, "M1", "F", "Verdict"), False, T0_NS),
            ),
        }
        codes = {name: await history_status(client, *args) for name, args in refused.items()}
        assert codes == {
            "not historized": StatusCodes.BadHistoryOperationUnsupported,
            "an object": StatusCodes.BadHistoryOperationUnsupported,
            "a standard node": StatusCodes.BadHistoryOperationUnsupported,
            "unknown characteristic": StatusCodes.BadNodeIdUnknown,
            "unknown node": StatusCodes.BadNodeIdUnknown,
            "processed": StatusCodes.BadHistoryOperationUnsupported,
            "events": StatusCodes.BadHistoryOperationUnsupported,
            "two of three missing": StatusCodes.BadArgumentsMissing,
            "foreign continuation point": StatusCodes.BadContinuationPointInvalid,
            "another node's continuation point": StatusCodes.BadContinuationPointInvalid,
        }
        # Releasing a continuation point frees nothing (they are stateless) and is Good.
        cont = continuation_point(good, False, T0_NS + STEP_NS)
        assert await history_status(client, good, window, cont, release=True) == StatusCodes.Good
        with pytest.raises(UaStatusCodeError) as refusal:
            await history_status(client, good, window, timestamps=ua.TimestampsToReturn.Neither)
        assert refusal.value.code == StatusCodes.BadInvalidTimestampArgument
        # The server still answers after all that.
        assert await history_status(client, good, window) == StatusCodes.Good
        await historian.close()  # the store closes under a running server
        assert await history_status(client, good, window) == StatusCodes.BadResourceUnavailable


async def test_without_an_embedded_historian_history_is_refused() -> None:
    async with serving(None, [("M1", "F")]) as client:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        window = details(at(T0_NS), at(T0_NS + 10 * STEP_NS))
        code = await history_status(client, char_id(ns, "M1", "F", "Verdict"), window)
        assert code == StatusCodes.BadHistoryOperationUnsupported


def test_historized_variable_names() -> None:
    assert historized_variable(nid("CMM/CMM.01/Characteristics/D-1.x/Verdict", 2), 2) is not None
    assert historized_variable(nid("CMM/CMM.01/Characteristics/D-1.x/Verdict", 3), 2) is None
    assert historized_variable(nid("CMM/CMM.01/Characteristics/D-1.x/PartId", 2), 2) is None
    assert historized_variable(nid("CMM/CMM.01/D-1.x/Verdict", 2), 2) is None
    assert historized_variable(nid(5, 2), 2) is None


async def test_store_feature_filter_and_oldest_first(historian: SqliteHistorianSink) -> None:
    await historian.write(batch("M1", "F", [T0_NS + i * STEP_NS for i in range(6)]))
    await historian.write(batch("M1", "G", [T0_NS + i * STEP_NS + 1 for i in range(6)]))
    base = HistoryQuery(MEASUREMENT, T0_NS, T0_NS + 100 * STEP_NS, ("compensated_mm",), "M1", 4, "F")
    newest = await historian.query(base)
    assert newest.time_ns == [T0_NS + i * STEP_NS for i in range(2, 6)] and newest.truncated
    assert set(newest.tags["feature"]) == {"F"}
    oldest = await historian.query(HistoryQuery(**{**base.__dict__, "oldest": True}))
    assert oldest.time_ns == [T0_NS + i * STEP_NS for i in range(4)] and oldest.truncated
    whole = await historian.query(HistoryQuery(**{**base.__dict__, "oldest": True, "limit": 6}))
    assert len(whole.time_ns) == 6 and not whole.truncated
    everything = await historian.query(HistoryQuery(**{**base.__dict__, "feature": None, "limit": 100}))
    assert len(everything.time_ns) == 12


def test_history_api_feature_parameter() -> None:
    q = parse_history_params({"machine_id": "M1", "feature": "D1"}, now_ns=T0_NS)
    assert (q.machine_id, q.feature) == ("M1", "D1")
    assert parse_history_params({}, now_ns=T0_NS).feature is None
    with pytest.raises(HistoryParamError) as error:
        parse_history_params({"measurement": "gateway_health", "feature": "D1"}, now_ns=T0_NS)
    assert error.value.parameter == "feature"
