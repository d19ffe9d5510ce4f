"""K-field lines (`Kxxxx[/n[/m]] value`) and the description they give: K0100, the part (K1xxx)
and the characteristics (K2xxx), turned into the neutral `Characteristic`s."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cmm_twin.gateway.sources.characteristics import Characteristic
from cmm_twin.gateway.sources.qdas.numbers import decimals_of, parse_int, parse_number
from cmm_twin.gateway.sources.qdas.text import Text
from cmm_twin.gateway.sources.rows import FileRejected

_KEY_LINE = re.compile(r"K(\d{4})(?:/(\d{1,6})(?:/(\d{1,9}))?)?(?: (.*))?")
ATTRIBUTE_TYPES = frozenset({1, 5, 6})
"""K2004 types of attribute characteristics (counts, error log sheets): their values are no lengths."""
_SPEC_KEYS = {2001, 2002, 2004, 2022, 2101, 2110, 2111, 2112, 2113, 2142}


@dataclass(frozen=True)
class KeyLine:
    """One K-field line."""

    key: int
    """The key's number (`K2101` -> 2101)."""
    index: int | None
    """`/n`: the characteristic (or part) index; None: not given."""
    value_number: int | None
    """`/m` of `Kxxxx/n/m`: the value set; None: not given."""
    value: str
    """The text after the first space, stripped."""
    start: int
    """Character offset of `value` in the file's text."""
    line: int

    @property
    def name(self) -> str:
        """The key as written, without the value (`K0001/3`)."""
        name = f"K{self.key:04d}"
        if self.index is not None:
            name += f"/{self.index}"
        if self.value_number is not None:
            name += f"/{self.value_number}"
        return name


def key_line(text: Text, number: int) -> KeyLine:
    """Physical line `number` of `text`, which starts with `K`, as a KeyLine; raises FileRejected
    when it is not `Kxxxx[/n[/m]] value`."""
    start, _ = text.lines[number - 1]
    line = text.line(number)
    found = _KEY_LINE.fullmatch(line)
    if found is None:
        raise FileRejected(
            f"{text.label}malformed K-field line {line[:40]!r} (expected 'Kxxxx[/n[/m]] value',"
            " the key and its value separated by one space)",
            number,
        )
    key, index, value_number, raw = found.groups()
    raw = raw or ""
    value = raw.strip()
    offset = start + (found.start(4) if found.group(4) is not None else len(line)) + len(raw) - len(raw.lstrip())
    return KeyLine(
        int(key),
        None if index is None else int(index),
        None if value_number is None else int(value_number),
        value,
        offset,
        number,
    )


@dataclass(frozen=True)
class Spec:
    """A characteristic with what the source needs beyond the neutral model."""

    index: int
    characteristic: Characteristic
    decimals: int | None
    """K2022; None: not given."""
    attribute_type: int | None
    """K2004 when it names an attribute characteristic (whose values are skipped); else None."""
    problem: tuple[str, str] | None
    """(key, reason) when the specification cannot be read: its values become row errors."""


@dataclass
class Description:
    """The description keys of a file (K0100, K1xxx, K2xxx), collected line by line."""

    count: KeyLine | None = None
    """K0100."""
    part: dict[int, KeyLine] = field(default_factory=dict)
    characteristics: dict[int, dict[int, KeyLine]] = field(default_factory=dict)
    """Characteristic index -> key -> line; index 0 holds the `/0` keys (for all characteristics)."""

    def add(self, key: KeyLine, text: Text) -> None:
        """Take a description key (K0100, K1xxx, K2xxx; others are ignored)."""
        if key.value_number is not None:
            raise FileRejected(f"{text.label}{key.name}: a value number on a description key", key.line)
        if key.key == 100:
            self.count = key
        elif 1000 <= key.key < 2000:
            if key.index not in (None, 0, 1):
                raise FileRejected(
                    f"{text.label}{key.name}: a second part; one part (K1001) per file is read", key.line
                )
            self.part.setdefault(key.key, key)
        elif 2000 <= key.key < 3000:
            index = 1 if key.index is None else key.index
            self.characteristics.setdefault(index, {}).setdefault(key.key, key)

    @property
    def part_number(self) -> str | None:
        """K1001, None when not given."""
        found = self.part.get(1001)
        return found.value if found is not None and found.value else None

    def specs(self, text: Text) -> dict[int, Spec]:
        """The characteristics by index, checked against K0100; raises FileRejected when there is
        none, or K0100 disagrees (`text`: the file of the description, for messages)."""
        indexes = sorted(i for i in self.characteristics if i > 0)
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
        shared = self.characteristics.get(0, {})
        return {i: _spec(i, {**shared, **self.characteristics[i]}) for i in indexes}


def _spec(index: int, keys: dict[int, KeyLine]) -> Spec:
    """The characteristic of `keys` (its own and the `/0` ones)."""
    own = [k for k in keys.values() if k.index not in (None, 0)] or list(keys.values())
    line = min(k.line for k in own)
    text = {k: keys[k].value for k in _SPEC_KEYS if k in keys}
    number = text.get(2001) or str(index)
    description = text.get(2002) or number
    numbers: dict[int, float | None] = {}
    problem: tuple[str, str] | None = None
    for key in (2101, 2110, 2111, 2112, 2113):
        raw = text.get(key, "")
        numbers[key] = parse_number(raw) if raw else None
        if raw and numbers[key] is None and problem is None:
            problem = (
                keys[key].name,
                f"K{key} of characteristic {description!r} (line {keys[key].line}) is not a number: {raw!r}",
            )
    decimals = parse_int(text[2022]) if text.get(2022) else None
    kind = parse_int(text[2004]) if text.get(2004) else 0
    if kind is None and problem is None:
        problem = (keys[2004].name, f"K2004 of characteristic {description!r} is not a number: {text[2004]!r}")
    places = max((decimals_of(text[k]) for k in (2101, 2110, 2111) if numbers.get(k) is not None), default=0)
    nominal, lower, upper = _limits(numbers, places)
    characteristic = Characteristic(
        number, description, text.get(2142, ""), nominal, lower, upper, line, field=f"K2101/{index}"
    )
    attribute = kind if kind in ATTRIBUTE_TYPES else None
    return Spec(index, characteristic, decimals if decimals is None or decimals >= 0 else None, attribute, problem)


def _limits(numbers: dict[int, float | None], places: int) -> tuple[float | None, float | None, float | None]:
    """Nominal, lower and upper limit relative to it: absolute limits (K2110/K2111) come before
    allowances (K2112/K2113); without a nominal (K2101), the middle of two absolute limits. A limit
    computed from absolute ones is rounded to the decimal places written (`places`, one more for a
    middle), so 12.018 - 12.0 gives 0.018, not 0.018000000000000682."""
    nominal, low_abs, high_abs = numbers[2101], numbers[2110], numbers[2111]
    if nominal is None:
        if low_abs is None or high_abs is None:
            return None, None, None
        places += 1
        nominal = round((low_abs + high_abs) / 2.0, places)
    lower = round(low_abs - nominal, places) if low_abs is not None else numbers[2112]
    upper = round(high_abs - nominal, places) if high_abs is not None else numbers[2113]
    return nominal, lower, upper
