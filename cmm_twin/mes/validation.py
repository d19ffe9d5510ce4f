"""Strict parsing and validation of the result records the mock MES receives (DESIGN.md sections 3, 6).

The hot path is tight on purpose (the MES must ingest >= 40,000 records/s): one C JSON parse of the
body, checks that run field by field over the whole batch in C-level loops (`map`, `min`, `max`,
compiled regexes), exact types (`type(v) is float`: a bool is no number), and the original JSON text
of each record kept so the store need not serialise it again. When the batch check fails, the
per-record checks say which records are invalid and why.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Final

from cmm_twin.errors import CmmTwinError
from cmm_twin.physics.thermal import FLAG_NAMES, Verdict
from cmm_twin.records import RESULT_FIELDS

MAX_BATCH_RECORDS: Final = 100_000
"""More records than this in one POST is answered 413 (split the batch)."""
MAX_TEXT_CHARS: Final = 64
"""Longest machine_id, part_id, feature and material."""
MAX_TIMESTAMP_CHARS: Final = 40
MAX_PROBLEMS_PER_RECORD: Final = 25
"""A record reports at most this many problems..."""
MAX_DETAILED_PROBLEMS: Final = 10_000
"""...and once a batch has this many, each further invalid record reports only its first one."""
RECORD_FIELD: Final = "(record)"
"""The `field` of a problem with the record as a whole (e.g. it is not a JSON object)."""

VERDICTS: Final = tuple(v.name for v in Verdict)
FLAGS: Final = tuple(FLAG_NAMES.values())
ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)

ID_FIELDS: Final = ("machine_id", "feature")
"""Strings matching ID_PATTERN."""
TEXT_FIELDS: Final = ("part_id", "material")
"""Strings of 1..64 printable characters."""
POSITIVE_FIELDS: Final = ("nominal_mm", "tolerance_mm", "measured_mm", "compensated_mm")
"""Finite numbers > 0."""
NON_NEGATIVE_FIELDS: Final = ("uncertainty_um",)
"""Finite numbers >= 0."""
NUMBER_FIELDS: Final = ("cte_per_k", "part_temp_c", "correction_um", "deviation_um")
"""Finite numbers."""
NULLABLE_FIELDS: Final = ("air_temp_c", "scale_temp_c")
"""Finite numbers or null."""

_FIELD_SET: Final = frozenset(RESULT_FIELDS)
_FIELD_COUNT: Final = len(_FIELD_SET)
_GET: Final = {name: operator.itemgetter(name) for name in RESULT_FIELDS}
_GETTERS: Final = tuple(_GET.items())
_NUMBER_TYPES: Final = frozenset((int, float))
_DICT_ONLY: Final = {dict}
_STR_ONLY: Final = {str}
_LIST_ONLY: Final = {list}
_VERDICT_SET: Final = frozenset(VERDICTS)
_FLAG_SET: Final = frozenset(FLAGS)
_ID_MATCH: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}").fullmatch
_UUID_MATCH: Final = re.compile(UUID_PATTERN.strip("^$")).fullmatch
_TIMESTAMP_MATCH: Final = re.compile(TIMESTAMP_PATTERN.strip("^$")).fullmatch
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")
FLOAT_MAX: Final = 1.7976931348623157e308
"""Largest finite double: a JSON integer beyond it is not a finite number either."""


class MalformedBodyError(CmmTwinError, ValueError):
    """The request body is not one well-formed JSON value (the message says why)."""


Problem = tuple[str, str]
"""(field, message) of one problem of a record."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_short(key)} in an object")
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
    are those of its parsed timestamp, part_id and material (no other field may hold one). A
    repeated key adds a colon, so the count can only match when there is none. Otherwise the text
    is parsed again by a decoder that rejects repeated keys.
    """
    raw = body.raw  # in UTF-8 the byte of `:` and `\\` only ever stands for that character
    if records_valid and (raw.find(b"\\") < 0 or b"\\u" not in raw):
        records = body.records
        in_strings = sum("".join(map(_GET[name], records)).count(":") for name in ("timestamp", "part_id", "material"))
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


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value (for messages)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) in (int, float):
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object"


def _short(value: Any, limit: int = 60) -> str:
    """A short spelling of a parsed value for messages (containers only by their type)."""
    if type(value) is str:
        text = json.dumps(value[:limit])
    elif type(value) in (list, dict):
        text = json_type(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_string(value: Any) -> str:
    return f"must be a string, got {json_type(value)}"


def _check_uuid(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if _UUID_MATCH(value) is None:
        return f"must be a lowercase canonical UUID (8-4-4-4-12 hex), got {_short(value)}"
    return None


def _check_timestamp(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if len(value) > MAX_TIMESTAMP_CHARS or _TIMESTAMP_MATCH(value) is None:
        return f"must be an ISO 8601 date-time with offset (YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM), got {_short(value)}"
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        return f"not a valid date-time ({exc}): {_short(value)}"
    return None


def _check_id(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if _ID_MATCH(value) is None:
        return f"must match [A-Za-z0-9_.-]{{1,64}}, got {_short(value)}"
    return None


def _check_text(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if not 1 <= len(value) <= MAX_TEXT_CHARS:
        return f"must be 1..{MAX_TEXT_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        return f"must be printable characters, got {_short(value)}"
    return None


def _number_problem(value: Any) -> str | None:
    """None for a finite JSON number, else the problem (bool is not a number)."""
    kind = type(value)
    if kind is float:
        return None if value - value == 0.0 else "must be a finite number"
    if kind is int:
        return None if -FLOAT_MAX <= value <= FLOAT_MAX else "must be a finite number (out of range)"
    return f"must be a number, got {json_type(value)}"


def _check_number(value: Any) -> str | None:
    return _number_problem(value)


def _check_positive(value: Any) -> str | None:
    problem = _number_problem(value)
    if problem is None and not value > 0:
        return f"must be > 0, got {value!r}"
    return problem


def _check_non_negative(value: Any) -> str | None:
    problem = _number_problem(value)
    if problem is None and not value >= 0:
        return f"must be >= 0, got {value!r}"
    return problem


def _check_nullable(value: Any) -> str | None:
    return None if value is None else _number_problem(value)


def _check_verdict(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if value not in _VERDICT_SET:
        return f"must be one of {', '.join(VERDICTS)}, got {_short(value)}"
    return None


def _check_flags(value: Any) -> str | None:
    if type(value) is not list:
        return f"must be an array of strings, got {json_type(value)}"
    for i, flag in enumerate(value):
        if type(flag) is not str or flag not in _FLAG_SET:
            return f"[{i}] must be one of {', '.join(FLAGS)}, got {_short(flag)}"
    return None


CHECKS: Final[tuple[tuple[str, Callable[[Any], str | None]], ...]] = tuple(
    (name, check)
    for name, check in (
        ("measurement_id", _check_uuid),
        ("timestamp", _check_timestamp),
        *((n, _check_id) for n in ID_FIELDS),
        *((n, _check_text) for n in TEXT_FIELDS),
        *((n, _check_positive) for n in POSITIVE_FIELDS),
        *((n, _check_non_negative) for n in NON_NEGATIVE_FIELDS),
        *((n, _check_number) for n in NUMBER_FIELDS),
        *((n, _check_nullable) for n in NULLABLE_FIELDS),
        ("verdict", _check_verdict),
        ("flags", _check_flags),
    )
)
"""(field, check) for every RESULT_FIELDS name; a check returns None or the problem."""
assert sorted(n for n, _ in CHECKS) == sorted(RESULT_FIELDS), "every record field needs exactly one check"


_fields_of: Final = operator.itemgetter(*RESULT_FIELDS)
assert (
    *("measurement_id", "timestamp", "machine_id", "part_id", "feature", "material", "cte_per_k"),
    *("nominal_mm", "tolerance_mm", "measured_mm", "part_temp_c", "air_temp_c", "scale_temp_c"),
    *("compensated_mm", "correction_um", "deviation_um", "uncertainty_um", "verdict", "flags"),
) == RESULT_FIELDS, "is_valid_record unpacks the fields in this order"


def is_valid_record(record: Any) -> bool:
    """True when `record_problems(record)` would be empty: the fast path for the usual valid record."""
    if type(record) is not dict or len(record) != _FIELD_COUNT:
        return False
    try:  # with exactly as many keys, all present means no unknown one
        values = _fields_of(record)
    except KeyError:
        return False
    (mid, timestamp, machine, part, feature, material, cte, nominal, tolerance, measured, part_temp, air_temp,
     scale_temp, compensated, correction, deviation, uncertainty, verdict, flags) = values  # fmt: skip
    if not (
        type(mid) is str
        and type(timestamp) is str
        and type(machine) is str
        and type(part) is str
        and type(feature) is str
        and type(material) is str
        and type(verdict) is str
        and type(flags) is list
    ):
        return False
    if (
        _UUID_MATCH(mid) is None
        or _TIMESTAMP_MATCH(timestamp) is None
        or _ID_MATCH(machine) is None
        or _ID_MATCH(feature) is None
        or not 0 < len(part) <= MAX_TEXT_CHARS
        or not 0 < len(material) <= MAX_TEXT_CHARS
        or not part.isprintable()
        or not material.isprintable()
        or verdict not in _VERDICT_SET
    ):
        return False
    for value in (nominal, tolerance, measured, compensated):
        if (type(value) is not float and type(value) is not int) or not 0 < value <= FLOAT_MAX:
            return False
    if (type(uncertainty) is not float and type(uncertainty) is not int) or not 0 <= uncertainty <= FLOAT_MAX:
        return False
    for value in (cte, part_temp, correction, deviation):
        if (type(value) is not float and type(value) is not int) or not -FLOAT_MAX <= value <= FLOAT_MAX:
            return False
    for value in (air_temp, scale_temp):
        if value is not None and (
            (type(value) is not float and type(value) is not int) or not -FLOAT_MAX <= value <= FLOAT_MAX
        ):
            return False
    for flag in flags:
        if type(flag) is not str or flag not in _FLAG_SET:
            return False
    try:
        datetime.fromisoformat(timestamp)
    except ValueError:
        return False
    return True


def _all_numbers(column: list[Any], low: float, high: float, low_open: bool = False) -> bool:
    """Every value is an int or float (not bool), finite, low (<) <= value <= high."""
    if not _NUMBER_TYPES.issuperset(map(type, column)) or not all(map(math.isfinite, column)):
        return False
    smallest: float = min(column)
    largest: float = max(column)
    return (smallest > low if low_open else smallest >= low) and largest <= high


def batch_is_valid(records: list[Any]) -> bool:
    """True when every record is valid, checked field by field over the whole batch with C-level loops.

    The fast path for the usual batch (~1 us per record); when it says False, the per-record
    checks find out which records are invalid and why. Agrees with `record_problems` exactly.
    """
    if not records:
        return True
    try:
        if set(map(type, records)) != _DICT_ONLY or {_FIELD_COUNT} != set(map(len, records)):
            return False
        column = {name: list(map(getter, records)) for name, getter in _GETTERS}  # KeyError: a field missing
        for name in (*ID_FIELDS, *TEXT_FIELDS, "measurement_id", "timestamp", "verdict"):
            if set(map(type, column[name])) != _STR_ONLY:
                return False
        if not (
            all(map(_UUID_MATCH, column["measurement_id"]))
            and all(map(_TIMESTAMP_MATCH, column["timestamp"]))
            and all(map(_ID_MATCH, column["machine_id"]))
            and all(map(_ID_MATCH, column["feature"]))
            and _VERDICT_SET.issuperset(column["verdict"])
        ):
            return False
        for name in TEXT_FIELDS:
            lengths = list(map(len, column[name]))
            if min(lengths) < 1 or max(lengths) > MAX_TEXT_CHARS or not all(map(str.isprintable, column[name])):
                return False
        for name in POSITIVE_FIELDS:
            if not _all_numbers(column[name], 0.0, FLOAT_MAX, low_open=True):
                return False
        for name in NON_NEGATIVE_FIELDS:
            if not _all_numbers(column[name], 0.0, FLOAT_MAX):
                return False
        for name in NUMBER_FIELDS:
            if not _all_numbers(column[name], -FLOAT_MAX, FLOAT_MAX):
                return False
        for name in NULLABLE_FIELDS:
            given = [value for value in column[name] if value is not None]
            if given and not _all_numbers(given, -FLOAT_MAX, FLOAT_MAX):
                return False
        flags = column["flags"]
        if set(map(type, flags)) != _LIST_ONLY or not _FLAG_SET.issuperset(chain.from_iterable(flags)):
            return False
        list(map(datetime.fromisoformat, column["timestamp"]))  # ValueError: e.g. 31 April
    except (KeyError, ValueError, TypeError, OverflowError):  # missing field, bad date, unhashable, huge int
        return False
    return True


def record_problems(record: Any) -> list[Problem]:
    """Every problem of one record as (field, message); empty when the record is valid."""
    if type(record) is not dict:
        return [(RECORD_FIELD, f"must be a JSON object, got {json_type(record)}")]
    problems: list[Problem] = []
    if record.keys() != _FIELD_SET:
        problems.extend((name, "missing") for name in RESULT_FIELDS if name not in record)
        problems.extend((_short(name, 100).strip('"'), "unknown field") for name in record if name not in _FIELD_SET)
        del problems[MAX_PROBLEMS_PER_RECORD:]
    get = record.get
    for name, check in CHECKS:
        value = get(name, problems)  # `problems` stands for "missing": never a parsed JSON value
        if value is not problems:
            message = check(value)
            if message is not None:
                problems.append((name, message))
    return problems[:MAX_PROBLEMS_PER_RECORD]


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
