"""The measured parts of a QIF results document (ActualComponents with their serial number,
inspection time, temperatures and device), the part number and the measurement devices."""

from __future__ import annotations

import math
from datetime import datetime
from xml.etree.ElementTree import Element

from cmm_twin.gateway.sources.characteristics import Part, to_celsius
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qif.document import Document, find_path, q, text_at
from cmm_twin.gateway.sources.qif.units import Units
from cmm_twin.gateway.sources.rows import RowError


def parse_time(text: str, inputs: InputSettings) -> datetime | None:
    """An xs:dateTime as an aware datetime (without a zone: local time in `[inputs] timezone`);
    None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return inputs.local(moment) if moment.tzinfo is None else moment


def part_number(root: Element) -> str | None:
    """The catalogue key: the ModelNumber of the product's part (the RootPart when named, else the
    first of the PartSet), else that part's Header/Name; None without a Product/PartSet."""
    product = root.find(q("Product"))
    if product is None:
        return None
    parts = [part for part_set in product.findall(q("PartSet")) for part in part_set.findall(q("Part"))]
    root_id = (text_at(product, q("RootPart"), q("Id")) or "").strip()
    part = next((p for p in parts if p.get("id") == root_id), parts[0] if parts else None)
    if part is None:
        return None
    for text in (part.findtext(q("ModelNumber")), text_at(part, q("Header"), q("Name"))):
        if text and text.strip():
            return text.strip()
    return None


def devices(root: Element) -> dict[str, str]:
    """Names of the measurement devices (MeasurementResources/MeasurementDevices, any kind: CMM,
    MeasurementDevice, ...) by id."""
    found = find_path(root, q("MeasurementResources"), q("MeasurementDevices"))
    if found is None:
        return {}
    names: dict[str, str] = {}
    for device in found:
        name = (device.findtext(q("Name")) or "").strip()
        if device.get("id") and name:
            names[device.get("id", "").strip()] = name
    return names


def first_id(element: Element | None, list_name: str) -> str | None:
    """The first Id of the reference list `list_name` under `element` (None when there is none)."""
    if element is None:
        return None
    text = text_at(element, _LISTS.get(list_name) or q(list_name), _ID)
    return text.strip() if text and text.strip() else None


def ids(element: Element, list_name: str) -> list[str]:
    """Every Id of the reference list `list_name` under `element`."""
    found = (e for listed in element.findall(q(list_name)) for e in listed.findall(_ID))
    return [(e.text or "").strip() for e in found if (e.text or "").strip()]


class Components:
    """The ActualComponents of the document as Parts by id, with the problems found reading them."""

    def __init__(self, document: Document, units: Units, inputs: InputSettings, stem: str) -> None:
        self.document = document
        self.units = units
        self.inputs = inputs
        self.stem = stem
        self.number = part_number(document.root)
        self.devices = devices(document.root)
        self.errors: list[RowError] = []
        self.parts: dict[str, Part] = {}
        self._fallback: dict[str, Part] = {}
        sets = find_path(document.root, q("Results"), q("ActualComponentSets"))
        for component in sets.iter(q("ActualComponent")) if sets is not None else ():
            self.parts[component.get("id", "").strip()] = self._part(component)

    def device(self, device_id: str | None) -> str | None:
        """The name of a measurement device (None when it is not named)."""
        return self.devices.get(device_id) if device_id else None

    def without_component(self, results_id: str, single: bool) -> Part:
        """The part of measurements that name no ActualComponent: the file's stem (with the
        MeasurementResults id when the document holds several)."""
        part = self._fallback.get(results_id)
        if part is None:
            part_id = self.stem if single else f"{self.stem}-{results_id}"
            part = self._fallback[results_id] = Part(part_id, part_number=self.number)
        return part

    def _part(self, component: Element) -> Part:
        line_of = self.document.line
        component_id = component.get("id", "").strip()
        serial = (component.findtext(q("SerialNumber")) or "").strip()
        part = Part(serial or f"{self.stem}-{component_id}", part_number=self.number, temp_line=line_of(component))
        trace = component.find(q("Traceability"))
        if trace is None:
            return part
        part.machine_id = self.device(first_id(trace, "MeasurementDeviceIds"))
        start = trace.find(q("InspectionStart"))
        if start is not None:
            part.timestamp = self._time(start, "InspectionStart")
        environments = (
            e for listed in trace.findall(q("ProductEnvironments")) for e in listed.findall(q("Environment"))
        )
        for environment in environments:
            if part.timestamp is None and environment.find(q("DateAndTime")) is not None:
                part.timestamp = self._time(environment.find(q("DateAndTime")), "DateAndTime")
            for name in ("ObjectTemperature", "AmbientTemperature"):
                element = environment.find(q(name))
                if element is None or getattr(part, _TEMP_FIELD[name]) is not None:
                    continue
                text = (element.text or "").strip()
                try:
                    value = float(text)
                except ValueError:  # the part's readings are then rejected, naming this line
                    self.errors.append(RowError(line_of(element), name, f"not a number: {text!r}"))
                    value = math.nan
                unit = self.units.for_attribute("temperature", element.get("temperatureUnit", self.units.temperature))
                setattr(part, _TEMP_FIELD[name], to_celsius(value, unit))
                part.temp_line = line_of(element)
        return part

    def _time(self, element: Element | None, name: str) -> datetime | None:
        text = (element.text or "") if element is not None else ""
        moment = parse_time(text, self.inputs)
        if moment is None:
            self.errors.append(RowError(self.document.line(element), name, f"not an xs:dateTime: {text.strip()!r}"))
        return moment


_ID = q("Id")
_LISTS = {"MeasurementDeviceIds": q("MeasurementDeviceIds")}
"""The Clark names of the reference lists looked up for every measurement."""
_TEMP_FIELD = {"ObjectTemperature": "part_temp_c", "AmbientTemperature": "air_temp_c"}
