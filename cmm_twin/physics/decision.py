"""Conformity decision per ISO 14253-1:2017 (decision rules with guard bands), pure NumPy."""

from __future__ import annotations

import enum

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


class DecisionRule(enum.StrEnum):
    """`guard_banded`: ISO 14253-1 with guard band U (default); `simple`: PASS iff inside the limits."""

    GUARD_BANDED = "guard_banded"
    SIMPLE = "simple"


def decide(
    deviation_um: ArrayLike,
    tolerance_um: ArrayLike,
    expanded_uncertainty_um: ArrayLike,
    rule: DecisionRule = DecisionRule.GUARD_BANDED,
) -> NDArray[np.int8]:
    """Verdict codes for a symmetric tolerance +-tol (ISO 14253-1): `decide_zones` with the
    limits -tol and +tol.

    guard_banded: PASS when |d| <= tol - U, FAIL when |d| > tol + U, UNCERTAIN otherwise.
    simple: PASS when |d| <= tol, FAIL otherwise.
    """
    tol = np.asarray(tolerance_um, dtype=np.float64)
    return decide_zones(deviation_um, -tol, tol, expanded_uncertainty_um, rule)


def decide_zones(
    deviation_um: ArrayLike,
    lower_um: ArrayLike,
    upper_um: ArrayLike,
    expanded_uncertainty_um: ArrayLike,
    rule: DecisionRule = DecisionRule.GUARD_BANDED,
) -> NDArray[np.int8]:
    """Verdict codes for the specification zone [lower, upper] of the deviation from nominal
    (signed, relative to the nominal; NaN: no limit on that side, i.e. a one-sided
    specification; both NaN: UNDEFINED).

    ISO 14253-1 conformance zone [lower, upper]; with the guard band U the acceptance zone is
    [lower + U, upper - U] and the rejection zone lies beyond [lower - U, upper + U]:
    guard_banded: PASS inside the acceptance zone, FAIL outside [lower - U, upper + U], UNCERTAIN
    between (an acceptance zone emptied by a large U leaves no PASS). simple: PASS inside the
    conformance zone, FAIL outside.
    """
    d = np.asarray(deviation_um, dtype=np.float64)
    lower = np.asarray(lower_um, dtype=np.float64)
    upper = np.asarray(upper_um, dtype=np.float64)
    undefined = np.isnan(lower) & np.isnan(upper)
    low = np.where(np.isnan(lower), -np.inf, lower)
    high = np.where(np.isnan(upper), np.inf, upper)
    if rule is DecisionRule.SIMPLE:
        verdict = np.where((d >= low) & (d <= high), _PASS, _FAIL)
    else:
        u = np.asarray(expanded_uncertainty_um, dtype=np.float64)
        passes = np.where((d >= low + u) & (d <= high - u), _PASS, _UNCERTAIN)
        verdict = np.where((d < low - u) | (d > high + u), _FAIL, passes)  # FAIL wins, as it is decided last
    if undefined.any():
        verdict = np.where(undefined, _UNDEFINED, verdict)
    return np.asarray(verdict, dtype=np.int8)
