"""The capability monitor: rolling windows per machine and characteristic, the alarm and its flag,
the `[quality]` table, and the rebuild from a real embedded historian."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.config import load_config
from cmm_twin.gateway.quality import QualityMonitor, QualitySettings
from cmm_twin.gateway.quality.history import newest_records, rebuild
from cmm_twin.gateway.quality.report import capability_document, health_section
from cmm_twin.gateway.sinks.historian.sqlite import HistoryStore
from cmm_twin.physics.capability import capability, thermal_slope
from cmm_twin.physics.thermal import Flag
from cmm_twin.records import RecordBatch

SLOPE_FLAG = int(Flag.RESIDUAL_THERMAL_SLOPE)
T0_NS = 1_700_000_000 * 10**9


SAMPLES_20 = QualitySettings(min_samples=20)
"""The defaults with an alarm possible from 20 values (the default waits for 80), for short series."""


def batch(
    temps_c: Sequence[float],
    deviations_um: Sequence[float],
    *,
    machine: str = "CMM-01",
    feature: str = "bore",
    first: int = 0,
    raw_um: Sequence[float] | None = None,
    unit: str = "mm",
    lower_mm: float = math.nan,
    upper_mm: float = math.nan,
    tolerance_mm: float = 0.01,
    flags: int = 0,
) -> RecordBatch:
    """Records of one characteristic (nominal 50 mm) numbered from `first`: deviations as given,
    raw deviations as given (default: equal)."""
    n = len(temps_c)
    deviation = np.asarray(deviations_um, dtype=np.float64)
    raw = deviation if raw_um is None else np.asarray(raw_um, dtype=np.float64)
    return RecordBatch.with_blanks(
        n,
        {
            "measurement_id": [f"{machine}-{feature}-{first + i}" for i in range(n)],
            "timestamp_ns": np.array([T0_NS + (first + i) * 10**9 for i in range(n)], dtype=np.int64),
            "machine_id": [machine] * n,
            "feature": [feature] * n,
            "part_id": [f"P{first + i}" for i in range(n)],
            "material": ["AL6061"] * n,
            "verdict": np.zeros(n, dtype=np.int8),
            "nominal_mm": np.full(n, 50.0),
            "measured_mm": 50.0 + raw / 1000.0,
            "compensated_mm": 50.0 + deviation / 1000.0,
            "deviation_um": deviation,
            "part_temp_c": np.asarray(temps_c, dtype=np.float64),
            "tolerance_mm": np.full(n, tolerance_mm),
            "lower_tol_mm": np.full(n, lower_mm),
            "upper_tol_mm": np.full(n, upper_mm),
            "unit": [unit] * n,
            "flags": np.full(n, flags, dtype=np.int32),
        },
    )


def trending(n: int, slope: float, first: int = 0, **kwargs: object) -> RecordBatch:
    """n records whose deviation follows `slope` um/K over 18..24 degC with +-0.3 um alternating noise."""
    temps = 18.0 + 6.0 * np.arange(first, first + n) % 7 / 6.0
    noise = np.where(np.arange(first, first + n) % 2 == 0, 0.3, -0.3)
    return batch(list(temps), list(slope * (temps - 20.0) + noise), first=first, **kwargs)  # type: ignore[arg-type]


def test_capability_of_the_window_matches_the_formulas() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    raw = [3.0, 5.0, 7.0, 9.0, 11.0]
    monitor.observe(batch([20.0, 21.0, 22.0, 23.0, 24.0], [1.0, 2.0, 3.0, 4.0, 5.0], raw_um=raw))
    (report,) = monitor.reports()
    assert (report.machine_id, report.feature, report.unit, report.n, report.window) == ("CMM-01", "bore", "mm", 5, 125)
    assert (report.lower_um, report.upper_um) == (-10.0, 10.0)  # +-tolerance
    assert report.compensated == capability([1.0, 2.0, 3.0, 4.0, 5.0], -10.0, 10.0)
    expected = capability(raw, -10.0, 10.0)  # raw = (measured - nominal) x 1000, rounded in floating point
    assert report.raw.n == 5
    assert (report.raw.mean_um, report.raw.s_um) == pytest.approx((7.0, expected.s_um), rel=1e-9)
    assert (report.raw.cp, report.raw.cpk) == pytest.approx((expected.cp, expected.cpk), rel=1e-9)
    assert report.slope == thermal_slope([1.0, 2.0, 3.0, 4.0, 5.0], [20.0, 21.0, 22.0, 23.0, 24.0])
    assert not report.alarm  # 5 values, fewer than min_samples


def test_the_window_keeps_the_newest_values_and_the_newest_limits() -> None:
    monitor = QualityMonitor(QualitySettings(window=4, min_samples=3))
    monitor.observe(batch([20.0] * 3, [100.0, 100.0, 100.0], first=0))
    monitor.observe(batch([20.0, 21.0, 22.0, 23.0], [1.0, 2.0, 3.0, 4.0], first=3, lower_mm=-0.002, upper_mm=0.005))
    (report,) = monitor.reports()
    assert report.n == 4
    assert report.compensated.mean_um == pytest.approx(2.5)  # the 100 um values left the window
    assert (report.lower_um, report.upper_um) == pytest.approx((-2.0, 5.0))
    monitor.observe(batch([20.0] * 9, list(range(9)), first=7))  # a batch longer than the window
    assert monitor.reports()[0].compensated.mean_um == pytest.approx(6.5)  # 5, 6, 7, 8


def test_a_record_seen_before_is_not_counted_twice() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    records = batch([20.0, 21.0, 22.0], [1.0, 2.0, 6.0])
    monitor.observe(records)
    monitor.observe(batch([20.0, 21.0, 22.0], [1.0, 2.0, 6.0]))  # the same ids (a chunk read again)
    assert monitor.reports()[0].n == 3
    assert monitor.reports()[0].compensated.mean_um == pytest.approx(3.0)


def test_alarm_flags_the_records_of_its_characteristic_only() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    quiet = trending(19, 1.2)
    monitor.observe(quiet)
    assert not monitor.alarms()  # 19 < min_samples 20
    assert not (quiet.flags & SLOPE_FLAG).any()
    mixed = RecordBatch.concat([trending(5, 1.2, first=19), trending(30, 0.0, feature="flat")])
    monitor.observe(mixed)
    (alarm,) = monitor.alarms()
    assert (alarm.machine_id, alarm.feature, alarm.n) == ("CMM-01", "bore", 24)
    assert alarm.slope is not None and alarm.slope.slope_um_per_k == pytest.approx(1.2, abs=0.1)
    flagged = (mixed.flags & SLOPE_FLAG) != 0
    assert flagged.tolist() == [f == "bore" for f in mixed.feature]  # the arrivals that raised it, in place
    assert health_section(monitor) == {
        "status": "degraded",
        "alarms": [
            {
                "machine_id": "CMM-01",
                "feature": "bore",
                "slope_um_per_k": round(alarm.slope.slope_um_per_k, 6),
                "ci_low": round(alarm.slope.ci_low_um_per_k, 6),
                "ci_high": round(alarm.slope.ci_high_um_per_k, 6),
                "confidence": 0.95,
                "n": 24,
            }
        ],
    }
    # The same characteristic on another machine is another window: no alarm there.
    other = trending(25, 0.0, machine="CMM-02")
    monitor.observe(other)
    assert [(r.machine_id, r.feature) for r in monitor.alarms()] == [("CMM-01", "bore")]
    assert not (other.flags & SLOPE_FLAG).any()


def test_the_alarm_clears_when_the_trend_leaves_the_window() -> None:
    monitor = QualityMonitor(QualitySettings(window=30, min_samples=20))
    monitor.observe(trending(30, 1.5))
    assert monitor.alarms()
    later = trending(30, 0.0, first=30)
    monitor.observe(later)
    assert not monitor.alarms()
    assert not (later.flags & SLOPE_FLAG).any()
    assert health_section(monitor) == {"status": "ok", "alarms": []}


def test_observe_without_flag_leaves_records_unchanged() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    records = trending(30, 2.0)
    monitor.observe(records, flag=False)
    assert monitor.alarms()
    assert not (records.flags & SLOPE_FLAG).any()


def test_angles_get_capability_but_no_slope() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    monitor.observe(trending(40, 3.0, feature="angle_a", unit="deg", lower_mm=-0.05, upper_mm=0.1))
    (report,) = monitor.reports()
    assert report.slope is None and not report.alarm
    assert report.compensated.n == 40 and math.isfinite(report.compensated.cpk)
    doc = capability_document(monitor)
    entry = doc["machines"]["CMM-01"]["angle_a"]
    assert entry["thermal_slope"] is None
    assert entry["limits"] == {"lower_um": -50.0, "upper_um": 100.0}
    assert doc["alarms"] == []


def test_assumed_temperatures_do_not_count_for_the_slope() -> None:
    monitor = QualityMonitor(SAMPLES_20)
    monitor.observe(trending(30, 2.0, flags=int(Flag.TEMPERATURE_ASSUMED)))
    (report,) = monitor.reports()
    assert report.n == 30 and report.slope is not None
    assert report.slope.n == 0 and not report.slope.defined and not report.alarm


def test_capability_document_shape_and_nulls() -> None:
    monitor = QualityMonitor()
    monitor.observe(batch([20.0], [1.0], tolerance_mm=math.nan, upper_mm=0.004))
    doc = capability_document(monitor)
    settings = [doc[k] for k in ("window", "slope_limit_um_per_k", "confidence", "min_samples", "rule")]
    assert settings == [125, 0.5, 0.95, 80, "beyond_limit"]
    entry = doc["machines"]["CMM-01"]["bore"]
    assert entry["n"] == 1 and entry["window"] == 125 and entry["alarm"] is False
    assert entry["limits"] == {"lower_um": None, "upper_um": 4.0}
    assert entry["raw"] == {"mean_um": 1.0, "s_um": None, "cp": None, "cpk": None}
    assert entry["thermal_slope"] == {
        "um_per_k": None,
        "stderr_um_per_k": None,
        "ci_low": None,
        "ci_high": None,
        "confidence": 0.95,
        "n": 1,
    }


def write_toml(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return ["--data-dir", str(tmp_path / "data"), "--config", str(path)]


def test_quality_table_is_read(tmp_path: Path) -> None:
    table = "[quality]\nwindow = 50\nslope_limit_um_per_k = 0.8\nconfidence = 0.99\nmin_samples = 10\n"
    args = write_toml(tmp_path, table + 'rule = "significant"\n')
    assert load_config(args, {}).quality == QualitySettings(50, 0.8, 0.99, 10, "significant")
    default = load_config(["--data-dir", str(tmp_path)], {}).quality
    assert default == QualitySettings(125, 0.5, 0.95, 80, "beyond_limit")


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ("window = 2", "quality.window", "expected an integer in [3, 100000], got 2"),
        ("window = 12.5", "quality.window", "expected an integer"),
        ("slope_limit_um_per_k = 0", "quality.slope_limit_um_per_k", "must be > 0 um/K"),
        ('slope_limit_um_per_k = "half"', "quality.slope_limit_um_per_k", "expected a finite number"),
        ("confidence = 95", "quality.confidence", "expected a level in [0.5, 1)"),
        ("min_samples = 200", "quality.min_samples", "must not exceed quality.window (125)"),
        ("windw = 10", "quality.windw", "unknown key"),
        ('rule = "loose"', "quality.rule", "expected beyond_limit or significant, got 'loose'"),
    ],
)
def test_bad_quality_settings_name_the_key(tmp_path: Path, table: str, key: str, reason: str) -> None:
    args = write_toml(tmp_path, f"[quality]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(args, {})
    assert caught.value.key.endswith(key)
    assert reason in caught.value.reason


def test_rebuild_from_the_embedded_historian(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = HistoryStore(path)
    try:
        first = trending(30, 1.5)
        QualityMonitor(SAMPLES_20).observe(first)  # flagged as the gateway would
        store.write(first)
        store.write(trending(10, 0.0, feature="flat", machine="CMM-02"))
        store.write(trending(5, 1.5, first=30))
    finally:
        store.close()
    newest = newest_records(path, 20)
    assert len(newest) == 30  # the newest 20 of the bore, the 10 of flat
    assert sorted(set(zip(newest.machine_id, newest.feature, strict=True))) == [("CMM-01", "bore"), ("CMM-02", "flat")]
    assert np.all(np.diff(newest.timestamp_ns) >= 0)  # oldest first
    bore = [i for i, f in enumerate(newest.feature) if f == "bore"]
    assert [newest.measurement_id[i] for i in bore] == [f"CMM-01-bore-{k}" for k in range(15, 35)]

    live = QualityMonitor(QualitySettings(window=20, min_samples=20))
    live.observe(RecordBatch.concat([trending(30, 1.5), trending(10, 0.0, feature="flat", machine="CMM-02")]))
    live.observe(trending(5, 1.5, first=30))
    restarted = QualityMonitor(QualitySettings(window=20, min_samples=20))
    assert rebuild(restarted, path) == 30
    assert restarted.reports() == live.reports()
    assert [(a.machine_id, a.feature) for a in restarted.alarms()] == [("CMM-01", "bore")]


def test_rebuild_without_a_store_or_from_a_broken_one(tmp_path: Path) -> None:
    monitor = QualityMonitor(SAMPLES_20)
    assert rebuild(monitor, tmp_path / "absent.sqlite") == 0
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"not a database at all" * 100)
    assert rebuild(monitor, broken) == 0
    assert monitor.reports() == []
