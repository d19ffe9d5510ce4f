"""Results for MES connectors (docs/opcua.md, "Results: method and event"): the method
GetLatestResult and the event ResultReady (the idea of OPC 40001-101, Machinery Result Transfer).

    Objects/CMM/GetLatestResult          ns=<ns>;s=CMM/GetLatestResult   (method of the CMM folder)
        in:  MachineId (String), Feature (String)
        out: PartId (String), MeasuredValue, CompensatedLength, Deviation, Uncertainty,
             LowerTolerance, UpperTolerance (Double), Verdict (String), PartTemperature (Double),
             Timestamp (DateTime), Unit (String: mm or deg)
    Types/ResultReadyEventType           ns=<ns>;s=Types/ResultReadyEventType   (subtype of BaseEventType)
        MachineId, Feature, PartId, Unit, Verdict (String), CompensatedLength, Deviation,
        Uncertainty (Double), MeasurementTime (DateTime)

GetLatestResult answers the characteristic's variables as they are in the address space
(`ns=<ns>;s=CMM/<m>/Characteristics/<f>/<Variable>`, written by the OPC UA sink), so the method
and a Read of those variables never disagree; BadNotFound when the characteristic was never
measured (it has no node), BadArgumentsMissing / BadTooManyArguments / BadInvalidArgument (with
BadTypeMismatch on the argument) for a wrong call. ResultReady is emitted by the Server object
(i=2253) once per record, in order: SourceNode the characteristic's object, SourceName `<m>/<f>`,
Time the measurement time, Message `<m> <f> <verdict>`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.event_generator import EventGenerator
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from cmm_twin.gateway.sinks.opcua.address_space import _EPOCH, _nid, ns_to_datetime, status
from cmm_twin.gateway.sinks.opcua.characteristics import characteristic_node_id, result_variable_name
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

_String = ua.VariantType.String
_Double = ua.VariantType.Double
_DateTime = ua.VariantType.DateTime

METHOD_INPUTS: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("MachineId", _String, "Machine id ([A-Za-z0-9_.-]{1,64})"),
    ("Feature", _String, "Feature id of the characteristic"),
)
METHOD_OUTPUTS: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("PartId", _String, "Part of the latest measurement"),
    ("MeasuredValue", _Double, "Raw CMM reading (mm, or degrees for an angle)"),
    ("CompensatedLength", _Double, "Value compensated to 20 °C (mm, or degrees)"),
    ("Deviation", _Double, "Compensated value minus nominal (µm, or millidegrees)"),
    ("Uncertainty", _Double, "Expanded uncertainty U, k = 2 (µm, or millidegrees)"),
    ("LowerTolerance", _Double, "Lower limit relative to the nominal (signed); NaN: none"),
    ("UpperTolerance", _Double, "Upper limit relative to the nominal (signed); NaN: none"),
    ("Verdict", _String, "PASS, FAIL, UNCERTAIN or UNDEFINED"),
    ("PartTemperature", _Double, "Part temperature, °C"),
    ("Timestamp", _DateTime, "Measurement time"),
    ("Unit", _String, "mm, or deg for an angle"),
)
EVENT_PROPERTIES: tuple[tuple[str, ua.VariantType], ...] = (
    ("MachineId", _String),
    ("Feature", _String),
    ("PartId", _String),
    ("Unit", _String),
    ("Verdict", _String),
    ("CompensatedLength", _Double),
    ("Deviation", _Double),
    ("Uncertainty", _Double),
    ("MeasurementTime", _DateTime),
)
_NULL = ua.Variant(None, ua.VariantType.Null)
_INITIAL: dict[ua.VariantType, Any] = {_String: "", _Double: math.nan, _DateTime: _EPOCH}


def get_latest_result_node_id(ns: int) -> ua.NodeId:
    """NodeId of the GetLatestResult method."""
    return _nid("CMM/GetLatestResult", ns)


def result_ready_type_id(ns: int) -> ua.NodeId:
    """NodeId of ResultReadyEventType."""
    return _nid("Types/ResultReadyEventType", ns)


def _argument(name: str, vtype: ua.VariantType, description: str) -> ua.Argument:
    argument = ua.Argument()
    argument.Name = name
    argument.DataType = _nid(vtype.value)
    argument.ValueRank = ua.ValueRank.Scalar
    argument.Description = ua.LocalizedText(description)
    return argument


class LatestResult:
    """GetLatestResult: reads a characteristic's variables from the address space."""

    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.ns = ns

    async def call(self, parent: ua.NodeId, *arguments: ua.Variant) -> ua.CallMethodResult:
        """The method (asyncua awaits it with the object and the input arguments as Variants; a
        coroutine function, since asyncua runs any other callable on a thread)."""
        result = ua.CallMethodResult()
        if len(arguments) != len(METHOD_INPUTS):
            code = (
                StatusCodes.BadArgumentsMissing
                if len(arguments) < len(METHOD_INPUTS)
                else StatusCodes.BadTooManyArguments
            )
            result.StatusCode = status(code)
            return result
        checks = [status(StatusCodes.Good if _is_text(a) else StatusCodes.BadTypeMismatch) for a in arguments]
        if not all(check.is_good() for check in checks):
            result.StatusCode = status(StatusCodes.BadInvalidArgument)
            result.InputArgumentResults = checks
            return result
        machine_id, feature = (str(a.Value) for a in arguments)
        values = self.read(machine_id, feature)
        if values is None:
            result.StatusCode = status(StatusCodes.BadNotFound)
            return result
        result.OutputArguments = values
        result.InputArgumentResults = checks
        return result

    def read(self, machine_id: str, feature: str) -> list[ua.Variant] | None:
        """The output arguments for one characteristic, or None when it has no node."""
        aspace = self.server.iserver.aspace
        if "/" in machine_id or "/" in feature or characteristic_node_id(self.ns, machine_id, feature) not in aspace:
            return None
        angle = characteristic_node_id(self.ns, machine_id, feature, "MeasuredValue") in aspace
        out: list[ua.Variant] = []
        for name, vtype, _ in METHOD_OUTPUTS:
            if name == "Unit":
                out.append(ua.Variant("deg" if angle else "mm", _String))
                continue
            variable = result_variable_name("Measured", "deg" if angle else "mm") if name == "MeasuredValue" else name
            nodeid = characteristic_node_id(self.ns, machine_id, feature, variable)
            value = aspace.read_attribute_value(nodeid, AttributeIds.Value).Value if nodeid in aspace else None
            out.append(ua.Variant(value.Value if value is not None else _INITIAL[vtype], vtype))
        return out


def _is_text(argument: Any) -> bool:
    return isinstance(argument, ua.Variant) and argument.VariantType == _String and isinstance(argument.Value, str)


async def add_get_latest_result(server: Server, ns: int) -> Node:
    """Add GetLatestResult to the CMM folder (`ns=<ns>;s=CMM`, which must exist)."""
    folder = server.get_node(_nid("CMM", ns))
    return await folder.add_method(
        get_latest_result_node_id(ns),
        ua.QualifiedName("GetLatestResult", ns),
        LatestResult(server, ns).call,
        [_argument(*spec) for spec in METHOD_INPUTS],
        [_argument(*spec) for spec in METHOD_OUTPUTS],
    )


def _shallow_fields(event_class: type[Any]) -> type[Any]:
    """`event_class` whose event fields are not deep-copied for each subscriber: `emit` and
    asyncua's `trigger` replace every value of the event with a new object, never change one in
    place, so what a subscriber has queued cannot change (the copies took 80 % of an emit)."""

    class ResultReadyEvent(event_class):  # type: ignore[misc]
        def to_event_fields(self, select_clauses: list[ua.SimpleAttributeOperand]) -> list[ua.Variant]:
            fields: list[ua.Variant] = []
            for clause in select_clauses:
                if clause.BrowsePath:
                    name = self.browse_path_to_attribute_name(clause.BrowsePath)
                else:
                    name = AttributeIds(clause.AttributeId).name
                value = getattr(self, name, None)
                fields.append(_NULL if value is None else ua.Variant(value, self.data_types[name]))
            return fields

    return ResultReadyEvent


class ResultEvents:
    """Emits ResultReady from the Server object, one event per record (`create`, then `emit`)."""

    def __init__(self, generator: EventGenerator, ns: int) -> None:
        self._generator = generator
        self.ns = ns
        self.emitted = 0

    @classmethod
    async def create(cls, server: Server, ns: int) -> ResultEvents:
        """Add ResultReadyEventType (under BaseEventType) and the generator on the Server object."""
        base = server.get_node(_nid(ObjectIds.BaseEventType))
        type_id = result_ready_type_id(ns)
        event_type = await base.add_object_type(type_id, ua.QualifiedName("ResultReadyEventType", ns))
        for name, vtype in EVENT_PROPERTIES:
            prop = await event_type.add_property(
                _nid(f"Types/ResultReadyEventType/{name}", ns), ua.QualifiedName(name, ns), _INITIAL[vtype], vtype
            )
            await prop.set_modelling_rule(True)
        generator = await server.get_event_generator(event_type, _nid(ObjectIds.Server))
        generator.event.__class__ = _shallow_fields(type(generator.event))
        return cls(generator, ns)

    async def emit(self, batch: RecordBatch) -> None:
        """One ResultReady per record of `batch`, in order (measurement time as Time)."""
        if not len(batch):
            return
        event = self._generator.event
        verdicts = VERDICT_NAMES[batch.verdict].tolist()
        compensated = batch.compensated_mm.tolist()
        deviation = batch.deviation_um.tolist()
        uncertainty = batch.uncertainty_um.tolist()
        stamps = batch.timestamp_ns.tolist()
        for i, (machine_id, feature) in enumerate(zip(batch.machine_id, batch.feature, strict=True)):
            moment = ns_to_datetime(stamps[i])
            event.SourceNode = characteristic_node_id(self.ns, machine_id, feature)
            event.SourceName = f"{machine_id}/{feature}"
            event.MachineId = machine_id
            event.Feature = feature
            event.PartId = batch.part_id[i]
            event.Unit = batch.unit[i]
            event.Verdict = verdicts[i]
            event.CompensatedLength = compensated[i]
            event.Deviation = deviation[i]
            event.Uncertainty = uncertainty[i]
            event.MeasurementTime = moment
            await self._generator.trigger(moment, f"{machine_id} {feature} {verdicts[i]}")
            self.emitted += 1
