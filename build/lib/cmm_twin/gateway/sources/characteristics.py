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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from cmm_twin.gateway.sources.ids import MeasurementIds
from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk, RowError, ValidRows, empty_rows
from cmm_twin.physics.compensation import Compensation
from cmm_twin.physics.materials import Material
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


@dataclass(slots=True, eq=False)
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


@dataclass(slots=True)
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


@dataclass(slots=True, eq=False)
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
        self._counter = 0
        """Numbers the specs and parts of one build (reset per build)."""

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
        None when there is neither a row nor an error.

        What depends only on the characteristic (unit, nominal, limits) or only on the part
        (temperatures, material, compensation, machine) is settled once per characteristic and
        part; each reading adds only its value."""
        self._counter = 0
        specs: dict[int, _Spec | RowError | None] = {}  # None: a temperature characteristic
        for reading in readings:
            c = reading.characteristic
            if id(c) not in specs:
                specs[id(c)] = None if is_temperature(c, self.settings) else self._spec(c)
        temps = self._temperatures(readings, specs)
        features = _feature_names(list({id(r.characteristic): r.characteristic for r in readings}.values()))
        parts: dict[int, _PartRow | RowError] = {}
        columns = _Columns()
        row_errors = list(errors)
        limit = self.settings.max_length_mm
        for reading in readings:
            c = reading.characteristic
            spec = specs[id(c)]
            if spec is None:
                continue
            part = parts.get(id(reading.part))
            if part is None:
                part = parts[id(reading.part)] = self._part_row(reading.part, temps[id(reading.part)])
            if isinstance(part, RowError):
                row_errors.append(RowError(reading.line, reading.field, part.reason))
                continue
            if isinstance(spec, RowError):
                row_errors.append(spec)
                continue
            value = reading.value * spec.scale
            machine_id = self._machine(reading.machine_id) if reading.machine_id else part.machine_id
            moment = reading.timestamp or reading.part.timestamp
            reason = None
            if not math.isfinite(value):
                reason = f"not a finite number: {reading.value!r}"
            elif abs(value) > limit:
                reason = f"must be within +-{limit:g} mm, got {value!r} mm"
            elif moment is None:
                reason = "no date and time for this value"
            if reason is not None or moment is None:
                reason = reason or "no date and time for this value"
                row_errors.append(RowError(reading.line, reading.field, reason, machine_id, features[id(c)]))
                continue
            columns.line.append(reading.line)
            columns.timestamp.append(moment)
            columns.machine_id.append(machine_id)
            columns.part_id.append(part.part_id)
            columns.feature.append(features[id(c)])
            columns.part_index.append(part.index)
            columns.spec_index.append(spec.index)
            columns.value.append(value)
        row_errors += [t.error for t in temps.values() if t.error is not None]
        row_errors.sort(key=lambda e: e.line)
        if not columns.line and not row_errors:
            return None
        spec_list = [s for s in specs.values() if isinstance(s, _Spec)]
        part_list = [p for p in parts.values() if isinstance(p, _PartRow)]
        return ParsedChunk(self._rows(columns, spec_list, part_list, source_file), row_errors, end_offset, end_line)

    def _spec(self, c: Characteristic) -> _Spec | RowError:
        """The characteristic's specification in mm (or degrees), checked; the RowError of the
        first problem instead."""
        unit = c.unit.strip().lower()
        if unit in LENGTH_UNITS_MM:
            scale, record_unit = LENGTH_UNITS_MM[unit], "mm"
        elif unit in ANGLE_UNITS_DEG:
            scale, record_unit = ANGLE_UNITS_DEG[unit], "deg"
        else:
            return RowError(c.line, "unit", f"unknown unit {c.unit!r} of characteristic {c.description!r}")
        if c.nominal is None:
            return RowError(c.line, c.field, f"characteristic {c.description!r} has no nominal value")
        limit = self.settings.max_length_mm
        nominal = c.nominal * scale
        lower = math.nan if c.lower is None else c.lower * scale
        upper = math.nan if c.upper is None else c.upper * scale
        for name, number in (("nominal", nominal), ("lower limit", lower), ("upper limit", upper)):
            if math.isinf(number) or abs(number) > limit or (name == "nominal" and math.isnan(number)):
                return RowError(c.line, c.field, f"{name} of {c.description!r} invalid: {number!r}")
        if lower > upper:
            return RowError(c.line, c.field, f"lower limit {lower!r} above upper limit {upper!r} of {c.description!r}")
        symmetric = c.lower is not None and c.upper is not None and upper > 0 and lower == -upper
        return _Spec(self._next_index(), scale, record_unit, nominal, upper if symmetric else math.nan, lower, upper)

    def _part_row(self, part: Part, temps: _PartTemps) -> _PartRow | RowError:
        """What every record of `part` shares; a RowError (its line unused) when its temperature is invalid."""
        settings = self.settings
        if temps.error is not None:
            return RowError(0, None, f"its part's temperature is invalid (line {temps.error.line})")
        material = (settings.inputs.part(part.part_number).material or settings.default_material).strip().upper()
        flags = part.flags
        if temps.part:
            part_temp, temp_u = sum(temps.part) / len(temps.part), math.nan
        else:
            part_temp, temp_u = settings.inputs.assumed_temp_c, settings.inputs.assumed_temp_u_k
            flags |= Flag.TEMPERATURE_ASSUMED
        source = settings.inputs.compensated_by_source(part.part_number)
        return _PartRow(
            self._next_index(),
            part.part_id,
            self._machine(part.machine_id) if part.machine_id else settings.inputs.machine_id,
            material,
            part_temp,
            sum(temps.air) / len(temps.air) if temps.air else math.nan,
            temp_u,
            int(Compensation.SOURCE if source else Compensation.GATEWAY),
            int(flags),
        )

    def _machine(self, raw: str) -> str:
        return safe_name(raw, self.settings.inputs.machine_id)

    def _next_index(self) -> int:
        self._counter += 1
        return self._counter - 1

    def _temperatures(
        self, readings: Sequence[Reading], specs: Mapping[int, _Spec | RowError | None]
    ) -> dict[int, _PartTemps]:
        """Part and air temperatures of every part (by id()), from the parts and the readings
        of temperature characteristics (None in `specs`)."""
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
            if specs[id(c)] is None:
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

    def _rows(self, columns: _Columns, specs: list[_Spec], parts: list[_PartRow], source_file: str) -> ValidRows:
        size = len(columns.line)
        if not size:
            return empty_rows()
        stamps: dict[datetime, tuple[str, int]] = {}
        for moment in columns.timestamp:
            if moment not in stamps:
                stamps[moment] = (canonical_timestamp(moment), _unix_ns(moment))
        timestamps = [stamps[t][0] for t in columns.timestamp]
        materials = self.settings.materials
        # per characteristic: nominal, tolerance, lower, upper; per part: temperatures, u(T), codes
        spec_rows = np.empty(self._counter, dtype=np.intp)
        spec_rows[[s.index for s in specs]] = np.arange(len(specs))
        spec_floats = np.array([(s.nominal, s.tolerance, s.lower, s.upper) for s in specs], dtype=np.float64)
        spec_floats = spec_floats.reshape(len(specs), 4)[spec_rows[np.array(columns.spec_index, dtype=np.intp)]]
        part_rows = np.empty(self._counter, dtype=np.intp)
        part_rows[[p.index for p in parts]] = np.arange(len(parts))
        row_parts = part_rows[np.array(columns.part_index, dtype=np.intp)]
        part_floats = np.array(
            [
                (
                    p.part_temp_c,
                    p.air_temp_c,
                    p.temp_u_k,
                    materials[p.material].cte_per_k,
                    materials[p.material].cte_u_per_k,
                )
                for p in parts
            ],
            dtype=np.float64,
        ).reshape(len(parts), 5)[row_parts]
        compensation = np.array([p.compensation for p in parts], dtype=np.int8)[row_parts]
        angles = np.array([s.unit == "deg" for s in specs], dtype=bool)[
            spec_rows[np.array(columns.spec_index, dtype=np.intp)]
        ]
        compensation[angles] = Compensation.NONE
        units_by_spec = {s.index: s.unit for s in specs}
        return ValidRows(
            line=np.array(columns.line, dtype=np.int64),
            measurement_id=self.ids(columns.machine_id, columns.part_id, columns.feature, timestamps),
            timestamp=timestamps,
            timestamp_ns=np.array([stamps[t][1] for t in columns.timestamp], dtype=np.int64),
            machine_id=columns.machine_id,
            part_id=columns.part_id,
            feature=columns.feature,
            material=[parts[i].material for i in row_parts.tolist()],
            cte_per_k=np.ascontiguousarray(part_floats[:, 3]),
            cte_u_per_k=np.ascontiguousarray(part_floats[:, 4]),
            nominal_mm=np.ascontiguousarray(spec_floats[:, 0]),
            tolerance_mm=np.ascontiguousarray(spec_floats[:, 1]),
            measured_mm=np.array(columns.value, dtype=np.float64),
            part_temp_c=np.ascontiguousarray(part_floats[:, 0]),
            air_temp_c=np.ascontiguousarray(part_floats[:, 1]),
            scale_temp_c=np.full(size, math.nan),
            lower_tol_mm=np.ascontiguousarray(spec_floats[:, 2]),
            upper_tol_mm=np.ascontiguousarray(spec_floats[:, 3]),
            part_temp_u_k=np.ascontiguousarray(part_floats[:, 2]),
            compensation=compensation,
            flags=np.array([p.flags for p in parts], dtype=np.int32)[row_parts],
            unit=[units_by_spec[i] for i in columns.spec_index],
            source_format=[self.source_format] * size,
            source_file=[source_file] * size,
        )


@dataclass(frozen=True, slots=True)
class _Spec:
    """A characteristic's specification as records carry it (mm, or degrees for an angle)."""

    index: int
    scale: float
    unit: str
    nominal: float
    tolerance: float
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class _PartRow:
    """What every record of one part shares."""

    index: int
    part_id: str
    machine_id: str
    material: str
    part_temp_c: float
    air_temp_c: float
    temp_u_k: float
    compensation: int
    flags: int


@dataclass
class _Columns:
    line: list[int] = field(default_factory=list)
    timestamp: list[datetime] = field(default_factory=list)
    machine_id: list[str] = field(default_factory=list)
    part_id: list[str] = field(default_factory=list)
    feature: list[str] = field(default_factory=list)
    part_index: list[int] = field(default_factory=list)
    spec_index: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)


def _cte(material: Material) -> tuple[float, float]:
    return material.cte_per_k, material.cte_u_per_k


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _unix_ns(moment: datetime) -> int:
    """Unix time of an aware datetime in nanoseconds (exact: no float on the way)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000
