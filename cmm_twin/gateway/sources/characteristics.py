"""The neutral model of a CMM report, and the one place that turns it into rows.

Q-DAS, Calypso and QIF differ in syntax only: each source parses its files into `Reading`s (one
measured value of a `Characteristic` on a `Part`) and hands them to `build_rows`, which settles
everything the same way for every format (the README, 'Real CMM formats'):

- units: mm, um / µm, cm, m and inch are converted to mm; angles (`°`, `deg`, `rad`) are
  delivered in degrees (`unit: "deg"`) and never thermally corrected; another unit is a row error;
- temperatures: a characteristic whose unit is a temperature, or whose description matches
  `part_temp_pattern`, is the temperature of its part (the air's when it also matches
  `air_temp_pattern`), not a record; a part temperature the file states directly (QIF's
  ObjectTemperature, Calypso's header) comes first; several readings of a part are averaged.
  Without any, the part is taken at `assumed_temp_c` with u(T) = half_range / sqrt(3) and the
  flag `temperature_assumed`;
- material and `already_compensated` from the part catalogue by part number, else the defaults;
- names: machine and feature names are made safe for every sink ([A-Za-z0-9_.-], at most 64
  characters, others replaced by `_`); a feature name that two characteristics of one file
  would share gets its characteristic number appended, so measurement ids stay distinct;
- limits: relative to the nominal, signed; a side without a limit is NaN; equal and opposite
  limits are also given as the symmetric `tolerance_mm`;
- validation: values and nominals finite and within +-`max_length_mm`, lower <= upper, the
  temperature in the plausible range, a time given. A bad reading is a row error naming the
  file's field and line; a bad temperature of a part rejects that part's readings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from cmm_twin.gateway.sources.ids import MeasurementIds
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk, RowError, ValidRows, empty_rows
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.thermal import Flag
from cmm_twin.records import canonical_timestamp

LENGTH_UNITS_MM: dict[str, float] = {
    "": 1.0,
    "mm": 1.0,
    "um": 1e-3,
    "µm": 1e-3,  # micro sign U+00B5
    "μm": 1e-3,  # Greek mu U+03BC
    "micron": 1e-3,
    "cm": 10.0,
    "m": 1000.0,
    "in": 25.4,
    "inch": 25.4,
    '"': 25.4,
}
"""Length units (lower case) and their size in mm; an empty unit is mm."""
ANGLE_UNITS_DEG: dict[str, float] = {
    "°": 1.0,
    "deg": 1.0,
    "degree": 1.0,
    "rad": 180.0 / math.pi,
    "gon": 0.9,
    "grad": 0.9,
}
"""Angle units (lower case) and their size in degrees (gon = grad = 1/400 of a turn)."""
TEMPERATURE_UNITS: frozenset[str] = frozenset({"°c", "degc", "c", "celsius", "°f", "degf", "k"})
"""Temperature units (lower case); values are converted to degC."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
MAX_NAME = 64


@dataclass(frozen=True)
class Characteristic:
    """A characteristic as the file specifies it, in the file's unit."""

    number: str
    """How the file numbers it (Q-DAS K2001 or its index, Calypso id, QIF item id)."""
    description: str
    """Its name in the file; the feature of its records (made safe) and what the temperature
    patterns are matched against."""
    unit: str
    """As written ('' means mm)."""
    nominal: float | None
    lower: float | None
    """Lower limit relative to the nominal, signed; None: no lower limit."""
    upper: float | None
    """Upper limit relative to the nominal, signed; None: no upper limit."""
    line: int
    """Where the file defines it (row errors about the specification name this line)."""
    field: str = "nominal"
    """The file's name of the field row errors about the specification point at."""


@dataclass
class Part:
    """One measured part (a Q-DAS value line, a Calypso run, a QIF ActualComponent)."""

    part_id: str
    part_number: str | None = None
    """Key of the part catalogue."""
    machine_id: str | None = None
    timestamp: datetime | None = None
    """Aware; readings without their own time take this one."""
    part_temp_c: float | None = None
    """A part temperature the file states directly (before any temperature characteristic)."""
    air_temp_c: float | None = None
    temp_line: int = 0
    """Line of `part_temp_c` / `air_temp_c` (for a row error)."""
    flags: int = 0
    """Physics flags every record of the part carries (e.g. TIMESTAMP_FROM_FILE)."""


@dataclass(frozen=True)
class Reading:
    """One measured value of a characteristic on a part, in the characteristic's unit."""

    characteristic: Characteristic
    part: Part
    value: float
    line: int
    field: str = "value"
    """The file's name of the value's field (a row error names it: `K0001/3`, `actual`, `Value`)."""
    timestamp: datetime | None = None
    """Aware; None: the part's."""
    machine_id: str | None = None
    """None: the part's."""


@dataclass
class _PartTemps:
    part: list[float] = field(default_factory=list)
    air: list[float] = field(default_factory=list)
    error: RowError | None = None


def safe_name(text: str, fallback: str) -> str:
    """`text` with every character outside [A-Za-z0-9_.-] replaced by `_`, at most 64 characters
    (`fallback` when nothing is left)."""
    name = _SAFE_NAME.sub("_", text.strip())[:MAX_NAME]
    return name if name.strip("_") else fallback


def _feature_names(characteristics: Sequence[Characteristic]) -> dict[int, str]:
    """Feature name of each characteristic (by id()), made safe; names two characteristics would
    share get `_<number>` appended."""
    base = {id(c): safe_name(c.description, f"char_{safe_name(c.number, '0')}") for c in characteristics}
    counts: dict[str, int] = {}
    for name in base.values():
        counts[name] = counts.get(name, 0) + 1
    out: dict[int, str] = {}
    for c in characteristics:
        name = base[id(c)]
        if counts[name] > 1:
            suffix = "_" + safe_name(c.number, "0")
            name = name[: MAX_NAME - len(suffix)] + suffix
        out[id(c)] = name
    return out


def is_temperature(characteristic: Characteristic, settings: IngestSettings) -> bool:
    """Whether the characteristic is a temperature (its unit, or its description)."""
    unit = characteristic.unit.strip().lower()
    return unit in TEMPERATURE_UNITS or bool(settings.inputs.part_temp_regex.search(characteristic.description))


def to_celsius(value: float, unit: str) -> float:
    """A temperature in `unit` (a TEMPERATURE_UNITS spelling; other units count as degC) in degC."""
    unit = unit.strip().lower()
    if unit in ("°f", "degf"):
        return (value - 32.0) * 5.0 / 9.0
    if unit == "k":
        return value - 273.15
    return value


class RowBuilder:
    """Turns Readings into ValidRows and RowErrors (see the module docstring); one per source,
    keeping the id computer's buffers across files."""

    def __init__(self, settings: IngestSettings, source_format: str) -> None:
        self.settings = settings
        self.source_format = source_format
        self.ids = MeasurementIds()

    def build(
        self,
        readings: Sequence[Reading],
        errors: Sequence[RowError],
        source_file: str,
        end_offset: int,
        end_line: int,
    ) -> ParsedChunk | None:
        """The chunk of a whole file: its readings as rows (the temperature readings taken as
        their parts' temperatures), `errors` (the parser's) with the readings' own, in line order.
        None when there is neither a row nor an error."""
        temps = self._temperatures(readings)
        features = _feature_names(list({id(r.characteristic): r.characteristic for r in readings}.values()))
        columns = _Columns()
        row_errors = list(errors)
        for reading in readings:
            if is_temperature(reading.characteristic, self.settings):
                continue
            problem = self._add(reading, temps[id(reading.part)], features[id(reading.characteristic)], columns)
            if problem is not None:
                row_errors.append(problem)
        row_errors += [t.error for t in temps.values() if t.error is not None]
        row_errors.sort(key=lambda e: e.line)
        if not columns.line and not row_errors:
            return None
        return ParsedChunk(self._rows(columns, source_file), row_errors, end_offset, end_line)

    def _temperatures(self, readings: Sequence[Reading]) -> dict[int, _PartTemps]:
        """Part and air temperatures of every part (by id()), from the parts and the readings."""
        inputs = self.settings.inputs
        low, high = self.settings.plausible_min_c, self.settings.plausible_max_c
        temps: dict[int, _PartTemps] = {}
        for reading in readings:
            part = reading.part
            found = temps.get(id(part))
            if found is None:
                found = temps[id(part)] = _PartTemps()
                for value, is_air in ((part.part_temp_c, False), (part.air_temp_c, True)):
                    if value is not None:
                        self._take_temp(found, value, is_air, part.temp_line, "part temperature", low, high)
            c = reading.characteristic
            if is_temperature(c, self.settings):
                is_air = bool(inputs.air_temp_regex.search(c.description))
                if (part.air_temp_c if is_air else part.part_temp_c) is not None:
                    continue  # the temperature the file states directly comes first
                name = f"{reading.field} ({c.description})"
                self._take_temp(found, to_celsius(reading.value, c.unit), is_air, reading.line, name, low, high)
        return temps

    @staticmethod
    def _take_temp(
        temps: _PartTemps, value: float, is_air: bool, line: int, name: str, low: float, high: float
    ) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            if temps.error is None:
                temps.error = RowError(
                    line, name, f"temperature {value!r} degC outside the plausible range {low:g}..{high:g} degC"
                )
            return
        (temps.air if is_air else temps.part).append(value)

    def _add(self, reading: Reading, temps: _PartTemps, feature: str, out: _Columns) -> RowError | None:
        """Append `reading` to `out`; the RowError instead when it cannot be a row."""
        c = reading.characteristic
        settings = self.settings
        if temps.error is not None:
            return RowError(reading.line, reading.field, f"its part's temperature is invalid (line {temps.error.line})")
        unit = c.unit.strip().lower()
        if unit in LENGTH_UNITS_MM:
            scale, record_unit = LENGTH_UNITS_MM[unit], "mm"
        elif unit in ANGLE_UNITS_DEG:
            scale, record_unit = ANGLE_UNITS_DEG[unit], "deg"
        else:
            return RowError(c.line, "unit", f"unknown unit {c.unit!r} of characteristic {c.description!r}")
        if c.nominal is None:
            return RowError(c.line, c.field, f"characteristic {c.description!r} has no nominal value")
        limit = settings.max_length_mm
        value, nominal = reading.value * scale, c.nominal * scale
        lower = math.nan if c.lower is None else c.lower * scale
        upper = math.nan if c.upper is None else c.upper * scale
        if not math.isfinite(value):
            return RowError(reading.line, reading.field, f"not a finite number: {reading.value!r}")
        if abs(value) > limit:
            return RowError(reading.line, reading.field, f"must be within +-{limit:g} mm, got {value!r} mm")
        for name, number in (("nominal", nominal), ("lower limit", lower), ("upper limit", upper)):
            if math.isinf(number) or abs(number) > limit or (name == "nominal" and math.isnan(number)):
                return RowError(c.line, c.field, f"{name} of {c.description!r} invalid: {number!r}")
        if lower > upper:
            return RowError(c.line, c.field, f"lower limit {lower!r} above upper limit {upper!r} of {c.description!r}")
        moment = reading.timestamp or reading.part.timestamp
        if moment is None:
            return RowError(reading.line, reading.field, "no date and time for this value")
        part = reading.part
        machine = reading.machine_id or part.machine_id
        catalogue = settings.inputs.part(part.part_number)
        material = (catalogue.material or settings.default_material).strip().upper()
        flags = part.flags
        if temps.part:
            part_temp, temp_u = sum(temps.part) / len(temps.part), math.nan
        else:
            part_temp, temp_u = settings.inputs.assumed_temp_c, settings.inputs.assumed_temp_u_k
            flags |= Flag.TEMPERATURE_ASSUMED
        if record_unit == "deg":
            compensation = Compensation.NONE
        elif settings.inputs.compensated_by_source(part.part_number):
            compensation = Compensation.SOURCE
        else:
            compensation = Compensation.GATEWAY
        symmetric = c.lower is not None and c.upper is not None and upper > 0 and lower == -upper
        out.line.append(reading.line)
        out.timestamp.append(moment)
        out.machine_id.append(safe_name(machine, settings.inputs.machine_id) if machine else settings.inputs.machine_id)
        out.part_id.append(part.part_id)
        out.feature.append(feature)
        out.material.append(material)
        out.floats.append(
            (
                nominal,
                upper if symmetric else math.nan,
                value,
                part_temp,
                sum(temps.air) / len(temps.air) if temps.air else math.nan,
                lower,
                upper,
                temp_u,
            )
        )
        out.compensation.append(int(compensation))
        out.flags.append(int(flags))
        out.unit.append(record_unit)
        return None

    def _rows(self, columns: _Columns, source_file: str) -> ValidRows:
        size = len(columns.line)
        if not size:
            return empty_rows()
        timestamps = [canonical_timestamp(t) for t in columns.timestamp]
        stamps_ns = np.array([_unix_ns(t) for t in columns.timestamp], dtype=np.int64)
        materials = self.settings.materials
        floats = np.array(columns.floats, dtype=np.float64).reshape(size, 8).T
        nominal, tolerance, measured, part_temp, air_temp, lower, upper, temp_u = floats
        return ValidRows(
            line=np.array(columns.line, dtype=np.int64),
            measurement_id=self.ids(columns.machine_id, columns.part_id, columns.feature, timestamps),
            timestamp=timestamps,
            timestamp_ns=stamps_ns,
            machine_id=columns.machine_id,
            part_id=columns.part_id,
            feature=columns.feature,
            material=columns.material,
            cte_per_k=np.array([materials[m].cte_per_k for m in columns.material], dtype=np.float64),
            cte_u_per_k=np.array([materials[m].cte_u_per_k for m in columns.material], dtype=np.float64),
            nominal_mm=nominal.copy(),
            tolerance_mm=tolerance.copy(),
            measured_mm=measured.copy(),
            part_temp_c=part_temp.copy(),
            air_temp_c=air_temp.copy(),
            scale_temp_c=np.full(size, math.nan),
            lower_tol_mm=lower.copy(),
            upper_tol_mm=upper.copy(),
            part_temp_u_k=temp_u.copy(),
            compensation=np.array(columns.compensation, dtype=np.int8),
            flags=np.array(columns.flags, dtype=np.int32),
            unit=columns.unit,
            source_format=[self.source_format] * size,
            source_file=[source_file] * size,
        )


@dataclass
class _Columns:
    line: list[int] = field(default_factory=list)
    timestamp: list[datetime] = field(default_factory=list)
    machine_id: list[str] = field(default_factory=list)
    part_id: list[str] = field(default_factory=list)
    feature: list[str] = field(default_factory=list)
    material: list[str] = field(default_factory=list)
    floats: list[tuple[float, ...]] = field(default_factory=list)
    """nominal, tolerance, measured, part temp, air temp, lower, upper, u(T) per row."""
    compensation: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _unix_ns(moment: datetime) -> int:
    """Unix time of an aware datetime in nanoseconds (exact: no float on the way)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
