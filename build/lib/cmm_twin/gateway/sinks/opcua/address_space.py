"""The OPC UA address space of the gateway (README, "OPC UA address space").

Every BrowseName is in the `urn:cmm-twin` namespace (index `ns`, read it from the server's
NamespaceArray), every NodeId a string NodeId so clients can address tags directly without
browsing:

    Objects/CMM                       ns=<ns>;s=CMM                         (folder)
    Objects/CMM/<machine_id>          ns=<ns>;s=CMM/<machine_id>            (object, created on first sight)
        PartId, Feature, Unit, Compensation, SourceFormat, Verdict
                                      ns=<ns>;s=CMM/<machine_id>/<Name>     (String)
        MeasuredLength, CompensatedLength, LowerTolerance, UpperTolerance   (Double, mm)
        PartTemperature                                                     (Double, degC)
        Deviation, Uncertainty                                              (Double, µm)
            EngineeringUnits          ns=<ns>;s=CMM/<machine_id>/<Name>/EngineeringUnits
                                      (BrowseName 0:EngineeringUnits, EUInformation, UNECE codes)
    Objects/Gateway                   ns=<ns>;s=Gateway
        BufferDepth, FilesProcessed, RowsRejected   ns=<ns>;s=Gateway/<Name>  (Int64)
        MesConnected, HistorianConnected            ns=<ns>;s=Gateway/<Name>  (Boolean)
        BufferOldestAge                             ns=<ns>;s=Gateway/<Name>  (Double, s)

Capability and compensation health per characteristic (`characteristics.py`):

    Objects/CMM/<machine_id>/Characteristics/<feature>/<Name>
                                      ns=<ns>;s=CMM/<machine_id>/Characteristics/<feature>/<Name>
        CpRaw, CpkRaw, Cp, Cpk (Double), SampleSize (Int64), ThermalSlope (Double, µm/K),
        ThermalSlopeAlarm (Boolean)

`/` separates the parts because a machine_id (`[A-Za-z0-9_.-]{1,64}`) can hold dots but never a
slash, so two machines can never map to the same NodeId. Numeric machine variables are of type
BaseAnalogType; each value carries the measurement time as SourceTimestamp. Verdict is written
last, so a client that reacts to it reads the other variables of the same measurement.

`Unit` is `mm` or `deg`: for an angle the mm variables hold degrees and the µm ones thousandths of
a degree (EngineeringUnits describes the usual length case and does not change per value).
`LowerTolerance`/`UpperTolerance` are the limits relative to the nominal (signed); a side without
a limit is NaN with status Good: the specification has no limit there, which is a valid value,
not a data-quality problem (a Bad status would make clients report a fault). `Verdict` is
UNDEFINED when neither side has a limit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any, cast

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from cmm_twin.gateway.health import GatewayHealth

_logger = logging.getLogger(__name__)

NAMESPACE_URI = "urn:cmm-twin"
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def unece_unit_id(code: str) -> int:
    """UnitId of a UNECE common code per OPC UA Part 8 (5.6.3): the code's ASCII bytes as an integer."""
    if not 0 < len(code) <= 3 or not code.isascii():
        raise ValueError(f"UNECE common code must be 1 to 3 ASCII characters, got {code!r}")
    unit_id = 0
    for i, char in enumerate(code):
        unit_id += ord(char) << (8 * (len(code) - 1 - i))
    return unit_id


def engineering_units(code: str, display: str, description: str) -> ua.EUInformation:
    """EUInformation of a UNECE unit."""
    return ua.EUInformation(
        NamespaceUri=UNECE_NAMESPACE,
        UnitId=unece_unit_id(code),
        DisplayName=ua.LocalizedText(display),
        Description=ua.LocalizedText(description),
    )


UNIT_MM = engineering_units("MMT", "mm", "millimetre")
UNIT_DEGC = engineering_units("CEL", "°C", "degree Celsius")
UNIT_UM = engineering_units("4H", "µm", "micrometre")
UNIT_DEGREE = engineering_units("DD", "°", "degree (unit of angle)")
UNIT_MILLIDEGREE = ua.EUInformation(
    NamespaceUri=UNECE_NAMESPACE,
    UnitId=-1,  # OPC UA Part 8 (5.6.3): -1 where the UNECE table has no code, as for 1/1000 degree
    DisplayName=ua.LocalizedText("m°"),
    Description=ua.LocalizedText("millidegree (1/1000 degree)"),
)

_String = ua.VariantType.String
_Double = ua.VariantType.Double
_Int64 = ua.VariantType.Int64
_Boolean = ua.VariantType.Boolean
_DateTime = ua.VariantType.DateTime

MACHINE_VARIABLES: tuple[tuple[str, ua.VariantType, ua.EUInformation | None, str], ...] = (
    ("PartId", _String, None, "Part of the latest measurement"),
    ("Feature", _String, None, "Measured feature"),
    ("Unit", _String, None, "mm, or deg for an angle (then the mm variables hold degrees, the µm ones millidegrees)"),
    ("Compensation", _String, None, "Who corrected the value to 20 °C: gateway, source (the CMM software) or none"),
    ("SourceFormat", _String, None, "Format of the inbox file: csv, qdas, calypso or qif"),
    ("MeasuredLength", _Double, UNIT_MM, "Raw CMM reading at the part temperature"),
    ("CompensatedLength", _Double, UNIT_MM, "Length compensated to 20 °C (ISO 1)"),
    ("PartTemperature", _Double, UNIT_DEGC, "Part temperature"),
    ("Deviation", _Double, UNIT_UM, "Compensated length minus nominal"),
    ("Uncertainty", _Double, UNIT_UM, "Expanded uncertainty U (k = 2)"),
    ("LowerTolerance", _Double, UNIT_MM, "Lower limit relative to the nominal (signed); NaN: no lower limit"),
    ("UpperTolerance", _Double, UNIT_MM, "Upper limit relative to the nominal (signed); NaN: no upper limit"),
    ("Verdict", _String, None, "PASS, FAIL, UNCERTAIN (ISO 14253-1) or UNDEFINED (no limit at all)"),
)
"""(name, type, units, description) of each variable of a machine object, in write order."""

GATEWAY_VARIABLES: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("BufferDepth", _Int64, "Records not yet acknowledged, all durable sinks together"),
    ("MesConnected", _Boolean, "The MES sink is delivering"),
    ("HistorianConnected", _Boolean, "The historian sink is delivering"),
    ("FilesProcessed", _Int64, "Inbox files processed since start"),
    ("RowsRejected", _Int64, "Invalid rows since start"),
    ("BufferOldestAge", _Double, "Age of the oldest unacknowledged record, s"),
)

_INITIAL: dict[ua.VariantType, Any] = {_String: "", _Double: 0.0, _Int64: 0, _Boolean: False, _DateTime: _EPOCH}
_DATATYPE: dict[ua.VariantType, int] = {
    _String: ObjectIds.String,
    _Double: ObjectIds.Double,
    _Int64: ObjectIds.Int64,
    _Boolean: ObjectIds.Boolean,
    _DateTime: ObjectIds.DateTime,
}
CHARACTERISTIC_TYPE = "Types/CharacteristicType"
"""String NodeId (in urn:cmm-twin) of the ObjectType of every characteristic object."""


def _nid(identifier: str | int, ns: int = 0) -> ua.NodeId:
    """A NodeId (asyncua annotates its fields with its own int/str subclasses, hence the casts)."""
    return ua.NodeId(cast("ua.String | ua.Int32", identifier), cast("ua.Int16", ns))


def status(code: int) -> ua.StatusCode:
    """The StatusCode of a code of `asyncua.ua.status_codes.StatusCodes`."""
    return ua.StatusCode(cast("ua.UInt32", code))


def _dv(
    value: Any, vtype: ua.VariantType, source: dt.datetime, server: dt.datetime, status: ua.StatusCode | None = None
) -> ua.DataValue:
    """A DataValue with both timestamps (and a status other than Good, when given)."""
    return ua.DataValue(
        ua.Variant(value, vtype),
        StatusCode=status if status is not None else ua.StatusCode(),
        SourceTimestamp=cast("ua.DateTime", source),
        ServerTimestamp=cast("ua.DateTime", server),
    )


def machine_node_id(ns: int, machine_id: str, variable: str | None = None) -> ua.NodeId:
    """NodeId of a machine object (variable None) or of one of its variables."""
    text = f"CMM/{machine_id}" if variable is None else f"CMM/{machine_id}/{variable}"
    return _nid(text, ns)


def gateway_node_id(ns: int, variable: str | None = None) -> ua.NodeId:
    """NodeId of the Gateway object (variable None) or of one of its variables."""
    return _nid("Gateway" if variable is None else f"Gateway/{variable}", ns)


def _object_item(
    nodeid: ua.NodeId,
    name: str,
    ns: int,
    parent: ua.NodeId,
    *,
    folder: bool = False,
    type_definition: ua.NodeId | None = None,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, ns)
    item.ParentNodeId = parent
    item.ReferenceTypeId = _nid(ObjectIds.Organizes)
    item.NodeClass = ua.NodeClass.Object
    if type_definition is None:
        type_definition = _nid(ObjectIds.FolderType if folder else ObjectIds.BaseObjectType)
    item.TypeDefinition = type_definition
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.EventNotifier = 0
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _object_type_item(nodeid: ua.NodeId, name: str, ns: int, description: str) -> ua.AddNodesItem:
    """A concrete ObjectType `name`, subtype of BaseObjectType."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = ua.QualifiedName(name, ns)
    item.ParentNodeId = _nid(ObjectIds.BaseObjectType)
    item.ReferenceTypeId = _nid(ObjectIds.HasSubtype)
    item.NodeClass = ua.NodeClass.ObjectType
    attrs = ua.ObjectTypeAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description)
    attrs.IsAbstract = False
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _variable_item(
    nodeid: ua.NodeId,
    name: ua.QualifiedName,
    parent: ua.NodeId,
    value: ua.Variant,
    datatype: int,
    description: str,
    *,
    prop: bool = False,
    analog: bool = False,
    historizing: bool = False,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nodeid
    item.BrowseName = name
    item.ParentNodeId = parent
    item.NodeClass = ua.NodeClass.Variable
    if prop:
        item.ReferenceTypeId = _nid(ObjectIds.HasProperty)
        item.TypeDefinition = _nid(ObjectIds.PropertyType)
    else:
        item.ReferenceTypeId = _nid(ObjectIds.HasComponent)
        item.TypeDefinition = _nid(ObjectIds.BaseAnalogType if analog else ObjectIds.BaseDataVariableType)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name.Name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = _nid(datatype)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    attrs.Historizing = historizing
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.HistoryRead.mask if historizing else 0)
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    item.NodeAttributes = attrs
    return item


def variable_items(
    nodeid: ua.NodeId,
    name: str,
    ns: int,
    parent: ua.NodeId,
    vtype: ua.VariantType,
    description: str,
    units: ua.EUInformation | None = None,
    *,
    historizing: bool = False,
) -> list[ua.AddNodesItem]:
    """A variable `name` of `parent` in namespace `ns` with a string `nodeid`, holding the initial
    value of its type; with `units`, an analog one with its EngineeringUnits property (NodeId
    `<nodeid>/EngineeringUnits`, BrowseName 0:EngineeringUnits)."""
    value = ua.Variant(_INITIAL[vtype], vtype)
    name_in_ns = ua.QualifiedName(name, ns)
    analog = units is not None
    items = [
        _variable_item(
            nodeid, name_in_ns, parent, value, _DATATYPE[vtype], description, analog=analog, historizing=historizing
        )
    ]
    if units is not None:
        items.append(
            _variable_item(
                _nid(cast("str", nodeid.Identifier) + "/EngineeringUnits", ns),
                ua.QualifiedName("EngineeringUnits", 0),
                nodeid,
                ua.Variant(units, ua.VariantType.ExtensionObject),
                ObjectIds.EUInformation,
                "Engineering units (UNECE)",
                prop=True,
            )
        )
    return items


def ns_to_datetime(ns: int) -> dt.datetime:
    """Unix nanoseconds as an aware UTC datetime (microsecond resolution, as asyncua carries it)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def gateway_values(sample: GatewayHealth) -> dict[str, Any]:
    """The Gateway object's variable values for a health sample (the oldest age to 0.1 s)."""
    return {
        "BufferDepth": int(sample.buffer_depth),
        "MesConnected": sample.connected("mes"),
        "HistorianConnected": sample.connected("historian"),
        "FilesProcessed": int(sample.files_processed),
        "RowsRejected": int(sample.rows_rejected),
        "BufferOldestAge": round(sample.oldest_age_s, 1),
    }


class AddressSpace:
    """The gateway's nodes in one server: the CMM folder with an object per machine (created on
    first sight) and the Gateway object, with the Gateway values last written (to skip unchanged
    ones). Lives as long as that server."""

    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.ns = ns
        """Index of `urn:cmm-twin` in the server's NamespaceArray."""
        self._machines: dict[str, tuple[ua.NodeId, ...]] = {}
        self._gateway_nodes: dict[str, ua.NodeId] = {}
        self._gateway_values: dict[str, Any] = {}

    @classmethod
    async def create(cls, server: Server) -> AddressSpace:
        """Register `urn:cmm-twin` in `server` (initialised, not started yet) and add the CMM
        folder and the Gateway object."""
        space = cls(server, await server.register_namespace(NAMESPACE_URI))
        await space._build()
        return space

    async def _add_nodes(self, items: list[ua.AddNodesItem]) -> None:
        results = await self.server.iserver.isession.add_nodes(items)
        for item, result in zip(items, results, strict=True):
            if not result.StatusCode.is_good():
                raise RuntimeError(f"cannot add OPC UA node {item.RequestedNewNodeId.to_string()}: {result.StatusCode}")

    async def _build(self) -> None:
        ns = self.ns
        objects = _nid(ObjectIds.ObjectsFolder)
        gateway = gateway_node_id(ns)
        items = [
            _object_item(_nid("CMM", ns), "CMM", ns, objects, folder=True),
            _object_item(gateway, "Gateway", ns, objects),
            _object_type_item(
                _nid(CHARACTERISTIC_TYPE, ns),
                "CharacteristicType",
                ns,
                "A measured characteristic (feature) of a machine: its newest result, compensated to 20 °C, "
                "and its capability",
            ),
        ]
        for name, vtype, description in GATEWAY_VARIABLES:
            nodeid = gateway_node_id(ns, name)
            items += variable_items(nodeid, name, ns, gateway, vtype, description)
            self._gateway_nodes[name] = nodeid
            self._gateway_values[name] = _INITIAL[vtype]
        await self._add_nodes(items)

    async def _add_machine(self, machine_id: str) -> tuple[ua.NodeId, ...]:
        ns = self.ns
        obj = machine_node_id(ns, machine_id)
        items = [_object_item(obj, machine_id, ns, _nid("CMM", ns))]
        nodeids: list[ua.NodeId] = []
        for name, vtype, units, description in MACHINE_VARIABLES:
            nodeid = machine_node_id(ns, machine_id, name)
            items += variable_items(nodeid, name, ns, obj, vtype, description, units)
            nodeids.append(nodeid)
        await self._add_nodes(items)
        self._machines[machine_id] = created = tuple(nodeids)
        _logger.info("OPC UA: new machine %s at %s", machine_id, obj.to_string())
        return created

    async def ensure_machine(self, machine_id: str) -> ua.NodeId:
        """The machine's object, created (with its variables) when not there yet."""
        if machine_id not in self._machines:
            await self._add_machine(machine_id)
        return machine_node_id(self.ns, machine_id)

    async def add_nodes(self, items: list[ua.AddNodesItem]) -> None:
        """Add nodes to the server; RuntimeError naming the first one refused."""
        await self._add_nodes(items)

    async def write_machine(
        self, machine_id: str, values: Sequence[Any], source: dt.datetime, now: dt.datetime
    ) -> None:
        """Write `values` (in `MACHINE_VARIABLES` order) to the machine's variables, measured at
        `source`; the machine object is created on first sight. A refused write is logged."""
        nodeids = self._machines.get(machine_id)
        if nodeids is None:
            nodeids = await self._add_machine(machine_id)
        aspace = self.server.iserver.aspace
        for nodeid, value, (_, vtype, _, _) in zip(nodeids, values, MACHINE_VARIABLES, strict=True):
            status = await aspace.write_attribute_value(nodeid, AttributeIds.Value, _dv(value, vtype, source, now))
            if not status.is_good():
                _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), status)

    async def write_gateway(self, values: Mapping[str, Any], now: dt.datetime) -> None:
        """Write the Gateway object's variables whose value changed since the last write (a
        refused write is logged, and tried again with the next values)."""
        aspace = self.server.iserver.aspace
        for name, vtype, _ in GATEWAY_VARIABLES:
            value = values[name]
            if self._gateway_values.get(name) == value:
                continue
            nodeid = self._gateway_nodes[name]
            result = await aspace.write_attribute_value(nodeid, AttributeIds.Value, _dv(value, vtype, now, now))
            if result.is_good():
                self._gateway_values[name] = value
            else:
                _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), result)
