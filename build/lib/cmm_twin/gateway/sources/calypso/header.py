"""The run header `<prefix>_hdr.txt`: a header row and one data row, tab-separated (the columns
this gateway reads are listed in docs/formats/calypso.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path

from cmm_twin.gateway.sources.calypso.table import number, parse_table, read_text
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.rows import FileRejected

PART_TEMP_COLUMNS = ("temperature", "part_temp", "parttemp", "part_temperature", "workpiece_temp")
"""Columns holding the part temperature (degC), the first one filled wins."""
AIR_TEMP_COLUMNS = ("air_temp", "airtemp", "air_temperature", "ambient_temp", "room_temp")
"""Columns holding the air temperature (degC)."""
HDR_COLUMNS = frozenset(
    {"date", "time", "planid", "partnb", "operator", "machine", *PART_TEMP_COLUMNS, *AIR_TEMP_COLUMNS}
)
"""The columns read; others are ignored."""


@dataclass(frozen=True)
class RunHeader:
    """What a `_hdr.txt` says about its run (None: not given)."""

    timestamp: datetime | None = None
    """Aware, in the `[inputs]` time zone."""
    planid: str | None = None
    partnb: str | None = None
    operator: str | None = None
    machine: str | None = None
    part_temp_c: float | None = None
    air_temp_c: float | None = None
    line: int = 0
    """The line of the data row."""


def read_header(path: Path, inputs: InputSettings, low_c: float, high_c: float) -> RunHeader:
    """The run header in `path`; FileRejected naming the file, line and column of what is wrong.
    Temperatures outside `low_c`..`high_c` are rejected here (they would void every value)."""
    name = path.name
    try:
        table = parse_table(read_text(path)[1], HDR_COLUMNS, ())
    except FileRejected as exc:
        raise FileRejected(f"{name}, line {exc.line}: {exc.reason}") from None
    if table.bad_rows:
        raise FileRejected(f"{name}, line {table.bad_rows[0][0]}: {table.bad_rows[0][1]}")
    if not table.rows:
        raise FileRejected(f"{name}, line {table.header_line}: no data row under the header")
    if len(table.rows) > 1:
        raise FileRejected(f"{name}, line {table.rows[1][0]}: more than one data row")
    line, fields = table.rows[0]

    def text(column: str) -> str | None:
        return table.get(fields, column) or None

    def temperature(columns: tuple[str, ...]) -> float | None:
        for column in columns:
            raw = table.get(fields, column)
            if not raw:
                continue
            try:
                value = number(raw)
            except ValueError as exc:
                raise FileRejected(f"{name}, line {line}, column {column!r}: {exc}") from None
            assert value is not None
            if not low_c <= value <= high_c:
                raise FileRejected(
                    f"{name}, line {line}, column {column!r}: temperature {value:g} degC outside the plausible "
                    f"range {low_c:g}..{high_c:g} degC"
                )
            return value
        return None

    return RunHeader(
        timestamp=_timestamp(text("date"), text("time"), name, line, inputs),
        planid=text("planid"),
        partnb=text("partnb"),
        operator=text("operator"),
        machine=text("machine"),
        part_temp_c=temperature(PART_TEMP_COLUMNS),
        air_temp_c=temperature(AIR_TEMP_COLUMNS),
        line=line,
    )


def _timestamp(day: str | None, clock: str | None, name: str, line: int, inputs: InputSettings) -> datetime | None:
    """The run's time from `date` and `time` (local, in the inputs' zone); None when neither is given."""
    parsed_day = parsed_clock = None
    if day is not None:
        try:
            parsed_day = _date(day)
        except ValueError:
            raise FileRejected(
                f"{name}, line {line}, column 'date': not a date (yyyy-mm-dd or dd.mm.yyyy): {day!r}"
            ) from None
    if clock is not None:
        try:
            parsed_clock = time.fromisoformat(clock) if len(clock) in (5, 8) else None
        except ValueError:
            parsed_clock = None
        if parsed_clock is None:
            raise FileRejected(f"{name}, line {line}, column 'time': not a time (HH:MM:SS): {clock!r}")
    if parsed_day is None and parsed_clock is None:
        return None
    if parsed_day is None or parsed_clock is None:
        missing = "date" if parsed_day is None else "time"
        raise FileRejected(f"{name}, line {line}, column {missing!r}: empty or missing (date and time go together)")
    return inputs.local(datetime.combine(parsed_day, parsed_clock))


def _date(text: str) -> date:
    """`yyyy-mm-dd` or `dd.mm.yyyy`."""
    if len(text) == 10 and text[4] == "-" and text[7] == "-":
        return date.fromisoformat(text)
    if len(text) == 10 and text[2] == "." and text[5] == ".":
        return date(int(text[6:]), int(text[3:5]), int(text[:2]))
    raise ValueError(text)
