"""The GUM uncertainty budget of a length compensated to 20 degC (pure NumPy, no I/O).

References: JCGM 100:2008 (GUM), first-order propagation of uncorrelated standard uncertainties;
ISO/TR 16015:2003 for the thermal terms; ISO 10360-2:2009 for the CMM's MPE E0 = A + L/K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cmm_twin.physics.checks import require_finite
from cmm_twin.physics.compensation import REFERENCE_TEMP_C, UM_PER_MM, FloatArray


@dataclass(frozen=True)
class UncertaintyInputs:
    """Inputs of the GUM budget; defaults as README, "The physics, by hand"."""

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
    gradient_factor: float = 0.2
    """Temperature gradient of a part not at equilibrium with the air: the part's mean
    temperature is taken to lie within +-gradient_factor * |T_part - T_air| of the surface
    reading, rectangular, so u(T) gains gradient_factor * |T_part - T_air| / sqrt(3) (only where
    the air temperature is known; 0 switches the term off). ISO/TR 16015 counts the temperature
    variation within a workpiece among the uncertainty contributions of its mean temperature;
    this half-width is this project's model of it (see docs/uncertainty.md)."""
    angle_u_deg: float = 0.005
    """Standard uncertainty of an angle the CMM reports, degrees. An assumption to set from the
    machine's own angle test: 0.005 deg is about what a CMM with E0 = 1.5 um achieves on two
    lines of 20 mm (u ~ sqrt(2) * 1 um / 20 mm = 7e-5 rad). Angles carry no thermal terms."""

    def __post_init__(self) -> None:
        names = ("part_temp_u_k", "scale_temp_u_k", "cmm_mpe_a_um", "repeatability_um", "gradient_factor")
        for name in (*names, "angle_u_deg"):
            require_finite(name, getattr(self, name), allow_zero=True)
        require_finite("cmm_mpe_k_mm_per_um", self.cmm_mpe_k_mm_per_um, allow_zero=False)
        require_finite("coverage_factor", self.coverage_factor, allow_zero=False)


def cmm_mpe_um(
    length_mm: ArrayLike,
    inputs: UncertaintyInputs,
    mpe_a_um: ArrayLike | None = None,
    mpe_k_mm_per_um: ArrayLike | None = None,
) -> FloatArray:
    """Maximum permissible error E0 = A + L/K of the CMM (ISO 10360-2), um; `mpe_a_um` and
    `mpe_k_mm_per_um` give A and K per row (the row's machine), else `inputs`' A and K."""
    a = inputs.cmm_mpe_a_um if mpe_a_um is None else np.asarray(mpe_a_um, dtype=np.float64)
    k = inputs.cmm_mpe_k_mm_per_um if mpe_k_mm_per_um is None else np.asarray(mpe_k_mm_per_um, dtype=np.float64)
    return np.asarray(a + np.asarray(length_mm, dtype=np.float64) / k)


def mean_temp_u_k(
    inputs: UncertaintyInputs,
    part_temp_c: ArrayLike,
    air_temp_c: ArrayLike = math.nan,
    given_u_k: ArrayLike | None = None,
) -> FloatArray | float:
    """u(T) of the part's mean temperature, K: the thermometer's (`given_u_k` per row, NaN: the
    configured one, e.g. an assumed temperature's larger one) combined with the gradient term
    gradient_factor * |T_part - T_air| / sqrt(3) where the air temperature is known."""
    u_temp: FloatArray | float = inputs.part_temp_u_k
    if given_u_k is not None:
        given = np.asarray(given_u_k, dtype=np.float64)
        u_temp = np.where(np.isnan(given), inputs.part_temp_u_k, given)
    if inputs.gradient_factor == 0.0:
        return u_temp
    air = np.asarray(air_temp_c, dtype=np.float64)
    if air.ndim == 0 and math.isnan(float(air)):
        return u_temp
    half_width_k = inputs.gradient_factor * np.abs(np.asarray(part_temp_c, dtype=np.float64) - air)
    gradient_k = np.where(np.isnan(half_width_k), 0.0, half_width_k) / math.sqrt(3.0)
    return np.asarray(np.hypot(u_temp, gradient_k), dtype=np.float64)


def standard_uncertainty_um(
    length_mm: ArrayLike,
    part_temp_c: ArrayLike,
    cte_per_k: ArrayLike,
    cte_u_per_k: ArrayLike,
    inputs: UncertaintyInputs,
    scale_temp_c: ArrayLike = REFERENCE_TEMP_C,
    scale_cte_per_k: float = 0.0,
    scale_cte_u_per_k: float = 0.0,
    part_temp_u_k: ArrayLike | None = None,
    *,
    air_temp_c: ArrayLike = math.nan,
    scale_temp_u_k: ArrayLike | None = None,
    mpe_a_um: ArrayLike | None = None,
    mpe_k_mm_per_um: ArrayLike | None = None,
) -> FloatArray:
    """Combined standard uncertainty u_c of the length at 20 degC, um (GUM, first order).

    u_c^2 = (L*dT*u(a))^2 + (L*a*u(T))^2 + u_cmm^2 + u_rep^2, with u_cmm = E0/sqrt(3) (MPE taken
    as rectangular); with a scale CTE the two scale terms (L*dT_s*u(a_s))^2 + (L*a_s*u(T_s))^2
    are added (ISO/TR 16015). Inputs are taken as uncorrelated. L is taken as |L| (a coordinate
    can be negative). `part_temp_u_k`: the thermometer's u(T) per row (NaN: `inputs.part_temp_u_k`),
    e.g. the larger one of an assumed temperature; with `air_temp_c` u(T) gains the gradient term
    (`mean_temp_u_k`). `scale_temp_u_k`: u(T_s) per row (default the scale
    thermometer's), e.g. an assumed scale temperature's. `mpe_a_um`, `mpe_k_mm_per_um`: the
    MPE of each row's machine (`cmm_mpe_um`).
    """
    length = np.abs(np.asarray(length_mm, dtype=np.float64))
    delta_t = np.asarray(part_temp_c, dtype=np.float64) - REFERENCE_TEMP_C
    cte = np.asarray(cte_per_k, dtype=np.float64)
    u_cte = np.asarray(cte_u_per_k, dtype=np.float64)
    length_um = length * UM_PER_MM
    u_temp = mean_temp_u_k(inputs, part_temp_c, air_temp_c, part_temp_u_k)
    variance = (
        (length_um * delta_t * u_cte) ** 2
        + (length_um * cte * u_temp) ** 2
        + (cmm_mpe_um(length, inputs, mpe_a_um, mpe_k_mm_per_um) / math.sqrt(3.0)) ** 2
        + inputs.repeatability_um**2
    )
    if scale_cte_per_k or scale_cte_u_per_k:
        delta_ts = np.asarray(scale_temp_c, dtype=np.float64) - REFERENCE_TEMP_C
        u_scale_temp = inputs.scale_temp_u_k if scale_temp_u_k is None else np.asarray(scale_temp_u_k, dtype=np.float64)
        variance = (
            variance
            + (length_um * delta_ts * scale_cte_u_per_k) ** 2
            + (length_um * scale_cte_per_k * u_scale_temp) ** 2
        )
    return np.asarray(np.sqrt(variance), dtype=np.float64)
