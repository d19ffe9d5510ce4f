"""Machine, feature and part ids of the CSV source (the contract: README, 'The CSV format (inbox)')."""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.csv.distinct import check_distinct, mapped
from cmm_twin.gateway.sources.rows import RowError

MAX_ID_CHARS = 64
SHARED_ID_ENTRIES = 10_000
"""Ids known valid, remembered across files, are forgotten when they grow beyond this."""
_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class IdColumns:
    """Checks id columns; remembers, across files, the machine and feature ids accepted unchanged
    (valid, nothing to strip)."""

    def __init__(self) -> None:
        self._clean: set[str] = set()

    def ids(
        self,
        name: str,
        column: list[str],
        cache: dict[str, tuple[str, str | None]],
        lines: NDArray[np.int64],
        bad: dict[int, RowError],
    ) -> list[str]:
        """The machine or feature ids of `column` (stripped); row errors into `bad`. `cache`: the
        file's checked values."""
        if self._clean.issuperset(column):  # every value seen before, valid as it is
            return column
        ids = mapped(column, check_distinct(name, column, check_ids, cache, lines, bad))
        if len(self._clean) > SHARED_ID_ENTRIES:
            self._clean.clear()
        for raw in set(column):
            if cache[raw] == (raw, None):
                self._clean.add(raw)
        return ids

    @staticmethod
    def part_ids(column: list[str], lines: NDArray[np.int64], bad: dict[int, RowError]) -> list[str]:
        """The part ids of `column` (stripped); row errors into `bad`."""
        part_id = fast_part_ids(column)
        if part_id is None:
            part_id = mapped(column, check_distinct("part_id", column, check_part_ids, {}, lines, bad))
        return part_id


def fast_part_ids(raws: list[str]) -> list[str] | None:
    """The stripped part ids if `check_part_id` accepts all of them, else None."""
    stripped = list(map(str.strip, raws))
    if "" in stripped or max(map(len, stripped)) > MAX_ID_CHARS or not "".join(stripped).isprintable():
        return None
    return stripped


def check_ids(raws: list[str]) -> list[tuple[str, str | None]]:
    """`check_id` of each value."""
    return list(map(check_id, raws))


def check_part_ids(raws: list[str]) -> list[tuple[str, str | None]]:
    """`check_part_id` of each value."""
    return list(map(check_part_id, raws))


def check_id(raw: str) -> tuple[str, str | None]:
    """A machine or feature id (stripped), and the reason it is invalid or None."""
    text = raw.strip()
    if not text:
        return "", "missing value"
    if _ID_RE.fullmatch(text) is None:
        return "", f"must match [A-Za-z0-9_.-]{{1,64}}, got {text!r}"
    return text, None


def check_part_id(raw: str) -> tuple[str, str | None]:
    """A part id (stripped), and the reason it is invalid or None."""
    text = raw.strip()
    if not text:
        return "", "missing value"
    if len(text) > MAX_ID_CHARS:
        return "", f"longer than {MAX_ID_CHARS} characters ({len(text)})"
    if not text.isprintable():
        return "", f"not printable: {text!r}"
    return text, None
