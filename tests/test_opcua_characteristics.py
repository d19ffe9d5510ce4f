"""One OPC UA object per characteristic: values, units, status codes, history access levels, the
copies made from a template, the rebuild after a restart, and a start-up backlog of many machines
(the newest value of every machine and characteristic arrives)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from cmm_twin.gateway.sinks.opcua.address_space import unece_unit_id
from cmm_twin.gateway.sinks.opcua.settings import OpcUaSettings
from cmm_twin.gateway.sinks.opcua.sink import OpcUaSink
from cmm_twin.physics.thermal import Flag
from tests.gateway_harness import HEADER, csv_row, drop_file, free_port, gateway_config, running_gateway, wait_for
from tests.test_opcua_sink import T0_NS, connected, make_batch, running

TIMEOUT_S = 60.0
RESULT_NAMES = ("CompensatedLength", "Deviation", "Uncertainty", "LowerTolerance", "UpperTolerance", "Verdict")


def char_id(ns: int, machine: str, feature: str, variable: str | None = None) -> ua.NodeId:
    text = f"CMM/{machine}/Characteristics/{feature}" + (f"/{variable}" if variable else "")
    return ua.NodeId(text, ns)  # type: ignore[arg-type]


async def namespace(client: Client) -> int:
    return int(await client.get_namespace_index("urn:cmm-twin"))


@dataclass(frozen=True)
class Read:
    """A variable's value, status name and source timestamp as a client reads them."""

    value: Any
    status: str
    good: bool
    source: dt.datetime | None


async def read_value(client: Client, nodeid: ua.NodeId) -> Read:
    data = await client.get_node(nodeid).read_data_value(raise_on_bad_status=False)
    status = data.StatusCode or ua.StatusCode()
    value = data.Value.Value if data.Value is not None else None
    return Read(value, status.name, status.is_good(), data.SourceTimestamp)


async def attribute_of(client: Client, nodeid: ua.NodeId, attribute: AttributeIds) -> Any:
    data = await client.get_node(nodeid).read_attribute(attribute)
    assert data.Value is not None
    return data.Value.Value


def settings(tmp_path: Path) -> OpcUaSettings:
    return OpcUaSettings(endpoint=f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/", state_dir=tmp_path)


@asynccontextmanager
async def running_with_history(settings: OpcUaSettings, history: Path) -> AsyncIterator[OpcUaSink]:
    """An OPC UA sink with an embedded history at `history` (no file there: nothing to rebuild)."""
    sink = OpcUaSink(settings, history_path=history)
    await sink.open()
    try:
        yield sink
    finally:
        await sink.close()


async def test_each_characteristic_has_its_own_values_units_status_and_timestamp(tmp_path: Path) -> None:
    rows = [
        ("CMM-01", T0_NS, 100.0021, "PASS"),
        ("CMM-01", T0_NS + 1_000_000, 60.0043, "UNCERTAIN"),
        ("CMM-01", T0_NS + 2_000_000, 45.0, "PASS"),
        ("CMM-01", T0_NS + 3_000_000, 100.0031, "FAIL"),
    ]
    batch = make_batch(
        rows,
        feature=["length_x", "bore_d", "angle_a", "length_x"],
        unit=["mm", "mm", "deg", "mm"],
        flags=np.array([0, 0, 0, int(Flag.TEMPERATURE_ASSUMED)], dtype=np.int32),
        lower_tol_mm=np.array([-0.01, -0.005, -0.1, -0.01]),
        upper_tol_mm=np.array([0.01, math.nan, 0.1, 0.01]),
    )
    history = tmp_path / "history.sqlite"
    async with asyncio.timeout(TIMEOUT_S), running_with_history(settings(tmp_path), history) as sink:
        await sink.write(batch)
        async with connected(sink.endpoint_url) as client:
            ns = await namespace(client)
            length = {name: await read_value(client, char_id(ns, "CMM-01", "length_x", name)) for name in RESULT_NAMES}
            assert length["CompensatedLength"].value == 100.0031, "the newest row of length_x, not bore_d's"
            assert length["Verdict"].value == "FAIL"
            assert length["Deviation"].value == (100.0031 - 100.0) * 1000.0
            assert length["Verdict"].status == "Uncertain", "assumed temperature"
            measured_at = dt.datetime.fromtimestamp((T0_NS + 3_000_000) / 1e9, dt.UTC)
            assert length["Verdict"].source == measured_at
            stamp = await read_value(client, char_id(ns, "CMM-01", "length_x", "Timestamp"))
            assert stamp.value == measured_at
            part = await read_value(client, char_id(ns, "CMM-01", "length_x", "PartId"))
            assert part.value == "P0003"
            measured = await read_value(client, char_id(ns, "CMM-01", "length_x", "MeasuredLength"))
            assert measured.value == 100.0031 + 0.0118

            bore = {name: await read_value(client, char_id(ns, "CMM-01", "bore_d", name)) for name in RESULT_NAMES}
            assert bore["CompensatedLength"].value == 60.0043 and bore["Verdict"].value == "UNCERTAIN"
            assert bore["Verdict"].status == "Uncertain", "UNCERTAIN verdict"
            assert math.isnan(bore["UpperTolerance"].value) and bore["UpperTolerance"].good

            angle = await read_value(client, char_id(ns, "CMM-01", "angle_a", "MeasuredValue"))
            assert angle.value == 45.0 + 0.0118 and angle.good
            units = {}
            for feature, name in [("length_x", "Deviation"), ("angle_a", "MeasuredValue"), ("angle_a", "Deviation")]:
                eu = await client.get_node(char_id(ns, "CMM-01", feature, f"{name}/EngineeringUnits")).read_value()
                units[(feature, name)] = (eu.UnitId, eu.DisplayName.Text)
            assert units == {
                ("length_x", "Deviation"): (unece_unit_id("4H"), "µm"),
                ("angle_a", "MeasuredValue"): (unece_unit_id("DD"), "°"),
                ("angle_a", "Deviation"): (-1, "m°"),
            }
            historized = char_id(ns, "CMM-01", "length_x", "CompensatedLength")
            assert await attribute_of(client, historized, AttributeIds.Historizing) is True
            access = await attribute_of(client, historized, AttributeIds.UserAccessLevel)
            assert access & ua.AccessLevel.HistoryRead.mask and not access & ua.AccessLevel.CurrentWrite.mask
            plain = char_id(ns, "CMM-01", "length_x", "Uncertainty")
            assert not await attribute_of(client, plain, AttributeIds.AccessLevel) & ua.AccessLevel.HistoryRead.mask
            machine_level = await client.get_node(ua.NodeId("CMM/CMM-01/CompensatedLength", ns)).read_value()  # type: ignore[arg-type]
            assert machine_level == 100.0031, "the machine-level variables stay: latest of any characteristic"


async def _describe(client: Client, nodeid: ua.NodeId, prefix: str) -> dict[str, Any]:
    """Every attribute and reference of the subtree at `nodeid`, with the ids relative to `prefix`."""

    def relative(value: Any) -> Any:
        text = value.to_string() if isinstance(value, ua.NodeId) else value
        return text.replace(prefix, "<root>") if isinstance(text, str) else text

    described: dict[str, Any] = {}
    pending = [client.get_node(nodeid)]
    while pending:
        node = pending.pop()
        attributes = {}
        for attribute in AttributeIds:
            if attribute is AttributeIds.Value:
                continue
            data = await node.read_attribute(attribute, raise_on_bad_status=False)
            value = data.Value.Value if data.Value is not None else None
            if attribute in (AttributeIds.BrowseName, AttributeIds.DisplayName, AttributeIds.Description):
                value = str(value).replace(prefix.rsplit("/", 1)[-1], "<name>")
            attributes[attribute.name] = ((data.StatusCode or ua.StatusCode()).name, relative(value))
        references = []
        for ref in await node.get_references(refs=ObjectIds.References, direction=ua.BrowseDirection.Both):
            name = ref.BrowseName.Name.replace(prefix.rsplit("/", 1)[-1], "<name>")
            references.append((ref.ReferenceTypeId.to_string(), ref.IsForward, relative(ref.NodeId), name))
            children = (ObjectIds.HasComponent, ObjectIds.HasProperty)
            if ref.IsForward and ref.ReferenceTypeId.Identifier in children:
                pending.append(client.get_node(ref.NodeId))
        described[relative(node.nodeid)] = (attributes, sorted(references))
    return described


def _renamed(value: Any, old: str, new: str) -> Any:
    """`value` with `old` replaced by `new` in every string of it (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {_renamed(k, old, new): _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_renamed(v, old, new) for v in value)
    return value


async def test_a_copied_characteristic_reads_and_browses_like_the_one_asyncua_built(tmp_path: Path) -> None:
    rows = [("CMM-01", T0_NS + i, 100.0, "PASS") for i in range(3)] + [("CMM-02", T0_NS + 9, 100.0, "PASS")]
    batch = make_batch(rows, feature=["first", "second", "third", "first"])
    async with asyncio.timeout(TIMEOUT_S), running(settings(tmp_path)) as sink:
        await sink.write(batch)
        async with connected(sink.endpoint_url) as client:
            ns = await namespace(client)
            built = await _describe(client, char_id(ns, "CMM-01", "first"), "CMM-01/Characteristics/first")
            copied = await _describe(client, char_id(ns, "CMM-01", "third"), "CMM-01/Characteristics/third")
            other_machine = await _describe(client, char_id(ns, "CMM-02", "first"), "CMM-02/Characteristics/first")
    assert len(built) == 25, "the object, 17 variables and 7 EngineeringUnits properties"
    assert copied == built
    assert _renamed(other_machine, "CMM-02", "CMM-01") == built, "a copy under another machine"


async def test_characteristics_come_back_after_a_restart_from_the_embedded_history(tmp_path: Path) -> None:
    """A backlog of 40 files of 12 machines waits in the inbox at start-up: every machine and
    characteristic shows its newest value; after a restart with an empty inbox, they are all there
    again (rebuilt from the history), before any new file."""
    inbox = tmp_path / "inbox"
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)  # within the retention
    newest: dict[tuple[str, str], tuple[str, float]] = {}
    all_values: dict[tuple[str, str], list[float]] = {}
    for k in range(40):
        lines = []
        for j in range(6):
            machine, feature = f"CMM-{(k * 5 + j) % 12:02d}", f"f{(k + j) % 3}"
            measured = 100.0 + (k * 6 + j) * 1e-4
            stamp = (start + dt.timedelta(seconds=k * 10 + j)).isoformat()
            stamp = stamp.replace("+00:00", "Z")
            row = csv_row(f"P{k}", timestamp=stamp, machine_id=machine, feature=feature, measured_mm=f"{measured:.4f}")
            lines.append(row)
            newest[(machine, feature)] = (f"P{k}", measured)
            all_values.setdefault((machine, feature), []).append(round(measured, 4))
        drop_file(inbox, f"batch-{k:03d}.csv", HEADER + "".join(lines))
    assert len({m for m, _ in newest}) == 12 and len(newest) == 36
    port = free_port()
    config = gateway_config(
        tmp_path, sinks_off=frozenset(), historian="sqlite", opcua_endpoint=f"opc.tcp://127.0.0.1:{port}/cmm-twin/"
    )

    async def check(client: Client) -> None:
        ns = await namespace(client)
        for (machine, feature), (part, _) in newest.items():
            value = await read_value(client, char_id(ns, machine, feature, "PartId"))
            assert value.value == part, (machine, feature)
        for machine in {m for m, _ in newest}:
            value = await read_value(client, ua.NodeId(f"CMM/{machine}/PartId", ns))  # type: ignore[arg-type]
            assert value.good and value.value, machine

    async with asyncio.timeout(4 * TIMEOUT_S):
        async with running_gateway(config) as gateway:
            await wait_for(lambda: gateway.status.files_processed == 40, what="the backlog")
            await wait_for(lambda: all(r.idle for r in gateway._live), what="the live sinks")
            async with connected(f"opc.tcp://127.0.0.1:{port}/cmm-twin/") as client:
                await check(client)
            history = tmp_path / "state" / "history.sqlite"
            await wait_for(lambda: gateway.status.buffer_depth == 0, what="the history written")
        assert history.exists()
        async with running_gateway(config), connected(f"opc.tcp://127.0.0.1:{port}/cmm-twin/") as client:
            await check(client)
            ns = await namespace(client)
            node = client.get_node(char_id(ns, "CMM-03", "f1", "CompensatedLength"))
            values = await node.read_raw_history(start, start + dt.timedelta(hours=2))
            assert len(values) == len(all_values[("CMM-03", "f1")]) > 1, "HistoryRead from the embedded history"
            stamps = [v.SourceTimestamp.timestamp() for v in values if v.SourceTimestamp is not None]
            assert len(stamps) == len(values) == len(set(stamps)) and stamps == sorted(stamps), "oldest first, one each"


async def test_a_rejected_row_turns_its_characteristic_bad_until_a_valid_one_comes(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/cmm-twin/"
    config = gateway_config(tmp_path, sinks_off=frozenset(), opcua_endpoint=endpoint)
    async with asyncio.timeout(4 * TIMEOUT_S), running_gateway(config) as gateway, connected(endpoint) as client:
        ns = await namespace(client)
        verdict = char_id(ns, "CMM-01", "length_x", "Verdict")

        async def status_of(nodeid: ua.NodeId) -> Read:
            return await read_value(client, nodeid)

        drop_file(inbox, "a.csv", HEADER + csv_row("P1"))
        await wait_for(lambda: gateway.status.files_processed == 1 and all(r.idle for r in gateway._live))
        first = await status_of(verdict)
        assert first.good and first.value == "PASS"
        rows = csv_row("P2", measured_mm="not-a-number", timestamp="2026-01-05T06:01:00Z")
        rows += csv_row("P2", feature="bore_d", timestamp="2026-01-05T06:01:00Z")
        drop_file(inbox, "b.csv", HEADER + rows)
        await wait_for(lambda: gateway.status.files_processed == 2)
        deadline = asyncio.get_running_loop().time() + TIMEOUT_S
        while (bad := await status_of(verdict)).good and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert bad.status == "Bad" and bad.value is None, "Bad, so no value (OPC UA Part 4)"
        compensated = await status_of(char_id(ns, "CMM-01", "length_x", "CompensatedLength"))
        assert compensated.status == "Bad"
        tolerance = await status_of(char_id(ns, "CMM-01", "length_x", "UpperTolerance"))
        assert tolerance.good, "the specification is not what was rejected"
        bore = await status_of(char_id(ns, "CMM-01", "bore_d", "Verdict"))
        assert bore.good and bore.value == "PASS", "the other characteristic of the file is fine"
        drop_file(inbox, "c.csv", HEADER + csv_row("P3", timestamp="2026-01-05T06:02:00Z"))
        await wait_for(lambda: gateway.status.files_processed == 3)
        while not (good := await status_of(verdict)).good and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        part = await status_of(char_id(ns, "CMM-01", "length_x", "PartId"))
        assert good.good and part.value == "P3", "a valid row makes it good again"
