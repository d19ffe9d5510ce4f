"""What the capability monitor shows: the `/api/v1/capability` document, the `/health` section and
the Prometheus gauges (docs/capability.md). Undefined figures (NaN) are JSON null."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cmm_twin.gateway.quality.monitor import CharacteristicReport, QualityMonitor
from cmm_twin.physics.capability import Capability

DIGITS = 6


def _number(value: float) -> float | None:
    return round(value, DIGITS) if math.isfinite(value) else None


def _capability(c: Capability) -> dict[str, float | None]:
    return {"mean_um": _number(c.mean_um), "s_um": _number(c.s_um), "cp": _number(c.cp), "cpk": _number(c.cpk)}


def characteristic(report: CharacteristicReport) -> dict[str, Any]:
    """One characteristic as JSON: n, window, limits, raw and compensated capability, the thermal
    slope (null for an angle) and the alarm."""
    slope = report.slope
    return {
        "machine_id": report.machine_id,
        "feature": report.feature,
        "unit": report.unit,
        "n": report.n,
        "window": report.window,
        "limits": {"lower_um": _number(report.lower_um), "upper_um": _number(report.upper_um)},
        "raw": _capability(report.raw),
        "compensated": _capability(report.compensated),
        "thermal_slope": None
        if slope is None
        else {
            "um_per_k": _number(slope.slope_um_per_k),
            "stderr_um_per_k": _number(slope.stderr_um_per_k),
            "ci_low": _number(slope.ci_low_um_per_k),
            "ci_high": _number(slope.ci_high_um_per_k),
            "confidence": slope.confidence,
            "n": slope.n,
        },
        "alarm": report.alarm,
    }


def capability_document(monitor: QualityMonitor) -> dict[str, Any]:
    """`GET /api/v1/capability`: the settings, every characteristic by machine and feature, the alarms."""
    settings = monitor.settings
    machines: dict[str, dict[str, Any]] = {}
    alarms = []
    for report in monitor.reports():
        entry = characteristic(report)
        machines.setdefault(report.machine_id, {})[report.feature] = entry
        if report.alarm:
            alarms.append(_alarm(report))
    return {
        "window": settings.window,
        "slope_limit_um_per_k": settings.slope_limit_um_per_k,
        "confidence": settings.confidence,
        "min_samples": settings.min_samples,
        "rule": settings.rule,
        "machines": machines,
        "alarms": alarms,
    }


def _alarm(report: CharacteristicReport) -> dict[str, Any]:
    slope = report.slope
    assert slope is not None
    return {
        "machine_id": report.machine_id,
        "feature": report.feature,
        "slope_um_per_k": _number(slope.slope_um_per_k),
        "ci_low": _number(slope.ci_low_um_per_k),
        "ci_high": _number(slope.ci_high_um_per_k),
        "confidence": slope.confidence,
        "n": slope.n,
    }


def health_section(monitor: QualityMonitor) -> dict[str, Any]:
    """`compensation_health` of /health: `degraded` while any alarm is on, with the alarms."""
    alarms = [_alarm(r) for r in monitor.alarms()]
    return {"status": "degraded" if alarms else "ok", "alarms": alarms}


class QualityCollector(Collector):
    """Gauges read from the monitor at scrape time: cmm_capability_cp / _cpk{machine_id, feature,
    basis=raw|compensated}, cmm_thermal_slope_um_per_k and cmm_thermal_slope_alarm{machine_id, feature}."""

    def __init__(self, monitor: QualityMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["machine_id", "feature", "basis"]
        cp = GaugeMetricFamily("cmm_capability_cp", "Cp of the rolling window (ISO 22514-2)", labels=labels)
        cpk = GaugeMetricFamily("cmm_capability_cpk", "Cpk of the rolling window (ISO 22514-2)", labels=labels)
        n = GaugeMetricFamily("cmm_capability_sample_size", "Values in the rolling window", labels=labels[:2])
        slope = GaugeMetricFamily(
            "cmm_thermal_slope_um_per_k",
            "Slope of the compensated deviation against the part temperature",
            labels=labels[:2],
        )
        alarm = GaugeMetricFamily(
            "cmm_thermal_slope_alarm", "1 while the compensation-health alarm is on", labels=labels[:2]
        )
        for report in self.monitor.reports():
            key = [report.machine_id, report.feature]
            for basis, figures in (("raw", report.raw), ("compensated", report.compensated)):
                cp.add_metric([*key, basis], figures.cp)
                cpk.add_metric([*key, basis], figures.cpk)
            n.add_metric(key, report.n)
            if report.slope is not None:
                slope.add_metric(key, report.slope.slope_um_per_k)
                alarm.add_metric(key, 1.0 if report.alarm else 0.0)
        yield cp
        yield cpk
        yield n
        yield slope
        yield alarm
