"""Process capability and compensation health of one characteristic (pure NumPy, no I/O).

- `capability`: Cp and Cpk of a sample per ISO 22514-2 (the "process capability" indices of a
  stable, normally distributed characteristic, estimated from the sample mean and the sample
  standard deviation s, ddof = 1):
      Cp  = (USL - LSL) / (6 s)
      Cpk = min(Cpu, Cpl),  Cpu = (USL - mean) / (3 s),  Cpl = (mean - LSL) / (3 s)
  A one-sided specification has no Cp and its Cpk is the one side's index (Cpu or Cpl). An
  index that cannot be estimated (n < 2, s = 0, no limit at all) is NaN, never infinite.
- `thermal_slope`: the ordinary least squares slope of the compensated deviation against the
  part temperature, its standard error and its two-sided confidence interval with Student's t
  for n - 2 degrees of freedom (e.g. Montgomery & Runger, Applied Statistics and Probability for
  Engineers, 11-3: b +- t(1 - a/2, n - 2) * sqrt(s^2 / Sxx), s^2 = SSE / (n - 2)).
- `slope_alarm`: the compensation-health rule (docs/capability.md), with at least `min_samples`
  values: `beyond_limit` (the default) when the confidence interval lies wholly beyond +-limit
  (the slope exceeds the limit at that confidence); `significant` when |slope| > limit and the
  interval excludes zero.
- `t_quantile`: Student's t quantile by bisection on its distribution function, written with
  the regularized incomplete beta function (continued fraction, modified Lentz): no SciPy.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "ALARM_RULES",
    "Capability",
    "CapabilityRows",
    "SlopeRows",
    "ThermalSlope",
    "capability",
    "capability_rows",
    "regularized_incomplete_beta",
    "slope_alarm",
    "slope_alarms",
    "t_cdf",
    "t_quantile",
    "thermal_slope",
    "thermal_slope_rows",
]

ALARM_RULES = ("beyond_limit", "significant")
"""The alarm rules of `slope_alarm`."""
FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_BETA_EPS = 1e-15
_BETA_MAX_ITERATIONS = 500
_TINY = 1e-300


@dataclass(frozen=True)
class Capability:
    """Capability of one sample; NaN where an index cannot be estimated."""

    n: int
    mean_um: float
    s_um: float
    """Sample standard deviation (ddof = 1)."""
    cp: float
    cpk: float


@dataclass(frozen=True)
class ThermalSlope:
    """OLS slope of deviation against part temperature; NaN when degenerate (n < 3, one temperature)."""

    n: int
    slope_um_per_k: float
    stderr_um_per_k: float
    ci_low_um_per_k: float
    ci_high_um_per_k: float
    confidence: float

    @property
    def defined(self) -> bool:
        """True when a slope could be estimated."""
        return math.isfinite(self.slope_um_per_k)


@dataclass(frozen=True)
class CapabilityRows:
    """`capability_rows`: one element per row of the input (NaN where undefined)."""

    n: IntArray
    mean_um: FloatArray
    s_um: FloatArray
    cp: FloatArray
    cpk: FloatArray

    def row(self, i: int) -> Capability:
        """Row `i` as a Capability."""
        return Capability(
            int(self.n[i]), float(self.mean_um[i]), float(self.s_um[i]), float(self.cp[i]), float(self.cpk[i])
        )


@dataclass(frozen=True)
class SlopeRows:
    """`thermal_slope_rows`: one element per row of the input (NaN where undefined)."""

    n: IntArray
    slope_um_per_k: FloatArray
    stderr_um_per_k: FloatArray
    ci_low_um_per_k: FloatArray
    ci_high_um_per_k: FloatArray
    confidence: float

    def row(self, i: int) -> ThermalSlope:
        """Row `i` as a ThermalSlope."""
        return ThermalSlope(
            int(self.n[i]),
            float(self.slope_um_per_k[i]),
            float(self.stderr_um_per_k[i]),
            float(self.ci_low_um_per_k[i]),
            float(self.ci_high_um_per_k[i]),
            self.confidence,
        )


def _rows(values: ArrayLike) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(1, -1) if array.ndim <= 1 else array


def capability_rows(values_um: ArrayLike, lower_um: ArrayLike, upper_um: ArrayLike) -> CapabilityRows:
    """Cp and Cpk (ISO 22514-2) of each row of `values_um` (2-D; NaN entries are left out)
    against that row's limits `lower_um`, `upper_um` (deviations from the nominal; NaN: no limit
    on that side). A spread of zero to rounding (s <= 64 eps max|x|) counts as zero."""
    values = _rows(values_um)
    rows = values.shape[0]
    lower = np.broadcast_to(np.asarray(lower_um, dtype=np.float64), (rows,))
    upper = np.broadcast_to(np.asarray(upper_um, dtype=np.float64), (rows,))
    finite = np.isfinite(values)
    n = finite.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=1) / n
        dev = np.where(finite, values - mean[:, None], 0.0)
        s = np.sqrt((dev * dev).sum(axis=1) / (n - 1))
        scale = np.where(finite, np.abs(values), 0.0).max(axis=1, initial=0.0)
        s = np.where(n >= 2, s, np.nan)
        s = np.where(s <= 64 * np.finfo(np.float64).eps * scale, 0.0, s)
        spread = np.where(s > 0.0, s, np.nan)
        cpu = (upper - mean) / (3.0 * spread)
        cpl = (mean - lower) / (3.0 * spread)
        cp = (upper - lower) / (6.0 * spread)
    has_low, has_high = np.isfinite(lower), np.isfinite(upper)
    cpk = np.where(has_low & has_high, np.fmin(cpu, cpl), np.where(has_high, cpu, cpl))
    cpk = np.where(np.isfinite(spread), cpk, np.nan)
    return CapabilityRows(n.astype(np.int64), np.where(n > 0, mean, np.nan), s, cp, cpk)


def capability(values_um: ArrayLike, lower_um: float, upper_um: float) -> Capability:
    """Cp and Cpk (ISO 22514-2) of the finite values of `values_um` against the limits
    `lower_um` and `upper_um` (deviations from the nominal; NaN: no limit on that side)."""
    values = np.asarray(values_um, dtype=np.float64).ravel()
    return capability_rows(values.reshape(1, -1), lower_um, upper_um).row(0)


def thermal_slope_rows(deviation_um: ArrayLike, part_temp_c: ArrayLike, confidence: float = 0.95) -> SlopeRows:
    """OLS slope (um/K) of each row of `deviation_um` against the same row of `part_temp_c`
    (2-D, equal shapes) over the pairs where both are finite, with its standard error and
    two-sided `confidence` interval (Student's t, n - 2 df). NaN with n < 3 or one temperature."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    y, x = _rows(deviation_um), _rows(part_temp_c)
    if x.shape != y.shape:
        raise ValueError(f"deviation_um and part_temp_c differ in shape: {y.shape} and {x.shape}")
    both = np.isfinite(x) & np.isfinite(y)
    n = both.sum(axis=1)
    spread = np.where(both, x, -np.inf).max(axis=1, initial=-np.inf) - np.where(both, x, np.inf).min(
        axis=1, initial=np.inf
    )
    defined = (n >= 3) & (spread > 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(both, x - (np.where(both, x, 0.0).sum(axis=1) / n)[:, None], 0.0)
        dy = np.where(both, y - (np.where(both, y, 0.0).sum(axis=1) / n)[:, None], 0.0)
        sxx = (dx * dx).sum(axis=1)
        slope = (dx * dy).sum(axis=1) / sxx
        residuals = dy - slope[:, None] * dx
        stderr = np.sqrt((residuals * residuals).sum(axis=1) / (n - 2) / sxx)
    p = 0.5 + confidence / 2.0
    df = [float(k - 2) if ok else 0.0 for k, ok in zip(n.tolist(), defined.tolist(), strict=True)]
    t = np.array([t_quantile(p, d) if d > 0 else math.nan for d in df])
    slope = np.where(defined, slope, np.nan)
    stderr = np.where(defined, stderr, np.nan)
    half = t * stderr
    return SlopeRows(n.astype(np.int64), slope, stderr, slope - half, slope + half, confidence)


def thermal_slope(deviation_um: ArrayLike, part_temp_c: ArrayLike, confidence: float = 0.95) -> ThermalSlope:
    """OLS slope (um/K) of `deviation_um` against `part_temp_c` over the pairs where both are
    finite, with its standard error and two-sided `confidence` interval (Student's t, n - 2 df)."""
    y = np.asarray(deviation_um, dtype=np.float64).ravel()
    x = np.asarray(part_temp_c, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"deviation_um and part_temp_c differ in length: {y.size} and {x.size}")
    return thermal_slope_rows(y.reshape(1, -1), x.reshape(1, -1), confidence).row(0)


def slope_alarms(
    slopes: SlopeRows,
    limit_um_per_k: float = 0.5,
    min_samples: int = 20,
    rule: str = "beyond_limit",
    held: NDArray[np.bool_] | None = None,
) -> NDArray[np.bool_]:
    """`slope_alarm` of every row of `slopes`. `held`: the rows whose alarm is on already; such an
    alarm stays on while the slope itself stays beyond +-limit (hysteresis: raised on evidence,
    cleared when the estimate is back within the limit, so it does not flicker at the edge)."""
    if rule not in ALARM_RULES:
        raise ValueError(f"rule must be one of {', '.join(ALARM_RULES)}, got {rule!r}")
    low, high = slopes.ci_low_um_per_k, slopes.ci_high_um_per_k
    enough = (slopes.n >= min_samples) & np.isfinite(slopes.slope_um_per_k)
    beyond = np.abs(slopes.slope_um_per_k) > limit_um_per_k
    if rule == "beyond_limit":
        raised = enough & ((low > limit_um_per_k) | (high < -limit_um_per_k))
    else:
        raised = enough & beyond & ((low > 0.0) | (high < 0.0))
    if held is None:
        return raised
    return raised | (held & enough & beyond)


def slope_alarm(
    slope: ThermalSlope, limit_um_per_k: float = 0.5, min_samples: int = 20, rule: str = "beyond_limit"
) -> bool:
    """Whether a slope of at least `min_samples` pairs raises the alarm (never an undefined one).

    `beyond_limit`: its confidence interval lies wholly above +limit or below -limit, i.e. the
    slope exceeds the limit at the interval's confidence. `significant`: |slope| > limit and the
    interval excludes zero. With few values or little temperature spread the interval is wide:
    `significant` is then a plain test against zero repeated after every batch, which false-alarms
    on a correct compensation (docs/capability.md gives the figures); `beyond_limit` does not."""
    rows = SlopeRows(
        np.array([slope.n]),
        np.array([slope.slope_um_per_k]),
        np.array([slope.stderr_um_per_k]),
        np.array([slope.ci_low_um_per_k]),
        np.array([slope.ci_high_um_per_k]),
        slope.confidence,
    )
    return bool(slope_alarms(rows, limit_um_per_k, min_samples, rule)[0])


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1, by its continued fraction (modified Lentz's
    method; Press et al., Numerical Recipes, 3rd ed., 6.4), using the symmetry
    I_x(a, b) = 1 - I_(1-x)(b, a) where the fraction converges faster."""
    if not (a > 0.0 and b > 0.0):
        raise ValueError(f"a and b must be > 0, got {a!r}, {b!r}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _BETA_MAX_ITERATIONS + 1):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _BETA_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (x={x}, a={a}, b={b})")


def t_cdf(t: float, df: float) -> float:
    """Distribution function of Student's t with `df` > 0 degrees of freedom:
    F(t) = 1 - I_(df/(df+t^2))(df/2, 1/2) / 2 for t >= 0, symmetric about 0."""
    if not df > 0.0:
        raise ValueError(f"degrees of freedom must be > 0, got {df!r}")
    tail = 0.5 * regularized_incomplete_beta(df / (df + t * t), df / 2.0, 0.5)
    return 1.0 - tail if t >= 0.0 else tail


@functools.lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The `p` quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf` to
    about 1e-12 relative; remembered, as a monitor asks for the same few again and again)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
        if high > 1e12:
            raise ArithmeticError(f"t quantile out of range (p={p}, df={df})")
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)
