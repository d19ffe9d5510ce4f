"""Numbers of the CSV source: lengths and temperatures, converted and range-checked a whole
column (or all numeric columns) at once, value by value only where that fails."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.csv.header import LIMIT_COLUMNS, OPTIONAL_COLUMNS
from cmm_twin.gateway.sources.csv.zones import zones
from cmm_twin.gateway.sources.rows import IngestSettings, RowError

NUMBER_COLUMNS = (
    "nominal_mm",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "measured_mm",
    "part_temp_c",
    "air_temp_c",
    "scale_temp_c",
)
"""Numeric columns in contract order (a row's first error is looked for in this order)."""
_EMPTY = "nan"
"""Stands for an empty optional value while a column is converted (found again by identity)."""


class Numbers:
    """Converts and checks the numeric columns of chunks against the settings' ranges."""

    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        self._range_reason = (
            f"outside the plausible range {settings.plausible_min_c:g}..{settings.plausible_max_c:g} degC"
        )

    def convert_all(
        self, columns: dict[str, list[str]], lines: NDArray[np.int64], bad: dict[int, RowError]
    ) -> dict[str, NDArray[np.float64]]:
        """The numeric columns as float64 (`convert` of each); row errors into `bad`. Also the
        specification zone of each row: `lower_tol_mm`, `upper_tol_mm` (-tol, +tol of a symmetric
        tolerance) and `tolerance_mm` (NaN for an asymmetric or one-sided zone); see `zones`.

        Fast path: NumPy converts all numeric columns at once and a row-wise min and max show
        that every value is valid; otherwise each column goes through `convert`.
        """
        size = len(lines)
        names = [name for name in NUMBER_COLUMNS if name in columns]
        limits = any(name in columns for name in LIMIT_COLUMNS)
        values: list[str] = []
        for name in names:
            values += columns[name]
        joined = "\x00".join(values)
        block: NDArray[np.float64] | None = None
        if joined.isascii() and "_" not in joined:
            try:
                block = np.array(values, dtype=np.float64).reshape(len(names), size)
            except ValueError:
                block = None
        numbers: dict[str, NDArray[np.float64]]
        if block is not None and self._all_valid(names, block):
            numbers = dict(zip(names, block, strict=True))
            if limits:
                self._zones(numbers, size, lines, bad)
        else:
            numbers = {}
            for name in names:
                if limits and name == "measured_mm":  # the zone's errors come before the later columns'
                    self._zones(numbers, size, lines, bad)
                numbers[name] = self.convert(name, columns[name], lines, bad, tolerance_optional=limits)
        if not limits:
            tolerance = numbers["tolerance_mm"]
            numbers["lower_tol_mm"] = -tolerance
            numbers["upper_tol_mm"] = tolerance.copy()
        for name in NUMBER_COLUMNS:
            if name not in numbers:
                numbers[name] = np.full(size, np.nan)
        return numbers

    def _zones(
        self, numbers: dict[str, NDArray[np.float64]], size: int, lines: NDArray[np.int64], bad: dict[int, RowError]
    ) -> None:
        """Replace the tolerance columns in `numbers` (those given, NaN where empty) by the rows' zones."""
        no_value = np.full(size, np.nan)
        tolerance, lower, upper = (numbers.get(name, no_value) for name in ("tolerance_mm", *LIMIT_COLUMNS))
        numbers["tolerance_mm"], numbers["lower_tol_mm"], numbers["upper_tol_mm"] = zones(
            tolerance, lower, upper, lines, bad
        )

    def _all_valid(self, names: list[str], block: NDArray[np.float64]) -> bool:
        """Whether `convert` finds no error in the rows of `block` (every value given, as in `block`)."""
        low = block.min(axis=1).tolist()  # NaN in a row gives NaN, which fails every comparison below
        high = block.max(axis=1).tolist()
        minimum, maximum = self._settings.plausible_min_c, self._settings.plausible_max_c
        for name, lo, hi in zip(names, low, high, strict=True):
            if name.endswith("_temp_c"):
                if not (lo >= minimum and hi <= maximum):
                    return False
            elif name in LIMIT_COLUMNS:
                if not (lo >= -self._settings.max_length_mm and hi <= self._settings.max_length_mm):
                    return False
            elif not (lo > 0.0 and hi <= self._settings.max_length_mm):
                return False
        return True

    def convert(
        self,
        name: str,
        column: list[str],
        lines: NDArray[np.int64],
        bad: dict[int, RowError],
        tolerance_optional: bool = False,
    ) -> NDArray[np.float64]:
        """The column as float64 (NaN where an optional value is empty); row errors into `bad`.
        `tolerance_optional`: `tolerance_mm` may be empty too (a file with limit columns).

        Fast path: NumPy converts the whole column (Python `float` syntax), in an optional column
        with its empty values filled in first; only when that fails (a malformed value) is each
        value converted on its own.
        """
        optional = name in OPTIONAL_COLUMNS or (tolerance_optional and name == "tolerance_mm")
        reasons: dict[int, str] = {}
        found = _at_once(column, optional)
        if isinstance(found, float):
            return np.full(len(column), found)  # an optional column left empty
        per_value = found is None
        empty: list[int] = []
        if found is None:  # slow path: malformed values, found one by one
            values = np.empty(len(column), dtype=np.float64)
            for i, raw in enumerate(column):
                number, reason, given = parse_number(raw)
                values[i] = number
                if reason is not None and (given or not optional):
                    reasons[i] = reason
        else:
            values, empty = found
            if empty:
                values[empty] = np.nan
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(values)
        if not per_value:
            nonfinite = ~finite
            nonfinite[empty] = False
            for i in np.flatnonzero(nonfinite).tolist():
                reasons[i] = f"not a finite number: {column[i].strip()!r}"
        self._range_reasons(name, values, finite, reasons)
        for i in sorted(reasons):
            if i not in bad:
                bad[i] = RowError(int(lines[i]), name, reasons[i])
        return values

    def _range_reasons(
        self, name: str, values: NDArray[np.float64], finite: NDArray[np.bool_], reasons: dict[int, str]
    ) -> None:
        """The reason of each finite value of column `name` out of its range, into `reasons`."""
        temperature = name.endswith("_temp_c")
        limit = self._settings.max_length_mm
        if name in LIMIT_COLUMNS:  # signed: any value within +-max_length_mm
            for i in np.flatnonzero(finite & (np.abs(values) > limit)).tolist():
                reasons[i] = f"must be within +-{limit:g} mm (limits.max_length_mm), got {float(values[i])!r}"
            return
        with np.errstate(invalid="ignore"):
            if temperature:
                out_of_range = finite & (
                    (values < self._settings.plausible_min_c) | (values > self._settings.plausible_max_c)
                )
            else:
                too_long = finite & (values > self._settings.max_length_mm)
                out_of_range = (finite & (values <= 0.0)) | too_long
        for i in np.flatnonzero(out_of_range).tolist():
            got = float(values[i])
            if temperature:
                reasons[i] = f"{self._range_reason}, got {got!r}"
            elif got > 0.0:
                reasons[i] = f"must be <= {self._settings.max_length_mm:g} mm (limits.max_length_mm), got {got!r}"
            else:
                reasons[i] = f"must be > 0, got {got!r}"


def _at_once(column: list[str], optional: bool) -> tuple[NDArray[np.float64], list[int]] | float | None:
    """The column converted by NumPy at once and the positions of its empty optional values (NaN
    for now); NaN itself for an optional column left empty; None when a value is malformed."""
    joined = "\x00".join(column)
    if not joined.isascii() or "_" in joined:
        return None
    try:
        return np.array(column, dtype=np.float64), []
    except ValueError:
        pass
    if not optional:
        return None
    if not joined.replace("\x00", "").strip():
        return math.nan
    filled = [value if value and not value.isspace() else _EMPTY for value in column]
    try:
        values = np.array(filled, dtype=np.float64)
    except ValueError:
        return None
    return values, [i for i, value in enumerate(filled) if value is _EMPTY]


def parse_number(raw: str) -> tuple[float, str | None, bool]:
    """(value, reason it is invalid or None, whether a value was given at all)."""
    text = raw.strip()
    if not text:
        return math.nan, "missing value", False
    if not text.isascii() or "_" in text:
        return math.nan, f"not a number: {text!r}", True
    try:
        number = float(text)
    except ValueError:
        return math.nan, f"not a number: {text!r}", True
    if not math.isfinite(number):
        return math.nan, f"not a finite number: {text!r}", True
    return number, None, True
