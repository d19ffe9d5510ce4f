"""The capability monitor: per machine and characteristic, a rolling window of the newest values
and what they say (docs/capability.md).

For each (machine_id, feature) it keeps the last `window` values of the raw deviation
((measured - nominal) in um), the compensated deviation (the record's `deviation_um`) and the
part temperature, and the newest limits. After every batch it recomputes, for the
characteristics the batch touched, Cp and Cpk on raw and on compensated values
(`cmm_twin.physics.capability`), and for lengths (unit mm) the slope of the compensated deviation
against the part temperature and the compensation-health alarm. The records of every
characteristic whose alarm is on after the batch (those whose arrival raised it included) get the
flag `residual_thermal_slope`, in place, before they are committed.

A part temperature the source did not give (flag `temperature_assumed`) says nothing about a
trend: such values count for capability, not for the slope. Angles (unit deg) get capability but
no slope. A record whose `measurement_id` is already in its window (a chunk read again after a
failed commit) is not counted twice.

`observe` runs on the state thread (the committer), the readers (HTTP, metrics, OPC UA) on the
event loop: a lock guards the windows, and readers get immutable `CharacteristicReport`s.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.quality.settings import QualitySettings
from cmm_twin.physics.capability import Capability, ThermalSlope, capability_rows, slope_alarms, thermal_slope_rows
from cmm_twin.physics.compensation import UM_PER_MM
from cmm_twin.physics.thermal import Flag
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
Key = tuple[str, str]
"""(machine_id, feature)."""


@dataclass(frozen=True)
class CharacteristicReport:
    """What the window of one characteristic says (immutable: safe to hand to any thread)."""

    machine_id: str
    feature: str
    unit: str
    n: int
    window: int
    lower_um: float
    """Lower limit as a deviation from the nominal (NaN: none); for an angle in millidegrees."""
    upper_um: float
    raw: Capability
    compensated: Capability
    slope: ThermalSlope | None
    """None for an angle (no thermal expansion, no slope)."""
    alarm: bool


@dataclass
class _Window:
    """The ring of one characteristic."""

    size: int
    raw_um: NDArray[np.float64] = field(init=False)
    compensated_um: NDArray[np.float64] = field(init=False)
    part_temp_c: NDArray[np.float64] = field(init=False)
    ids: deque[str] = field(init=False)
    id_set: set[str] = field(default_factory=set)
    head: int = 0
    count: int = 0
    lower_um: float = math.nan
    upper_um: float = math.nan
    unit: str = "mm"

    def __post_init__(self) -> None:
        self.raw_um = np.full(self.size, np.nan)
        self.compensated_um = np.full(self.size, np.nan)
        self.part_temp_c = np.full(self.size, np.nan)
        self.ids = deque(maxlen=self.size)

    def push(
        self, ids: list[str], raw: NDArray[np.float64], comp: NDArray[np.float64], temp: NDArray[np.float64]
    ) -> None:
        """Append values (oldest first), dropping the oldest beyond `size`."""
        for measurement_id in ids:
            if len(self.ids) == self.size:
                self.id_set.discard(self.ids[0])
            self.ids.append(measurement_id)
            self.id_set.add(measurement_id)
        k = len(ids)
        if k > self.size:
            raw, comp, temp, k = raw[-self.size :], comp[-self.size :], temp[-self.size :], self.size
        where = (self.head + np.arange(k)) % self.size
        self.raw_um[where] = raw
        self.compensated_um[where] = comp
        self.part_temp_c[where] = temp
        self.head = (self.head + k) % self.size
        self.count = min(self.size, self.count + k)

    def oldest_first(self, values: FloatArray) -> FloatArray:
        """One of the rings in arrival order (oldest first): a window rebuilt from the store (in
        time order) then gives the same figures as the one it replaces (float sums depend on the order)."""
        return np.roll(values, -self.head) if self.count == self.size else values


class QualityMonitor:
    """Rolling capability and compensation health per machine and characteristic (see the module docstring)."""

    def __init__(self, settings: QualitySettings | None = None) -> None:
        self.settings = settings or QualitySettings()
        self._lock = threading.Lock()
        self._windows: dict[Key, _Window] = {}
        self._reports: dict[Key, CharacteristicReport] = {}

    def observe(self, records: RecordBatch, flag: bool = True) -> None:
        """Take `records` into the windows and recompute what they touched (all characteristics
        at once, vectorised); with `flag`, set `residual_thermal_slope` on the records of every
        characteristic whose alarm is now on."""
        if not len(records):
            return
        groups = _groups(records)
        raw = (records.measured_mm - records.nominal_mm) * UM_PER_MM
        lower, upper = _limits_um(records)
        temp = np.where(records.flags & Flag.TEMPERATURE_ASSUMED, np.nan, records.part_temp_c)
        alarmed: list[NDArray[np.intp]] = []
        raised: list[CharacteristicReport] = []
        with self._lock:
            windows = [self._take(key, rows, records, raw, temp, lower, upper) for key, rows in groups]
            reports = self._reports_of([key for key, _ in groups], windows)
            for (key, rows), report in zip(groups, reports, strict=True):
                before = self._reports.get(key)
                self._reports[key] = report
                if report.alarm:
                    alarmed.append(rows)
                    if before is None or not before.alarm:
                        raised.append(report)
                elif before is not None and before.alarm:
                    log.info("compensation health: %s %s back to normal", key[0], key[1])
        if flag and alarmed:
            records.flags[np.concatenate(alarmed)] |= np.int32(Flag.RESIDUAL_THERMAL_SLOPE)
        for report in raised:
            assert report.slope is not None
            log.warning(
                "compensation health: %s %s: compensated deviation trends %+.3f um/K with the part temperature "
                "(%g %% CI %+.3f..%+.3f, n %d): check the material's CTE, the temperature sensor and the part "
                "catalogue; its records are flagged residual_thermal_slope",
                report.machine_id,
                report.feature,
                report.slope.slope_um_per_k,
                100 * report.slope.confidence,
                report.slope.ci_low_um_per_k,
                report.slope.ci_high_um_per_k,
                report.slope.n,
            )

    def _take(
        self,
        key: Key,
        rows: NDArray[np.intp],
        records: RecordBatch,
        raw: FloatArray,
        temp: FloatArray,
        lower: FloatArray,
        upper: FloatArray,
    ) -> _Window:
        """Push the rows of one characteristic into its window (made on first sight)."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(self.settings.window)
        last = int(rows[-1])
        window.lower_um, window.upper_um = float(lower[last]), float(upper[last])
        window.unit = records.unit[last]
        ids = records.measurement_id
        keep = [i for i in rows[-self.settings.window :].tolist() if ids[i] not in window.id_set]
        if keep:
            index = np.asarray(keep, dtype=np.intp)
            window.push([ids[i] for i in keep], raw[index], records.deviation_um[index], temp[index])
        return window

    def _reports_of(self, keys: list[Key], windows: list[_Window]) -> list[CharacteristicReport]:
        """The reports of these windows, computed together (one NumPy pass over all of them)."""
        settings = self.settings
        lower = np.array([w.lower_um for w in windows])
        upper = np.array([w.upper_um for w in windows])
        compensated = np.stack([w.oldest_first(w.compensated_um) for w in windows])
        raw = capability_rows(np.stack([w.oldest_first(w.raw_um) for w in windows]), lower, upper)
        comp = capability_rows(compensated, lower, upper)
        temps = np.stack([w.oldest_first(w.part_temp_c) for w in windows])
        slopes = thermal_slope_rows(compensated, temps, settings.confidence)
        held = np.array([(r := self._reports.get(key)) is not None and r.alarm for key in keys], dtype=np.bool_)
        alarms = slope_alarms(slopes, settings.slope_limit_um_per_k, settings.min_samples, settings.rule, held).tolist()
        reports = []
        for i, (key, window) in enumerate(zip(keys, windows, strict=True)):
            length = window.unit == "mm"  # angles: no thermal expansion, no slope
            reports.append(
                CharacteristicReport(
                    *key,
                    window.unit,
                    window.count,
                    window.size,
                    window.lower_um,
                    window.upper_um,
                    raw.row(i),
                    comp.row(i),
                    slopes.row(i) if length else None,
                    bool(alarms[i]) and length,
                )
            )
        return reports

    def reports(self) -> list[CharacteristicReport]:
        """Every characteristic's report, by machine and feature."""
        with self._lock:
            return [self._reports[key] for key in sorted(self._reports)]

    def report(self, machine_id: str, feature: str) -> CharacteristicReport | None:
        """The report of one characteristic, or None when it has not been seen."""
        with self._lock:
            return self._reports.get((machine_id, feature))

    def alarms(self) -> list[CharacteristicReport]:
        """The reports whose alarm is on, by machine and feature."""
        return [r for r in self.reports() if r.alarm]


def _groups(records: RecordBatch) -> list[tuple[Key, NDArray[np.intp]]]:
    """(key, row positions in order) per (machine_id, feature) of `records`."""
    machines, machine_code = np.unique(np.asarray(records.machine_id), return_inverse=True)
    features, feature_code = np.unique(np.asarray(records.feature), return_inverse=True)
    codes = machine_code.astype(np.int64) * len(features) + feature_code
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    out: list[tuple[Key, NDArray[np.intp]]] = []
    for rows in np.split(order, starts[1:]):
        code = int(codes[rows[0]])
        out.append(((str(machines[code // len(features)]), str(features[code % len(features)])), rows))
    return out


def _limits_um(records: RecordBatch) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Lower and upper limits as deviations in um: the signed limits, or +-tolerance when only a
    symmetric tolerance is given; NaN where a side has none."""
    tol = records.tolerance_mm
    lower = np.where(np.isfinite(records.lower_tol_mm), records.lower_tol_mm, -tol)
    upper = np.where(np.isfinite(records.upper_tol_mm), records.upper_tol_mm, tol)
    return lower * UM_PER_MM, upper * UM_PER_MM
