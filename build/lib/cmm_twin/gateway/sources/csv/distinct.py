"""Checks of the distinct values of a column: each distinct value is checked once (a column holds
few of them: one machine, a few features, one day), the results remembered per file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.rows import RowError

T = TypeVar("T")
Check = Callable[[list[str]], list[tuple[T, str | None]]]
"""Check of distinct values: each gives (converted value, None), or (a fill value, reason) when invalid."""
CACHE_MAX_ENTRIES = 100_000
"""Per-file caches of distinct values are cleared when they grow beyond this."""


def check_distinct(
    name: str,
    column: list[str],
    check: Check[T],
    cache: dict[str, tuple[T, str | None]],
    lines: NDArray[np.int64],
    bad: dict[int, RowError],
) -> dict[str, T]:
    """Check each distinct value of `column` once (results cached per file); raw value -> converted.

    Rows holding an invalid value get their RowError in `bad` (unless they have one already).
    """
    if len(cache) > CACHE_MAX_ENTRIES:
        cache.clear()
    distinct = set(column)
    new = [raw for raw in distinct if raw not in cache]
    if new:
        cache.update(zip(new, check(new), strict=True))
    converted: dict[str, T] = {}
    invalid: dict[str, str] = {}
    for raw in distinct:
        value, reason = cache[raw]
        converted[raw] = value
        if reason is not None:
            invalid[raw] = reason
    if invalid:
        for i, raw in enumerate(column):
            reason = invalid.get(raw)
            if reason is not None and i not in bad:
                bad[i] = RowError(int(lines[i]), name, reason)
    return converted


def mapped(column: list[str], converted: dict[str, str]) -> list[str]:
    """`column` with each value replaced by its converted form (the column itself if none changes)."""
    if all(raw is value for raw, value in converted.items()):
        return column
    return list(map(converted.__getitem__, column))
