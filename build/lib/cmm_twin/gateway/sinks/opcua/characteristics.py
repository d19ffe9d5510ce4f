"""One object per characteristic in the OPC UA address space: its newest result, and its
capability and compensation health (docs/capability.md), under each machine's object:

    Objects/CMM/<machine_id>/Characteristics                  ns=<ns>;s=CMM/<machine_id>/Characteristics
    Objects/CMM/<machine_id>/Characteristics/<feature>        ns=<ns>;s=CMM/<machine_id>/Characteristics/<feature>
        (an instance of ns=<ns>;s=Types/CharacteristicType)
        MeasuredLength       Double  raw CMM reading, mm (MeasuredValue, degrees, for an angle)
        CompensatedLength    Double  compensated to 20 °C, mm (degrees for an angle)        historized
        Deviation            Double  compensated minus nominal, µm (millidegrees)           historized
        Uncertainty          Double  expanded uncertainty U (k = 2), µm (millidegrees)
        LowerTolerance, UpperTolerance  Double  limits relative to the nominal, mm (degrees); NaN: none
        Verdict              String  PASS, FAIL, UNCERTAIN (ISO 14253-1) or UNDEFINED            historized
        PartId               String  the part of the newest result
        PartTemperature      Double  °C
        Timestamp            DateTime  the measurement time
        CpRaw, CpkRaw        Double  Cp and Cpk of the raw deviations (measured - nominal)
        Cp, Cpk              Double  Cp and Cpk of the compensated deviations (ISO 22514-2)
        SampleSize           Int64   values in the rolling window
        ThermalSlope         Double  slope of the compensated deviation against the part temperature, µm/K
        ThermalSlopeAlarm    Boolean the compensation-health alarm is on

The result variables carry EngineeringUnits (UNECE codes MMT, DD, 4H, CEL; a millidegree has no
code: UnitId -1) and the measurement time as SourceTimestamp. The measured values, the deviation,
the part temperature and the verdict have the status Uncertain when the verdict is UNCERTAIN or
the part temperature was assumed, Bad (with a null value, as OPC UA Part 4 requires, stamped with
the time of the rejection) when the characteristic's newest row was rejected, else Good (the limits, U, part and
time are always Good). The
three historized ones are read with HistoryRead from the embedded history (`history`). A
characteristic appears the first time it is measured, and again at start-up from the history
(the newest record of each), so a client's subscription to a known NodeId works right after a
restart. Whether it is an angle is fixed by its first record (the history's newest at start-up).

An index that cannot be estimated (too few values, no spread, no limit; Cp of a one-sided
specification, the slope of an angle) is NaN with status Good. The capability variables are plain
BaseDataVariables (the UNECE unit table has no code for µm/K: the description says it). A
feature id never holds a `/` (`[A-Za-z0-9_.-]`), so every NodeId names one node.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from cmm_twin.gateway.quality.monitor import CharacteristicReport
from cmm_twin.gateway.sinks.opcua.address_space import (
    CHARACTERISTIC_TYPE,
    UNIT_DEGC,
    UNIT_DEGREE,
    UNIT_MILLIDEGREE,
    UNIT_MM,
    UNIT_UM,
    AddressSpace,
    _dv,
    _nid,
    _object_item,
    ns_to_datetime,
    status,
    variable_items,
)
from cmm_twin.gateway.sinks.opcua.templates import NodeTemplate
from cmm_twin.physics.thermal import VERDICT_NAMES, Flag
from cmm_twin.records import RecordBatch

_logger = logging.getLogger(__name__)

_Double = ua.VariantType.Double
_String = ua.VariantType.String
CHARACTERISTIC_VARIABLES: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("CpRaw", _Double, "Cp of the raw deviations (measured - nominal) over the rolling window"),
    ("CpkRaw", _Double, "Cpk of the raw deviations over the rolling window"),
    ("Cp", _Double, "Cp of the deviations compensated to 20 °C (ISO 22514-2); NaN: undefined"),
    ("Cpk", _Double, "Cpk of the deviations compensated to 20 °C (ISO 22514-2); NaN: undefined"),
    ("SampleSize", ua.VariantType.Int64, "Values in the rolling window"),
    ("ThermalSlope", _Double, "Slope of the compensated deviation against the part temperature, µm/K"),
    ("ThermalSlopeAlarm", ua.VariantType.Boolean, "The slope is significant and beyond the limit"),
)

# (name, type, scale, description); scale: "value" (mm or degrees), "small" (µm or millidegrees),
# "temperature" (°C) or None (no unit). Written in this order, Verdict last, so a client reacting
# to it reads the other values of the same result.
RESULT_VARIABLES: tuple[tuple[str, ua.VariantType, str | None, str], ...] = (
    ("Measured", _Double, "value", "Raw CMM reading at the part temperature"),
    ("CompensatedLength", _Double, "value", "Value compensated to 20 °C (ISO 1); angles are not corrected"),
    ("Deviation", _Double, "small", "Compensated value minus nominal"),
    ("Uncertainty", _Double, "small", "Expanded uncertainty U (k = 2)"),
    ("LowerTolerance", _Double, "value", "Lower limit relative to the nominal (signed); NaN: no lower limit"),
    ("UpperTolerance", _Double, "value", "Upper limit relative to the nominal (signed); NaN: no upper limit"),
    ("PartTemperature", _Double, "temperature", "Part temperature (the assumed one when the file gave none)"),
    ("PartId", _String, None, "Part of the newest result"),
    ("Timestamp", ua.VariantType.DateTime, None, "Measurement time of the newest result"),
    ("Verdict", _String, None, "PASS, FAIL, UNCERTAIN (ISO 14253-1) or UNDEFINED (no limit at all)"),
)
HISTORIZED = frozenset({"CompensatedLength", "Deviation", "Verdict"})
QUALIFIED = frozenset({"Measured", "CompensatedLength", "Deviation", "PartTemperature", "Verdict"})
"""Result variables whose status tells the result's quality (the limits, U, part and time are Good)."""
"""Result variables a client can read the history of (HistoryRead, from the embedded history)."""
_UNITS: dict[str, dict[str, ua.EUInformation]] = {
    "mm": {"value": UNIT_MM, "small": UNIT_UM, "temperature": UNIT_DEGC},
    "deg": {"value": UNIT_DEGREE, "small": UNIT_MILLIDEGREE, "temperature": UNIT_DEGC},
}
_UNCERTAIN = status(StatusCodes.Uncertain)
_GOOD = ua.StatusCode()
_BAD = status(StatusCodes.Bad)
_UNCERTAIN_VERDICT = int(VERDICT_NAMES.tolist().index("UNCERTAIN"))


def result_variable_name(name: str, unit: str) -> str:
    """The BrowseName of a result variable: `Measured` is MeasuredValue for an angle, else MeasuredLength."""
    if name == "Measured":
        return "MeasuredValue" if unit == "deg" else "MeasuredLength"
    return name


def characteristic_node_id(
    ns: int, machine_id: str, feature: str | None = None, variable: str | None = None
) -> ua.NodeId:
    """NodeId of the Characteristics folder (feature None), of a characteristic or of one of its variables."""
    text = f"CMM/{machine_id}/Characteristics"
    if feature is not None:
        text += f"/{feature}" + (f"/{variable}" if variable is not None else "")
    return _nid(text, ns)


def characteristic_values(report: CharacteristicReport) -> tuple[Any, ...]:
    """The capability variables' values (in `CHARACTERISTIC_VARIABLES` order) of a report."""
    slope = report.slope.slope_um_per_k if report.slope is not None else float("nan")
    return (
        report.raw.cp,
        report.raw.cpk,
        report.compensated.cp,
        report.compensated.cpk,
        report.n,
        slope,
        report.alarm,
    )


def result_status(verdict_code: int, flags: int) -> ua.StatusCode:
    """Uncertain for an UNCERTAIN verdict or an assumed part temperature, else Good."""
    if verdict_code == _UNCERTAIN_VERDICT or flags & Flag.TEMPERATURE_ASSUMED:
        return _UNCERTAIN
    return _GOOD


class CharacteristicNodes:
    """The Characteristics of every machine in one server, created on first sight."""

    def __init__(self, space: AddressSpace, *, historized: bool = True) -> None:
        self.space = space
        self.historized = historized
        """Whether the HISTORIZED variables can be read with HistoryRead (an embedded history)."""
        self._folders: set[str] = set()
        self._units: dict[tuple[str, str], str] = {}
        """The unit (mm or deg) each created characteristic was created with."""
        self._templates: dict[str, NodeTemplate] = {}
        """The first characteristic of each unit, which the others copy."""

    def __len__(self) -> int:
        return len(self._units)

    async def _create(self, machine_id: str, feature: str, unit: str) -> str:
        """Add a characteristic's nodes: the first of each unit with add_nodes, the others as
        copies of it (`templates`)."""
        space, ns = self.space, self.space.ns
        unit = unit if unit in _UNITS else "mm"
        folder = characteristic_node_id(ns, machine_id)
        if machine_id not in self._folders:
            machine = await space.ensure_machine(machine_id)
            await space.add_nodes([_object_item(folder, "Characteristics", ns, machine, folder=True)])
            self._folders.add(machine_id)
        obj = characteristic_node_id(ns, machine_id, feature)
        template = self._templates.get(unit)
        if template is not None:
            template.clone(obj, folder, ua.QualifiedName(feature, ns))
        else:
            items = [_object_item(obj, feature, ns, folder, type_definition=_nid(CHARACTERISTIC_TYPE, ns))]
            for name, vtype, scale, description in RESULT_VARIABLES:
                browse = result_variable_name(name, unit)
                nodeid = characteristic_node_id(ns, machine_id, feature, browse)
                units = _UNITS[unit][scale] if scale is not None else None
                historizing = self.historized and name in HISTORIZED
                items += variable_items(nodeid, browse, ns, obj, vtype, description, units, historizing=historizing)
            for name, vtype, description in CHARACTERISTIC_VARIABLES:
                nodeid = characteristic_node_id(ns, machine_id, feature, name)
                items += variable_items(nodeid, name, ns, obj, vtype, description)
            await space.add_nodes(items)
            nodes = [item.RequestedNewNodeId for item in items]
            self._templates[unit] = NodeTemplate(space.server.iserver.aspace, obj, folder, nodes)
        self._units[(machine_id, feature)] = unit
        return unit

    async def write(self, report: CharacteristicReport, now: dt.datetime) -> None:
        """Write a report's capability values (the characteristic's nodes are created on first
        sight); a refused write is logged."""
        key = (report.machine_id, report.feature)
        if key not in self._units:
            await self._create(*key, report.unit)
        values = characteristic_values(report)
        for (name, vtype, _), value in zip(CHARACTERISTIC_VARIABLES, values, strict=True):
            await self._write(characteristic_node_id(self.space.ns, *key, name), _dv(value, vtype, now, now))

    async def write_results(self, batch: RecordBatch, rows: Sequence[int], now: dt.datetime) -> None:
        """Write the result of each row of `batch` at `rows` (one per characteristic, the newest)
        to its characteristic's variables, created on first sight."""
        if not rows:
            return
        columns = _result_columns(batch, rows)
        verdict_codes = batch.verdict[list(rows)].tolist()
        flags = batch.flags[list(rows)].tolist()
        stamps = batch.timestamp_ns[list(rows)].tolist()
        for k, row in enumerate(rows):
            key = (batch.machine_id[row], batch.feature[row])
            unit = self._units.get(key)
            if unit is None:
                unit = await self._create(*key, batch.unit[row])
            measured_at = ns_to_datetime(stamps[k])
            status = result_status(verdict_codes[k], flags[k])
            for (name, vtype, _, _), column in zip(RESULT_VARIABLES, columns, strict=True):
                value = measured_at if name == "Timestamp" else column[k]
                nodeid = characteristic_node_id(self.space.ns, *key, result_variable_name(name, unit))
                await self._write(nodeid, _dv(value, vtype, measured_at, now, status if name in QUALIFIED else _GOOD))

    async def mark_rejected(self, keys: Sequence[tuple[str, str]], now: dt.datetime) -> int:
        """Give the result of each known characteristic of `keys` (its newest row was rejected)
        the status Bad (and so a null value, OPC UA Part 4); returns how many were marked."""
        marked = 0
        for key in keys:
            unit = self._units.get(key)
            if unit is None:  # never measured: nothing to mark
                continue
            marked += 1
            for name in QUALIFIED:
                nodeid = characteristic_node_id(self.space.ns, *key, result_variable_name(name, unit))
                await self._write(nodeid, _dv(None, ua.VariantType.Null, now, now, _BAD))
        return marked

    async def _write(self, nodeid: ua.NodeId, value: ua.DataValue) -> None:
        status = await self.space.server.iserver.aspace.write_attribute_value(nodeid, AttributeIds.Value, value)
        if not status.is_good():
            _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), status)


def _result_columns(batch: RecordBatch, rows: Sequence[int]) -> list[list[Any]]:
    """The values of `RESULT_VARIABLES` (in order) at `rows` of `batch`, one list per variable."""
    index = list(rows)
    return [
        batch.measured_mm[index].tolist(),
        batch.compensated_mm[index].tolist(),
        batch.deviation_um[index].tolist(),
        batch.uncertainty_um[index].tolist(),
        batch.lower_tol_mm[index].tolist(),
        batch.upper_tol_mm[index].tolist(),
        batch.part_temp_c[index].tolist(),
        [batch.part_id[i] for i in index],
        [None] * len(index),  # Timestamp: the measurement time, taken per row
        VERDICT_NAMES[batch.verdict[index]].tolist(),
    ]
