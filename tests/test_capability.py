"""Capability (ISO 22514-2), the thermal slope with its confidence interval, the alarm rule and
Student's t quantile: hand-computed values."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

from cmm_twin.physics.capability import (
    SlopeRows,
    ThermalSlope,
    capability,
    capability_rows,
    regularized_incomplete_beta,
    slope_alarm,
    slope_alarms,
    t_cdf,
    t_quantile,
    thermal_slope,
    thermal_slope_rows,
)

SAMPLE_UM = [1.0, 2.0, 3.0, 4.0, 5.0]
"""mean 3, s = sqrt(2.5) (ddof = 1)."""
S = math.sqrt(2.5)


def test_cp_and_cpk_of_a_two_sided_specification() -> None:
    c = capability(SAMPLE_UM, -5.0, 10.0)
    assert c.n == 5
    assert c.mean_um == 3.0
    assert c.s_um == pytest.approx(S, rel=1e-15)
    assert c.cp == pytest.approx(15.0 / (6.0 * S), rel=1e-14)  # = sqrt(2.5)
    # Cpu = (10 - 3) / (3 s) = 1.4757, Cpl = (3 + 5) / (3 s) = 1.6865: Cpk is the smaller
    assert c.cpk == pytest.approx(7.0 / (3.0 * S), rel=1e-14)
    assert c.cpk == pytest.approx(1.4757295747, rel=1e-9)


def test_cpk_is_negative_when_the_mean_is_outside_the_zone() -> None:
    c = capability(SAMPLE_UM, -10.0, 2.0)
    assert c.cpk == pytest.approx((2.0 - 3.0) / (3.0 * S), rel=1e-14)
    assert c.cpk < 0


def test_a_one_sided_specification_has_no_cp_and_the_one_sides_cpk() -> None:
    upper_only = capability(SAMPLE_UM, math.nan, 10.0)
    assert math.isnan(upper_only.cp)
    assert upper_only.cpk == pytest.approx(7.0 / (3.0 * S), rel=1e-14)  # Cpu
    lower_only = capability(SAMPLE_UM, -5.0, math.nan)
    assert math.isnan(lower_only.cp)
    assert lower_only.cpk == pytest.approx(8.0 / (3.0 * S), rel=1e-14)  # Cpl


@pytest.mark.parametrize(
    ("values", "lower", "upper", "n"),
    [
        ([4.0, 4.0, 4.0], -5.0, 5.0, 3),  # s = 0
        ([4.0], -5.0, 5.0, 1),  # n < 2
        ([], -5.0, 5.0, 0),
        (SAMPLE_UM, math.nan, math.nan, 5),  # no limit at all
    ],
)
def test_undefined_indices_are_nan_never_infinite(values: list[float], lower: float, upper: float, n: int) -> None:
    c = capability(values, lower, upper)
    assert c.n == n
    assert math.isnan(c.cp)
    assert math.isnan(c.cpk)


def test_non_finite_values_are_left_out() -> None:
    c = capability([1.0, math.nan, 2.0, 3.0, math.inf, 4.0, 5.0], -5.0, 10.0)
    assert c.n == 5
    assert c.cp == pytest.approx(S, rel=1e-14)


def test_thermal_slope_hand_computed() -> None:
    # x - 20 = -2..2 (Sxx = 10), y - 3 = [-2, 0, -1, 2, 1] (Sxy = 8): b = 0.8;
    # residuals [-0.4, 0.8, -1, 1.2, -0.6], SSE = 3.6, s^2 = 1.2, se = sqrt(0.12); t(0.975, 3) = 3.182446
    slope = thermal_slope([1.0, 3.0, 2.0, 5.0, 4.0], [18.0, 19.0, 20.0, 21.0, 22.0])
    assert slope.n == 5
    assert slope.slope_um_per_k == pytest.approx(0.8, rel=1e-14)
    assert slope.stderr_um_per_k == pytest.approx(math.sqrt(0.12), rel=1e-13)
    half = 3.182446305284263 * math.sqrt(0.12)
    assert slope.ci_low_um_per_k == pytest.approx(0.8 - half, rel=1e-9)
    assert slope.ci_high_um_per_k == pytest.approx(0.8 + half, rel=1e-9)
    assert slope.confidence == 0.95
    # |b| > 0.5 but the interval [-0.30, 1.90] holds zero: no alarm by either rule
    assert not slope_alarm(slope, 0.5, min_samples=3, rule="significant")
    assert not slope_alarm(slope, 0.5, min_samples=3, rule="beyond_limit")


def test_confidence_level_widens_the_interval() -> None:
    x, y = [18.0, 19.0, 20.0, 21.0, 22.0], [1.0, 3.0, 2.0, 5.0, 4.0]
    ninety = thermal_slope(y, x, confidence=0.90)
    half = 2.353363434801823 * math.sqrt(0.12)  # t(0.95, 3)
    assert ninety.ci_high_um_per_k == pytest.approx(0.8 + half, rel=1e-9)
    with pytest.raises(ValueError, match="confidence"):
        thermal_slope(y, x, confidence=1.0)


@pytest.mark.parametrize(
    ("y", "x"),
    [
        ([1.0, 2.0], [19.0, 21.0]),  # n < 3
        ([1.0, 2.0, 3.0, 4.0], [20.5, 20.5, 20.5, 20.5]),  # one temperature
        ([1.0, 2.0, math.nan, 4.0], [19.0, math.nan, 21.0, 22.0]),  # two finite pairs left
    ],
)
def test_degenerate_data_has_no_slope_and_no_alarm(y: list[float], x: list[float]) -> None:
    slope = thermal_slope(y, x)
    assert not slope.defined
    assert math.isnan(slope.ci_low_um_per_k) and math.isnan(slope.ci_high_um_per_k)
    assert not slope_alarm(slope, 0.5, min_samples=1)


def _trend(n: int, slope_um_per_k: float, noise_um: float) -> ThermalSlope:
    x = 18.0 + 6.0 * np.arange(n) / (n - 1)
    noise = noise_um * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    return thermal_slope(slope_um_per_k * (x - 20.0) + noise, x)


@pytest.mark.parametrize("rule", ["beyond_limit", "significant"])
def test_alarm_rules_need_the_limit_significance_and_samples(rule: str) -> None:
    strong = _trend(20, 1.0, 0.3)
    assert strong.ci_low_um_per_k > 0.5
    assert slope_alarm(strong, 0.5, 20, rule)
    assert not slope_alarm(strong, 0.5, 21, rule)  # too few values
    assert not slope_alarm(strong, 1.5, 20, rule)  # below the limit
    negative = _trend(20, -1.0, 0.3)
    assert slope_alarm(negative, 0.5, 20, rule)
    small = _trend(40, 0.3, 0.05)  # significant, but within the limit
    assert small.ci_low_um_per_k > 0
    assert not slope_alarm(small, 0.5, 20, rule)


def test_the_rules_differ_when_the_interval_straddles_the_limit() -> None:
    # a slope of 0.8 um/K whose interval [0.39, 1.21] excludes zero but holds the limit 0.5
    slope = ThermalSlope(30, 0.8, 0.2, 0.39, 1.21, 0.95)
    assert slope_alarm(slope, 0.5, 20, "significant")  # |b| > 0.5 and 0 outside [0.39, 1.21]
    assert not slope_alarm(slope, 0.5, 20, "beyond_limit")  # 0.5 inside: not shown to exceed the limit
    assert slope_alarm(ThermalSlope(30, -0.8, 0.1, -1.0, -0.6, 0.95), 0.5, 20, "beyond_limit")
    with pytest.raises(ValueError, match="rule must be"):
        slope_alarm(slope, 0.5, 20, "loose")


def test_a_perfect_fit_has_a_zero_width_interval() -> None:
    slope = thermal_slope([-2.0, 0.0, 2.0, 4.0], [19.0, 20.0, 21.0, 22.0])
    assert slope.slope_um_per_k == pytest.approx(2.0, rel=1e-14)
    assert slope.stderr_um_per_k == pytest.approx(0.0, abs=1e-15)
    assert slope_alarm(slope, 0.5, 3)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        # Tables of Student's t (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2), 3 decimals
        (0.975, 10, 2.228),
        (0.975, 30, 2.042),
        (0.975, 120, 1.980),
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 3, 3.182),
        (0.95, 20, 1.725),
        (0.995, 5, 4.032),
        (0.9995, 1, 636.619),
    ],
)
def test_t_quantile_matches_the_tables(p: float, df: int, expected: float) -> None:
    assert round(t_quantile(p, df), 3) == expected
    assert t_quantile(1.0 - p, df) == pytest.approx(-t_quantile(p, df), rel=1e-12)


def test_t_quantile_inverts_the_distribution_function() -> None:
    assert t_quantile(0.5, 7) == 0.0
    for df in (1, 4, 18, 123):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)
    # t with 1 df is Cauchy: F(t) = 1/2 + atan(t)/pi
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-14)
    assert t_cdf(-3.0, 1) == pytest.approx(0.5 + math.atan(-3.0) / math.pi, abs=1e-14)
    with pytest.raises(ValueError, match="p must be"):
        t_quantile(1.0, 5)


def test_regularized_incomplete_beta_closed_forms() -> None:
    for x in (0.0, 0.1, 0.37, 0.9, 1.0):
        assert regularized_incomplete_beta(x, 3.0, 1.0) == pytest.approx(x**3, abs=1e-14)  # I_x(a, 1) = x^a
        assert regularized_incomplete_beta(x, 1.0, 2.0) == pytest.approx(1 - (1 - x) ** 2, abs=1e-14)
    assert regularized_incomplete_beta(0.5, 4.5, 4.5) == pytest.approx(0.5, abs=1e-14)  # symmetry
    with pytest.raises(ValueError, match="x must be"):
        regularized_incomplete_beta(1.5, 1.0, 1.0)


def test_rows_are_computed_independently_and_match_the_one_sample_functions() -> None:
    values = np.array([SAMPLE_UM, [0.1, 0.1, 0.1, 0.1, 0.1], [2.0, math.nan, 4.0, math.nan, 9.0]])
    rows = capability_rows(values, np.array([-5.0, -1.0, math.nan]), np.array([10.0, 1.0, 10.0]))
    for i in range(3):
        one = capability(values[i], [-5.0, -1.0, math.nan][i], [10.0, 1.0, 10.0][i])
        np.testing.assert_equal(astuple(rows.row(i)), astuple(one))  # NaN equals NaN here
    assert rows.s_um[1] == 0.0 and math.isnan(rows.cp[1])  # equal values: s is zero (to rounding), no index
    assert rows.n.tolist() == [5, 5, 3]
    temps = np.array([[18.0, 19.0, 20.0, 21.0, 22.0], [20.0] * 5, [18.0, 19.0, 20.0, 21.0, 22.0]])
    slopes = thermal_slope_rows(values, temps)
    assert slopes.row(0) == thermal_slope(values[0], temps[0])
    assert math.isnan(slopes.slope_um_per_k[1])  # one temperature
    assert slopes.n.tolist() == [5, 5, 3]
    assert slopes.row(2).slope_um_per_k == pytest.approx(1.75, rel=1e-12)  # (2, 18), (4, 20), (9, 22)
    assert slope_alarms(slopes, 0.5, 3).tolist() == [slope_alarm(slopes.row(i), 0.5, 3) for i in range(3)]


def test_an_alarm_on_stays_on_while_the_slope_is_beyond_the_limit() -> None:
    """Hysteresis: raised when the interval lies beyond the limit, held while the estimate stays
    beyond it, cleared when the estimate is back within +-limit (or too few values)."""
    slopes = SlopeRows(
        n=np.array([50, 50, 50, 50, 10]),
        slope_um_per_k=np.array([0.9, 0.6, 0.4, -0.6, 0.6]),
        stderr_um_per_k=np.array([0.1, 0.1, 0.1, 0.1, 0.1]),
        ci_low_um_per_k=np.array([0.7, 0.4, 0.2, -0.8, 0.4]),
        ci_high_um_per_k=np.array([1.1, 0.8, 0.6, -0.4, 0.8]),
        confidence=0.95,
    )
    fresh = slope_alarms(slopes, 0.5, 20)
    assert fresh.tolist() == [True, False, False, False, False]
    held = slope_alarms(slopes, 0.5, 20, held=np.ones(5, dtype=np.bool_))
    assert held.tolist() == [True, True, False, True, False]
