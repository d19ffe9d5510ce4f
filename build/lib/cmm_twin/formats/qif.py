"""QIF 3 (ISO 23952) results documents from a `Report`: the simulator's raw readings and the
outbox's compensated results come from this one writer (docs/formats/qif.md).

The document holds FileUnits (millimetre, degree, Celsius; values in um, cm, m or inch are
converted to mm), one characteristic definition, nominal and item per report characteristic
(lengths as Length, angles as Angle, temperatures as UserDefinedTemperature characteristics;
limits as Tolerance/MaxValue and MinValue relative to the TargetValue), one ActualComponent per
part (SerialNumber, inspection time, measuring device, ObjectTemperature / AmbientTemperature)
and one MeasurementResults per part with one CharacteristicMeasurement per value.

Output is deterministic: element ids are numbered in document order, the document's QPId is a
UUID derived from the rest of the document, and nothing depends on the time of writing; the
same report gives the same bytes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from xml.etree.ElementTree import Element, SubElement, indent, tostring

from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue

QIF_NS = "http://qifstandards.org/xsd/qif3"
QIF_VERSION = "3.0.0"
QPID_NAMESPACE = uuid.UUID("6f1c3a52-9d2e-5b7a-8c40-2b1f0e7d9a63")
"""Namespace of the document QPIds (UUIDv5 of the document's content)."""
_LENGTH_UNITS: dict[str, tuple[float, int]] = {
    "mm": (1.0, 0),
    "um": (1e-3, 3),
    "µm": (1e-3, 3),
    "μm": (1e-3, 3),
    "cm": (10.0, 0),
    "m": (1000.0, 0),
    "in": (25.4, 1),
    "inch": (25.4, 1),
}
"""Length units: size in mm, and the decimal places the conversion to mm adds (exactly)."""
_ANGLE_UNITS = frozenset({"deg", "°", "degree"})
_TEMPERATURE_UNITS = frozenset({"degc", "°c", "c", "celsius"})
CHARACTERISTIC_STATUSES = frozenset(
    {"PASS", "FAIL", "REWORK", "SYSERROR", "INDETERMINATE", "NOT_ANALYZED", "BASIC_OR_TED", "UNDEFINED"}
)
"""QIF's CharacteristicStatusEnum."""


def _add(parent: Element, name: str, text: str | None = None, **attributes: str) -> Element:
    """A child element; names stay unqualified: the root's `xmlns` puts them all in the QIF
    namespace when serialised (without changing ElementTree's global namespace prefixes)."""
    element = SubElement(parent, name, attributes)
    if text is not None:
        element.text = text
    return element


def _decimal(value: float, decimals: int | None = None) -> str:
    """xs:decimal text of `value`: with `decimals` places, else its shortest exact form (never an exponent)."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    text = f"{value:.{decimals}f}" if decimals is not None else format(Decimal(repr(value)), "f")
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def _time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {moment!r}")
    return moment.isoformat()


class _Kind:
    """How a report characteristic is written: its QIF kind, and the factor and extra decimal
    places that bring its values to the document's units."""

    def __init__(self, characteristic: ReportCharacteristic) -> None:
        unit = characteristic.unit.strip()
        lower = unit.lower()
        if lower in _LENGTH_UNITS or unit in _LENGTH_UNITS:
            self.kind = "Length"
            self.scale, extra = _LENGTH_UNITS.get(lower, _LENGTH_UNITS.get(unit, (1.0, 0)))
        elif lower in _ANGLE_UNITS:
            self.kind, self.scale, extra = "Angle", 1.0, 0
        elif lower in _TEMPERATURE_UNITS:
            self.kind, self.scale, extra = "UserDefinedTemperature", 1.0, 0
        else:
            raise ValueError(f"characteristic {characteristic.name!r}: unit {characteristic.unit!r} not supported")
        self.decimals = characteristic.decimals + extra

    def text(self, value: float) -> str:
        return _decimal(value * self.scale, self.decimals)

    def uncertainty_text(self, uncertainty: float) -> str:
        """u_c with two more decimal places than the values, and at least two significant digits."""
        scaled = abs(uncertainty * self.scale)
        significant = 1 - math.floor(math.log10(scaled)) if scaled > 0 and math.isfinite(scaled) else 0
        return _decimal(scaled, max(self.decimals + 2, significant))


class _Ids:
    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> str:
        self.last += 1
        return str(self.last)


def write_qif_results(report: Report, application: str = "cmm-twin") -> bytes:
    """The QIF 3 results document of `report` (UTF-8 bytes; see the module docstring).
    ValueError for a unit it cannot write, a timestamp without a zone, a status that is not QIF's
    and a part whose number of values differs from the number of characteristics."""
    kinds = [_Kind(c) for c in report.characteristics]
    for part in report.parts:
        if len(part.values) != len(report.characteristics):
            raise ValueError(
                f"part {part.part_id!r}: {len(part.values)} values for {len(report.characteristics)} characteristics"
            )
    next_id = _Ids()
    root = Element("QIFDocument", {"xmlns": QIF_NS, "versionQIF": QIF_VERSION, "idMax": "0"})
    qpid = _add(root, "QPId")
    header = _add(root, "Header")
    _add(_add(header, "Application"), "Name", application)
    if report.part_description:
        _add(header, "Description", report.part_description)
    standard_id = next_id()
    standards = _add(root, "StandardsDefinitions", n="1")
    standard = _add(standards, "Standard", id=standard_id)
    _add(_add(standard, "Organization"), "StandardsOrganizationEnum", "ISO")
    _add(standard, "Designator", "1101")
    _file_units(root)
    machines = sorted({p.machine_id for p in report.parts})
    device_ids = {machine: next_id() for machine in machines}
    if machines:
        devices = _add(_add(root, "MeasurementResources"), "MeasurementDevices", n=str(len(machines)))
        for machine in machines:
            _add(_add(devices, "MeasurementDevice", id=device_ids[machine]), "Name", machine)
    _product(root, report, next_id)
    item_ids = _characteristics(root, report.characteristics, kinds, standard_id, next_id)
    _results(root, report, kinds, item_ids, device_ids, next_id)
    root.set("idMax", str(next_id.last))
    indent(root, space="  ")
    qpid.text = str(uuid.uuid5(QPID_NAMESPACE, tostring(root, encoding="unicode")))
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="unicode").encode() + b"\n"


def _file_units(root: Element) -> None:
    primary = _add(_add(root, "FileUnits"), "PrimaryUnits")
    for element, si_name, name, factor, offset in (
        ("AngularUnit", "radian", "degree", "0.0174532925199433", None),
        ("LinearUnit", "meter", "millimeter", "0.001", None),
        ("TemperatureUnit", "kelvin", "celsius", "1", "273.15"),
    ):
        unit = _add(primary, element)
        _add(unit, "SIUnitName", si_name)
        _add(unit, "UnitName", name)
        conversion = _add(unit, "UnitConversion")
        _add(conversion, "Factor", factor)
        if offset is not None:
            _add(conversion, "Offset", offset)


def _product(root: Element, report: Report, next_id: _Ids) -> None:
    if not (report.part_number or report.part_description):
        return
    part = _add(_add(_add(root, "Product"), "PartSet", n="1"), "Part", id=next_id())
    if report.part_description:
        _add(_add(part, "Header"), "Name", report.part_description)
    if report.part_number:
        _add(part, "ModelNumber", report.part_number)


def _characteristics(
    root: Element,
    characteristics: Sequence[ReportCharacteristic],
    kinds: Sequence[_Kind],
    standard_id: str,
    next_id: _Ids,
) -> list[str]:
    """Definitions, nominals and items of the characteristics; the item ids, in report order."""
    if not characteristics:
        return []
    lists = _add(root, "Characteristics")
    _add(lists, "FormalStandardId", standard_id)
    count = str(len(characteristics))
    definitions = _add(lists, "CharacteristicDefinitions", n=count)
    nominals = _add(lists, "CharacteristicNominals", n=count)
    items = _add(lists, "CharacteristicItems", n=count)
    item_ids = []
    for characteristic, kind in zip(characteristics, kinds, strict=True):
        definition_id, nominal_id, item_id = next_id(), next_id(), next_id()
        definition = _add(definitions, f"{kind.kind}CharacteristicDefinition", id=definition_id)
        if characteristic.lower is None and characteristic.upper is None:
            _add(definition, "NonTolerance", "MEASURED")
        else:
            tolerance = _add(definition, "Tolerance")
            if characteristic.upper is not None:
                _add(tolerance, "MaxValue", kind.text(characteristic.upper))
            if characteristic.lower is not None:
                _add(tolerance, "MinValue", kind.text(characteristic.lower))
            _add(tolerance, "DefinedAsLimit", "false")
        if kind.kind == "UserDefinedTemperature":
            _add(definition, "WhatToMeasure", characteristic.name)
        nominal = _add(nominals, f"{kind.kind}CharacteristicNominal", id=nominal_id)
        _add(nominal, "CharacteristicDefinitionId", definition_id)
        if characteristic.nominal is not None:
            _add(nominal, "TargetValue", kind.text(characteristic.nominal))
        item = _add(items, f"{kind.kind}CharacteristicItem", id=item_id)
        _add(item, "Name", characteristic.name)
        _add(item, "CharacteristicNominalId", nominal_id)
        item_ids.append(item_id)
    return item_ids


def _results(
    root: Element,
    report: Report,
    kinds: Sequence[_Kind],
    item_ids: Sequence[str],
    device_ids: dict[str, str],
    next_id: _Ids,
) -> None:
    results = _add(root, "Results")
    results_set = _add(results, "MeasurementResultsSet", n=str(max(1, len(report.parts))))
    if not report.parts:
        _add(
            _add(_add(results_set, "MeasurementResults", id=next_id()), "InspectionStatus"),
            "InspectionStatusEnum",
            "NOT_MEASURED",
        )
        return
    components = []
    for part in report.parts:
        measurement_results = _add(results_set, "MeasurementResults", id=next_id())
        statuses: list[str] = []
        component_id = next_id()
        if item_ids:
            characteristics = _add(measurement_results, "MeasuredCharacteristics")
            measurements = _add(characteristics, "CharacteristicMeasurements", n=str(len(item_ids)))
            specs = zip(report.characteristics, kinds, item_ids, strict=True)
            for (characteristic, kind, item_id), value in zip(specs, part.values, strict=True):
                status = value.status or _status(characteristic, value)
                if status not in CHARACTERISTIC_STATUSES:
                    raise ValueError(f"part {part.part_id!r}, {characteristic.name!r}: status {status!r} is not QIF's")
                statuses.append(status)
                _measurement(measurements, kind, item_id, value, status, part, component_id, device_ids, next_id)
        inspection = _inspection_status(statuses)
        _add(_add(measurement_results, "InspectionStatus"), "InspectionStatusEnum", inspection)
        _add(_add(measurement_results, "ActualComponentIds", n="1"), "Id", component_id)
        components.append((part, component_id, inspection))
    component_set = _add(_add(results, "ActualComponentSets", n="1"), "ActualComponentSet", n=str(len(components)))
    for part, component_id, inspection in components:
        _component(component_set, part, component_id, inspection, device_ids)


def _measurement(
    parent: Element,
    kind: _Kind,
    item_id: str,
    value: ReportValue,
    status: str,
    part: ReportPart,
    component_id: str,
    device_ids: dict[str, str],
    next_id: _Ids,
) -> None:
    measurement = _add(parent, f"{kind.kind}CharacteristicMeasurement", id=next_id())
    _add(_add(measurement, "Status"), "CharacteristicStatusEnum", status)
    _add(measurement, "CharacteristicItemId", item_id)
    _add(measurement, "TimeStamp", _time(part.timestamp))
    _add(measurement, "ActualComponentId", component_id)
    _add(_add(measurement, "MeasurementDeviceIds", n="1"), "Id", device_ids[part.machine_id])
    if value.value is not None:
        element = _add(measurement, "Value", kind.text(value.value))
        if value.uncertainty is not None:
            element.set("combinedUncertainty", kind.uncertainty_text(value.uncertainty))


def _component(
    parent: Element, part: ReportPart, component_id: str, inspection: str, device_ids: dict[str, str]
) -> None:
    component = _add(parent, "ActualComponent", id=component_id)
    _add(component, "SerialNumber", part.part_id)
    _add(_add(component, "Status"), "InspectionStatusEnum", inspection)
    trace = _add(component, "Traceability")
    _add(trace, "InspectionStart", _time(part.timestamp))
    _add(_add(trace, "MeasurementDeviceIds", n="1"), "Id", device_ids[part.machine_id])
    if part.part_temp_c is not None or part.air_temp_c is not None:
        environment = _add(_add(trace, "ProductEnvironments", n="1"), "Environment")
        if part.part_temp_c is not None:
            _add(environment, "ObjectTemperature", _decimal(part.part_temp_c))
        if part.air_temp_c is not None:
            _add(environment, "AmbientTemperature", _decimal(part.air_temp_c))
        _add(environment, "DateAndTime", _time(part.timestamp))


def _status(characteristic: ReportCharacteristic, value: ReportValue) -> str:
    """The status a CMM states for a value without one: PASS / FAIL against the limits as written
    (UNDEFINED without limits or nominal, NOT_ANALYZED without a value)."""
    if value.value is None:
        return "NOT_ANALYZED"
    if characteristic.nominal is None or (characteristic.lower is None and characteristic.upper is None):
        return "UNDEFINED"
    deviation = round(value.value - characteristic.nominal, characteristic.decimals + 6)
    low_ok = characteristic.lower is None or deviation >= characteristic.lower
    high_ok = characteristic.upper is None or deviation <= characteristic.upper
    return "PASS" if low_ok and high_ok else "FAIL"


def _inspection_status(statuses: Sequence[str]) -> str:
    """A part's InspectionStatus: FAIL when a value fails, PASS when all pass, else UNKNOWN."""
    if "FAIL" in statuses:
        return "FAIL"
    if "SYSERROR" in statuses:
        return "SYSERROR"
    if statuses and all(s == "PASS" for s in statuses):
        return "PASS"
    return "UNKNOWN"
