"""The description keys of a Q-DAS document: K0100, the part (K1xxx) and the characteristics
(K2xxx), turned into the neutral `Characteristic`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cmm_twin.gateway.sources.characteristics import Characteristic
from cmm_twin.gateway.sources.qdas.numbers import decimals_of, parse_int, parse_number
from cmm_twin.gateway.sources.qdas.text import Text
from cmm_twin.gateway.sources.rows import FileRejected

ATTRIBUTE_TYPES = frozenset({1, 5, 6})
"""K2004 types of attribute characteristics (counts, error log sheets): their values are no lengths."""
_LIMIT_KEYS = (2101, 2110, 2111, 2112, 2113)
_SPEC_KEYS = (2001, 2002, 2004, 2022, 2142, *_LIMIT_KEYS)
"""The keys a characteristic is read from, in the order `Description._spec` unpacks them."""


class Entry(NamedTuple):
    """A description key as written: its value (stripped), line and index (`/n`; None: not given)."""

    value: str
    line: int
    written_index: int | None


def key_name(key: int, index: int | None, value_number: int | None = None) -> str:
    """The key as written, without the value (`K0001/3`)."""
    name = f"K{key:04d}"
    if index is not None:
        name += f"/{index}"
    if value_number is not None:
        name += f"/{value_number}"
    return name


class Spec(NamedTuple):
    """A characteristic with what the source needs beyond the neutral model."""

    characteristic_index: int
    """`n` of its keys (`K2101/n`)."""
    characteristic: Characteristic
    decimals: int | None
    """K2022; None: not given."""
    attribute_type: int | None
    """K2004 when it names an attribute characteristic (whose values are skipped); else None."""
    problem: tuple[str, str] | None
    """(key, reason) when the specification cannot be read: its values become row errors."""


CODE = 10_000
"""The characteristics' keys are stored flat, by `index * CODE + key` (`K2002/7` -> 72002; the `/0`
keys for all characteristics by the key alone): an int-keyed dict of strings is cheap to fill
and the garbage collector never scans it."""
LINED_KEYS = frozenset({2004, 2101, 2110, 2111, 2112, 2113})
"""Keys whose line a row error may name: their lines are kept for every characteristic."""


@dataclass
class Description:
    """The description keys of a file (K0100, K1xxx, K2xxx), collected line by line. The parser
    stores a K2xxx key with a characteristic index > 0 itself (the bulk of a description: see
    `CODE`); `add` takes every other description key."""

    count: Entry | None = None
    """K0100 (the last one given)."""
    part_number_key: Entry | None = None
    """The first K1001."""
    values: dict[int, str] = field(default_factory=dict)
    """The value of each K2xxx key by code (`CODE`); a key given twice keeps its first value."""
    lines: dict[int, int] = field(default_factory=dict)
    """The line of each code of `LINED_KEYS`, of each `/0` key and each key without `/n`."""
    first: dict[int, int] = field(default_factory=dict)
    """Characteristic index -> the line of its first key given with `/n` (0: of the `/0` keys)."""
    unindexed: set[int] = field(default_factory=set)
    """Keys of characteristic 1 given without `/n` (`K2001 ...`)."""
    shared: set[int] = field(default_factory=set)
    """Keys given with `/0` (for all characteristics)."""

    def add(self, key: int, index: int | None, value: str, line: int, text: Text) -> None:
        """Take a description key (K0100, K1xxx, K2xxx; others are ignored). The parser stores most
        K2xxx keys itself, as this does."""
        if key == 100:
            self.count = Entry(value, line, index)
        elif 1000 <= key < 2000:
            if index not in (None, 0, 1):
                raise FileRejected(
                    f"{text.label}{key_name(key, index)}: a second part; one part (K1001) per file is read", line
                )
            if key == 1001 and self.part_number_key is None:
                self.part_number_key = Entry(value, line, index)
        elif 2000 <= key < 3000:
            code = (1 if index is None else index) * CODE + key  # without `/n`: characteristic 1
            if code in self.values:
                return
            self.values[code] = value
            self.lines[code] = line
            if index is None:
                self.unindexed.add(key)
                return
            if index == 0:
                self.shared.add(key)
            self.first.setdefault(index, line)

    @property
    def part_number(self) -> str | None:
        """K1001, None when not given."""
        found = self.part_number_key
        return found.value if found is not None and found.value else None

    def specs(self, text: Text) -> dict[int, Spec]:
        """The characteristics by index, checked against K0100; raises FileRejected when there is
        none, or K0100 disagrees (`text`: the file of the description, for messages)."""
        defined = set(self.first)
        if self.unindexed:
            defined.add(1)
        indexes = sorted(i for i in defined if i > 0)
        if not indexes:
            raise FileRejected("no characteristic defined (no K2xxx key with a characteristic number)")
        if self.count is not None:
            expected = parse_int(self.count.value)
            if expected != len(indexes):
                raise FileRejected(
                    f"{text.label}K0100 says {self.count.value!r} characteristics, the file"
                    f" defines {len(indexes)} (truncated, or K0100 is wrong)",
                    self.count.line,
                )
        return {i: self._spec(i) for i in indexes}

    def entry(self, index: int, key: int) -> Entry | None:
        """Key `key` of characteristic `index` (its own, else the `/0` one), None: not given."""
        code = index * CODE + key
        value = self.values.get(code)
        if value is not None:
            given = None if index == 1 and key in self.unindexed else index
            return Entry(value, self.lines.get(code, 0), given)
        if key in self.shared:
            return Entry(self.values[key], self.lines[key], 0)
        return None

    def _line(self, index: int) -> int:
        """Where characteristic `index` is defined: its first key given with `/n`; for one defined
        only by keys without it (characteristic 1), the first of those and of the `/0` keys."""
        line = self.first.get(index)
        if line is not None:
            return line
        own = [self.lines[CODE + key] for key in self.unindexed]
        return min(own + [self.lines[key] for key in self.shared if CODE + key not in self.values])

    def _spec(self, index: int) -> Spec:
        """The characteristic `index` (its own keys over the `/0` ones)."""
        base = index * CODE
        get = self.values.get
        if self.shared:
            texts = [get(base + k, get(k) if k in self.shared else None) for k in _SPEC_KEYS]
        else:
            texts = list(map(get, map(base.__add__, _SPEC_KEYS)))
        number, description, kind_text, decimals_text, unit = texts[:5]
        number = number or str(index)
        description = description or number
        numbers: list[float | None] = [None] * 5  # of _LIMIT_KEYS
        problem: tuple[str, str] | None = None
        for position, raw in enumerate(texts[5:]):
            if raw:
                numbers[position] = parse_number(raw)
                if numbers[position] is None and problem is None:
                    problem = self._not_a_number(index, _LIMIT_KEYS[position], raw, description)
        decimals = parse_int(decimals_text) if decimals_text else None
        kind = parse_int(kind_text) if kind_text else 0
        if kind is None and problem is None:
            given = self.entry(index, 2004)
            assert given is not None
            problem = (
                key_name(2004, given.written_index),
                f"K2004 of characteristic {description!r} is not a number: {kind_text!r}",
            )
        nominal, lower, upper = _limits(numbers, texts[5:8])
        characteristic = Characteristic(
            number, description, unit or "", nominal, lower, upper, self._line(index), field=f"K2101/{index}"
        )
        attribute = kind if kind in ATTRIBUTE_TYPES else None
        return Spec._make(
            (index, characteristic, decimals if decimals is None or decimals >= 0 else None, attribute, problem)
        )

    def _not_a_number(self, index: int, key: int, raw: str, description: str) -> tuple[str, str]:
        """The problem of limit key `key` of characteristic `index`, which is not a number."""
        given = self.entry(index, key)
        assert given is not None
        return (
            key_name(key, given.written_index),
            f"K{key} of characteristic {description!r} (line {given.line}) is not a number: {raw!r}",
        )


def _limits(numbers: list[float | None], texts: list[str | None]) -> tuple[float | None, float | None, float | None]:
    """Nominal, lower and upper limit relative to it from `numbers` (of K2101, K2110, K2111, K2112,
    K2113; `texts`: the first three as written): absolute limits (K2110/K2111) come before
    allowances (K2112/K2113); without a nominal (K2101), the middle of two absolute limits. A limit
    computed from absolute ones is rounded to the most decimal places written of the first three
    (one more for a middle), so 12.018 - 12.0 gives 0.018, not 0.018000000000000682."""
    nominal, low_abs, high_abs, low_allowance, high_allowance = numbers
    if nominal is not None and low_abs is None and high_abs is None:
        return nominal, low_allowance, high_allowance  # nothing to round
    if nominal is None and (low_abs is None or high_abs is None):
        return None, None, None
    places = max(
        (decimals_of(t) for t, n in zip(texts, numbers[:3], strict=True) if t is not None and n is not None), default=0
    )
    if nominal is None:
        assert low_abs is not None and high_abs is not None
        places += 1
        nominal = round((low_abs + high_abs) / 2.0, places)
    lower = round(low_abs - nominal, places) if low_abs is not None else low_allowance
    upper = round(high_abs - nominal, places) if high_abs is not None else high_allowance
    return nominal, lower, upper
