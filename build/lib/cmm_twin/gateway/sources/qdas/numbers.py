"""Numbers and dates as Q-DAS files write them: decimal points or commas; `dd.MM.yyyy/HH:mm:ss`,
`M/d/yy HH:mm:ss` and ISO 8601 dates and times."""

from __future__ import annotations

import re
from datetime import datetime

from cmm_twin.gateway.sources.inputs import InputSettings

_NUMBER = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?")
_GERMAN = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4}|\d{2})(?:/|\s+)(\d{1,2}):(\d{2})(?::(\d{2}))?")
_US = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?(?:\s*([AaPp])[Mm])?")


def parse_number(text: str) -> float | None:
    """`text` (stripped) as a number, with a decimal point or a decimal comma; None when it is not one."""
    text = text.strip()
    try:
        number = float(text.replace(",", "."))
    except ValueError:
        return None
    # float() reads what _NUMBER does (with the comma made a point), and besides only `1_000`,
    # `nan` and `inf`: those (and an overflow like 1e999, which _NUMBER takes) go the slow way.
    if number - number == 0.0 and "_" not in text:
        return number
    return number if _NUMBER.fullmatch(text) is not None else None


def parse_int(text: str) -> int | None:
    """`text` (stripped) as a whole number (`[+-]?\\d{1,9}`); None when it is not one."""
    text = text.strip()
    digits = text[1:] if text[:1] in ("+", "-") else text
    return int(text) if 0 < len(digits) <= 9 and digits.isdecimal() else None


def decimals_of(text: str) -> int:
    """Decimal places of a number as written (`12,345` -> 3, `1.5e-3` -> 4)."""
    mantissa, _, exponent = text.strip().lower().partition("e")
    places = 0
    for separator in ".,":
        if separator in mantissa:
            places = len(mantissa) - mantissa.index(separator) - 1
    if exponent:
        places -= int(exponent) if re.fullmatch(r"[+-]?\d{1,3}", exponent) else 0
    return min(max(places, 0), 15)


def parse_time(text: str, inputs: InputSettings) -> datetime | None:
    """A K0004 date and time as an aware datetime (a local time is taken in `inputs.zone`); None
    when it is none of the accepted forms or not a real date."""
    text = text.strip()
    try:
        found = _GERMAN.fullmatch(text)
        if found is not None:
            day, month, year, hour, minute, second = found.groups()
            return inputs.local(_naive(year, month, day, hour, minute, second))
        found = _US.fullmatch(text)
        if found is not None:
            month, day, year, hour, minute, second, half = found.groups()
            hours = int(hour)
            if half is not None:
                if not 1 <= hours <= 12:
                    return None
                hours = hours % 12 + (12 if half in "Pp" else 0)
            return inputs.local(_naive(year, month, day, str(hours), minute, second))
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?", text):
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo is not None else inputs.local(moment)
    except ValueError:  # 31.02.2026 and the like
        return None
    return None


def _naive(year: str, month: str, day: str, hour: str, minute: str, second: str | None) -> datetime:
    full_year = int(year) + (2000 if len(year) == 2 else 0)
    return datetime(full_year, int(month), int(day), int(hour), int(minute), int(second or 0))
