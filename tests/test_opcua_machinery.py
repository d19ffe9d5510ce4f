"""The OPC UA Machinery model (OPC 40001-1) against a real asyncua server with the official
nodesets and a real asyncua client on loopback.

The nodesets come from the set-up (`scripts/nodesets.sh`, which `make test` runs first) in
`<sys.prefix>/share/cmm-twin/nodesets`, or from `CMM_OPCUA_NODESETS`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import load_config
from cmm_twin.gateway.sinks.opcua.address_space import NAMESPACE_URI, AddressSpace
from cmm_twin.gateway.sinks.opcua.machinery import (
    EXECUTING,
    NOT_EXECUTING,
    OUT_OF_SERVICE,
    MachineryModel,
)
from cmm_twin.gateway.sinks.opcua.nodesets import (
    DI_URI,
    MACHINERY_URI,
    NODESETS_ENV,
    NodesetError,
    default_nodesets_dir,
    nodeset_paths,
)
from cmm_twin.gateway.sinks.opcua.settings import MachineIdentity, OpcUaSettings
from cmm_twin.simulator.gateway_toml import gateway_toml

TIMEOUT_S = 60.0
"""A hang guard, not a speed budget."""
T0 = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)
IDLE_S = 120.0


def nodesets_dir() -> Path:
    """Where the set-up put the nodesets; the test fails (naming the fix) when they are not there."""
    directory = Path(os.environ.get(NODESETS_ENV) or default_nodesets_dir())
    try:
        nodeset_paths(directory)
    except NodesetError as exc:
        pytest.fail(f"{exc} (or set {NODESETS_ENV})")
    return directory


def settings_for(tmp_path: Path, nodesets: Path, **identities: MachineIdentity) -> OpcUaSettings:
    return OpcUaSettings(state_dir=tmp_path, nodesets_dir=nodesets, machine_idle_s=IDLE_S, identities=dict(identities))


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[Server, AddressSpace, str]]:
    """A started asyncua server (any free port) with the gateway's CMM folder; yields it, its
    address space and its URL."""
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/cmm-twin/")
    space = await AddressSpace.create(server)
    await server.start()
    port = server.bserver._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server, space, f"opc.tcp://127.0.0.1:{port}/cmm-twin/"
    finally:
        await server.stop()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Client]:
    client = Client(url, timeout=TIMEOUT_S)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


async def references(client: Client, nodeid: str, reftype: int, *, forward: bool = True) -> list[Any]:
    """The references of type `reftype` (subtypes not included) from `nodeid`."""
    return list(
        await client.get_node(nodeid).get_references(
            refs=reftype,
            direction=ua.BrowseDirection.Forward if forward else ua.BrowseDirection.Inverse,
            includesubtypes=False,
        )
    )


async def current_state(client: Client, ns: int, machine: str) -> tuple[str, str, int]:
    base = f"ns={ns};s=Machines/{machine}/MachineryBuildingBlocks/MachineryItemState/CurrentState"
    text = await client.get_node(base).read_value()
    state_id = await client.get_node(f"{base}/Id").read_value()
    number = await client.get_node(f"{base}/Number").read_value()
    return text.Text, state_id.to_string(), number


async def test_machines_follow_opc_40001_with_their_configured_identification(tmp_path: Path) -> None:
    identity = MachineIdentity(
        manufacturer="Test Metrology GmbH",
        model="TM-700",
        serial_number="TM7-000123",
        product_instance_uri="urn:test-metrology:TM7-000123",
        year_of_construction=2019,
    )
    settings = settings_for(tmp_path, nodesets_dir(), **{"CMM-01": identity})
    async with asyncio.timeout(TIMEOUT_S), serving() as (server, space, url):
        model = MachineryModel(server, space.ns, settings)
        assert model.status == "loading"
        await model.observe(T0, ok=[("CMM.02", "length")])  # before the model is loaded
        assert await model.load()  # on the running server
        assert model.status == "ready"
        assert await model.load()  # once is enough: nothing loaded twice
        await space.ensure_machine("CMM-01")
        await model.observe(T0, ok=[("CMM-01", "length"), ("CMM-01", "width")], rejected=[("CMM-01", "width")])

        async with connected(url) as client:
            ns = await client.get_namespace_index(NAMESPACE_URI)
            mns = await client.get_namespace_index(MACHINERY_URI)
            di = await client.get_namespace_index(DI_URI)
            machines = client.get_node(f"ns={mns};i=1001")
            assert (await machines.read_browse_name()) == ua.QualifiedName("Machines", mns)
            found = {(r.BrowseName.to_string(), r.NodeId.to_string()) for r in await machines.get_references(
                refs=ObjectIds.Organizes, direction=ua.BrowseDirection.Forward)}  # fmt: skip
            assert found == {
                (f"{ns}:CMM-01", f"ns={ns};s=Machines/CMM-01"),
                (f"{ns}:CMM.02", f"ns={ns};s=Machines/CMM.02"),
            }

            machine = f"ns={ns};s=Machines/CMM-01"
            (addin,) = await references(client, machine, ObjectIds.HasAddIn)
            assert addin.BrowseName == ua.QualifiedName("Identification", di)
            assert addin.NodeId.to_string() == f"{machine}/Identification"
            assert addin.TypeDefinition.to_string() == f"ns={mns};i=1012"  # MachineIdentificationType
            ident = client.get_node(f"{machine}/Identification")
            values = {
                name: await (await ident.get_child(f"{name_ns}:{name}")).read_value()
                for name, name_ns in (
                    ("Manufacturer", di),
                    ("Model", di),
                    ("SerialNumber", di),
                    ("ProductInstanceUri", di),
                    ("YearOfConstruction", mns),
                )
            }
            assert values == {
                "Manufacturer": ua.LocalizedText("Test Metrology GmbH"),
                "Model": ua.LocalizedText("TM-700"),
                "SerialNumber": "TM7-000123",
                "ProductInstanceUri": "urn:test-metrology:TM7-000123",
                "YearOfConstruction": 2019,
            }
            year = await client.get_node(
                f"{machine}/Identification/YearOfConstruction"
            ).read_data_type_as_variant_type()
            assert year == ua.VariantType.UInt16

            # MachineryBuildingBlocks holds both AddIns; the state machine is of the Machinery type
            blocks = f"{machine}/MachineryBuildingBlocks"
            (component,) = [
                r for r in await references(client, machine, ObjectIds.HasComponent)
                if r.BrowseName == ua.QualifiedName("MachineryBuildingBlocks", mns)
            ]  # fmt: skip
            assert component.NodeId.to_string() == blocks
            assert component.TypeDefinition.to_string() == f"i={ObjectIds.FolderType}"
            addins = {(r.BrowseName.to_string(), r.NodeId.to_string(), r.TypeDefinition.to_string()) for r in
                      await references(client, blocks, ObjectIds.HasAddIn)}  # fmt: skip
            assert addins == {
                (f"{di}:Identification", f"{machine}/Identification", f"ns={mns};i=1012"),
                (f"{mns}:MachineryItemState", f"{blocks}/MachineryItemState", f"ns={mns};i=1002"),
            }
            state_node = await client.nodes.objects.get_child(
                [f"{mns}:Machines", f"{ns}:CMM-01", f"{mns}:MachineryBuildingBlocks", f"{mns}:MachineryItemState"]
            )
            current = await state_node.get_child("0:CurrentState")
            type_definition = await current.read_type_definition()
            assert (
                type_definition is not None and type_definition.to_string() == f"i={ObjectIds.FiniteStateVariableType}"
            )
            executing = f"ns={mns};i=5006"
            assert await current_state(client, ns, "CMM-01") == (EXECUTING, executing, 3)
            assert await current_state(client, ns, "CMM.02") == (EXECUTING, executing, 3)

            # from the Machinery object to the measurements and back
            (organized,) = await references(client, machine, ObjectIds.Organizes)
            assert organized.NodeId.to_string() == f"ns={ns};s=CMM/CMM-01"
            back = await references(client, f"ns={ns};s=CMM/CMM-01", ObjectIds.Organizes, forward=False)
            assert {r.NodeId.to_string() for r in back} == {f"ns={ns};s=CMM", machine}
            assert await references(client, f"ns={ns};s=Machines/CMM.02", ObjectIds.Organizes) == []
            await space.ensure_machine("CMM.02")  # its measurements appear: linked with its next rows
            await model.observe(T0, ok=[("CMM.02", "length")])
            (organized,) = await references(client, f"ns={ns};s=Machines/CMM.02", ObjectIds.Organizes)
            assert organized.NodeId.to_string() == f"ns={ns};s=CMM/CMM.02"

            # an unconfigured machine: the documented defaults, no YearOfConstruction
            other = client.get_node(f"ns={ns};s=Machines/CMM.02/Identification")
            assert await (await other.get_child(f"{di}:Manufacturer")).read_value() == ua.LocalizedText("unknown")
            assert await (await other.get_child(f"{di}:SerialNumber")).read_value() == "unknown"
            uri = await (await other.get_child(f"{di}:ProductInstanceUri")).read_value()
            assert uri == "urn:cmm-twin:machine:CMM.02"
            names = {(await child.read_browse_name()).Name for child in await other.get_properties()}
            assert names == {"Manufacturer", "Model", "SerialNumber", "ProductInstanceUri"}

            # no client writes anything
            for nodeid in (f"{machine}/Identification/SerialNumber", f"{blocks}/MachineryItemState/CurrentState"):
                with pytest.raises(UaStatusCodeError):
                    await client.get_node(nodeid).write_value("forged")
            assert (await current_state(client, ns, "CMM-01"))[0] == EXECUTING


class Collector:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.queue.put_nowait(val.Text)


async def test_state_executing_idle_out_of_service_and_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(tmp_path, nodesets_dir(), **{"CMM-01": MachineIdentity()})
    async with asyncio.timeout(TIMEOUT_S), serving() as (server, space, url):
        caplog.clear()
        model = await MachineryModel.create(server, space.ns, settings)
        assert model is not None
        assert [r.getMessage()[:60] for r in caplog.records if r.levelno >= logging.WARNING] == []  # importer noise
        assert logging.getLogger("asyncua.common.xmlimporter").filters == []
        assert model.next_change_s(T0) is None  # nothing Executing: no timer needed
        async with connected(url) as client:
            ns = space.ns
            mns = await client.get_namespace_index(MACHINERY_URI)
            assert await current_state(client, ns, "CMM-01") == (NOT_EXECUTING, f"ns={mns};i=5007", 2)
            collector = Collector()
            subscription = await client.create_subscription(10, collector)
            base = f"ns={ns};s=Machines/CMM-01/MachineryBuildingBlocks/MachineryItemState/CurrentState"
            await subscription.subscribe_data_change(client.get_node(base))
            assert await collector.queue.get() == NOT_EXECUTING

            length, diameter = ("CMM-01", "length"), ("CMM-01", "diameter")
            await model.observe(T0, ok=[length, length, diameter])
            assert await collector.queue.get() == EXECUTING
            assert model.next_change_s(T0) == IDLE_S
            later = T0 + dt.timedelta(seconds=100)
            await model.observe(later, ok=[length])  # still executing: the idle time counts anew
            await model.tick(T0 + dt.timedelta(seconds=IDLE_S))
            assert model.state("CMM-01") == EXECUTING
            assert model.next_change_s(T0 + dt.timedelta(seconds=IDLE_S)) == 100.0
            await model.tick(later + dt.timedelta(seconds=IDLE_S - 0.001))
            assert model.state("CMM-01") == EXECUTING
            await model.tick(later + dt.timedelta(seconds=IDLE_S))
            assert await collector.queue.get() == NOT_EXECUTING
            assert await current_state(client, ns, "CMM-01") == (NOT_EXECUTING, f"ns={mns};i=5007", 2)
            assert model.next_change_s(later) is None

            # a file with a good and a rejected characteristic, as the sink hands it over: its
            # valid rows, then the rejections: executing, not failing
            t1 = later + dt.timedelta(seconds=IDLE_S + 10)
            await model.observe(t1, ok=[length])
            await model.observe(t1, rejected=[diameter])
            assert await collector.queue.get() == EXECUTING
            assert model.state("CMM-01") == EXECUTING
            # then a file whose rows are all rejected: every characteristic's newest row fails
            await model.observe(t1 + dt.timedelta(seconds=5), rejected=[length, diameter])
            assert await collector.queue.get() == OUT_OF_SERVICE
            await model.tick(t1 + dt.timedelta(seconds=10 * IDLE_S))  # stays: its records all fail
            await model.observe(t1 + dt.timedelta(seconds=6))  # no rows: no change
            assert await current_state(client, ns, "CMM-01") == (OUT_OF_SERVICE, f"ns={mns};i=5004", 1)
            await model.observe(t1 + dt.timedelta(seconds=20), ok=[diameter], rejected=[length])
            assert await collector.queue.get() == EXECUTING
            assert await current_state(client, ns, "CMM-01") == (EXECUTING, f"ns={mns};i=5006", 3)
            # a characteristic both valid and rejected in one call: the rejection counts (the newer)
            await model.observe(t1 + dt.timedelta(seconds=21), ok=[length], rejected=[length, diameter])
            assert await collector.queue.get() == OUT_OF_SERVICE
            assert collector.queue.empty()
            await subscription.delete()

            await model.observe(t1, rejected=[("CMM-05", "length")])  # a new machine whose rows all fail
            assert await current_state(client, ns, "CMM-05") == (OUT_OF_SERVICE, f"ns={mns};i=5004", 1)
            # e.g. rebuilt from the history at start-up: there, not executing, its characteristic known
            await model.ensure("CMM-09", ["length"])
            assert await current_state(client, ns, "CMM-09") == (NOT_EXECUTING, f"ns={mns};i=5007", 2)
            await model.observe(t1, rejected=[("CMM-09", "width")])  # one of two characteristics fails
            assert model.state("CMM-09") == EXECUTING
            health = model.health()
            assert health["machinery"] == "ready" and health["machines"] == 3


async def test_without_nodesets_the_server_still_serves_the_cmm_tree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = tmp_path / "no-nodesets"
    empty.mkdir()
    settings = settings_for(tmp_path, empty, **{"CMM-01": MachineIdentity()})
    caplog.set_level(logging.INFO, logger="cmm_twin")
    async with asyncio.timeout(TIMEOUT_S), serving() as (server, space, url):
        assert await MachineryModel.create(server, space.ns, settings) is None
        model = MachineryModel(server, space.ns, settings)
        caplog.clear()
        assert not await model.load()
        assert model.status.startswith(f"unavailable: OPC UA nodesets not found in {empty}")
        assert model.health() == {"machinery": model.status, "machines": 1}
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [
            f"OPC UA serves no Machinery model (OPC 40001-1): OPC UA nodesets not found in {empty} "
            "(no Opc.Ua.Di.NodeSet2.xml there); run cmm-twin nodesets (in a checkout make does it) to fetch them"
        ]
        await model.observe(T0, ok=[("CMM-01", "length")])  # harmless
        await model.tick(T0 + dt.timedelta(days=1))
        await space.ensure_machine("CMM-01")
        async with connected(url) as client:
            namespaces = await client.get_namespace_array()
            assert MACHINERY_URI not in namespaces
            cmm = await client.nodes.objects.get_child([f"{space.ns}:CMM", f"{space.ns}:CMM-01"])
            assert cmm.nodeid.to_string() == f"ns={space.ns};s=CMM/CMM-01"
            assert await client.get_node(f"ns={space.ns};s=CMM/CMM-01/Verdict").read_value() == ""


async def test_a_damaged_nodeset_is_reported_not_raised(tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for path in nodeset_paths(nodesets_dir()):
        (damaged / path.name).write_bytes(path.read_bytes())
    (damaged / "Opc.Ua.Machinery.NodeSet2.xml").write_text("<UANodeSet><truncated", encoding="utf-8")
    async with asyncio.timeout(TIMEOUT_S), serving() as (server, space, _):
        model = MachineryModel(server, space.ns, settings_for(tmp_path, damaged))
        assert not await model.load()
        assert model.status.startswith(
            f"unavailable: cannot load OPC UA nodeset {damaged}/Opc.Ua.Machinery.NodeSet2.xml"
        )


# ---------------------------------------------------------------- configuration


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_identification_and_idle_time_from_the_configuration(tmp_path: Path) -> None:
    config = load_config(
        [
            "--config",
            write(
                tmp_path,
                '[opcua]\nmachine_idle_s = 90\n\n[machines."CMM-01"]\ncmm_mpe_a_um = 1.8\nmanufacturer = " Acme "\n'
                'model = "X1"\nserial_number = "S-1"\nproduct_instance_uri = "urn:acme:S-1"\n'
                'year_of_construction = 2020\n\n[machines."CMM-02"]\ncmm_mpe_a_um = 2.0\n',
            ),
        ],
        environ={},
    )
    assert config.machine_identities == {
        "CMM-01": MachineIdentity("Acme", "X1", "S-1", "urn:acme:S-1", 2020),
    }
    assert config.physics.machine_mpe["CMM-01"] == (1.8, 333.0)
    settings = OpcUaSettings.from_config(config)
    assert settings is not None
    assert settings.machine_idle_s == 90.0
    assert settings.identities == config.machine_identities
    assert settings.nodesets_dir is None
    flagged = load_config(["--opcua-machine-idle-s", "5", "--opcua-nodesets", str(tmp_path)], environ={})
    assert flagged.options["opcua_machine_idle_s"] == 5.0
    from_env = OpcUaSettings.from_config(load_config([], environ={NODESETS_ENV: str(tmp_path)}))
    assert from_env is not None and from_env.nodesets_dir == tmp_path
    assert MachineIdentity().instance_uri("CMM-09") == "urn:cmm-twin:machine:CMM-09"


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ('[machines."CMM-01"]\nyear_of_construction = 1850', 'machines."CMM-01".year_of_construction', "a year 1900.."),
        ('[machines."CMM-01"]\nyear_of_construction = "2019"', 'machines."CMM-01".year_of_construction', "'2019'"),
        ('[machines."CMM-01"]\nmanufacturer = ""', 'machines."CMM-01".manufacturer', "non-empty text"),
        ('[machines."CMM-01"]\nserial_number = 7', 'machines."CMM-01".serial_number', "got 7"),
        ('[machines."CMM-01"]\nproduct_instance_uri = "not a uri"', 'machines."CMM-01".product_instance_uri', "URI"),
        ('[machines."CMM-01"]\nvendor = "x"', 'machines."CMM-01".vendor', "unknown key"),
        ('[machines."CMM 01"]\nmodel = "x"', 'machines."CMM 01"', "must match [A-Za-z0-9_.-]{1,64}"),
        ("[opcua]\nidle_s = 3", "opcua.idle_s", "unknown key (known: endpoint"),
        ("[opcua]\nmachine_idle_s = 0", "opcua_machine_idle_s", "must be in (0, 2.592e+06] s (30 days), got '0'"),
        ("[opcua]\nmachine_idle_s = 1e99", "opcua_machine_idle_s", "must be in (0, 2.592e+06] s"),
        ("[opcua]\nmachine_idle_s = nan", "opcua_machine_idle_s", "must be in (0, 2.592e+06] s"),
    ],
)
def test_configuration_errors_name_the_key_and_machine(tmp_path: Path, table: str, key: str, reason: str) -> None:
    path = write(tmp_path, table + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(["--config", path], environ={})
    assert caught.value.key == f"{path}: {key}"
    assert reason in caught.value.reason


def test_the_simulated_shop_identifies_its_machines_plainly(tmp_path: Path) -> None:
    config = load_config(["--config", write(tmp_path, gateway_toml(3))], environ={})
    assert sorted(config.machine_identities) == ["CMM-01", "CMM-02", "CMM-03"]
    for machine_id, identity in config.machine_identities.items():
        assert identity == MachineIdentity(
            manufacturer="cmm-twin simulator",
            model="simulated CMM",
            serial_number=f"SIM-{machine_id}",
            product_instance_uri=f"urn:cmm-twin:simulator:{machine_id}",
            year_of_construction=None,
        )
