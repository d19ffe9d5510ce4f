"""Capability and compensation health per characteristic in the OPC UA address space
(docs/capability.md), under each machine's object:

    Objects/CMM/<machine_id>/Characteristics                  ns=<ns>;s=CMM/<machine_id>/Characteristics
    Objects/CMM/<machine_id>/Characteristics/<feature>        ns=<ns>;s=CMM/<machine_id>/Characteristics/<feature>
        CpRaw, CpkRaw        Double  Cp and Cpk of the raw deviations (measured - nominal)
        Cp, Cpk              Double  Cp and Cpk of the compensated deviations (ISO 22514-2)
        SampleSize           Int64   values in the rolling window
        ThermalSlope         Double  slope of the compensated deviation against the part temperature, µm/K
        ThermalSlopeAlarm    Boolean the compensation-health alarm is on

An index that cannot be estimated (too few values, no spread, no limit; Cp of a one-sided
specification, the slope of an angle) is NaN with status Good. The variables are plain
BaseDataVariables (the UNECE unit table has no code for µm/K: the description says it). A
feature id never holds a `/` (`[A-Za-z0-9_.-]`), so every NodeId names one node.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds

from cmm_twin.gateway.quality.monitor import CharacteristicReport
from cmm_twin.gateway.sinks.opcua.address_space import (
    AddressSpace,
    _dv,
    _nid,
    _object_item,
    data_variable_item,
)

_logger = logging.getLogger(__name__)

_Double = ua.VariantType.Double
CHARACTERISTIC_VARIABLES: tuple[tuple[str, ua.VariantType, str], ...] = (
    ("CpRaw", _Double, "Cp of the raw deviations (measured - nominal) over the rolling window"),
    ("CpkRaw", _Double, "Cpk of the raw deviations over the rolling window"),
    ("Cp", _Double, "Cp of the deviations compensated to 20 °C (ISO 22514-2); NaN: undefined"),
    ("Cpk", _Double, "Cpk of the deviations compensated to 20 °C (ISO 22514-2); NaN: undefined"),
    ("SampleSize", ua.VariantType.Int64, "Values in the rolling window"),
    ("ThermalSlope", _Double, "Slope of the compensated deviation against the part temperature, µm/K"),
    ("ThermalSlopeAlarm", ua.VariantType.Boolean, "The slope is significant and beyond the limit"),
)


def characteristic_node_id(
    ns: int, machine_id: str, feature: str | None = None, variable: str | None = None
) -> ua.NodeId:
    """NodeId of the Characteristics folder (feature None), of a characteristic or of one of its variables."""
    text = f"CMM/{machine_id}/Characteristics"
    if feature is not None:
        text += f"/{feature}" + (f"/{variable}" if variable is not None else "")
    return _nid(text, ns)


def characteristic_values(report: CharacteristicReport) -> tuple[Any, ...]:
    """The variables' values (in `CHARACTERISTIC_VARIABLES` order) of a report."""
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


class CharacteristicNodes:
    """The Characteristics of every machine in one server, created on first sight."""

    def __init__(self, space: AddressSpace) -> None:
        self.space = space
        self._folders: set[str] = set()
        self._created: set[tuple[str, str]] = set()

    async def _create(self, machine_id: str, feature: str) -> None:
        space, ns = self.space, self.space.ns
        items: list[ua.AddNodesItem] = []
        folder = characteristic_node_id(ns, machine_id)
        if machine_id not in self._folders:
            machine = await space.ensure_machine(machine_id)
            items.append(_object_item(folder, "Characteristics", ns, machine, folder=True))
        obj = characteristic_node_id(ns, machine_id, feature)
        items.append(_object_item(obj, feature, ns, folder))
        for name, vtype, description in CHARACTERISTIC_VARIABLES:
            nodeid = characteristic_node_id(ns, machine_id, feature, name)
            items.append(data_variable_item(nodeid, name, ns, obj, vtype, description))
        await space.add_nodes(items)
        self._folders.add(machine_id)
        self._created.add((machine_id, feature))

    async def write(self, report: CharacteristicReport, now: dt.datetime) -> None:
        """Write a report's values (the characteristic's nodes are created on first sight); a
        refused write is logged."""
        key = (report.machine_id, report.feature)
        if key not in self._created:
            await self._create(*key)
        aspace = self.space.server.iserver.aspace
        values = characteristic_values(report)
        for (name, vtype, _), value in zip(CHARACTERISTIC_VARIABLES, values, strict=True):
            nodeid = characteristic_node_id(self.space.ns, *key, name)
            status = await aspace.write_attribute_value(nodeid, AttributeIds.Value, _dv(value, vtype, now, now))
            if not status.is_good():
                _logger.error("OPC UA write of %s failed: %s", nodeid.to_string(), status)
