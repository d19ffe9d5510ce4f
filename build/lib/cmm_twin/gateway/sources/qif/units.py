"""The units of a QIF document (FileUnits/PrimaryUnits), in the spellings the row builder knows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from cmm_twin.gateway.sources.qif.document import q

_LINEAR: dict[str, str] = {
    "mm": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "millimeters": "mm",
    "millimetres": "mm",
    "in": "inch",
    "inch": "inch",
    "inches": "inch",
    "um": "um",
    "µm": "um",
    "μm": "um",
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "micrometre": "um",
    "micrometers": "um",
    "micrometres": "um",
    "cm": "cm",
    "centimeter": "cm",
    "centimetre": "cm",
    "m": "m",
    "meter": "m",
    "metre": "m",
    "meters": "m",
    "metres": "m",
}
_LINEAR_FACTORS: dict[float, str] = {1e-3: "mm", 0.0254: "inch", 1e-6: "um", 1e-2: "cm", 1.0: "m"}
"""Size in metres (UnitConversion/Factor to the SI unit) of the length units known by their size only."""
_ANGULAR: dict[str, str] = {
    "deg": "deg",
    "degree": "deg",
    "degrees": "deg",
    "°": "deg",
    "rad": "rad",
    "radian": "rad",
    "radians": "rad",
}
_ANGULAR_FACTORS: dict[float, str] = {math.pi / 180.0: "deg", 1.0: "rad"}
_TEMPERATURE: dict[str, str] = {
    "c": "degC",
    "°c": "degC",
    "degc": "degC",
    "celsius": "degC",
    "degree celsius": "degC",
    "degrees celsius": "degC",
    "k": "K",
    "kelvin": "K",
    "f": "degF",
    "°f": "degF",
    "degf": "degF",
    "fahrenheit": "degF",
    "degree fahrenheit": "degF",
    "degrees fahrenheit": "degF",
}


@dataclass(frozen=True)
class Units:
    """The document's units, as RowBuilder spellings (an unknown name is passed on as written, for
    the row builder to reject by name)."""

    linear: str = "mm"
    angular: str = "deg"
    temperature: str = "degC"

    def for_attribute(self, kind: str, name: str) -> str:
        """The spelling of a unit a value names in its `linearUnit` / `angularUnit` /
        `temperatureUnit` attribute (`kind`: linear, angular, temperature)."""
        table = {"linear": _LINEAR, "angular": _ANGULAR, "temperature": _TEMPERATURE}[kind]
        return table.get(" ".join(name.lower().split()), name)


def file_units(root: Element) -> Units:
    """The units of FileUnits/PrimaryUnits; without them: mm, degree and Celsius."""
    primary = root.find(f"{q('FileUnits')}/{q('PrimaryUnits')}")
    if primary is None:
        return Units()
    return Units(
        linear=_unit(primary.find(q("LinearUnit")), _LINEAR, _LINEAR_FACTORS, "mm"),
        angular=_unit(primary.find(q("AngularUnit")), _ANGULAR, _ANGULAR_FACTORS, "deg"),
        temperature=_unit(primary.find(q("TemperatureUnit")), _TEMPERATURE, {}, "degC"),
    )


def _unit(element: Element | None, names: dict[str, str], factors: dict[float, str], default: str) -> str:
    """A unit element's spelling: by UnitName, else by its UnitConversion factor to the SI unit."""
    if element is None:
        return default
    name = " ".join((element.findtext(q("UnitName")) or "").lower().split())
    if name in names:
        return names[name]
    factor_text = element.findtext(f"{q('UnitConversion')}/{q('Factor')}")
    if factor_text is not None and not element.findtext(f"{q('UnitConversion')}/{q('Offset')}"):
        try:
            factor = float(factor_text)
        except ValueError:
            factor = math.nan
        for size, spelling in factors.items():
            if math.isclose(factor, size, rel_tol=1e-9):
                return spelling
    return name or default
