"""The measurements of a QIF results document as neutral `Reading`s: every
`<Kind>CharacteristicMeasurement` of every MeasurementResults, with its characteristic, part,
time and device."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from xml.etree.ElementTree import Element

from cmm_twin.gateway.sources.characteristics import Part, Reading
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qif.document import Document, q, text_at
from cmm_twin.gateway.sources.qif.parts import Components, first_id, ids, parse_time
from cmm_twin.gateway.sources.qif.spec import Specifications, kind_of, unit_kind
from cmm_twin.gateway.sources.qif.units import file_units
from cmm_twin.gateway.sources.rows import RowError
from cmm_twin.physics.thermal import Flag

_BAD_STATUS = frozenset({"SYSERROR"})
"""Statuses that say the CMM could not measure the value: such a value is a row error."""
_ITEM_ID, _STATUS, _STATUS_ENUM = q("CharacteristicItemId"), q("Status"), q("CharacteristicStatusEnum")
_VALUE, _TIME_STAMP, _COMPONENT_ID = q("Value"), q("TimeStamp"), q("ActualComponentId")


@dataclass
class Readings:
    """What a document holds: its readings and the row errors met reading them."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def document_readings(document: Document, inputs: InputSettings, stem: str, file_time: datetime) -> Readings:
    """The readings of every measurement of `document` (`stem`: the file's name without suffix,
    the part id of measurements that name no part; `file_time`: the file's modification time, for
    measurements without any time, flagged `timestamp_from_file`)."""
    units = file_units(document.root)
    specs = Specifications(document, units)
    components = Components(document, units, inputs, stem)
    out = Readings(errors=list(components.errors))
    all_results = [
        results
        for top in document.root.findall(q("Results"))
        for results_set in top.findall(q("MeasurementResultsSet"))
        for results in results_set.findall(q("MeasurementResults"))
    ]
    for results in all_results:
        reader = _ResultsReader(document, inputs, specs, components, results, len(all_results) == 1, file_time)
        measurements = (
            measurement
            for measured in results.findall(q("MeasuredCharacteristics"))
            for listed in measured.findall(q("CharacteristicMeasurements"))
            for measurement in listed
        )
        for measurement in measurements:
            found = reader.reading(measurement)
            if isinstance(found, RowError):
                out.errors.append(found)
            else:
                out.readings.append(found)
    return out


class _ResultsReader:
    """Reads the measurements of one MeasurementResults."""

    def __init__(
        self,
        document: Document,
        inputs: InputSettings,
        specs: Specifications,
        components: Components,
        results: Element,
        single: bool,
        file_time: datetime,
    ) -> None:
        self.document = document
        self.inputs = inputs
        self.specs = specs
        self.components = components
        self.results_id = results.get("id", "").strip()
        self.component_ids = ids(results, "ActualComponentIds")
        self.single = single
        self.file_time = file_time

    def reading(self, measurement: Element) -> Reading | RowError:
        """The reading of one `<Kind>CharacteristicMeasurement` (or why it is none)."""
        line_of = self.document.line
        kind = kind_of(measurement.tag, "CharacteristicMeasurement")
        item_id = (measurement.findtext(_ITEM_ID) or "").strip()
        if not item_id:
            return RowError(
                line_of(measurement), "CharacteristicItemId", f"{kind} measurement names no characteristic item"
            )
        characteristic = self.specs.characteristic(item_id)
        if isinstance(characteristic, RowError):  # a specification error: each value names its own line
            line = line_of(measurement)
            where = "" if characteristic.line in (0, line) else f"; see line {characteristic.line}"
            return RowError(line, characteristic.column, characteristic.reason + where)
        status = (text_at(measurement, _STATUS, _STATUS_ENUM) or "").strip()
        value_element = measurement.find(_VALUE)
        if value_element is None:
            return RowError(
                line_of(measurement),
                "Value",
                f"no Value for {characteristic.description!r} (status {status or 'none'})",
            )
        line = line_of(value_element)
        if status in _BAD_STATUS:
            return RowError(line, "Status", f"the measuring system reports {status} for this value")
        unit_of = unit_kind(kind) or "linear"
        value = self.specs.number(value_element, "Value", unit_of, characteristic.unit)
        if isinstance(value, RowError):
            return value
        assert value is not None
        part = self._part(measurement, line)
        if isinstance(part, RowError):
            return part
        moment = None
        stamp = measurement.find(_TIME_STAMP)
        if stamp is not None:
            moment = parse_time(stamp.text or "", self.inputs)
            if moment is None:
                return RowError(line_of(stamp), "TimeStamp", f"not an xs:dateTime: {(stamp.text or '').strip()!r}")
        if moment is None and part.timestamp is None:  # no time anywhere: the file's, flagged on the part
            part.timestamp = self.file_time
            part.flags |= Flag.TIMESTAMP_FROM_FILE
        device = self.components.device(first_id(measurement, "MeasurementDeviceIds"))
        if device is None:
            device = self.components.device(first_id(self.specs.items.get(item_id), "MeasurementDeviceIds"))
        characteristic = self.specs.occurrence(characteristic, part)
        return Reading(characteristic, part, value, line, "Value", moment, device)

    def _part(self, measurement: Element, line: int) -> Part | RowError:
        """The part measured: the measurement's ActualComponentId, else the one of its
        MeasurementResults, else the document's only ActualComponent, else the file's stem."""
        component_id = (measurement.findtext(_COMPONENT_ID) or "").strip()
        if not component_id:
            if len(self.component_ids) > 1:
                return RowError(
                    line,
                    "ActualComponentId",
                    f"MeasurementResults {self.results_id} name {len(self.component_ids)} parts "
                    "and the measurement none of them",
                )
            if self.component_ids:
                component_id = self.component_ids[0]
            elif len(self.components.parts) == 1:
                component_id = next(iter(self.components.parts))
            else:
                return self.components.without_component(self.results_id, self.single)
        part = self.components.parts.get(component_id)
        if part is None:
            return RowError(line, "ActualComponentId", f"refers to no ActualComponent (id {component_id})")
        return part
