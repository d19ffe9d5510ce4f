"""Validation of the physics' inputs and results, and the limits it checks them against.

A row with a non-finite or implausible input never produces a number: the checks raise
PhysicsInputError naming the field and the first offending row. Lengths are signed (a coordinate
can be negative, a form deviation's nominal is 0); their magnitude is limited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmm_twin.errors import ConfigError, PhysicsInputError
from cmm_twin.physics.compensation import FloatArray


@dataclass(frozen=True)
class ThermalLimits:
    """Validation limits. Temperatures: plausible (outside is an input error) and rated (outside
    is a flag). Lengths: a nominal, limit, measured or compensated length must be in
    |L| <= max_length_mm (larger is an input error: no CMM measures it, and a huge finite value
    such as 1e308 would overflow the arithmetic to inf); a symmetric tolerance must be > 0."""

    plausible_min_c: float = -20.0
    plausible_max_c: float = 80.0
    rated_min_c: float = 15.0
    rated_max_c: float = 30.0
    soak_max_diff_k: float = 2.0
    """Largest |part - air| for a soaked part; more raises PART_NOT_SOAKED."""
    max_length_mm: float = 10_000.0
    """Largest plausible length (10 m)."""

    def __post_init__(self) -> None:
        require_finite("max_length_mm", self.max_length_mm, allow_zero=False)
        for name in ("plausible_min_c", "plausible_max_c", "rated_min_c", "rated_max_c"):
            require_finite(name, getattr(self, name), allow_zero=True, allow_negative=True)
        require_finite("soak_max_diff_k", self.soak_max_diff_k, allow_zero=False)
        if not self.plausible_min_c < self.plausible_max_c:
            raise ConfigError("plausible_min_c", "must be below plausible_max_c")
        if not self.rated_min_c < self.rated_max_c:
            raise ConfigError("rated_min_c", "must be below rated_max_c")


def implausible_results(
    limits: ThermalLimits,
    compensated_mm: ArrayLike,
    *other_results: ArrayLike,
) -> NDArray[np.bool_]:
    """True for each row whose results cannot be delivered: the compensated length outside
    |L| <= `limits.max_length_mm`, or any of `other_results` (e.g. deviation and uncertainty,
    in um) not finite. Finite inputs can still overflow (1.7e308 mm at 19 degC gives inf), so
    results are checked as well as inputs. NaN counts as implausible."""
    compensated = np.asarray(compensated_mm, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        plausible = np.abs(compensated) <= limits.max_length_mm
    for values in other_results:
        plausible = plausible & np.isfinite(np.asarray(values, dtype=np.float64))
    return np.asarray(~plausible, dtype=np.bool_)


_STACKED_ROWS_MAX = 65_536
"""`valid_inputs` stacks the inputs of `evaluate` up to this length (a copy), checks them one by one beyond."""


def valid_inputs(
    inputs: tuple[ArrayLike, ...], limits: ThermalLimits
) -> tuple[tuple[FloatArray, ...], list[float], list[float]] | None:
    """The seven inputs of `evaluate` besides the tolerance (measured, part temperature, nominal,
    CTE, its uncertainty, air and scale temperature) and the least and greatest value of each
    (NaN ignored; NaN when all are) if they are float64 vectors of one length that
    `checked_input` accepts.

    One pass for all of them (row-wise minima and maxima of the stacked inputs) instead of
    several NumPy calls per input. None sends `evaluate` to the input-by-input checks, which also
    raise the exact error; the same checks pass here as there: the two lengths finite with
    |L| <= `limits.max_length_mm`, the two CTEs finite and >= 0, the part temperature in the
    plausible range, the two optional temperatures NaN or in it.
    """
    arrays: list[FloatArray] = []
    for values in inputs:
        if type(values) is not np.ndarray or values.dtype != np.float64 or values.ndim != 1:
            return None
        arrays.append(values)
    shape = arrays[0].shape
    if not shape[0] or not all(a.shape == shape for a in arrays):
        return None
    if shape[0] <= _STACKED_ROWS_MAX:  # few NumPy calls for all inputs at once
        block = np.array(arrays)  # one row per input, in the order of `evaluate`'s parameters
        if math.isnan(block[:5].min()):  # NaN in a required input
            return None
        low = np.fmin.reduce(block, axis=1).tolist()  # NaN ignored (NaN only if a row is all NaN)
        high = np.fmax.reduce(block, axis=1).tolist()
    else:  # no copy of big inputs
        if any(math.isnan(a.min()) for a in arrays[:5]):
            return None
        low = [float(np.fmin.reduce(a)) for a in arrays]
        high = [float(np.fmax.reduce(a)) for a in arrays]
    measured, part, nominal, cte, cte_u, air, scale = zip(low, high, strict=True)
    for lo, hi in (measured, nominal):
        if not (lo >= -limits.max_length_mm and hi <= limits.max_length_mm):
            return None
    for lo, hi in (cte, cte_u):
        if not (lo >= 0.0 and hi < math.inf):
            return None
    minimum, maximum = limits.plausible_min_c, limits.plausible_max_c
    if not (part[0] >= minimum and part[1] <= maximum):
        return None
    for lo, hi in (air, scale):  # optional: all NaN (none given), or the given ones in the range
        if not (math.isnan(lo) or (lo >= minimum and hi <= maximum)):
            return None
    return tuple(arrays), low, high


def checked_input(
    name: str,
    values: ArrayLike,
    *,
    positive: bool = False,
    limits: ThermalLimits | None = None,
    optional: bool = False,
    max_length_mm: float | None = None,
) -> FloatArray:
    """`values` as a float64 array, checked: finite (NaN allowed when `optional`), > 0 when
    `positive`, |x| <= `max_length_mm` when given (else >= 0 unless a temperature), in the
    plausible temperature range with `limits`. Raises PhysicsInputError for the first bad row."""
    array = np.asarray(values, dtype=np.float64)
    bad = np.isinf(array) if optional else ~np.isfinite(array)
    if bad.any():
        _raise_first(name, array, bad, "must be a finite number")
    if positive:
        bad = array <= 0.0
        if bad.any():
            _raise_first(name, array, bad, "must be > 0")
    if max_length_mm is not None:
        with np.errstate(invalid="ignore"):
            bad = np.abs(array) > max_length_mm
        if bad.any():
            _raise_first(name, array, bad, f"must be within +-{max_length_mm:g} mm (limits.max_length_mm)")
    elif limits is None:
        bad = array < 0.0
        if bad.any():
            _raise_first(name, array, bad, "must be >= 0")
    if limits is not None:
        with np.errstate(invalid="ignore"):
            bad = (array < limits.plausible_min_c) | (array > limits.plausible_max_c)
        if bad.any():
            _raise_first(
                name,
                array,
                bad,
                f"outside the plausible range {limits.plausible_min_c:g}..{limits.plausible_max_c:g} degC",
            )
    return array


def _raise_first(name: str, array: FloatArray, bad: NDArray[np.bool_], reason: str) -> None:
    flat = np.flatnonzero(bad)
    index = int(flat[0]) if array.ndim else None
    value = array.flat[flat[0]] if array.ndim else array.item()
    raise PhysicsInputError(name, f"{reason}, got {value!r}", index)


def require_finite(name: str, value: float, *, allow_zero: bool, allow_negative: bool = False) -> None:
    number = float(value)
    if not math.isfinite(number) or (number < 0 and not allow_negative) or (number == 0 and not allow_zero):
        raise ConfigError(name, f"invalid value {value!r}")


def checked_zone(lower_mm: ArrayLike, upper_mm: ArrayLike, max_length_mm: float) -> tuple[FloatArray, FloatArray]:
    """The limits of a specification zone relative to the nominal (NaN: no limit on that side),
    checked: finite or NaN, |x| <= `max_length_mm`, lower <= upper where both are given."""
    lower = checked_input("lower_tol_mm", lower_mm, optional=True, max_length_mm=max_length_mm)
    upper = checked_input("upper_tol_mm", upper_mm, optional=True, max_length_mm=max_length_mm)
    with np.errstate(invalid="ignore"):
        crossed = np.broadcast_to(lower > upper, np.broadcast(lower, upper).shape)
    if crossed.any():
        _raise_first("lower_tol_mm", np.broadcast_to(lower, crossed.shape), crossed, "must not exceed upper_tol_mm")
    return lower, upper
