"""Timestamps of the CSV source: the exact check of one value, and NumPy conversion of a whole
column spelled alike (the usual case)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

_NS_MIN = -(2**63)
_NS_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PENDING: tuple[tuple[str, int], str | None] = (("", 0), "not checked")
SHARED_CACHE_ENTRIES = 10_000
"""Caches shared by all files of a source (ids known valid, days) are cleared when they grow beyond this."""

_UTC_TIMESTAMP_RE = re.compile(
    r"([1-9]\d{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d)(?:\.(\d{1,6}))?(?:Z|\+00:00)"
)
"""The common UTC spellings, converted for many values at once by NumPy (others: `check_timestamp`)."""
_FAST_YEARS = (1678, 2261)
"""First and last year of `Timestamps.fast` (inside the range of int64 nanoseconds)."""


def check_timestamps(raws: list[str]) -> list[tuple[tuple[str, int], str | None]]:
    """`check_timestamp` of each value; UTC timestamps in the usual form are converted vectorised."""
    results = [_PENDING] * len(raws)
    positions: list[int] = []
    canonical: list[str] = []
    for i, raw in enumerate(raws):
        match = _UTC_TIMESTAMP_RE.fullmatch(raw.strip())
        if match is None:
            results[i] = check_timestamp(raw)
        else:
            seconds, fraction = match.groups()
            positions.append(i)
            canonical.append(f"{seconds}.{(fraction or '').ljust(6, '0')}")
    if positions:
        try:
            unix_us = np.array(canonical, dtype="datetime64[us]").astype(np.int64)
            in_range = bool(unix_us.min() > _NS_MIN // 1000 and unix_us.max() < _NS_MAX // 1000)
        except ValueError:  # e.g. 31 April: the exact path names the bad value
            in_range = False
        if in_range:
            for i, text, us in zip(positions, canonical, unix_us.tolist(), strict=True):
                results[i] = ((text + "Z", us * 1000), None)
        else:
            for i in positions:
                results[i] = check_timestamp(raws[i])
    return results


@dataclass(frozen=True)
class StampLayout:
    """One fixed-width spelling of UTC timestamps `_UTC_TIMESTAMP_RE` accepts, for `Timestamps.fast`."""

    template: NDArray[np.uint8]
    """The bytes of a timestamp and its line end, "0" for each digit."""
    limit: NDArray[np.uint8]
    """A byte is right when (byte XOR template) < limit: 1 for the fixed characters, 10 for a
    digit, 3 for the tens of the hour, 6 for the tens of minutes and seconds."""
    time_template: bytes
    """`template` after the date."""
    day_limit: NDArray[np.uint8]
    """`limit` with the date fixed (the date of the first value, put into the template)."""
    weights: NDArray[np.float64]
    """Digit weights giving (year, month, day, hour, year * 12 + month, nanoseconds into the
    month + 1 day) as one matrix product (exact: every sum is an integer below 2**53)."""
    day_weights: NDArray[np.float64]
    """Digit weights giving (hour, nanoseconds into the day)."""
    suffix: str
    """`Z` or `+00:00`, as spelled."""
    pad: str
    """What turns the fraction into 6 digits in the canonical form (with the dot when none is given)."""


_STAMP_LOW = np.array([_FAST_YEARS[0], 1, 1, 0])
_STAMP_HIGH = np.array([_FAST_YEARS[1], 12, 31, 23])
_MONTH_STARTS = np.arange(f"{_FAST_YEARS[0]}-01", f"{_FAST_YEARS[1] + 1}-02", dtype="datetime64[M]")
_MONTH_START_NS = (_MONTH_STARTS.astype("datetime64[s]").astype(np.int64) - 86_400) * 1_000_000_000
"""Unix nanoseconds of the day before the first of each month, from January of the first fast year on."""
_MONTH_DAYS = np.diff(_MONTH_STARTS.astype("datetime64[D]").astype(np.int64))
_DATE_RE = re.compile(r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])")


def _build_layout(length: int, suffix: str) -> StampLayout | None:
    """The layout of `length`-character timestamps ending in `suffix` (see `Timestamps.layout`)."""
    digits = length - len(suffix) - 20  # of the fraction, after "YYYY-MM-DDTHH:MM:SS."
    if digits == -1 or 1 <= digits <= 6:
        fraction = "." + "0" * digits if digits > 0 else ""
        text = "0000-00-00T00:00:00" + fraction
        template = np.frombuffer((text + suffix + "\n").encode(), dtype=np.uint8)
        limit = np.ones(len(template), dtype=np.uint8)
        limit[[i for i, c in enumerate(text) if c == "0"]] = 10
        limit[[11, 14, 17]] = [3, 6, 6]
        day_limit = limit.copy()
        day_limit[:10] = 1
        fraction_digits = max(digits, 0)
        weights = np.zeros((len(template), 6), dtype=np.float64)
        day_weights = np.zeros((len(template), 2), dtype=np.float64)
        second = 1_000_000_000
        for matrix, column, start, size, scale in (
            (weights, 0, 0, 4, 1),  # year
            (weights, 1, 5, 2, 1),  # month
            (weights, 2, 8, 2, 1),  # day
            (weights, 3, 11, 2, 1),  # hour
            (weights, 4, 0, 4, 12),  # year * 12 + month
            (weights, 4, 5, 2, 1),
            (weights, 5, 8, 2, 86_400 * second),  # nanoseconds into the month + 1 day
            (weights, 5, 11, 2, 3_600 * second),
            (weights, 5, 14, 2, 60 * second),
            (weights, 5, 17, 2, second),
            (weights, 5, 20, fraction_digits, 10 ** (9 - fraction_digits)),
            (day_weights, 0, 11, 2, 1),  # hour
            (day_weights, 1, 11, 2, 3_600 * second),  # nanoseconds into the day
            (day_weights, 1, 14, 2, 60 * second),
            (day_weights, 1, 17, 2, second),
            (day_weights, 1, 20, fraction_digits, 10 ** (9 - fraction_digits)),
        ):
            for k in range(size):
                matrix[start + k, column] += scale * 10 ** (size - 1 - k)
        pad = ("" if digits > 0 else ".") + "0" * (6 - fraction_digits)
        time_template = template[10:].tobytes()
        return StampLayout(template, limit, time_template, day_limit, weights, day_weights, suffix, pad)
    return None


_NOT_SEEN = -1
"""Not in `Timestamps._days` (never the start of a day, a multiple of 86,400)."""


class Timestamps:
    """Converts columns of timestamps; remembers the layouts of the spellings and the days seen."""

    def __init__(self) -> None:
        self._layouts: dict[tuple[int, str], StampLayout] = {}
        self._days: dict[str, int | None] = {}
        """Date (YYYY-MM-DD) -> Unix seconds of its start, None if no such day in the fast years."""

    def layout(self, length: int, suffix: str) -> StampLayout | None:
        """The layout of `length`-character timestamps ending in `suffix`; None if the regex takes no such one."""
        layout = self._layouts.get((length, suffix))
        if layout is None:
            layout = _build_layout(length, suffix)
            if layout is not None:
                self._layouts[length, suffix] = layout
        return layout

    def day_seconds(self, date: str) -> int | None:
        """Unix seconds at the start of `date` (YYYY-MM-DD), None if it is no day of the fast years."""
        seconds = self._days.get(date, _NOT_SEEN)
        if seconds == _NOT_SEEN:
            seconds = None
            if _DATE_RE.fullmatch(date) and _FAST_YEARS[0] <= int(date[:4]) <= _FAST_YEARS[1]:
                try:
                    start = datetime(int(date[:4]), int(date[5:7]), int(date[8:10]), tzinfo=UTC)
                except ValueError:  # e.g. 31 April
                    pass
                else:
                    seconds = (start - _EPOCH).days * 86_400
            if len(self._days) >= SHARED_CACHE_ENTRIES:
                self._days.clear()
            self._days[date] = seconds
        return seconds

    def fast(self, raws: list[str]) -> tuple[list[str], NDArray[np.int64]] | None:
        """Canonical forms and Unix nanoseconds of a column of timestamps, all valid and spelled alike.

        The same results as `check_timestamps` for a column whose values all have one length and
        one UTC suffix, match `_UTC_TIMESTAMP_RE` with ASCII digits, name existing days and fall in
        the years _FAST_YEARS (always in the nanosecond range); None for any other column. The
        checks and the arithmetic are done by NumPy on the bytes of all values at once, with fewer
        steps when all values are of one day (the date is then checked once, and its start looked up).
        """
        first = raws[0]
        suffix = "Z" if first.endswith("Z") else "+00:00" if first.endswith("+00:00") else ""
        layout = self.layout(len(first), suffix) if suffix else None
        if layout is None:
            return None
        text = "\n".join(raws) + "\n"
        count = len(raws)
        width = len(layout.template)
        if len(text) != count * width or not text.isascii():
            return None
        data = np.ndarray((count, width), dtype=np.uint8, buffer=text.encode("ascii"))
        unix_ns: NDArray[np.int64] | None = None
        day = self.day_seconds(first[:10])
        if day is not None:  # try: every value of this day (the date is then part of the template)
            template = np.frombuffer(first[:10].encode("ascii") + layout.time_template, dtype=np.uint8)
            digits = data ^ template  # digit values where digits go, 0 where the template matches
            if (digits < layout.day_limit).all():
                hour, nanoseconds = (digits @ layout.day_weights).astype(np.int64).T
                if hour.max() > 23:
                    return None
                unix_ns = nanoseconds + day * 1_000_000_000
        if unix_ns is None:  # values of several days (or a bad one)
            digits = data ^ layout.template
            if not (digits < layout.limit).all():
                return None
            fields = (digits @ layout.weights).astype(np.int64)
            if ((fields[:, :4] < _STAMP_LOW) | (fields[:, :4] > _STAMP_HIGH)).any():
                return None
            month = fields[:, 4] - (_FAST_YEARS[0] * 12 + 1)
            if (fields[:, 2] > 28).any() and (fields[:, 2] > _MONTH_DAYS[month]).any():
                return None  # e.g. 31 April: `check_timestamp` names the bad value
            unix_ns = _MONTH_START_NS[month] + fields[:, 5]
        if layout.suffix == "Z" and not layout.pad:
            return list(raws), unix_ns
        canonical = text.replace(layout.suffix + "\n", layout.pad + "Z\n").split("\n")
        canonical.pop()
        return canonical, unix_ns


def check_timestamp(raw: str) -> tuple[tuple[str, int], str | None]:
    """(canonical form, Unix nanoseconds) of one timestamp, and the reason it is invalid or None."""
    text = raw.strip()
    fill = ("", 0)
    if not text:
        return fill, "missing value"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return fill, f"not an ISO 8601 timestamp: {text!r}"
    if moment.tzinfo is None:
        return fill, "timestamp needs a UTC offset"
    try:
        delta = moment - _EPOCH
    except OverflowError:
        return fill, f"timestamp out of range: {text!r}"
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if not _NS_MIN <= ns <= _NS_MAX:
        return fill, f"timestamp out of range: {text!r}"
    # the text of records.canonical_timestamp (years 1678..2262 here), without its slow strftime
    canonical = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return (canonical, ns), None
