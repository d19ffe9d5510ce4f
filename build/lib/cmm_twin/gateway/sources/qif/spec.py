"""The characteristics of a QIF document: item (name) -> nominal (TargetValue) -> definition
(Tolerance or ToleranceValue), as neutral `Characteristic`s in the document's units."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from xml.etree.ElementTree import Element

from cmm_twin.gateway.sources.characteristics import Characteristic
from cmm_twin.gateway.sources.qif.document import Document, find_path, local_name, q
from cmm_twin.gateway.sources.qif.units import Units
from cmm_twin.gateway.sources.rows import RowError

ANGULAR_KINDS = frozenset({"Angle", "AngleBetween", "AngleFrom", "AngularCoordinate", "UserDefinedAngular"})
"""Characteristic kinds whose values are angles (MeasuredAngularValueType)."""
TEMPERATURE_KINDS = frozenset({"UserDefinedTemperature"})
NOT_NUMERIC_KINDS = frozenset(
    {
        "UserDefinedArea",
        "UserDefinedAttribute",
        "UserDefinedForce",
        "UserDefinedMass",
        "UserDefinedPressure",
        "UserDefinedSpeed",
        "UserDefinedTime",
        "UserDefinedUnit",
        "SurfaceTexture",
        "Thread",
    }
)
"""Kinds that carry no length, angle or temperature (weld kinds are recognised by their prefix)."""
PROFILE_KINDS = frozenset({"PointProfile", "LineProfile", "SurfaceProfile"})
"""Geometric tolerances whose zone lies on both sides of the true profile."""
_NAME, _DESCRIPTION, _TARGET = q("Name"), q("Description"), q("TargetValue")
_NOMINAL_ID, _DEFINITION_ID = q("CharacteristicNominalId"), q("CharacteristicDefinitionId")
_TOLERANCE, _MAX, _MIN = q("Tolerance"), q("MaxValue"), q("MinValue")
_ZONE, _OUTER, _UNEQUAL = q("ToleranceValue"), q("OuterDisposition"), q("UnequallyDisposedZone")
_BY_REFERENCE, _AS_LIMIT, _FITS = q("DefinitionId"), q("DefinedAsLimit"), q("LimitsAndFitsSpecification")
_UNIT_ATTRIBUTE = {kind: f"{kind}Unit" for kind in ("linear", "angular", "temperature")}


@cache
def kind_of(tag: str, suffix: str) -> str:
    """`Diameter` of `{ns}DiameterCharacteristicMeasurement` (suffix `CharacteristicMeasurement`)."""
    name = local_name(tag)
    return name[: -len(suffix)] if name.endswith(suffix) else name


@cache
def unit_kind(kind: str) -> str | None:
    """linear, angular or temperature; None for a kind without such a value."""
    if kind in ANGULAR_KINDS:
        return "angular"
    if kind in TEMPERATURE_KINDS:
        return "temperature"
    if kind in NOT_NUMERIC_KINDS or kind.startswith("Weld"):
        return None
    return "linear"


@dataclass(frozen=True)
class _Limits:
    nominal: float | None
    lower: float | None
    upper: float | None


class Specifications:
    """The characteristic items of a document, resolved on demand (each item once)."""

    def __init__(self, document: Document, units: Units) -> None:
        self.document = document
        self.units = units
        characteristics = document.root.find(q("Characteristics"))
        self.items = _by_id(characteristics, "CharacteristicItems")
        self.nominals = _by_id(characteristics, "CharacteristicNominals")
        self.definitions = _by_id(characteristics, "CharacteristicDefinitions")
        self._resolved: dict[str, Characteristic | RowError] = {}
        self._seen: dict[tuple[int, str], int] = {}
        self._repeats: dict[tuple[str, int], Characteristic] = {}

    def characteristic(self, item_id: str) -> Characteristic | RowError:
        """The characteristic of item `item_id`, or why it has none (a RowError at the line of the
        specification at fault; line 0: the reference itself)."""
        found = self._resolved.get(item_id)
        if found is None:
            found = self._resolved[item_id] = self._resolve(item_id)
        return found

    def occurrence(self, characteristic: Characteristic, part: object) -> Characteristic:
        """The characteristic of a value of `part`: `characteristic` itself the first time, a copy
        numbered `<item id>.<k>` for its k-th measurement on the same part (so the records of a
        characteristic measured twice get distinct feature names, and distinct ids)."""
        key = (id(part), characteristic.number)
        count = self._seen[key] = self._seen.get(key, 0) + 1
        if count == 1:
            return characteristic
        repeat = self._repeats.get((characteristic.number, count))
        if repeat is None:
            repeat = replace(characteristic, number=f"{characteristic.number}.{count}")
            self._repeats[(characteristic.number, count)] = repeat
        return repeat

    def _resolve(self, item_id: str) -> Characteristic | RowError:
        line_of = self.document.line
        item = self.items.get(item_id)
        if item is None:
            return RowError(0, "CharacteristicItemId", f"refers to no characteristic item (id {item_id})")
        nominal_id = (item.findtext(_NOMINAL_ID) or "").strip()
        nominal = self.nominals.get(nominal_id)
        if nominal is None:
            return RowError(
                line_of(item),
                "CharacteristicNominalId",
                f"characteristic item {item_id} refers to no characteristic nominal (id {nominal_id or 'missing'})",
            )
        definition_id = (nominal.findtext(_DEFINITION_ID) or "").strip()
        definition = self.definitions.get(definition_id)
        if definition is None:
            return RowError(
                line_of(nominal),
                "CharacteristicDefinitionId",
                f"characteristic nominal {nominal_id} refers to no definition (id {definition_id or 'missing'})",
            )
        kind = kind_of(item.tag, "CharacteristicItem")
        unit_of = unit_kind(kind)
        if unit_of is None:
            return RowError(
                line_of(item), "CharacteristicItemId", f"{kind} characteristics carry no length or angle: not taken"
            )
        unit = getattr(self.units, unit_of)
        limits = self._limits(kind, nominal, definition, unit_of, unit)
        if isinstance(limits, RowError):
            return limits
        name = next(
            (text.strip() for e in (item, nominal, definition) if (text := e.findtext(_NAME)) and text.strip()),
            (item.findtext(_DESCRIPTION) or "").strip(),
        )
        target = nominal.find(_TARGET)
        return Characteristic(
            number=item_id,
            description=name,
            unit=unit,
            nominal=limits.nominal,
            lower=limits.lower,
            upper=limits.upper,
            line=line_of(target if target is not None else nominal),
            field="TargetValue",
        )

    def _limits(self, kind: str, nominal: Element, definition: Element, unit_of: str, unit: str) -> _Limits | RowError:
        """Nominal and limits relative to it, from the nominal and its definition."""
        line_of = self.document.line
        values: dict[str, float | None] = {}
        for name, element in (
            ("TargetValue", nominal.find(_TARGET)),
            ("ToleranceValue", definition.find(_ZONE)),
            ("MaxValue", find_path(definition, _TOLERANCE, _MAX)),
            ("MinValue", find_path(definition, _TOLERANCE, _MIN)),
            ("OuterDisposition", definition.find(_OUTER)),
            ("UnequallyDisposedZone", definition.find(_UNEQUAL)),
        ):
            number = self.number(element, name, unit_of, unit)
            if isinstance(number, RowError):
                return number
            values[name] = number
        target = values["TargetValue"]
        tolerance = definition.find(_TOLERANCE)
        if tolerance is not None:
            if tolerance.find(_BY_REFERENCE) is not None:
                return RowError(line_of(tolerance), "DefinitionId", "a tolerance given by reference is not supported")
            high, low = values["MaxValue"], values["MinValue"]
            if (tolerance.findtext(_AS_LIMIT) or "").strip() not in ("true", "1"):
                return _Limits(target, low, high)
            if target is None and high is not None and low is not None:
                target = _clean((high + low) / 2.0)  # limits without a nominal: the middle of the zone
            if target is None:
                return _Limits(None, None, None)  # the row builder names the missing nominal
            lower = None if low is None else _clean(low - target)
            return _Limits(target, lower, None if high is None else _clean(high - target))
        zone = values["ToleranceValue"]
        if zone is not None:  # a geometric tolerance: a deviation from 0 within the zone
            target = 0.0 if target is None else target
            if kind not in PROFILE_KINDS:
                return _Limits(target, None, zone)
            outer = values["OuterDisposition"]
            if outer is None:
                outer = values["UnequallyDisposedZone"]
            if outer is None:
                return _Limits(target, -zone / 2.0, zone / 2.0)
            return _Limits(target, _clean(outer - zone), outer)
        if definition.find(_FITS) is not None:
            return RowError(
                line_of(definition),
                "LimitsAndFitsSpecification",
                "a limits-and-fits (ISO 286 code) specification is not supported",
            )
        return _Limits(target, None, None)  # NonTolerance (MEASURED, SET): no limits

    def number(self, element: Element | None, name: str, unit_of: str, unit: str) -> float | RowError | None:
        """The number of a value element (None when absent); a RowError when it is not a number or
        names a unit other than the characteristic's."""
        if element is None:
            return None
        attribute = element.get(_UNIT_ATTRIBUTE[unit_of])
        if attribute is not None and self.units.for_attribute(unit_of, attribute) != unit:
            return RowError(
                self.document.line(element),
                name,
                f"unit {attribute!r} differs from the document's {unit_of} unit {unit!r}",
            )
        text = element.text or ""
        try:
            return float(text)  # float() ignores the whitespace around the number, as strip() does
        except ValueError:
            return RowError(self.document.line(element), name, f"not a number: {text.strip()!r}")


def _clean(number: float) -> float:
    """A difference of two decimals without the binary noise of the subtraction (35.02 - 35.0 is
    0.020000000000003126): rounded to 10 decimal places, far below any CMM's resolution."""
    return round(number, 10)


def _by_id(parent: Element | None, list_name: str) -> dict[str, Element]:
    """The children of `parent`/`list_name` by their `id` attribute."""
    found = parent.find(q(list_name)) if parent is not None else None
    if found is None:
        return {}
    return {element.get("id", "").strip(): element for element in found if element.get("id")}
