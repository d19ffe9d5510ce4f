"""The measured values of a Q-DAS file in both forms, sorted into value sets (one per measured
part): K-field lines (`K0001/n[/m]`, `K0002`, `K0004`, `K0010`, `K0014`; `/0` for all
characteristics of a value set) and compact value lines (characteristics separated by 0x0F, their
fields by 0x14: value, attribute, date/time, events, batch, nest, operator, machine, process
parameter, gauge)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cmm_twin.gateway.sources.qdas.text import CHARACTERISTIC_SEPARATOR, FIELD_SEPARATOR, Text
from cmm_twin.gateway.sources.rows import FileRejected, RowError

VALUE = 1
ATTRIBUTE = 2
TIME = 4
MACHINE = 10
PART_ID = 14
DEFECTS = 20
"""K0020: number of defects, the value of an attribute characteristic."""
READ_KEYS = frozenset({VALUE, ATTRIBUTE, TIME, MACHINE, PART_ID, DEFECTS})
"""Value keys read; the other K00xx keys (events, batch, nest, operator...) are ignored."""
COMPACT_KEYS = (VALUE, ATTRIBUTE, TIME, 5, 6, 7, 8, MACHINE, 11, 12)
"""The keys of the fields of one characteristic in a compact value line, in order."""


class Field(NamedTuple):
    """One value field as written."""

    text: str
    """Stripped."""
    line: int
    column: int
    """Character offset of `text` in its line."""
    origin: int
    """Which file of the document (0: the .dfq or .dfd, 1: the .dfx)."""
    name: str
    """The key it stands for, with the characteristic's index (`K0001/3`), for row errors."""
    file: Text

    @property
    def start(self) -> int:
        """Character offset of `text` in its file's text."""
        return self.file.line_start(self.line) + self.column


@dataclass
class Values:
    """The value fields of a document by value set, characteristic index (0: all of the set) and key."""

    sets: dict[int, dict[int, dict[int, Field]]] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)
    """Fields given twice."""
    compact_lines: list[tuple[Text, int, int]] = field(default_factory=list)
    """(file, line, characteristics in it) of each compact value line, checked against the description."""
    _counters: dict[tuple[int, int], int] = field(default_factory=dict)
    _last_set: int = 0
    """The highest value set given so far (by a key or a line)."""

    def add_key(
        self,
        key: int,
        index: int | None,
        number: int | None,
        value: str,
        line: int,
        column: int,
        text: Text,
        origin: int,
    ) -> None:
        """Take value key `key` (K0001...K0099) of line `line` of `text`: `/index/number` as written
        (None: not given), its value (stripped) and where that starts in the line. Without `/m`, a
        key takes the value set after the last one it (with this characteristic index) was given for."""
        if key not in READ_KEYS:
            return
        if index is None:
            index = 1
        if number is None:
            number = self._counters.get((index, key), 0) + 1
        self._counters[(index, key)] = number
        self._last_set = max(self._last_set, number)
        if not value:
            return  # an empty field, as in a compact line: not given (the set is still counted)
        self._put(number, index, key, Field(value, line, column, origin, f"K{key:04d}/{index}", text))

    def add_compact(self, text: Text, line: str, number: int, origin: int) -> None:
        """Take compact value line `line` (line `number` of `text`): a new value set."""
        value_set = self._last_set = self._last_set + 1
        portions = line.split(CHARACTERISTIC_SEPARATOR)
        self.compact_lines.append((text, number, len(portions)))
        offset = 0
        for index, portion in enumerate(portions, start=1):
            position = offset
            for key, raw in zip(COMPACT_KEYS, portion.split(FIELD_SEPARATOR), strict=False):
                stripped = raw.strip()
                if stripped:
                    lead = len(raw) - len(raw.lstrip())
                    name = f"K{key:04d}/{index}"
                    self._put(value_set, index, key, Field(stripped, number, position + lead, origin, name, text))
                position += len(raw) + 1
            for key in COMPACT_KEYS:
                self._counters[(index, key)] = value_set
            offset += len(portion) + 1

    def _put(self, value_set: int, index: int, key: int, found: Field) -> None:
        by_index = self.sets.get(value_set)
        if by_index is None:
            by_index = self.sets[value_set] = {}
        fields = by_index.get(index)
        if fields is None:
            by_index[index] = {key: found}
            return
        first = fields.get(key)
        if first is not None:
            self.errors.append(
                RowError(found.line, found.name, f"given twice for value set {value_set} (first at line {first.line})")
            )
            return
        fields[key] = found

    def check(self, defined: set[int], texts: list[Text]) -> None:
        """Raise FileRejected when a value refers to a characteristic the description does not
        define, or a compact line holds fewer characteristics than it defines."""
        for text, line, count in self.compact_lines:
            if count < len(defined):
                raise FileRejected(
                    f"{text.label}value line holds {count} characteristic(s) where the description defines"
                    f" {len(defined)} (truncated, or the wrong separators: characteristics are separated by"
                    " 0x0F, their fields by 0x14)",
                    line,
                )
        for by_index in self.sets.values():
            for index, fields in by_index.items():
                if index and index not in defined:
                    first = min(fields.values(), key=lambda f: (f.origin, f.line))
                    text = texts[first.origin]
                    raise FileRejected(
                        f"{text.label}a value of characteristic {index} ({first.name}),"
                        " which the description does not define",
                        first.line,
                    )
