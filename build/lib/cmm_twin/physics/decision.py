"""Conformity decision per ISO 14253-1:2017 (decision rules with guard bands), pure NumPy."""

from __future__ import annotations

import enum
import math

import numpy as np
from numpy.typing import ArrayLike, NDArray


class Verdict(enum.IntEnum):
    """Conformity verdict per ISO 14253-1; the integer is the code stored in verdict arrays.

    UNDEFINED: the characteristic has no limit at all, so there is nothing to decide (its
    compensated value and uncertainty are still delivered)."""

    PASS = 0
    FAIL = 1
    UNCERTAIN = 2
    UNDEFINED = 3


_PASS, _FAIL, _UNCERTAIN, _UNDEFINED = (np.int8(v) for v in Verdict)
"""The codes as NumPy int8 scalars: arrays chosen from them are int8 verdict arrays."""

VERDICT_NAMES: NDArray[np.str_] = np.array([v.name for v in Verdict])
"""VERDICT_NAMES[code] is the verdict's name, so names of a whole array are one indexing step."""


DECISION_RESOLUTION_UM = 0.001
"""Resolution the decision is taken at (1 nm): far below any CMM's resolution, far above the
floating-point noise of a deviation computed from lengths in mm ((100.01 - 100) * 1000 is
10.000000000005116, which must not FAIL a tolerance of 10 um)."""


class DecisionRule(enum.StrEnum):
    """`guard_banded`: ISO 14253-1 with guard band U (default); `simple`: PASS iff inside the limits."""

    GUARD_BANDED = "guard_banded"
    SIMPLE = "simple"


def decide(
    deviation_um: ArrayLike,
    tolerance_um: ArrayLike,
    expanded_uncertainty_um: ArrayLike,
    rule: DecisionRule = DecisionRule.GUARD_BANDED,
    resolution_um: float = DECISION_RESOLUTION_UM,
) -> NDArray[np.int8]:
    """Verdict codes for a symmetric tolerance +-tol (ISO 14253-1): `decide_zones` with the
    limits -tol and +tol.

    guard_banded: PASS when |d| <= tol - U, FAIL when |d| > tol + U, UNCERTAIN otherwise.
    simple: PASS when |d| <= tol, FAIL otherwise.
    """
    tol = np.asarray(tolerance_um, dtype=np.float64)
    return decide_zones(deviation_um, -tol, tol, expanded_uncertainty_um, rule, resolution_um)


def decide_zones(
    deviation_um: ArrayLike,
    lower_um: ArrayLike,
    upper_um: ArrayLike,
    expanded_uncertainty_um: ArrayLike,
    rule: DecisionRule = DecisionRule.GUARD_BANDED,
    resolution_um: float = DECISION_RESOLUTION_UM,
) -> NDArray[np.int8]:
    """Verdict codes for the specification zone [lower, upper] of the deviation from nominal
    (signed, relative to the nominal; NaN: no limit on that side, i.e. a one-sided
    specification; both NaN: UNDEFINED).

    ISO 14253-1 conformance zone [lower, upper]; with the guard band U the acceptance zone is
    [lower + U, upper - U] and the rejection zone lies beyond [lower - U, upper + U]:
    guard_banded: PASS inside the acceptance zone, FAIL outside [lower - U, upper + U], UNCERTAIN
    between (an acceptance zone emptied by a large U leaves no PASS). simple: PASS inside the
    conformance zone, FAIL outside.

    Every quantity of the comparison (deviation, limits, U) is first rounded to `resolution_um`
    (> 0, default 1 nm), so a reading exactly on a limit computed from the nominal is on it, not
    10^-12 um beyond it by floating-point rounding.
    """
    if not (math.isfinite(resolution_um) and resolution_um > 0.0):
        raise ValueError(f"resolution_um must be a finite number > 0, got {resolution_um!r}")
    d = _steps(deviation_um, resolution_um)
    lower = _steps(lower_um, resolution_um)
    upper = _steps(upper_um, resolution_um)
    undefined = np.isnan(lower) & np.isnan(upper)
    low = np.where(np.isnan(lower), -np.inf, lower)
    high = np.where(np.isnan(upper), np.inf, upper)
    if rule is DecisionRule.SIMPLE:
        verdict = np.where((d >= low) & (d <= high), _PASS, _FAIL)
    else:
        u = _steps(expanded_uncertainty_um, resolution_um)
        passes = np.where((d >= low + u) & (d <= high - u), _PASS, _UNCERTAIN)
        verdict = np.where((d < low - u) | (d > high + u), _FAIL, passes)  # FAIL wins, as it is decided last
    if undefined.any():
        verdict = np.where(undefined, _UNDEFINED, verdict)
    return np.asarray(verdict, dtype=np.int8)


def _steps(values_um: ArrayLike, resolution_um: float) -> NDArray[np.float64]:
    """`values_um` in whole steps of `resolution_um` (rounded half to even; inf and NaN kept):
    integers held exactly in float64, so sums and comparisons of them are exact."""
    return np.asarray(np.round(np.asarray(values_um, dtype=np.float64) / resolution_um), dtype=np.float64)
