"""Thermal compensation to 20 degC, its uncertainty and the conformity decision.

Pure NumPy, no I/O: every function takes and returns arrays (scalars broadcast), one element per
measurement row. References:
- ISO 1:2022, reference temperature for geometrical product specification is 20 degC.
- ISO/TR 16015:2003, systematic errors and contributions to uncertainty of length measurement
  due to thermal influences (exact and differential expansion model).
- JCGM 100:2008 (GUM), first-order propagation of uncorrelated standard uncertainties.
- ISO 14253-1:2017, decision rules for verifying conformity with guard bands.
- ISO 10360-2:2009, CMM length measuring error E0 = A + L/K (here the MPE of the machine).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmm_twin.errors import ConfigError, PhysicsInputError

REFERENCE_TEMP_C = 20.0
"""ISO 1 reference temperature."""

UM_PER_MM = 1000.0

FloatArray = NDArray[np.float64]


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


class Flag(enum.IntFlag):
    """Thermal validity flags, reported with the result (never a reason to drop it)."""

    PART_TEMP_OUT_OF_RATED_RANGE = 1
    PART_NOT_SOAKED = 2
    SCALE_TEMP_ASSUMED_20C = 4


FLAG_NAMES: dict[Flag, str] = {f: str(f.name).lower() for f in Flag}


def flag_names(mask: int) -> list[str]:
    """Names of the flags set in `mask`, in a fixed order (e.g. `["part_not_soaked"]`)."""
    return [name for flag, name in FLAG_NAMES.items() if mask & flag]


@dataclass(frozen=True)
class UncertaintyInputs:
    """Inputs of the GUM budget; defaults as DESIGN.md section 3."""

    part_temp_u_k: float = 0.2
    """Standard uncertainty of the part thermometer, K."""
    scale_temp_u_k: float = 0.2
    """Standard uncertainty of the scale thermometer, K (only with a scale CTE)."""
    cmm_mpe_a_um: float = 1.5
    """Constant term A of the CMM's MPE E0 = A + L/K, um."""
    cmm_mpe_k_mm_per_um: float = 333.0
    """Length term K of the CMM's MPE E0 = A + L/K (L in mm gives um)."""
    repeatability_um: float = 0.5
    """Standard uncertainty of probing repeatability, um."""
    coverage_factor: float = 2.0
    """k of the expanded uncertainty U = k * u_c."""

    def __post_init__(self) -> None:
        for name in ("part_temp_u_k", "scale_temp_u_k", "cmm_mpe_a_um", "repeatability_um"):
            _require_finite(name, getattr(self, name), allow_zero=True)
        _require_finite("cmm_mpe_k_mm_per_um", self.cmm_mpe_k_mm_per_um, allow_zero=False)
        _require_finite("coverage_factor", self.coverage_factor, allow_zero=False)


@dataclass(frozen=True)
class ThermalLimits:
    """Validation limits. Temperatures: plausible (outside is an input error) and rated (outside
    is a flag). Lengths: a nominal, tolerance, measured or compensated length must be in
    0 < L <= max_length_mm (larger is an input error: no CMM measures it, and a huge finite value
    such as 1e308 would overflow the arithmetic to inf)."""

    plausible_min_c: float = -20.0
    plausible_max_c: float = 80.0
    rated_min_c: float = 15.0
    rated_max_c: float = 30.0
    soak_max_diff_k: float = 2.0
    """Largest |part - air| for a soaked part; more raises PART_NOT_SOAKED."""
    max_length_mm: float = 10_000.0
    """Largest plausible length (10 m)."""

    def __post_init__(self) -> None:
        _require_finite("max_length_mm", self.max_length_mm, allow_zero=False)
        for name in ("plausible_min_c", "plausible_max_c", "rated_min_c", "rated_max_c"):
            _require_finite(name, getattr(self, name), allow_zero=True, allow_negative=True)
        _require_finite("soak_max_diff_k", self.soak_max_diff_k, allow_zero=False)
        if not self.plausible_min_c < self.plausible_max_c:
            raise ConfigError("plausible_min_c", "must be below plausible_max_c")
        if not self.rated_min_c < self.rated_max_c:
            raise ConfigError("rated_min_c", "must be below rated_max_c")


@dataclass(frozen=True)
class PhysicsConfig:
    """Everything the evaluation needs besides the rows themselves."""

    uncertainty: UncertaintyInputs = field(default_factory=UncertaintyInputs)
    limits: ThermalLimits = field(default_factory=ThermalLimits)
    rule: DecisionRule = DecisionRule.GUARD_BANDED
    scale_cte_per_k: float = 0.0
    """CTE of the CMM scale; 0 means the controller (or a zero-expansion scale) handles it."""
    scale_cte_u_per_k: float = 0.0

    def __post_init__(self) -> None:
        _require_finite("scale_cte_per_k", self.scale_cte_per_k, allow_zero=True)
        _require_finite("scale_cte_u_per_k", self.scale_cte_u_per_k, allow_zero=True)


@dataclass(frozen=True)
class Evaluation:
    """Result arrays of `evaluate`, one element per row."""

    compensated_mm: FloatArray
    correction_um: FloatArray
    deviation_um: FloatArray
    standard_uncertainty_um: FloatArray
    uncertainty_um: FloatArray
    """Expanded uncertainty U = k * u_c (k = 2 by default)."""
    verdict: NDArray[np.int8]
    """Verdict codes; VERDICT_NAMES[verdict] gives the names."""
    flags: NDArray[np.int32]
    """Bit masks of Flag."""


def compensate_to_20c(
    measured_mm: ArrayLike,
    part_temp_c: ArrayLike,
    cte_per_k: ArrayLike,
    scale_temp_c: ArrayLike = REFERENCE_TEMP_C,
    scale_cte_per_k: ArrayLike = 0.0,
) -> FloatArray:
    """Length at 20 degC, exact form (ISO/TR 16015):

    L20 = L * (1 + a_s * (T_s - 20)) / (1 + a_w * (T_w - 20)).
    """
    measured = np.asarray(measured_mm, dtype=np.float64)
    return np.asarray(
        measured * expansion_factor(scale_temp_c, scale_cte_per_k) / expansion_factor(part_temp_c, cte_per_k),
        dtype=np.float64,
    )


def expand_from_20c(
    length_20c_mm: ArrayLike,
    part_temp_c: ArrayLike,
    cte_per_k: ArrayLike,
    scale_temp_c: ArrayLike = REFERENCE_TEMP_C,
    scale_cte_per_k: ArrayLike = 0.0,
) -> FloatArray:
    """What an ideal CMM reads for a part of `length_20c_mm`: the inverse of compensate_to_20c."""
    length = np.asarray(length_20c_mm, dtype=np.float64)
    return np.asarray(
        length * expansion_factor(part_temp_c, cte_per_k) / expansion_factor(scale_temp_c, scale_cte_per_k),
        dtype=np.float64,
    )


def expansion_factor(temp_c: ArrayLike, cte_per_k: ArrayLike) -> FloatArray:
    """1 + a * (T - 20): how much a length at 20 degC grows at T (ISO 1 reference)."""
    return np.asarray(
        1.0 + np.asarray(cte_per_k, dtype=np.float64) * (np.asarray(temp_c, dtype=np.float64) - REFERENCE_TEMP_C),
        dtype=np.float64,
    )


def compensate_linear(
    measured_mm: ArrayLike,
    part_temp_c: ArrayLike,
    cte_per_k: ArrayLike,
    scale_temp_c: ArrayLike = REFERENCE_TEMP_C,
    scale_cte_per_k: ArrayLike = 0.0,
) -> FloatArray:
    """First-order approximation L20 ~ L * (1 - a_w*dT_w + a_s*dT_s); for comparison only.

    It differs from the exact form by about L * (a_w*dT_w)^2.
    """
    measured = np.asarray(measured_mm, dtype=np.float64)
    part_term = np.asarray(cte_per_k, dtype=np.float64) * (np.asarray(part_temp_c, dtype=np.float64) - REFERENCE_TEMP_C)
    scale_term = np.asarray(scale_cte_per_k, dtype=np.float64) * (
        np.asarray(scale_temp_c, dtype=np.float64) - REFERENCE_TEMP_C
    )
    return np.asarray(measured * (1.0 - part_term + scale_term), dtype=np.float64)


def cmm_mpe_um(length_mm: ArrayLike, inputs: UncertaintyInputs) -> FloatArray:
    """Maximum permissible error E0 = A + L/K of the CMM (ISO 10360-2), um."""
    return np.asarray(inputs.cmm_mpe_a_um + np.asarray(length_mm, dtype=np.float64) / inputs.cmm_mpe_k_mm_per_um)


def standard_uncertainty_um(
    length_mm: ArrayLike,
    part_temp_c: ArrayLike,
    cte_per_k: ArrayLike,
    cte_u_per_k: ArrayLike,
    inputs: UncertaintyInputs,
    scale_temp_c: ArrayLike = REFERENCE_TEMP_C,
    scale_cte_per_k: float = 0.0,
    scale_cte_u_per_k: float = 0.0,
) -> FloatArray:
    """Combined standard uncertainty u_c of the length at 20 degC, um (GUM, first order).

    u_c^2 = (L*dT*u(a))^2 + (L*a*u(T))^2 + u_cmm^2 + u_rep^2, with u_cmm = E0/sqrt(3) (MPE taken
    as rectangular); with a scale CTE the two scale terms (L*dT_s*u(a_s))^2 + (L*a_s*u(T_s))^2
    are added (ISO/TR 16015). Inputs are taken as uncorrelated.
    """
    length = np.asarray(length_mm, dtype=np.float64)
    delta_t = np.asarray(part_temp_c, dtype=np.float64) - REFERENCE_TEMP_C
    cte = np.asarray(cte_per_k, dtype=np.float64)
    u_cte = np.asarray(cte_u_per_k, dtype=np.float64)
    length_um = length * UM_PER_MM
    variance = (
        (length_um * delta_t * u_cte) ** 2
        + (length_um * cte * inputs.part_temp_u_k) ** 2
        + (cmm_mpe_um(length, inputs) / math.sqrt(3.0)) ** 2
        + inputs.repeatability_um**2
    )
    if scale_cte_per_k or scale_cte_u_per_k:
        delta_ts = np.asarray(scale_temp_c, dtype=np.float64) - REFERENCE_TEMP_C
        variance = (
            variance
            + (length_um * delta_ts * scale_cte_u_per_k) ** 2
            + (length_um * scale_cte_per_k * inputs.scale_temp_u_k) ** 2
        )
    return np.asarray(np.sqrt(variance), dtype=np.float64)


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


def evaluate(
    measured_mm: ArrayLike,
    part_temp_c: ArrayLike,
    nominal_mm: ArrayLike,
    tolerance_mm: ArrayLike,
    cte_per_k: ArrayLike,
    cte_u_per_k: ArrayLike,
    air_temp_c: ArrayLike = math.nan,
    scale_temp_c: ArrayLike = math.nan,
    config: PhysicsConfig | None = None,
) -> Evaluation:
    """Compensate, state the uncertainty, decide and flag a batch of rows.

    Optional temperatures use NaN for "not given". Raises PhysicsInputError naming the field and
    the first offending row for a non-finite, non-positive or implausible input (a temperature
    outside the plausible range, a length above `limits.max_length_mm`): no number is ever
    produced from such a row. Results of valid inputs can still be implausible (e.g. a
    compensated length just above the limit): see `implausible_results`.
    """
    config = config or PhysicsConfig()
    limits = config.limits
    inputs = (measured_mm, part_temp_c, nominal_mm, tolerance_mm, cte_per_k, cte_u_per_k, air_temp_c, scale_temp_c)
    valid = _valid_rows(inputs, limits)
    if valid is not None:  # the usual case: columns of one batch, every value valid
        arrays, low, high = valid
        measured, part_temp, nominal, tolerance, cte, cte_u, air_temp, scale_temp = arrays
        shape: tuple[int, ...] = measured.shape
        # No flag to compute when the extremes show none (float subtraction is monotonic, so
        # |part - air| <= max(part_max - air_min, air_max - part_min) holds for every row as computed).
        all_rated = low[1] >= limits.rated_min_c and high[1] <= limits.rated_max_c
        all_soaked = math.isnan(low[6]) or max(high[1] - low[6], high[6] - low[1]) <= limits.soak_max_diff_k
    else:  # each input converted and checked on its own: the first bad one raises
        measured = _checked("measured_mm", measured_mm, positive=True, max_length_mm=limits.max_length_mm)
        nominal = _checked("nominal_mm", nominal_mm, positive=True, max_length_mm=limits.max_length_mm)
        tolerance = _checked("tolerance_mm", tolerance_mm, positive=True, max_length_mm=limits.max_length_mm)
        cte = _checked("cte_per_k", cte_per_k, positive=False)
        cte_u = _checked("cte_u_per_k", cte_u_per_k, positive=False)
        part_temp = _checked("part_temp_c", part_temp_c, limits=limits)
        air_temp = _checked("air_temp_c", air_temp_c, limits=limits, optional=True)
        scale_temp = _checked("scale_temp_c", scale_temp_c, limits=limits, optional=True)
        shape = np.broadcast(measured, nominal, tolerance, cte, cte_u, part_temp, air_temp, scale_temp).shape
        all_rated = all_soaked = False

    flags = np.zeros(shape, dtype=np.int32)
    if not all_rated:
        out_of_rated = (part_temp < limits.rated_min_c) | (part_temp > limits.rated_max_c)
        _set_flag(flags, out_of_rated, Flag.PART_TEMP_OUT_OF_RATED_RANGE)
    if not all_soaked:
        with np.errstate(invalid="ignore"):
            not_soaked = np.abs(part_temp - air_temp) > limits.soak_max_diff_k  # NaN air compares False
        _set_flag(flags, _shaped(not_soaked, shape), Flag.PART_NOT_SOAKED)
    uses_scale = config.scale_cte_per_k != 0.0
    scale_temp_used: ArrayLike
    if uses_scale:
        scale_missing = _shaped(np.isnan(scale_temp), shape)
        _set_flag(flags, scale_missing, Flag.SCALE_TEMP_ASSUMED_20C)
        scale_temp_used = np.where(np.isnan(scale_temp), REFERENCE_TEMP_C, scale_temp)
        compensated = compensate_to_20c(measured, part_temp, cte, scale_temp_used, config.scale_cte_per_k)
    else:  # the scale terms are exactly 1 and 0 with this scalar as with an array of 20 degC
        scale_temp_used = REFERENCE_TEMP_C
        compensated = _compensate_part(measured, part_temp, cte)
    u_c = standard_uncertainty_um(
        measured,
        part_temp,
        cte,
        cte_u,
        config.uncertainty,
        scale_temp_used,
        config.scale_cte_per_k,
        config.scale_cte_u_per_k,
    )
    expanded = config.uncertainty.coverage_factor * u_c
    deviation = (compensated - nominal) * UM_PER_MM
    return Evaluation(
        compensated_mm=_fresh(compensated, shape, np.float64),
        correction_um=_fresh((compensated - measured) * UM_PER_MM, shape, np.float64),
        deviation_um=_fresh(deviation, shape, np.float64),
        standard_uncertainty_um=_fresh(u_c, shape, np.float64),
        uncertainty_um=_fresh(expanded, shape, np.float64),
        verdict=_fresh(decide(deviation, tolerance * UM_PER_MM, expanded, config.rule), shape, np.int8),
        flags=flags,
    )


def implausible_results(
    limits: ThermalLimits,
    compensated_mm: ArrayLike,
    *other_results: ArrayLike,
) -> NDArray[np.bool_]:
    """True for each row whose results cannot be delivered: the compensated length outside
    0 < L <= `limits.max_length_mm`, or any of `other_results` (e.g. deviation and uncertainty,
    in um) not finite. Finite inputs can still overflow (1.7e308 mm at 19 degC gives inf), so
    results are checked as well as inputs. NaN counts as implausible."""
    compensated = np.asarray(compensated_mm, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        plausible = (compensated > 0.0) & (compensated <= limits.max_length_mm)
    for values in other_results:
        plausible = plausible & np.isfinite(np.asarray(values, dtype=np.float64))
    return np.asarray(~plausible, dtype=np.bool_)


_STACKED_ROWS_MAX = 65_536
"""`_valid_rows` stacks the inputs of `evaluate` up to this length (a copy), checks them one by one beyond."""


def _valid_rows(
    inputs: tuple[ArrayLike, ...], limits: ThermalLimits
) -> tuple[tuple[FloatArray, ...], list[float], list[float]] | None:
    """The eight inputs of `evaluate` and the least and greatest value of each (NaN ignored; NaN
    when all are) if they are float64 vectors of one length that `_checked` accepts.

    One pass for all of them (row-wise minima and maxima of the stacked inputs) instead of
    several NumPy calls per input. None sends `evaluate` to the input-by-input checks, which also
    raise the exact error; the same checks pass here as there: the three lengths finite and > 0,
    the two CTEs finite and >= 0, the part temperature in the plausible range, the two optional
    temperatures NaN or in it, the three lengths at most `limits.max_length_mm`.
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
        if math.isnan(block[:6].min()):  # NaN in a required input
            return None
        low = np.fmin.reduce(block, axis=1).tolist()  # NaN ignored (NaN only if a row is all NaN)
        high = np.fmax.reduce(block, axis=1).tolist()
    else:  # no copy of big inputs
        if any(math.isnan(a.min()) for a in arrays[:6]):
            return None
        low = [float(np.fmin.reduce(a)) for a in arrays]
        high = [float(np.fmax.reduce(a)) for a in arrays]
    measured, part, nominal, tolerance, cte, cte_u, air, scale = zip(low, high, strict=True)
    for lo, hi in (measured, nominal, tolerance):
        if not (lo > 0.0 and hi <= limits.max_length_mm):
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


def _compensate_part(measured: FloatArray, part_temp: FloatArray, cte: FloatArray) -> FloatArray:
    """`compensate_to_20c` without a scale CTE: its scale factor is then exactly 1, and
    L * 1 / f is L / f to the last bit, one NumPy step fewer."""
    part_factor = 1.0 + cte * (part_temp - REFERENCE_TEMP_C)
    return np.asarray(measured / part_factor, dtype=np.float64)


def _set_flag(flags: NDArray[np.int32], mask: NDArray[np.bool_], flag: Flag) -> None:
    """`flags[mask] |= flag`, in one NumPy step when `mask` has the shape of `flags`."""
    if mask.shape == flags.shape:
        np.bitwise_or(flags, int(flag), out=flags, where=mask)
    else:
        flags[mask] |= int(flag)


def _shaped(mask: NDArray[np.bool_], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """`mask` broadcast to `shape` (itself when it has that shape)."""
    return mask if mask.shape == shape else np.broadcast_to(mask, shape)


_Scalar = TypeVar("_Scalar", bound=np.generic)


def _fresh(values: NDArray[Any], shape: tuple[int, ...], dtype: type[_Scalar]) -> NDArray[_Scalar]:
    """`values` broadcast to `shape` as a new array of `dtype`; itself when it is one already.

    Only for arrays computed inside `evaluate` (never an input), so the result owns its data either way.
    """
    if type(values) is np.ndarray and values.shape == shape and values.dtype == dtype:
        return values
    return np.broadcast_to(values, shape).astype(dtype)


def _checked(
    name: str,
    values: ArrayLike,
    *,
    positive: bool = False,
    limits: ThermalLimits | None = None,
    optional: bool = False,
    max_length_mm: float | None = None,
) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    bad = np.isinf(array) if optional else ~np.isfinite(array)
    if bad.any():
        _raise_first(name, array, bad, "must be a finite number")
    if positive:
        bad = array <= 0.0
        if bad.any():
            _raise_first(name, array, bad, "must be > 0")
    if max_length_mm is not None:
        bad = array > max_length_mm
        if bad.any():
            _raise_first(name, array, bad, f"must be <= {max_length_mm:g} mm (limits.max_length_mm)")
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


def _require_finite(name: str, value: float, *, allow_zero: bool, allow_negative: bool = False) -> None:
    number = float(value)
    if not math.isfinite(number) or (number < 0 and not allow_negative) or (number == 0 and not allow_zero):
        raise ConfigError(name, f"invalid value {value!r}")
