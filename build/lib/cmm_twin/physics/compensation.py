"""Thermal compensation of a length to 20 degC and its inverse (pure NumPy, no I/O).

References: ISO 1:2022 (20 degC is the reference temperature for geometrical product
specification); ISO/TR 16015:2003 (exact and differential expansion model).
"""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import ArrayLike, NDArray

REFERENCE_TEMP_C = 20.0
"""ISO 1 reference temperature."""

UM_PER_MM = 1000.0

FloatArray = NDArray[np.float64]


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


def compensate_part(measured: FloatArray, part_temp: FloatArray, cte: FloatArray) -> FloatArray:
    """`compensate_to_20c` without a scale CTE: its scale factor is then exactly 1, and
    L * 1 / f is L / f to the last bit, one NumPy step fewer."""
    part_factor = 1.0 + cte * (part_temp - REFERENCE_TEMP_C)
    return np.asarray(measured / part_factor, dtype=np.float64)


class Compensation(enum.IntEnum):
    """Who corrects a value to 20 degC; the integer is the code stored in compensation arrays.

    GATEWAY: the gateway (a length read at the part temperature). SOURCE: the CMM software already
    did; the value is not corrected twice, but its uncertainty still carries the thermal terms at
    the recorded temperature. NONE: nothing to correct (an angle: thermal expansion does not change
    it; no thermal terms either)."""

    GATEWAY = 0
    SOURCE = 1
    NONE = 2


COMPENSATION_NAMES: NDArray[np.str_] = np.array([c.name.lower() for c in Compensation])
"""COMPENSATION_NAMES[code] is the name a record carries (`gateway`, `source`, `none`)."""
