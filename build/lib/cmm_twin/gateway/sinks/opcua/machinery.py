"""The OPC UA Machinery model (OPC 40001-1) of the gateway's machines (docs/opcua.md, "Machinery").

With the official nodesets loaded (`nodesets`), each machine is an object in the Machinery
`Machines` folder (a generic client finds the machines of a server there), in the `urn:cmm-twin`
namespace (index `ns`):

    Objects/Machines/<m>                    ns=<ns>;s=Machines/<m>, BrowseName <ns>:<m>
      Identification (HasAddIn)             .../Identification: DI:Identification, MachineIdentificationType
        Manufacturer, Model                 .../Identification/<Name>: DI:<Name>, LocalizedText
        SerialNumber, ProductInstanceUri    .../Identification/<Name>: DI:<Name>, String
        YearOfConstruction                  .../Identification/<Name>: Machinery:<Name>, UInt16 (when configured)
      MachineryBuildingBlocks (HasComponent) .../MachineryBuildingBlocks: FolderType
        Identification (HasAddIn)           the same node as above
        MachineryItemState (HasAddIn)       .../MachineryBuildingBlocks/MachineryItemState:
                                            MachineryItemState_StateMachineType
          CurrentState                      .../MachineryItemState/CurrentState: LocalizedText
            Id, Number                      .../CurrentState/Id (the state's NodeId), .../CurrentState/Number
      <ns>:<m> (Organizes)                  ns=<ns>;s=CMM/<m>: the machine's measurements

The state follows the rows of the machine: Executing while they arrive, NotExecuting when none
came for `machine_idle_s`, OutOfService while the newest row of every one of its characteristics
was rejected (its records are all failing), until a good row comes. Every value is read-only for
clients.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from cmm_twin.gateway.sinks.opcua.address_space import _dv, _nid
from cmm_twin.gateway.sinks.opcua.nodesets import LoadedNodesets, NodesetError, default_nodesets_dir, load_nodesets
from cmm_twin.gateway.sinks.opcua.settings import MachineIdentity, OpcUaSettings

_logger = logging.getLogger(__name__)

EXECUTING = "Executing"
NOT_EXECUTING = "NotExecuting"
OUT_OF_SERVICE = "OutOfService"
ITEM_STATES = (EXECUTING, NOT_EXECUTING, OUT_OF_SERVICE, "NotAvailable")
"""The states of MachineryItemState_StateMachineType (the gateway never reports NotAvailable: it
cannot tell a machine switched off from one that is idle)."""

_MACHINES_FOLDER = 1001
_IDENTIFICATION_TYPE = 1012
_ITEM_STATE_TYPE = 1002
_READ = ua.AccessLevel.CurrentRead.mask
_VARIANT = {
    ObjectIds.LocalizedText: ua.VariantType.LocalizedText,
    ObjectIds.String: ua.VariantType.String,
    ObjectIds.UInt16: ua.VariantType.UInt16,
    ObjectIds.UInt32: ua.VariantType.UInt32,
    ObjectIds.NodeId: ua.VariantType.NodeId,
}


def machinery_node_id(ns: int, machine_id: str, path: str | None = None) -> ua.NodeId:
    """NodeId of a machine's Machinery object (path None) or of a node below it, e.g.
    `Identification/Manufacturer` or `MachineryBuildingBlocks/MachineryItemState/CurrentState`."""
    return _nid(f"Machines/{machine_id}" if path is None else f"Machines/{machine_id}/{path}", ns)


STATE_PATH = "MachineryBuildingBlocks/MachineryItemState"


@dataclass
class _Machine:
    state: str
    last_rows: dt.datetime | None = None
    """When rows of the machine last arrived (None: none since start)."""
    failing: dict[str, bool] = field(default_factory=dict)
    """Each characteristic (feature) seen: whether its newest row was rejected."""
    built: bool = False
    linked: bool = False
    """The Organizes reference to `CMM/<m>` is there."""


@dataclass(frozen=True)
class _States:
    """NodeId and StateNumber of each state of MachineryItemState_StateMachineType."""

    ids: Mapping[str, ua.NodeId]
    numbers: Mapping[str, int]


class MachineryModel:
    """The Machinery objects of one server. Construct, then `load` (the nodesets: about a second,
    fine on a running server; never raises); `observe` and `tick` work before and after (what
    they learn before is shown once loaded, nothing when the nodesets are unavailable)."""

    def __init__(
        self, server: Server, ns: int, settings: OpcUaSettings, identities: Mapping[str, MachineIdentity] | None = None
    ) -> None:
        self.server = server
        self.ns = ns
        self.idle = dt.timedelta(seconds=settings.machine_idle_s)
        self.nodesets_dir = settings.nodesets_dir or default_nodesets_dir()
        self.identities = dict(settings.identities if identities is None else identities)
        self.status = "loading"
        """`loading`, `ready`, or `unavailable: <why>` (for /health and the log)."""
        self.loaded: LoadedNodesets | None = None
        self._load_started = False
        self._states: _States | None = None
        self._machines: dict[str, _Machine] = {m: _Machine(NOT_EXECUTING) for m in self.identities}
        self._deadline: dt.datetime | None = None
        """The earliest moment an Executing machine turns idle (None: none is Executing)."""

    @classmethod
    async def create(
        cls, server: Server, ns: int, settings: OpcUaSettings, identities: Mapping[str, MachineIdentity] | None = None
    ) -> MachineryModel | None:
        """A loaded model, or None (after one warning) when the nodesets are unavailable."""
        model = cls(server, ns, settings, identities)
        return model if await model.load() else None

    @property
    def ready(self) -> bool:
        """The nodesets are loaded and the machines are in the address space."""
        return self.status == "ready"

    def health(self) -> dict[str, Any]:
        """What /health can show of the model."""
        info: dict[str, Any] = {"machinery": self.status, "machines": len(self._machines)}
        if self.loaded is not None:
            info["nodesets_load_s"] = round(self.loaded.load_s, 3)
        return info

    # -- loading

    async def load(self) -> bool:
        """Load the nodesets and add the machines known so far; False (with one warning naming
        the reason and `status` saying it) when that is not possible. Never raises; a second
        call (also during the first) only answers whether the model is ready."""
        if self._load_started:
            return self.ready
        self._load_started = True
        try:
            self.loaded = await load_nodesets(self.server, self.nodesets_dir)
            self._states = await self._read_states(self.loaded.machinery_ns)
        except NodesetError as exc:
            return self._unavailable(str(exc))
        except Exception as exc:  # an asyncua surprise must not take the OPC UA server down
            _logger.debug("loading the Machinery model failed", exc_info=True)
            return self._unavailable(f"loading the Machinery model failed: {type(exc).__name__}: {exc}")
        self.status = "ready"
        now = dt.datetime.now(dt.UTC)
        for machine_id in list(self._machines):
            await self._show(machine_id, now)
        _logger.info(
            "OPC UA Machinery model (OPC 40001-1) loaded in %.2f s: %d machine(s) under Objects/Machines",
            self.loaded.load_s,
            len(self._machines),
        )
        return True

    def _unavailable(self, reason: str) -> bool:
        self.status = f"unavailable: {reason}"
        _logger.warning("OPC UA serves no Machinery model (OPC 40001-1): %s", reason)
        return False

    async def _read_states(self, mns: int) -> _States:
        """The states' NodeIds and numbers, from the loaded state machine type."""
        server = self.server
        ids: dict[str, ua.NodeId] = {}
        numbers: dict[str, int] = {}
        state_type = server.get_node(_nid(_ITEM_STATE_TYPE, mns))
        for name in ITEM_STATES:
            state = await state_type.get_child(ua.QualifiedName(name, mns))
            number = await state.get_child(ua.QualifiedName("StateNumber", 0))
            ids[name] = state.nodeid
            numbers[name] = int(await number.read_value())
        return _States(ids, numbers)

    # -- the machines' state

    def _machine(self, machine_id: str) -> _Machine:
        machine = self._machines.get(machine_id)
        if machine is None:
            machine = self._machines[machine_id] = _Machine(NOT_EXECUTING)
        return machine

    async def ensure(self, machine_id: str, features: Iterable[str] = ()) -> None:
        """Show `machine_id` (NotExecuting until its files arrive) if it is not there yet, with
        `features` as characteristics known to be good, e.g. a machine rebuilt from the history at
        start-up. Never raises."""
        machine = self._machine(machine_id)
        for feature in features:
            machine.failing.setdefault(feature, False)
        await self._show(machine_id, dt.datetime.now(dt.UTC))

    async def observe(
        self, now: dt.datetime, ok: Iterable[tuple[str, str]] = (), rejected: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Rows arrived at `now`: `ok` holds the (machine id, feature) of valid rows, `rejected`
        of rejected ones (duplicates allowed; a key in both counts as rejected, the newer). A
        machine with rows is Executing, or OutOfService while the newest row of every one of its
        characteristics was rejected. Call it after the machines' `CMM/<m>` nodes were written,
        so the link to them is made at once. Never raises."""
        touched: dict[str, None] = {}
        for keys, failing in ((ok, False), (rejected, True)):
            for machine_id, feature in dict.fromkeys(keys):
                self._machine(machine_id).failing[feature] = failing
                touched[machine_id] = None
        for machine_id in touched:
            machine = self._machines[machine_id]
            machine.last_rows = now
            new_state = OUT_OF_SERVICE if all(machine.failing.values()) else EXECUTING
            if new_state == EXECUTING:
                due = now + self.idle
                if self._deadline is None or due < self._deadline:
                    self._deadline = due
            changed = machine.state != new_state
            machine.state = new_state
            await self._show(machine_id, now, write_state=changed)

    async def tick(self, now: dt.datetime) -> None:
        """Turn machines idle for `machine_idle_s` NotExecuting. Cheap when nothing is due (one
        comparison): call it from the health path, or when `next_change_s` says."""
        if self._deadline is None or now < self._deadline:
            return
        deadline: dt.datetime | None = None
        for machine_id, machine in self._machines.items():
            if machine.state != EXECUTING or machine.last_rows is None:
                continue
            due = machine.last_rows + self.idle
            if due <= now:
                machine.state = NOT_EXECUTING
                await self._show(machine_id, now, write_state=True)
            elif deadline is None or due < deadline:
                deadline = due
        self._deadline = deadline

    def next_change_s(self, now: dt.datetime) -> float | None:
        """Seconds until `tick` has something to do (0 when overdue), None when nothing is
        pending: a caller can arm one timer instead of polling."""
        if self._deadline is None:
            return None
        return max(0.0, (self._deadline - now).total_seconds())

    def state(self, machine_id: str) -> str | None:
        """The machine's current MachineryItemState (None: not known)."""
        machine = self._machines.get(machine_id)
        return None if machine is None else machine.state

    # -- the address space

    async def _show(self, machine_id: str, now: dt.datetime, *, write_state: bool = False) -> None:
        """Build the machine's nodes (first time), write its state when asked, link `CMM/<m>`."""
        if not self.ready:
            return
        machine = self._machines[machine_id]
        try:
            if not machine.built:
                machine.built = True  # before the await: a concurrent call must not build it twice
                try:
                    await self._build(machine_id, machine.state, now)
                except BaseException:
                    machine.built = False
                    raise
            elif write_state:
                await self._write_state(machine_id, machine.state, now)
            if not machine.linked:
                machine.linked = await self._link(machine_id)
        except Exception:  # a refused node must not stop the sink: logged, tried again next time
            _logger.exception("OPC UA Machinery nodes of machine %s could not be written", machine_id)

    async def _add_nodes(self, items: list[ua.AddNodesItem]) -> None:
        results = await self.server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise RuntimeError(f"cannot add OPC UA node {item.RequestedNewNodeId.to_string()}: {result.StatusCode}")

    async def _build(self, machine_id: str, state: str, now: dt.datetime) -> None:
        assert self.loaded is not None and self._states is not None
        ns, di, mns = self.ns, self.loaded.di_ns, self.loaded.machinery_ns
        identity = self.identities.get(machine_id, MachineIdentity())
        machine = machinery_node_id(ns, machine_id)
        ident = machinery_node_id(ns, machine_id, "Identification")
        blocks = machinery_node_id(ns, machine_id, "MachineryBuildingBlocks")
        item_state = machinery_node_id(ns, machine_id, STATE_PATH)
        current = machinery_node_id(ns, machine_id, f"{STATE_PATH}/CurrentState")
        items = [
            _object(machine, ua.QualifiedName(machine_id, ns), _nid(_MACHINES_FOLDER, mns), ObjectIds.Organizes,
                    _nid(ObjectIds.BaseObjectType), f"Coordinate measuring machine {machine_id}"),
            _object(ident, ua.QualifiedName("Identification", di), machine, ObjectIds.HasAddIn,
                    _nid(_IDENTIFICATION_TYPE, mns), "Identification of the machine (OPC 40001-1)"),
        ]  # fmt: skip
        texts: tuple[tuple[str, int, Any, int], ...] = (
            ("Manufacturer", di, ua.LocalizedText(identity.manufacturer), ObjectIds.LocalizedText),
            ("Model", di, ua.LocalizedText(identity.model), ObjectIds.LocalizedText),
            ("SerialNumber", di, identity.serial_number, ObjectIds.String),
            ("ProductInstanceUri", di, identity.instance_uri(machine_id), ObjectIds.String),
        )
        if identity.year_of_construction is not None:
            texts += (("YearOfConstruction", mns, identity.year_of_construction, ObjectIds.UInt16),)
        for name, name_ns, value, datatype in texts:
            nodeid = machinery_node_id(ns, machine_id, f"Identification/{name}")
            variant = ua.Variant(value, _VARIANT[datatype])
            items.append(_property(nodeid, ident, name, name_ns, variant, datatype))
        items += [
            _object(blocks, ua.QualifiedName("MachineryBuildingBlocks", mns), machine, ObjectIds.HasComponent,
                    _nid(ObjectIds.FolderType), "The machine's Machinery building blocks"),
            _object(item_state, ua.QualifiedName("MachineryItemState", mns), blocks, ObjectIds.HasAddIn,
                    _nid(_ITEM_STATE_TYPE, mns), "Executing while files arrive, NotExecuting when idle, "
                    "OutOfService while the newest row of every characteristic was rejected"),
            _variable(current, ua.QualifiedName("CurrentState", 0), item_state, ObjectIds.HasComponent,
                      _nid(ObjectIds.FiniteStateVariableType), _state_text(state), ObjectIds.LocalizedText,
                      "Current state of the machine"),
        ]  # fmt: skip
        for name, value, datatype in (
            ("Id", self._states.ids[state], ObjectIds.NodeId),
            ("Number", self._states.numbers[state], ObjectIds.UInt32),
        ):
            nodeid = machinery_node_id(ns, machine_id, f"{STATE_PATH}/CurrentState/{name}")
            items.append(_property(nodeid, current, name, 0, ua.Variant(value, _VARIANT[datatype]), datatype))
        await self._add_nodes(items)
        await self._add_references([(blocks, ObjectIds.HasAddIn, ident)])
        _logger.info("OPC UA: machine %s at %s (Machinery, %s)", machine_id, machine.to_string(), state)

    async def _add_references(self, refs: list[tuple[ua.NodeId, int, ua.NodeId]]) -> list[bool]:
        """Add each (source, type, target) reference with its inverse (asyncua adds only what it
        is given); whether each pair is there."""
        items = []
        for source, reftype, target in refs:
            for src, dst, forward in ((source, target, True), (target, source, False)):
                item = ua.AddReferencesItem()
                item.SourceNodeId = src
                item.ReferenceTypeId = _nid(reftype)
                item.IsForward = forward
                item.TargetNodeId = dst
                item.TargetNodeClass = ua.NodeClass.Object
                items.append(item)
        results = await self.server.iserver.isession.add_references(items)
        return [a.is_good() and b.is_good() for a, b in zip(results[::2], results[1::2], strict=True)]

    async def _link(self, machine_id: str) -> bool:
        """Organizes `Machines/<m>` -> `CMM/<m>` once the latter exists; whether it is there."""
        target = _nid(f"CMM/{machine_id}", self.ns)
        if target not in self.server.iserver.aspace:
            return False
        (done,) = await self._add_references([(machinery_node_id(self.ns, machine_id), ObjectIds.Organizes, target)])
        return done

    async def _write_state(self, machine_id: str, state: str, now: dt.datetime) -> None:
        assert self._states is not None
        aspace = self.server.iserver.aspace
        base = f"{STATE_PATH}/CurrentState"
        writes = (  # CurrentState last: a client that reacts to it reads the Id and Number of the same state
            (f"{base}/Id", self._states.ids[state], ua.VariantType.NodeId),
            (f"{base}/Number", self._states.numbers[state], ua.VariantType.UInt32),
            (base, ua.LocalizedText(state), ua.VariantType.LocalizedText),
        )
        for path, value, vtype in writes:
            nodeid = machinery_node_id(self.ns, machine_id, path)
            status = await aspace.write_attribute_value(nodeid, AttributeIds.Value, _dv(value, vtype, now, now))
            if not status.is_good():
                _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), status)
        _logger.debug("OPC UA: machine %s is %s", machine_id, state)


def _state_text(state: str) -> ua.Variant:
    return ua.Variant(ua.LocalizedText(state), ua.VariantType.LocalizedText)


def _item(
    nodeid: ua.NodeId,
    name: ua.QualifiedName,
    parent: ua.NodeId,
    reftype: int,
    typedef: ua.NodeId,
    attrs: ua.ObjectAttributes | ua.VariableAttributes,
    description: str,
) -> ua.AddNodesItem:
    """A node `name` under `parent` (by `reftype`), of type `typedef`, nobody may write."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = name
    item.ParentNodeId = parent
    item.ReferenceTypeId = _nid(reftype)
    item.NodeClass = ua.NodeClass.Object if isinstance(attrs, ua.ObjectAttributes) else ua.NodeClass.Variable
    item.TypeDefinition = typedef
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(description)
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _object(
    nodeid: ua.NodeId, name: ua.QualifiedName, parent: ua.NodeId, reftype: int, typedef: ua.NodeId, description: str
) -> ua.AddNodesItem:
    attrs = ua.ObjectAttributes()
    attrs.EventNotifier = 0
    return _item(nodeid, name, parent, reftype, typedef, attrs, description)


def _variable(
    nodeid: ua.NodeId,
    name: ua.QualifiedName,
    parent: ua.NodeId,
    reftype: int,
    typedef: ua.NodeId,
    value: ua.Variant,
    datatype: int,
    description: str,
) -> ua.AddNodesItem:
    attrs = ua.VariableAttributes()
    attrs.DataType = _nid(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.Historizing = False
    attrs.AccessLevel = _READ
    attrs.UserAccessLevel = _READ
    return _item(nodeid, name, parent, reftype, typedef, attrs, description)


def _property(
    nodeid: ua.NodeId, parent: ua.NodeId, name: str, name_ns: int, value: ua.Variant, datatype: int
) -> ua.AddNodesItem:
    """A read-only property `name_ns:name` of `parent`."""
    typedef = _nid(ObjectIds.PropertyType)
    return _variable(
        nodeid, ua.QualifiedName(name, name_ns), parent, ObjectIds.HasProperty, typedef, value, datatype, name
    )
