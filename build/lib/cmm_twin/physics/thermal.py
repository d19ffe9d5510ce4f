"""Thermal compensation to 20 degC, its uncertainty and the conformity decision of a batch.

Pure NumPy, no I/O: every function takes and returns arrays (scalars broadcast), one element per
measurement row. `evaluate` runs the whole chain; the parts live beside it by concern:
- `compensation`: ISO 1 / ISO/TR 16015, the exact expansion model.
- `uncertainty`: JCGM 100:2008 (GUM) budget, with the CMM's MPE per ISO 10360-2.
- `decision`: ISO 14253-1 decision rules with guard bands.
- `checks`: the limits and the validation of inputs and results.
The names callers imported from here before the split are re-exported.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cmm_twin.physics.checks import (
    ThermalLimits,
    checked_input,
    checked_zone,
    implausible_results,
    require_finite,
    valid_inputs,
)
from cmm_twin.physics.compensation import (
    REFERENCE_TEMP_C,
    UM_PER_MM,
    Compensation,
    FloatArray,
    compensate_part,
    compensate_to_20c,
)
from cmm_twin.physics.decision import DECISION_RESOLUTION_UM, VERDICT_NAMES, DecisionRule, Verdict, decide_zones
from cmm_twin.physics.uncertainty import UncertaintyInputs, standard_uncertainty_um

__all__ = ["FLAG_NAMES", "Compensation", "Evaluation", "Flag", "PhysicsConfig", "evaluate", "flag_names"]
__all__ += ["VERDICT_NAMES", "DecisionRule", "ThermalLimits", "UncertaintyInputs", "Verdict", "implausible_results"]
"""This module's names, then those callers imported from here before the split (re-exported)."""


class Flag(enum.IntFlag):
    """Thermal validity flags, reported with the result (never a reason to drop it)."""

    PART_TEMP_OUT_OF_RATED_RANGE = 1
    PART_NOT_SOAKED = 2
    SCALE_TEMP_ASSUMED_20C = 4
    TEMPERATURE_ASSUMED = 8
    """The file gave no part temperature: the configured assumed one was used, with the
    uncertainty of the assumption (set by the source, not by `evaluate`)."""
    TIMESTAMP_FROM_FILE = 16
    """The file gave no measurement time: the file's modification time was used (set by the source)."""
    RESIDUAL_THERMAL_SLOPE = 32
    """The compensated deviations of this characteristic still trend with the part temperature
    (the compensation-health monitor's alarm is on: a wrong CTE, sensor or part catalogue)."""


FLAG_NAMES: dict[Flag, str] = {f: str(f.name).lower() for f in Flag}


def flag_names(mask: int) -> list[str]:
    """Names of the flags set in `mask`, in a fixed order (e.g. `["part_not_soaked"]`)."""
    return [name for flag, name in FLAG_NAMES.items() if mask & flag]


@dataclass(frozen=True)
class PhysicsConfig:
    """Everything the evaluation needs besides the rows themselves."""

    uncertainty: UncertaintyInputs = field(default_factory=UncertaintyInputs)
    limits: ThermalLimits = field(default_factory=ThermalLimits)
    rule: DecisionRule = DecisionRule.GUARD_BANDED
    scale_cte_per_k: float = 0.0
    """CTE of the CMM scale; 0 means the controller (or a zero-expansion scale) handles it."""
    scale_cte_u_per_k: float = 0.0
    assumed_temp_c: float = REFERENCE_TEMP_C
    """Temperature a scale without a thermometer reading is assumed at (flag `scale_temp_assumed_20c`)."""
    assumed_temp_half_range_k: float = 2.0
    """Half-width of the range an assumed temperature stands for (the shop's range): an assumed
    scale temperature has u(T_s) = half_range / sqrt(3) (rectangular, GUM 4.3.7), not the
    thermometer's."""
    decision_resolution_um: float = DECISION_RESOLUTION_UM
    """Resolution the conformity decision is taken at (`decide_zones`)."""
    machine_mpe: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """(A um, K mm/um) of the MPE E0 = A + L/K per machine id; machines not named use `uncertainty`'s."""

    def __post_init__(self) -> None:
        require_finite("scale_cte_per_k", self.scale_cte_per_k, allow_zero=True)
        require_finite("scale_cte_u_per_k", self.scale_cte_u_per_k, allow_zero=True)
        require_finite("assumed_temp_c", self.assumed_temp_c, allow_zero=True, allow_negative=True)
        require_finite("assumed_temp_half_range_k", self.assumed_temp_half_range_k, allow_zero=False)
        require_finite("decision_resolution_um", self.decision_resolution_um, allow_zero=False)
        for machine, (a_um, k_mm_per_um) in self.machine_mpe.items():
            require_finite(f"machines.{machine}.cmm_mpe_a_um", a_um, allow_zero=True)
            require_finite(f"machines.{machine}.cmm_mpe_k_mm_per_um", k_mm_per_um, allow_zero=False)

    def mpe_per_row(self, machine_ids: Sequence[str]) -> tuple[FloatArray, FloatArray] | None:
        """(A, K) of each row's machine, or None when no machine has an MPE of its own."""
        if not self.machine_mpe:
            return None
        default = (self.uncertainty.cmm_mpe_a_um, self.uncertainty.cmm_mpe_k_mm_per_um)
        ids, inverse = np.unique(np.asarray(machine_ids, dtype=object).astype(str), return_inverse=True)
        table = np.array([self.machine_mpe.get(str(m), default) for m in ids], dtype=np.float64).reshape(-1, 2)
        return table[inverse, 0], table[inverse, 1]


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
    *,
    lower_tol_mm: ArrayLike | None = None,
    upper_tol_mm: ArrayLike | None = None,
    part_temp_u_k: ArrayLike | None = None,
    compensation: ArrayLike | None = None,
    machine_id: Sequence[str] | None = None,
) -> Evaluation:
    """Compensate, state the uncertainty, decide and flag a batch of rows.

    The specification is the symmetric `tolerance_mm` (+-tol, > 0), or, when `lower_tol_mm` and
    `upper_tol_mm` are given, the zone [nominal + lower, nominal + upper] (signed, NaN: no limit
    on that side; `tolerance_mm` is then not used). `part_temp_u_k`: u(T) per row (NaN: the
    configured thermometer's). `compensation`: Compensation codes per row (default GATEWAY);
    SOURCE rows are not corrected but keep the thermal uncertainty, NONE rows (angles, in
    degrees) are neither corrected nor given thermal or length terms: their u_c is
    `angle_u_deg`, and their `_um` results are thousandths of a degree. `machine_id` per row
    selects each row's MPE from `config.machine_mpe`.

    Temperatures that were assumed count with the uncertainty of the assumption: an absent
    scale temperature (with a scale CTE) is `config.assumed_temp_c` with u(T_s) = half-range /
    sqrt(3); a part temperature with its `part_temp_u_k`. Where the air temperature is known,
    u(T) of the part also holds its gradient term (`uncertainty.mean_temp_u_k`), which grows
    with |part - air|: a part not soaked can become UNCERTAIN.

    Optional temperatures use NaN for "not given". Raises PhysicsInputError naming the field and
    the first offending row for a non-finite or implausible input (a temperature outside the
    plausible range, a length beyond +-`limits.max_length_mm`): no number is ever produced from
    such a row. Results of valid inputs can still be implausible (e.g. a compensated length just
    above the limit): see `implausible_results`.
    """
    config = config or PhysicsConfig()
    limits = config.limits
    inputs = (measured_mm, part_temp_c, nominal_mm, cte_per_k, cte_u_per_k, air_temp_c, scale_temp_c)
    valid = valid_inputs(inputs, limits)
    if valid is not None:  # the usual case: columns of one batch, every value valid
        arrays, low, high = valid
        measured, part_temp, nominal, cte, cte_u, air_temp, scale_temp = arrays
        shape: tuple[int, ...] = measured.shape
        # No flag to compute when the extremes show none (float subtraction is monotonic, so
        # |part - air| <= max(part_max - air_min, air_max - part_min) holds for every row as computed).
        all_rated = low[1] >= limits.rated_min_c and high[1] <= limits.rated_max_c
        all_soaked = math.isnan(low[5]) or max(high[1] - low[5], high[5] - low[1]) <= limits.soak_max_diff_k
    else:  # each input converted and checked on its own: the first bad one raises
        measured = checked_input("measured_mm", measured_mm, max_length_mm=limits.max_length_mm)
        nominal = checked_input("nominal_mm", nominal_mm, max_length_mm=limits.max_length_mm)
        cte = checked_input("cte_per_k", cte_per_k, positive=False)
        cte_u = checked_input("cte_u_per_k", cte_u_per_k, positive=False)
        part_temp = checked_input("part_temp_c", part_temp_c, limits=limits)
        air_temp = checked_input("air_temp_c", air_temp_c, limits=limits, optional=True)
        scale_temp = checked_input("scale_temp_c", scale_temp_c, limits=limits, optional=True)
        shape = np.broadcast(measured, nominal, cte, cte_u, part_temp, air_temp, scale_temp).shape
        all_rated = all_soaked = False
    if lower_tol_mm is None and upper_tol_mm is None:
        tolerance = checked_input("tolerance_mm", tolerance_mm, positive=True, max_length_mm=limits.max_length_mm)
        lower, upper = -tolerance, tolerance
    else:
        nan = math.nan
        lower, upper = checked_zone(
            nan if lower_tol_mm is None else lower_tol_mm,
            nan if upper_tol_mm is None else upper_tol_mm,
            limits.max_length_mm,
        )

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
    scale_temp_u: FloatArray | None = None
    if uses_scale:
        scale_missing = _shaped(np.isnan(scale_temp), shape)
        _set_flag(flags, scale_missing, Flag.SCALE_TEMP_ASSUMED_20C)
        scale_temp_used = np.where(np.isnan(scale_temp), config.assumed_temp_c, scale_temp)
        assumed_u_k = config.assumed_temp_half_range_k / math.sqrt(3.0)
        scale_temp_u = np.where(np.isnan(scale_temp), assumed_u_k, config.uncertainty.scale_temp_u_k)
        compensated = compensate_to_20c(measured, part_temp, cte, scale_temp_used, config.scale_cte_per_k)
    else:  # the scale terms are exactly 1 and 0 with this scalar as with an array of 20 degC
        scale_temp_used = REFERENCE_TEMP_C
        compensated = compensate_part(measured, part_temp, cte)
    mpe = None if machine_id is None else config.mpe_per_row(machine_id)
    u_c = standard_uncertainty_um(
        measured,
        part_temp,
        cte,
        cte_u,
        config.uncertainty,
        scale_temp_used,
        config.scale_cte_per_k,
        config.scale_cte_u_per_k,
        part_temp_u_k,
        air_temp_c=air_temp,
        scale_temp_u_k=scale_temp_u,
        mpe_a_um=None if mpe is None else mpe[0],
        mpe_k_mm_per_um=None if mpe is None else mpe[1],
    )
    if compensation is not None:
        codes = np.broadcast_to(np.asarray(compensation, dtype=np.int8), shape)
        if codes.any():  # some rows are not corrected here: their reading is their result
            kept = codes != Compensation.GATEWAY
            compensated = np.where(kept, measured, compensated)
            angles = codes == Compensation.NONE
            if angles.any():
                u_c = np.where(angles, config.uncertainty.angle_u_deg * UM_PER_MM, u_c)
    expanded = config.uncertainty.coverage_factor * u_c
    deviation = (compensated - nominal) * UM_PER_MM
    return Evaluation(
        compensated_mm=_fresh(compensated, shape, np.float64),
        correction_um=_fresh((compensated - measured) * UM_PER_MM, shape, np.float64),
        deviation_um=_fresh(deviation, shape, np.float64),
        standard_uncertainty_um=_fresh(u_c, shape, np.float64),
        uncertainty_um=_fresh(expanded, shape, np.float64),
        verdict=_fresh(
            decide_zones(
                deviation, lower * UM_PER_MM, upper * UM_PER_MM, expanded, config.rule, config.decision_resolution_um
            ),
            shape,
            np.int8,
        ),
        flags=flags,
    )


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
