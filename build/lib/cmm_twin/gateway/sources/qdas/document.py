"""A whole Q-DAS document (a .dfq, or a .dfd with its .dfx) parsed into the neutral model: one
`Part` per value set, one `Reading` per measured value, each with the `Field` it was read from
(the compensated DFQ writer replaces exactly that text)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cmm_twin.gateway.sources.characteristics import Part, Reading
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qdas.keys import CODE, LINED_KEYS, Description, Spec, key_name
from cmm_twin.gateway.sources.qdas.numbers import parse_int, parse_number, parse_time
from cmm_twin.gateway.sources.qdas.text import Text
from cmm_twin.gateway.sources.qdas.values import (
    ATTRIBUTE,
    DEFECTS,
    MACHINE,
    PART_ID,
    TIME,
    VALUE,
    Field,
    Values,
)
from cmm_twin.gateway.sources.rows import FileRejected, RowError

INVALID_ATTRIBUTES = frozenset({255, 256})
"""K0002 attributes of a value marked invalid (255) or deleted (256): skipped."""
_TIME_FORMS = "dd.MM.yyyy/HH:mm:ss, M/d/yy HH:mm:ss or ISO 8601"
_LINE = re.compile(r"K(\d{4})(?:/(\d{1,6})(?:/(\d{1,9}))?)?(?: ([^\r\n]*))?\r?\n|([^\r\n]*)\r?\n")
"""One physical line with its line end: a K-field line `Kxxxx[/n[/m]] value` (key, index, value
number, value as written; "" for a part not given), else the whole line (a compact value line, a
blank or a malformed line). A text holds CR only before LF (`decode`), so the matches cover it line
after line."""
_K2XXX = {f"{key:04d}": key for key in range(2000, 3000)}
"""The characteristics' keys as written (ASCII digits; others take the general way)."""
_CHUNK = 1 << 13
"""Characters of text matched at once: findall's list of a few hundred lines is freed before it
could set off a garbage collection."""


@dataclass(frozen=True)
class Document:
    """What a Q-DAS document says."""

    texts: list[Text]
    """The files: the .dfq (or .dfd), then the .dfx of a pair."""
    specs: dict[int, Spec]
    """Characteristics by index."""
    part_number: str
    readings: list[Reading]
    fields: list[Field]
    """The value field of each reading (same order)."""
    errors: list[RowError]

    def file_names(self, errors: list[RowError]) -> list[str]:
        """The name of the file each row error (of this document) points into: that of the value
        it is about, else (the specification's errors) the first file."""
        if len(self.texts) == 1 or not errors:
            return [self.texts[0].name] * len(errors)
        origins = {(r.line, r.field): f.origin for r, f in zip(self.readings, self.fields, strict=True)}
        names = []
        for error in errors:
            column = (error.column or "").split(" (")[0]  # a temperature's: `K0001/5 (Temperatur)`
            origin = origins.get((error.line, column), 1 if column.startswith("K0") else 0)
            names.append(self.texts[origin].name)
        return names


def parse(texts: list[Text], inputs: InputSettings) -> Document:
    """The document of `texts` (a .dfq; or a .dfd and its .dfx); raises FileRejected when it
    cannot be read at all."""
    description = Description()
    values = Values()
    for origin, text in enumerate(texts):
        _scan(text, origin, texts[0].name, description, values)
    specs = description.specs(texts[0])
    part_number = description.part_number
    if part_number is None:
        raise FileRejected("no part number (K1001)")
    values.check(set(specs), texts)
    readings: list[Reading] = []
    fields: list[Field] = []
    errors = list(values.errors)
    times = _Times(inputs)
    for value_set in sorted(values.sets):
        _read_set(value_set, values.sets[value_set], specs, part_number, times, readings, fields, errors)
    return Document(texts, specs, part_number, readings, fields, errors)


def _scan(text: Text, origin: int, leader: str, description: Description, values: Values) -> None:
    """Every line of `text` (file `origin` of the document led by the file named `leader`) into
    `description` and `values`; raises FileRejected at the first line that cannot be taken."""
    source = text.text
    stored, first, lines = description.values, description.first, description.lines
    number = 0
    position, end = text.start, len(source)
    while position < end:
        stop = source.find("\n", position + _CHUNK) + 1 or end
        for key_text, index_text, number_text, raw, other in _LINE.findall(source, position, stop):
            number += 1
            if not key_text:
                if other.startswith("K"):
                    raise FileRejected(
                        f"{text.label}malformed K-field line {other[:40]!r} (expected 'Kxxxx[/n[/m]] value',"
                        " the key and its value separated by one space)",
                        number,
                    )
                if other.strip():
                    values.add_compact(text, other, number, origin)
                continue
            key = _K2XXX.get(key_text)
            if key is not None and index_text and not number_text and not origin:
                # The bulk of a description, stored here without a call (see CODE).
                index = int(index_text)
                code = index * CODE + key
                if index and code not in stored:
                    stored[code] = raw.strip()
                    if index not in first:
                        first[index] = number
                    if key in LINED_KEYS:
                        lines[code] = number
                    continue
                if index:
                    continue  # given before: the first is kept
            _key_line(text, origin, leader, int(key_text), index_text, number_text, raw, number, description, values)
        position = stop


def _key_line(
    text: Text,
    origin: int,
    leader: str,
    key: int,
    index_text: str,
    number_text: str,
    raw: str,
    line: int,
    description: Description,
    values: Values,
) -> None:
    """Take K-field line `line` (but a K2xxx one `_scan` stores): `index_text` and `number_text` are
    "" when not given."""
    index = int(index_text) if index_text else None
    value_number = int(number_text) if number_text else None
    value = raw.strip()
    if key < 100:
        # Where the value starts in the line: after `Kxxxx`, `/n`, `/m` and the space.
        column = 6 + (len(index_text) + 1 if index_text else 0) + (len(number_text) + 1 if number_text else 0)
        column += len(raw) - len(raw.lstrip())
        values.add_key(key, index, value_number, value, line, column, text, origin)
    elif origin and key >= 1000:
        raise FileRejected(
            f"{text.label}description key {key_name(key, index, value_number)} in the values file"
            f" (it belongs in {leader})",
            line,
        )
    elif value_number is not None:
        raise FileRejected(
            f"{text.label}{key_name(key, index, value_number)}: a value number on a description key", line
        )
    else:
        description.add(key, index, value, line, text)


class _Times:
    """`parse_time` of each distinct date/time text once (a compact line repeats it per characteristic)."""

    def __init__(self, inputs: InputSettings) -> None:
        self.inputs = inputs
        self.known: dict[str, datetime | None] = {}

    def __call__(self, text: str) -> datetime | None:
        if text not in self.known:
            self.known[text] = parse_time(text, self.inputs)
        return self.known[text]


def _read_set(
    value_set: int,
    by_index: dict[int, dict[int, Field]],
    specs: dict[int, Spec],
    part_number: str,
    times: _Times,
    readings: list[Reading],
    fields: list[Field],
    errors: list[RowError],
) -> None:
    """The readings of one value set (one part)."""
    common = by_index.get(0, {})
    indexes = sorted(i for i in by_index if i)
    ids = [common[PART_ID]] if PART_ID in common else [by_index[i][PART_ID] for i in indexes if PART_ID in by_index[i]]
    part = Part(ids[0].text if ids else f"{part_number}-{value_set}", part_number)
    if MACHINE in common:
        part.machine_id = common[MACHINE].text
    bad_time: Field | None = None
    if TIME in common:
        part.timestamp = times(common[TIME].text)
        bad_time = common[TIME] if part.timestamp is None else None
    for index in indexes:
        found = by_index[index]
        spec = specs[index]
        value = found.get(VALUE)
        if spec.attribute_type is not None or spec.problem is not None or ATTRIBUTE in found:
            problem = _problem(spec, found, value)
            if problem is not None:
                errors.append(problem)
                continue
        if value is None:
            continue  # not measured on this part
        number = parse_number(value.text)
        if number is None:
            errors.append(RowError(value.line, value.name, f"not a number: {value.text!r}"))
            continue
        timestamp: datetime | None = None
        own = found.get(TIME, bad_time)
        if own is not None:
            timestamp = times(own.text)
            if timestamp is None:
                errors.append(
                    RowError(own.line, own.name, f"unreadable date/time {own.text!r} (expected {_TIME_FORMS})")
                )
                continue
        machine = found.get(MACHINE)
        readings.append(
            Reading(
                spec.characteristic,
                part,
                number,
                value.line,
                value.name,
                timestamp,
                machine.text if machine is not None else None,
            )
        )
        fields.append(value)


def _problem(spec: Spec, found: dict[int, Field], value: Field | None) -> RowError | None:
    """Why the value of `spec` in `found` (a value set's fields) is not taken; None: it is (or
    there is none)."""
    c = spec.characteristic
    if spec.attribute_type is not None:
        given = value or found.get(DEFECTS)
        if given is None:
            return None
        return RowError(
            given.line,
            given.name,
            f"{c.description!r} is an attribute characteristic (K2004 = {spec.attribute_type}):"
            " its values are not measurements",
        )
    if value is None:
        return None
    attribute = found.get(ATTRIBUTE)
    if attribute is not None and parse_int(attribute.text) in INVALID_ATTRIBUTES:
        mark = "invalid" if parse_int(attribute.text) == 255 else "deleted"
        return RowError(
            attribute.line, attribute.name, f"value {value.text!r} marked {mark} (attribute {attribute.text})"
        )
    if spec.problem is not None:
        return RowError(value.line, spec.problem[0], spec.problem[1])
    return None
