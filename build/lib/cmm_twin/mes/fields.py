"""The result record's fields as the mock MES checks them: formats, one check per field, and the
per-record and whole-batch checks (README, 'The MES path'; `GET /openapi.json` states them as a
JSON Schema).

The batch check is the hot path (the MES must ingest >= 40,000 records/s): it runs field by field
over the whole batch in C-level loops (`map`, `min`, `max`, compiled regexes) with exact types
(`type(v) is float`: a bool is no number). When it fails, the per-record checks say which records
are invalid and why; both agree exactly.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from datetime import datetime
from itertools import chain
from typing import Any, Final

from cmm_twin.physics.checks import ThermalLimits
from cmm_twin.physics.compensation import COMPENSATION_NAMES
from cmm_twin.physics.thermal import FLAG_NAMES, Verdict
from cmm_twin.records import RESULT_FIELDS, SOURCE_FORMATS, UNITS

MAX_BATCH_RECORDS: Final = 100_000
"""More records than this in one POST is answered 413 (split the batch)."""
MAX_TEXT_CHARS: Final = 64
"""Longest machine_id, part_id, feature and material."""
MAX_TIMESTAMP_CHARS: Final = 40
MAX_FILE_NAME_CHARS: Final = 255
"""Longest source_file (an inbox file name)."""
MAX_LENGTH_MM: Final = ThermalLimits.max_length_mm
"""Largest |value| of a length, limit or tolerance (the physics' plausibility limit, 10 m)."""
MAX_PROBLEMS_PER_RECORD: Final = 25
"""A record reports at most this many problems..."""
MAX_DETAILED_PROBLEMS: Final = 10_000
"""...and once a batch has this many, each further invalid record reports only its first one."""
RECORD_FIELD: Final = "(record)"
"""The `field` of a problem with the record as a whole (e.g. it is not a JSON object)."""

VERDICTS: Final = tuple(v.name for v in Verdict)
FLAGS: Final = tuple(FLAG_NAMES.values())
ENUM_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "verdict": VERDICTS,
    "unit": UNITS,
    "compensation": tuple(str(name) for name in COMPENSATION_NAMES),
    "source_format": SOURCE_FORMATS,
}
"""Strings that must be one of the listed values."""
ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,64}$"
UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
TIMESTAMP_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)

ID_FIELDS: Final = ("machine_id", "feature")
"""Strings matching ID_PATTERN."""
TEXT_FIELDS: Final = ("part_id", "material")
"""Strings of 1..64 printable characters."""
LENGTH_FIELDS: Final = ("nominal_mm", "measured_mm", "compensated_mm")
"""Finite numbers with |x| <= MAX_LENGTH_MM (signed: a coordinate, a form deviation's nominal 0)."""
TOLERANCE_FIELDS: Final = ("tolerance_mm",)
"""Null (an asymmetric or one-sided specification) or 0 < x <= MAX_LENGTH_MM."""
LIMIT_FIELDS: Final = ("lower_tol_mm", "upper_tol_mm")
"""Null (no limit on that side) or |x| <= MAX_LENGTH_MM."""
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
_UNIT_SET: Final = frozenset(UNITS)
_COMPENSATION_SET: Final = frozenset(ENUM_FIELDS["compensation"])
_SOURCE_FORMAT_SET: Final = frozenset(SOURCE_FORMATS)
_ENUM_SETS: Final = {name: frozenset(values) for name, values in ENUM_FIELDS.items()}
_FLAG_SET: Final = frozenset(FLAGS)
_ID_MATCH: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}").fullmatch
_UUID_MATCH: Final = re.compile(UUID_PATTERN.strip("^$")).fullmatch
_TIMESTAMP_MATCH: Final = re.compile(TIMESTAMP_PATTERN.strip("^$")).fullmatch
FLOAT_MAX: Final = 1.7976931348623157e308
"""Largest finite double: a JSON integer beyond it is not a finite number either."""


Problem = tuple[str, str]
"""(field, message) of one problem of a record."""


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


def short_text(value: Any, limit: int = 60) -> str:
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
        return f"must be a lowercase canonical UUID (8-4-4-4-12 hex), got {short_text(value)}"
    return None


def _check_timestamp(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if len(value) > MAX_TIMESTAMP_CHARS or _TIMESTAMP_MATCH(value) is None:
        return f"must be an ISO 8601 date-time with offset (YYYY-MM-DDTHH:MM:SS[.f]Z|±HH:MM), got {short_text(value)}"
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        return f"not a valid date-time ({exc}): {short_text(value)}"
    return None


def _check_id(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if _ID_MATCH(value) is None:
        return f"must match [A-Za-z0-9_.-]{{1,64}}, got {short_text(value)}"
    return None


def _check_text(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if not 1 <= len(value) <= MAX_TEXT_CHARS:
        return f"must be 1..{MAX_TEXT_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        return f"must be printable characters, got {short_text(value)}"
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


def _check_length(value: Any) -> str | None:
    problem = _number_problem(value)
    if problem is None and not -MAX_LENGTH_MM <= value <= MAX_LENGTH_MM:
        return f"must be within +-{MAX_LENGTH_MM:g}, got {value!r}"
    return problem


def _check_tolerance(value: Any) -> str | None:
    if value is None:
        return None
    problem = _number_problem(value)
    if problem is None and not 0 < value <= MAX_LENGTH_MM:
        return f"must be > 0 and <= {MAX_LENGTH_MM:g} (or null), got {value!r}"
    return problem


def _check_limit(value: Any) -> str | None:
    return None if value is None else _check_length(value)


def _check_non_negative(value: Any) -> str | None:
    problem = _number_problem(value)
    if problem is None and not value >= 0:
        return f"must be >= 0, got {value!r}"
    return problem


def _check_nullable(value: Any) -> str | None:
    return None if value is None else _number_problem(value)


def _enum_check(name: str) -> Callable[[Any], str | None]:
    allowed, listed = _ENUM_SETS[name], ", ".join(ENUM_FIELDS[name])

    def check(value: Any) -> str | None:
        if type(value) is not str:
            return _not_string(value)
        if value not in allowed:
            return f"must be one of {listed}, got {short_text(value)}"
        return None

    return check


def _check_file_name(value: Any) -> str | None:
    if type(value) is not str:
        return _not_string(value)
    if not 1 <= len(value) <= MAX_FILE_NAME_CHARS:
        return f"must be 1..{MAX_FILE_NAME_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        return f"must be printable characters, got {short_text(value)}"
    return None


def _check_flags(value: Any) -> str | None:
    if type(value) is not list:
        return f"must be an array of strings, got {json_type(value)}"
    for i, flag in enumerate(value):
        if type(flag) is not str or flag not in _FLAG_SET:
            return f"[{i}] must be one of {', '.join(FLAGS)}, got {short_text(flag)}"
    return None


CHECKS: Final[tuple[tuple[str, Callable[[Any], str | None]], ...]] = tuple(
    (name, check)
    for name, check in (
        ("measurement_id", _check_uuid),
        ("timestamp", _check_timestamp),
        *((n, _check_id) for n in ID_FIELDS),
        *((n, _check_text) for n in TEXT_FIELDS),
        *((n, _check_length) for n in LENGTH_FIELDS),
        *((n, _check_tolerance) for n in TOLERANCE_FIELDS),
        *((n, _check_limit) for n in LIMIT_FIELDS),
        *((n, _check_non_negative) for n in NON_NEGATIVE_FIELDS),
        *((n, _check_number) for n in NUMBER_FIELDS),
        *((n, _check_nullable) for n in NULLABLE_FIELDS),
        *((n, _enum_check(n)) for n in ENUM_FIELDS),
        ("flags", _check_flags),
        ("source_file", _check_file_name),
    )
)
"""(field, check) for every RESULT_FIELDS name; a check returns None or the problem."""
assert sorted(n for n, _ in CHECKS) == sorted(RESULT_FIELDS), "every record field needs exactly one check"


_fields_of: Final = operator.itemgetter(*RESULT_FIELDS)
assert (
    *("measurement_id", "timestamp", "machine_id", "part_id", "feature", "material", "cte_per_k"),
    *("nominal_mm", "tolerance_mm", "lower_tol_mm", "upper_tol_mm", "measured_mm", "part_temp_c", "air_temp_c"),
    *("scale_temp_c", "compensated_mm", "correction_um", "deviation_um", "uncertainty_um", "verdict", "flags"),
    *("unit", "compensation", "source_format", "source_file"),
) == RESULT_FIELDS, "is_valid_record unpacks the fields in this order"


def is_valid_record(record: Any) -> bool:
    """True when `record_problems(record)` would be empty: the fast path for the usual valid record."""
    if type(record) is not dict or len(record) != _FIELD_COUNT:
        return False
    try:  # with exactly as many keys, all present means no unknown one
        values = _fields_of(record)
    except KeyError:
        return False
    mid, timestamp, machine, part, feature, material = values[:6]
    verdict, flags, unit, compensation, source_format, source_file = values[19:]
    if not (
        type(mid) is str
        and type(timestamp) is str
        and type(machine) is str
        and type(part) is str
        and type(feature) is str
        and type(material) is str
        and type(verdict) is str
        and type(flags) is list
        and type(unit) is str
        and type(compensation) is str
        and type(source_format) is str
        and type(source_file) is str
    ):
        return False
    if (
        _UUID_MATCH(mid) is None
        or _TIMESTAMP_MATCH(timestamp) is None
        or _ID_MATCH(machine) is None
        or _ID_MATCH(feature) is None
        or not 0 < len(part) <= MAX_TEXT_CHARS
        or not 0 < len(material) <= MAX_TEXT_CHARS
        or not 0 < len(source_file) <= MAX_FILE_NAME_CHARS
        or not part.isprintable()
        or not material.isprintable()
        or not source_file.isprintable()
        or verdict not in _VERDICT_SET
        or unit not in _UNIT_SET
        or compensation not in _COMPENSATION_SET
        or source_format not in _SOURCE_FORMAT_SET
    ):
        return False
    if not _record_numbers_valid(values):
        return False
    for flag in flags:
        if type(flag) is not str or flag not in _FLAG_SET:
            return False
    try:
        datetime.fromisoformat(timestamp)
    except ValueError:
        return False
    return True


def _record_numbers_valid(values: tuple[Any, ...]) -> bool:
    """The number fields of `is_valid_record` (`values` in RESULT_FIELDS order)."""
    (cte, nominal, tolerance, lower, upper, measured, part_temp, air_temp, scale_temp, compensated, correction,
     deviation, uncertainty) = values[6:19]  # fmt: skip
    for value in (nominal, measured, compensated):
        if (type(value) is not float and type(value) is not int) or not -MAX_LENGTH_MM <= value <= MAX_LENGTH_MM:
            return False
    if tolerance is not None and (
        (type(tolerance) is not float and type(tolerance) is not int) or not 0 < tolerance <= MAX_LENGTH_MM
    ):
        return False
    for value in (lower, upper):
        if value is not None and (
            (type(value) is not float and type(value) is not int) or not -MAX_LENGTH_MM <= value <= MAX_LENGTH_MM
        ):
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
        return _strings_valid(column) and _numbers_valid(column) and _flags_and_dates_valid(column)
    except (KeyError, ValueError, TypeError, OverflowError):  # missing field, bad date, unhashable, huge int
        return False


def _strings_valid(column: dict[str, list[Any]]) -> bool:
    """The id, text, time, enum and file name columns of `batch_is_valid`."""
    for name in (*ID_FIELDS, *TEXT_FIELDS, *ENUM_FIELDS, "measurement_id", "timestamp", "source_file"):
        if set(map(type, column[name])) != _STR_ONLY:
            return False
    if not (
        all(map(_UUID_MATCH, column["measurement_id"]))
        and all(map(_TIMESTAMP_MATCH, column["timestamp"]))
        and all(map(_ID_MATCH, column["machine_id"]))
        and all(map(_ID_MATCH, column["feature"]))
        and all(allowed.issuperset(column[name]) for name, allowed in _ENUM_SETS.items())
    ):
        return False
    for name, longest in (*((n, MAX_TEXT_CHARS) for n in TEXT_FIELDS), ("source_file", MAX_FILE_NAME_CHARS)):
        lengths = list(map(len, column[name]))
        if min(lengths) < 1 or max(lengths) > longest or not all(map(str.isprintable, column[name])):
            return False
    return True


def _all_given_numbers(column: list[Any], low: float, high: float, low_open: bool = False) -> bool:
    """`_all_numbers` over the values that are not None (all None: True)."""
    given = [value for value in column if value is not None] if None in column else column
    return not given or _all_numbers(given, low, high, low_open)


def _numbers_valid(column: dict[str, list[Any]]) -> bool:
    """The number columns of `batch_is_valid`."""
    for name in LENGTH_FIELDS:
        if not _all_numbers(column[name], -MAX_LENGTH_MM, MAX_LENGTH_MM):
            return False
    for name in TOLERANCE_FIELDS:
        if not _all_given_numbers(column[name], 0.0, MAX_LENGTH_MM, low_open=True):
            return False
    for name in LIMIT_FIELDS:
        if not _all_given_numbers(column[name], -MAX_LENGTH_MM, MAX_LENGTH_MM):
            return False
    for name in NON_NEGATIVE_FIELDS:
        if not _all_numbers(column[name], 0.0, FLOAT_MAX):
            return False
    for name in NUMBER_FIELDS:
        if not _all_numbers(column[name], -FLOAT_MAX, FLOAT_MAX):
            return False
    return all(_all_given_numbers(column[name], -FLOAT_MAX, FLOAT_MAX) for name in NULLABLE_FIELDS)


def _flags_and_dates_valid(column: dict[str, list[Any]]) -> bool:
    """The flags of `batch_is_valid`, and its timestamps as dates (ValueError: e.g. 31 April)."""
    flags = column["flags"]
    if set(map(type, flags)) != _LIST_ONLY or not _FLAG_SET.issuperset(chain.from_iterable(flags)):
        return False
    list(map(datetime.fromisoformat, column["timestamp"]))
    return True


def record_problems(record: Any) -> list[Problem]:
    """Every problem of one record as (field, message); empty when the record is valid."""
    if type(record) is not dict:
        return [(RECORD_FIELD, f"must be a JSON object, got {json_type(record)}")]
    problems: list[Problem] = []
    if record.keys() != _FIELD_SET:
        problems.extend((name, "missing") for name in RESULT_FIELDS if name not in record)
        problems.extend(
            (short_text(name, 100).strip('"'), "unknown field") for name in record if name not in _FIELD_SET
        )
        del problems[MAX_PROBLEMS_PER_RECORD:]
    get = record.get
    for name, check in CHECKS:
        value = get(name, problems)  # `problems` stands for "missing": never a parsed JSON value
        if value is not problems:
            message = check(value)
            if message is not None:
                problems.append((name, message))
    return problems[:MAX_PROBLEMS_PER_RECORD]
