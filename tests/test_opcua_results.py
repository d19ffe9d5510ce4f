"""GetLatestResult and ResultReady with a real asyncua server and a real asyncua client; the
characteristic nodes are made here as the contract names them (the OPC UA sink builds them)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from asyncua import ua
from asyncua.client.client import Client
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from cmm_twin.gateway.sinks.historian.sqlite import SqliteHistorianSink
from cmm_twin.gateway.sinks.opcua.results import (
    EVENT_PROPERTIES,
    ResultEvents,
    add_get_latest_result,
    get_latest_result_node_id,
    result_ready_type_id,
)
from cmm_twin.gateway.sinks.opcua.settings import OpcUaSettings
from cmm_twin.gateway.sinks.opcua.sink import OpcUaSink
from cmm_twin.gateway.web import HISTORY_KEY
from cmm_twin.records import RecordBatch
from tests.test_opcua_history import (
    NAMESPACE_URI,
    T0_NS,
    at,
    batch,
    char_id,
    details,
    new_server,
    nid,
    read_pages,
    started,
)
from tests.test_opcua_sink import connected, free_port

TIMEOUT_S = 60.0
CHAR_VALUES: dict[str, tuple[Any, ua.VariantType]] = {
    "PartId": ("P-0042", ua.VariantType.String),
    "CompensatedLength": (100.0042, ua.VariantType.Double),
    "Deviation": (4.2, ua.VariantType.Double),
    "Uncertainty": (2.5, ua.VariantType.Double),
    "LowerTolerance": (-0.01, ua.VariantType.Double),
    "UpperTolerance": (math.nan, ua.VariantType.Double),
    "Verdict": ("PASS", ua.VariantType.String),
    "PartTemperature": (23.5, ua.VariantType.Double),
    "Timestamp": (at(T0_NS), ua.VariantType.DateTime),
}


async def add_measured_characteristic(server: Server, ns: int, machine_id: str, feature: str, measured: str) -> None:
    """A characteristic with its variables holding CHAR_VALUES (`measured`: MeasuredLength, or
    MeasuredValue for an angle), under CMM/<machine_id>/Characteristics."""
    cmm = server.get_node(nid("CMM", ns))
    machine = await cmm.add_object(nid(f"CMM/{machine_id}", ns), ua.QualifiedName(machine_id, ns))
    folder = await machine.add_folder(
        nid(f"CMM/{machine_id}/Characteristics", ns), ua.QualifiedName("Characteristics", ns)
    )
    obj = await folder.add_object(char_id(ns, machine_id, feature), ua.QualifiedName(feature, ns))
    for name, (value, vtype) in {measured: (100.0160, ua.VariantType.Double), **CHAR_VALUES}.items():
        await obj.add_variable(char_id(ns, machine_id, feature, name), ua.QualifiedName(name, ns), value, vtype)


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Client, ResultEvents, int]]:
    server, ns = await new_server()
    await server.nodes.objects.add_folder(nid("CMM", ns), ua.QualifiedName("CMM", ns))
    await add_measured_characteristic(server, ns, "CMM-01", "D1", "MeasuredLength")
    await add_measured_characteristic(server, ns, "CMM.02", "A1", "MeasuredValue")
    await add_get_latest_result(server, ns)
    events = await ResultEvents.create(server, ns)
    async with started(server) as client:
        yield client, events, ns


async def call(client: Client, ns: int, *arguments: ua.Variant) -> ua.CallMethodResult:
    request = ua.CallMethodRequest()
    request.ObjectId = nid("CMM", ns)
    request.MethodId = get_latest_result_node_id(ns)
    request.InputArguments = list(arguments)
    results: list[ua.CallMethodResult] = await client.uaclient.call([request])
    return results[0]


def text(value: str) -> ua.Variant:
    return ua.Variant(value, ua.VariantType.String)


async def test_get_latest_result_answers_the_characteristic_variables() -> None:
    async with serving() as (client, _, ns):
        cmm = client.get_node(nid("CMM", ns))
        outputs = await cmm.call_method(get_latest_result_node_id(ns), "CMM-01", "D1")
        expected = [
            "P-0042", 100.0160, 100.0042, 4.2, 2.5, -0.01, math.nan, "PASS", 23.5, at(T0_NS), "mm",
        ]  # fmt: skip
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected, strict=True):
            assert (
                (math.isnan(got) and math.isnan(want)) if isinstance(want, float) and math.isnan(want) else got == want
            )
        angle = await cmm.call_method(get_latest_result_node_id(ns), "CMM.02", "A1")
        assert angle[1] == 100.0160 and angle[-1] == "deg"
        # The method's arguments are described (names and types) for generic clients.
        method = client.get_node(get_latest_result_node_id(ns))
        inputs = await (await method.get_child("0:InputArguments")).read_value()
        outputs_spec = await (await method.get_child("0:OutputArguments")).read_value()
        assert [a.Name for a in inputs] == ["MachineId", "Feature"]
        assert [a.Name for a in outputs_spec][-2:] == ["Timestamp", "Unit"]
        assert outputs_spec[-2].DataType == nid(ObjectIds.DateTime)


async def test_get_latest_result_refusals() -> None:
    async with serving() as (client, _, ns):
        unknown = await call(client, ns, text("CMM-01"), text("NOPE"))
        assert unknown.StatusCode.value == StatusCodes.BadNotFound and not unknown.OutputArguments
        assert (await call(client, ns, text("CMM-09"), text("D1"))).StatusCode.value == StatusCodes.BadNotFound
        assert (await call(client, ns, text("CMM-01/x"), text("D1"))).StatusCode.value == StatusCodes.BadNotFound
        few = await call(client, ns, text("CMM-01"))
        assert few.StatusCode.value == StatusCodes.BadArgumentsMissing
        many = await call(client, ns, text("CMM-01"), text("D1"), text("D2"))
        assert many.StatusCode.value == StatusCodes.BadTooManyArguments
        wrong = await call(client, ns, text("CMM-01"), ua.Variant(7, ua.VariantType.Int32))
        assert wrong.StatusCode.value == StatusCodes.BadInvalidArgument
        assert [r.value for r in wrong.InputArgumentResults] == [StatusCodes.Good, StatusCodes.BadTypeMismatch]
        # The high-level client raises the status; the server goes on answering.
        try:
            await client.get_node(nid("CMM", ns)).call_method(get_latest_result_node_id(ns), "CMM-01", "NOPE")
        except UaStatusCodeError as exc:
            assert exc.code == StatusCodes.BadNotFound
        else:
            raise AssertionError("no BadNotFound")
        ok = await call(client, ns, text("CMM-01"), text("D1"))
        assert ok.StatusCode.is_good() and len(ok.OutputArguments) == 11


class Events:
    def __init__(self) -> None:
        self.received: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.received.append(event)


async def wait_for_count(items: list[Any], count: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(items) < count:
        assert time.monotonic() < deadline, f"{len(items)} of {count} events"
        await asyncio.sleep(0.02)


async def test_result_ready_one_event_per_record_in_order() -> None:
    async with serving() as (client, events, ns):
        handler = Events()
        subscription = await client.create_subscription(20, handler)
        event_type = client.get_node(result_ready_type_id(ns))
        await subscription.subscribe_events(client.nodes.server, event_type, queuesize=1000)
        records = batch("CMM-01", "D1", [T0_NS + i * 1_000_000_123 for i in range(20)])
        await events.emit(records)
        await events.emit(batch("CMM.02", "A1", [T0_NS + 5], unit="deg"))
        await wait_for_count(handler.received, 21)
        await asyncio.sleep(0.2)
        assert len(handler.received) == 21 and events.emitted == 21
        first = handler.received[0]
        assert first.EventType == result_ready_type_id(ns)
        assert first.SourceNode == char_id(ns, "CMM-01", "D1")
        assert first.SourceName == "CMM-01/D1"
        assert first.Message.Text == "CMM-01 D1 UNCERTAIN"  # record 0 of `batch` is UNCERTAIN
        assert [e.MeasurementTime for e in handler.received[:20]] == [at(t) for t in records.timestamp_ns.tolist()]
        assert [e.Time for e in handler.received[:20]] == [at(t) for t in records.timestamp_ns.tolist()]
        assert [e.PartId for e in handler.received[:20]] == records.part_id
        assert [e.CompensatedLength for e in handler.received[:20]] == records.compensated_mm.tolist()
        assert [e.Verdict for e in handler.received[:3]] == ["UNCERTAIN", "PASS", "PASS"]
        assert math.isnan(first.Deviation) and handler.received[1].Deviation == 1.0
        assert [e.Uncertainty for e in handler.received[:2]] == [2.5, 2.5]
        angle = handler.received[20]
        assert (angle.MachineId, angle.Feature, angle.Unit) == ("CMM.02", "A1", "deg")
        assert angle.SourceNode == char_id(ns, "CMM.02", "A1")
        assert {name for name, _ in EVENT_PROPERTIES} <= set(vars(first))
        await events.emit(RecordBatch.empty())
        assert events.emitted == 21


async def test_with_the_nodes_the_opcua_sink_builds(tmp_path: Path) -> None:
    """History, GetLatestResult and ResultReady as the OPC UA sink installs them on its own server
    (the embedded historian's reader taken from the gateway's app), with its characteristic nodes."""
    settings = OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)
    records = batch("CMM-01", "D1", [T0_NS + i * 1_000_000_000 for i in range(30)])
    historian = SqliteHistorianSink(tmp_path / "history.sqlite")
    await historian.open()
    app = web.Application()
    app[HISTORY_KEY] = historian.stream
    sink = OpcUaSink(settings, history_path=historian.path)
    sink.add_routes(app)
    await sink.open()
    try:
        await historian.write(records)
        async with connected(sink.endpoint_url) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            handler = Events()
            subscription = await client.create_subscription(20, handler)
            await subscription.subscribe_events(client.nodes.server, client.get_node(result_ready_type_id(ns)))
            for i in range(len(records)):  # a live shop: one result of the characteristic per file
                await sink.write(records.take([i]))
            node = client.get_node(char_id(ns, "CMM-01", "D1", "CompensatedLength"))
            values, _ = await read_pages(node, details(at(T0_NS), at(T0_NS + 10**12), 7))
            assert [v.Value.Value for v in values if v.Value] == records.compensated_mm.tolist()
            cmm = client.get_node(nid("CMM", ns))
            newest = await cmm.call_method(get_latest_result_node_id(ns), "CMM-01", "D1")
            read = [await client.get_node(char_id(ns, "CMM-01", "D1", name)).read_value() for name in
                    ("PartId", "MeasuredLength", "CompensatedLength", "Verdict", "Timestamp")]  # fmt: skip
            assert [newest[0], newest[1], newest[2], newest[7], newest[9], newest[10]] == [*read, "mm"]
            assert newest[0] == records.part_id[-1]
            await wait_for_count(handler.received, 30)
            assert [e.PartId for e in handler.received] == records.part_id, "one event per result written"
            await sink.write(records)  # a burst: the newest result of the characteristic only
            await wait_for_count(handler.received, 31)
            await asyncio.sleep(0.5)
            assert [e.PartId for e in handler.received[30:]] == [records.part_id[-1]]
    finally:
        await sink.close()
        await historian.close()
