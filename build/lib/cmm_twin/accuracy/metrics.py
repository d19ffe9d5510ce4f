"""Accuracy figures of gateway results against the simulator's ground truth (pure NumPy, no I/O).

One `Features` holds the joined features of a cell (a scenario, or a scenario x material or
feature kind); `cell_figures` computes its figures:

- errors: raw - true and compensated - true, in thousandths of the unit (um for lengths in mm,
  thousandths of a degree for angles). RMS and max are taken over the length features of the cell
  when it has any, else over its angles: a length error and an angle error do not add up.
- coverage: the share of features with |compensated - true| <= U, the record's expanded
  uncertainty (k = 2, ISO/IEC Guide 98-3 6.2); a feature without a finite U is not covered.
- decisions, among truly conforming features (the truth's `conforming`): false FAIL with the
  gateway's verdict, and with the simple rule on the raw reading (PASS iff the reading's deviation
  from nominal lies within the limits, ISO 14253-1's rule without a guard band); among truly
  nonconforming features: false PASS, likewise. UNCERTAIN is the share of all features.
A share over no features is NaN (printed as a dash).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from numpy.typing import NDArray

from cmm_twin.physics.decision import DecisionRule, Verdict, decide_zones

FloatArray = NDArray[np.float64]
MILLI = 1000.0
"""mm -> um and deg -> thousandths of a degree."""
UNIT_LABELS = {"mm": "um", "deg": "mdeg"}
"""The error unit of each record unit."""


@dataclass(frozen=True, eq=False)
class Features:
    """Joined features (truth x gateway record), one element per feature, values in the record's unit."""

    unit: NDArray[np.str_]
    """`mm` or `deg`."""
    true_value: FloatArray
    """True size at 20 degC."""
    raw_value: FloatArray
    """The CMM's reading (`measured_mm`)."""
    compensated_value: FloatArray
    uncertainty_milli: FloatArray
    """Expanded uncertainty U (k = 2) in um (lengths) or thousandths of a degree (angles)."""
    verdict: NDArray[np.int8]
    """The gateway's verdict codes (`Verdict`)."""
    nominal: FloatArray
    lower_tol: FloatArray
    """Signed lower limit relative to the nominal; NaN: no lower limit."""
    upper_tol: FloatArray
    """Signed upper limit relative to the nominal; NaN: no upper limit."""
    conforming: NDArray[np.bool_]
    """True when the true value lies within the limits (the truth's verdict)."""

    def __len__(self) -> int:
        return int(self.true_value.shape[0])

    def select(self, rows: NDArray[np.bool_] | NDArray[np.intp]) -> Features:
        """The features at `rows` (a mask or index array)."""
        return Features(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(parts: list[Features]) -> Features:
        """One set holding the features of `parts` in order (at least one)."""
        return Features(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Features)})


@dataclass(frozen=True)
class CellFigures:
    """The figures of one cell (see the module docstring); shares are fractions, NaN over nothing."""

    n: int
    error_unit: str
    """`um`, `mdeg`, or `um` of the lengths only when the cell mixes lengths and angles."""
    n_errors: int
    """Features the RMS and max are taken over."""
    mixed_units: bool
    rms_raw: float
    max_raw: float
    rms_compensated: float
    max_compensated: float
    coverage: float
    n_good: int
    false_fail_verdict: float
    false_fail_raw: float
    n_bad: int
    false_pass_verdict: float
    false_pass_raw: float
    uncertain: float


def raw_verdict(features: Features) -> NDArray[np.int8]:
    """Verdict codes of the simple rule on the raw reading (no guard band; compared as the gateway's
    simple rule compares, on the deviation in thousandths of the unit)."""
    deviation = (features.raw_value - features.nominal) * MILLI
    return decide_zones(
        deviation,
        features.lower_tol * MILLI,
        features.upper_tol * MILLI,
        np.zeros_like(deviation),
        DecisionRule.SIMPLE,
    )


def _share(mask: NDArray[np.bool_]) -> float:
    return float(mask.mean()) if mask.size else float("nan")


def _rms(values: FloatArray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def _max_abs(values: FloatArray) -> float:
    return float(np.abs(values).max()) if values.size else float("nan")


def cell_figures(features: Features) -> CellFigures:
    """The figures of one cell of features."""
    lengths = features.unit == "mm"
    mixed = bool(lengths.any() and (~lengths).any())
    in_errors = lengths if lengths.any() else np.ones(len(features), dtype=np.bool_)
    error_unit = UNIT_LABELS.get(str(features.unit[in_errors][0]), "?") if len(features) else "um"
    raw_error = (features.raw_value - features.true_value)[in_errors] * MILLI
    compensated_error = (features.compensated_value - features.true_value) * MILLI
    with np.errstate(invalid="ignore"):
        covered = np.abs(compensated_error) <= features.uncertainty_milli
    raw = raw_verdict(features)
    good = features.conforming
    bad = ~good
    return CellFigures(
        n=len(features),
        error_unit=error_unit,
        n_errors=int(in_errors.sum()),
        mixed_units=mixed,
        rms_raw=_rms(raw_error),
        max_raw=_max_abs(raw_error),
        rms_compensated=_rms(compensated_error[in_errors]),
        max_compensated=_max_abs(compensated_error[in_errors]),
        coverage=_share(covered),
        n_good=int(good.sum()),
        false_fail_verdict=_share(features.verdict[good] == Verdict.FAIL),
        false_fail_raw=_share(raw[good] == Verdict.FAIL),
        n_bad=int(bad.sum()),
        false_pass_verdict=_share(features.verdict[bad] == Verdict.PASS),
        false_pass_raw=_share(raw[bad] == Verdict.PASS),
        uncertain=_share(features.verdict == Verdict.UNCERTAIN),
    )


def grouped_figures(features: Features, keys: NDArray[np.str_]) -> dict[str, CellFigures]:
    """`cell_figures` of each group of features with the same key, keys sorted."""
    return {str(key): cell_figures(features.select(keys == key)) for key in np.unique(keys)}
