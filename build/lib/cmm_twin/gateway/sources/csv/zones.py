"""The specification zone of each CSV row: a symmetric `tolerance_mm`, or the limits
`lower_tol_mm` / `upper_tol_mm` (signed, relative to the nominal), settled for a whole column at once.

Per row: `tolerance_mm` given -> [-tol, +tol]; else the limits given (an empty limit: none on that
side, a one-sided zone). A row giving both `tolerance_mm` and a limit, a row giving neither (the CSV
contract makes a limit required: such a row is an error, not an UNDEFINED verdict), and a lower
limit above the upper one are row errors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.rows import RowError

FloatArray = NDArray[np.float64]

NO_TOLERANCE = "no tolerance: give tolerance_mm or lower_tol_mm / upper_tol_mm"
BOTH_GIVEN = "tolerance_mm is given too: a row gives either tolerance_mm or lower_tol_mm / upper_tol_mm"


def zones(
    tolerance: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    lines: NDArray[np.int64],
    bad: dict[int, RowError],
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(tolerance_mm, lower_tol_mm, upper_tol_mm) of each row from the converted columns (NaN: the
    value is empty, or its column absent). The tolerance is NaN for an asymmetric or one-sided
    zone, except that equal and opposite limits (lower == -upper > 0) also give it. Rows whose
    values do not make a zone get their RowError in `bad` (unless they have one already)."""
    has_tolerance = ~np.isnan(tolerance)
    has_lower = ~np.isnan(lower)
    has_upper = ~np.isnan(upper)
    if has_tolerance.all() and not (has_lower.any() or has_upper.any()):  # a symmetric file with empty limits
        return tolerance, -tolerance, tolerance.copy()
    by_limits = ~has_tolerance
    both = has_tolerance & (has_lower | has_upper)
    neither = by_limits & ~has_lower & ~has_upper
    with np.errstate(invalid="ignore"):
        crossed = by_limits & (lower > upper)
    if both.any() or neither.any() or crossed.any():
        for i in np.flatnonzero(both | neither | crossed).tolist():
            if i in bad:
                continue
            if both[i]:
                error = RowError(int(lines[i]), "lower_tol_mm" if has_lower[i] else "upper_tol_mm", BOTH_GIVEN)
            elif neither[i]:
                error = RowError(int(lines[i]), None, NO_TOLERANCE)
            else:
                error = RowError(
                    int(lines[i]),
                    "lower_tol_mm",
                    f"must not exceed upper_tol_mm ({float(upper[i])!r}), got {float(lower[i])!r}",
                )
            bad[i] = error
    zone_lower = np.where(has_tolerance, -tolerance, lower)
    zone_upper = np.where(has_tolerance, tolerance, upper)
    with np.errstate(invalid="ignore"):
        symmetric = by_limits & (upper > 0.0) & (lower == -upper)
    return np.where(symmetric, upper, tolerance), zone_lower, zone_upper
