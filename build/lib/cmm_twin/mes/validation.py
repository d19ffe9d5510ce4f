"""Strict parsing and validation of the request bodies the mock MES receives (README, 'The MES
path'; the record's field checks are in `fields.py`).

The hot path is tight on purpose (the MES must ingest >= 40,000 records/s): one C JSON parse of the
body, the whole-batch field checks of `fields.py`, and the original JSON text of each record kept
so the store need not serialise it again. When the batch check fails, the per-record checks say
which records are invalid and why.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cmm_twin.errors import CmmTwinError
from cmm_twin.mes.fields import (
    MAX_DETAILED_PROBLEMS,
    batch_is_valid,
    is_valid_record,
    record_problems,
    short_text,
)
from cmm_twin.records import RESULT_FIELDS

__all__ = [
    "Body",
    "MalformedBodyError",
    "batch_is_valid",
    "ensure_unique_keys",
    "is_valid_record",
    "parse_body",
    "record_problems",
    "record_texts",
    "validate_records",
]

_FIELD_COUNT: Final = len(RESULT_FIELDS)
_STRINGS_WITH_COLONS: Final = tuple(
    operator.itemgetter(name) for name in ("timestamp", "part_id", "material", "source_file")
)
"""The only fields of a valid record whose text may hold a `:`."""
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")


class MalformedBodyError(CmmTwinError, ValueError):
    """The request body is not one well-formed JSON value (the message says why)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {short_text(key)} in an object")
            seen.add(key)
    return obj


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_BOM: Final = b"\xef\xbb\xbf"
fast_loads: Callable[[bytes], Any] | None
"""orjson.loads when orjson is installed (tests set it to None to check the stdlib path too)."""
try:
    import orjson

    fast_loads = orjson.loads
except ImportError:  # orjson is optional
    fast_loads = None
_STRICT_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
_scan_once: Final[Callable[[str, int], tuple[Any, int]]] = _STRICT_DECODER.scan_once  # type: ignore[attr-defined]
"""`(value, end)` of the JSON value at a position (StopIteration when none starts there)."""
_WHITESPACE_CHARS: Final = frozenset(" \t\n\r")
_BETWEEN_OBJECTS: Final = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")


@dataclass(frozen=True)
class Body:
    """A parsed request body: its records (the array's items, or the one value) and its text."""

    records: list[Any]
    text: str
    is_array: bool
    raw: bytes


def _decode(text: str, decoder: json.JSONDecoder) -> Any:
    try:
        return decoder.decode(text)
    except RecursionError:
        raise MalformedBodyError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, over-long integers
        raise MalformedBodyError(str(exc)) from None


def parse_body(body: bytes) -> Body:
    """Parse a request body: UTF-8 (a BOM is tolerated), one JSON value, no NaN/Infinity tokens.

    Uses orjson when it is installed (2x faster), else the stdlib's C parser. Repeated keys are
    not checked here (both keep the last): call `ensure_unique_keys` before trusting the body.
    Raises MalformedBodyError.
    """
    raw = body.removeprefix(_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBodyError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if fast_loads is None:
        value = _decode(text, _DECODER)
    else:
        try:
            value = fast_loads(raw)
        except ValueError as exc:  # orjson.JSONDecodeError: also numbers beyond a double, lone surrogates
            raise MalformedBodyError(str(exc)) from None
    if type(value) is list:
        return Body(value, text, True, raw)
    return Body([value], text, False, raw)


def ensure_unique_keys(body: Body, records_valid: bool) -> None:
    """Raise MalformedBodyError when an object of `body` repeats a key (the parser kept the last).

    For valid records no second parse is needed when the colons add up: outside strings a valid
    record has exactly one `:` per key, and without `\\u` escapes the colons inside its strings
    are those of its parsed timestamp, part_id, material and source_file (no other field may hold
    one). A
    repeated key adds a colon, so the count can only match when there is none. Otherwise the text
    is parsed again by a decoder that rejects repeated keys.
    """
    raw = body.raw  # in UTF-8 the byte of `:` and `\\` only ever stands for that character
    if records_valid and (raw.find(b"\\") < 0 or b"\\u" not in raw):
        records = body.records
        in_strings = sum("".join(map(get, records)).count(":") for get in _STRINGS_WITH_COLONS)
        if raw.count(b":") == _FIELD_COUNT * len(records) + in_strings:
            return
    _decode(body.text, _STRICT_DECODER)


def record_texts(body: Body) -> list[str]:
    """The JSON text of each record as it was sent (so the store need not serialise it again).

    Only for a body whose records are all valid (objects holding no objects). Then, outside
    strings, `}`, `,` and `{` follow each other only between two records; when a string holds that
    sequence too, the count of matches is off and the array is scanned item by item instead.
    """
    text = body.text
    if not body.is_array:
        return [text.strip(" \t\n\r")]
    if not body.records:
        return []
    spans = [match.span() for match in _BETWEEN_OBJECTS.finditer(text)]
    if len(spans) != len(body.records) - 1:
        return _scan_array(text, text.index("[") + 1)[1]
    starts = [text.index("{"), *(end - 1 for _, end in spans)]
    ends = [*(start + 1 for start, _ in spans), text.rindex("}") + 1]
    return [text[start:end] for start, end in zip(starts, ends, strict=True)]


def _skip_whitespace(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]  # `*` always matches


def _scan_array(text: str, pos: int) -> tuple[list[Any], list[str], int]:
    """Items of the array whose `[` is just before `pos`, their texts, and the position after `]`."""
    items: list[Any] = []
    texts: list[str] = []
    pos = _skip_whitespace(text, pos)
    if text.startswith("]", pos):
        return items, texts, pos + 1
    scan, add_item, add_text, starts = _scan_once, items.append, texts.append, text.startswith
    try:
        while True:
            value, end = scan(text, pos)
            add_item(value)
            add_text(text[pos:end])
            if not starts(",", end):
                end = _skip_whitespace(text, end)
                if starts("]", end):
                    return items, texts, end + 1
                if not starts(",", end):
                    raise json.JSONDecodeError("Expecting ',' delimiter or ']'", text, end)
            pos = end + 1
            if text[pos : pos + 1] in _WHITESPACE_CHARS:
                pos = _skip_whitespace(text, pos)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None


def validate_records(records: list[Any]) -> tuple[list[dict[str, Any]], int]:
    """The `errors` list of a 422 answer (empty when every record is valid) and how many records are invalid.

    Every invalid record is listed; a record reports all its problems until the batch holds
    MAX_DETAILED_PROBLEMS of them, then only its first.
    """
    errors: list[dict[str, Any]] = []
    invalid = 0
    if batch_is_valid(records):
        return errors, invalid
    for index, record in enumerate(records):
        if is_valid_record(record):
            continue
        problems = record_problems(record)
        if problems:
            invalid += 1
            if len(errors) >= MAX_DETAILED_PROBLEMS:
                del problems[1:]
            errors.extend({"index": index, "field": field, "message": message} for field, message in problems)
    return errors, invalid
