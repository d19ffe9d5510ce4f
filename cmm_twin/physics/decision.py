"""Conformity decision per ISO 14253-1:2017 (decision rules with guard bands), pure NumPy."""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import ArrayLike, NDArray


class Verdict(enum.IntEnum):
    """Conformity verdict per ISO 14253-1; the integer is the code stored in verdict arrays."""

    PASS = 0
    FAIL = 1
    UNCERTAIN = 2


_PASS, _FAIL, _UNCERTAIN = np.int8(Verdict.PASS), np.int8(Verdict.FAIL), np.int8(Verdict.UNCERTAIN)
"""The codes as NumPy int8 scalars: arrays chosen from them are int8 verdict arrays."""

VERDICT_NAMES: NDArray[np.str_] = np.array([v.name for v in Verdict])
"""VERDICT_NAMES[code] is the verdict's name, so names of a whole array are one indexing step."""


class DecisionRule(enum.StrEnum):
    """`guard_banded`: ISO 14253-1 with guard band U (default); `simple`: PASS iff |d| <= tol."""

    GUARD_BANDED = "guard_banded"
    SIMPLE = "simple"


def decide(
    deviation_um: ArrayLike,
    tolerance_um: ArrayLike,
    expanded_uncertainty_um: ArrayLike,
    rule: DecisionRule = DecisionRule.GUARD_BANDED,
) -> NDArray[np.int8]:
    """Verdict codes for a symmetric tolerance +-tol (ISO 14253-1).

    guard_banded: PASS when |d| <= tol - U, FAIL when |d| > tol + U, UNCERTAIN otherwise.
    simple: PASS when |d| <= tol, FAIL otherwise.
    """
    magnitude = np.abs(np.asarray(deviation_um, dtype=np.float64))
    tol = np.asarray(tolerance_um, dtype=np.float64)
    if rule is DecisionRule.SIMPLE:
        return np.where(magnitude <= tol, Verdict.PASS, Verdict.FAIL).astype(np.int8)
    u = np.asarray(expanded_uncertainty_um, dtype=np.float64)
    passes = np.where(magnitude <= tol - u, _PASS, _UNCERTAIN)
    return np.where(magnitude > tol + u, _FAIL, passes)  # FAIL wins, as it is decided last
