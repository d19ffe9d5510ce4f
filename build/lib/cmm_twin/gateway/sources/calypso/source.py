"""The Zeiss Calypso source: inbox table files `<prefix>_chr.txt` (one row per characteristic,
closed by a last line `END`) with an optional run header `<prefix>_hdr.txt` (docs/formats/calypso.md).

The chr file leads its unit; the hdr beside it is taken along (read with it, moved with it) but
never waited for, and a hdr without its chr is quarantined by the pipeline after
`companion_wait_s`. A chr file is complete only once its last non-empty line is `END`: until then
it is left in the inbox, however long it has been stable (a run Calypso never finished stays
there, never read half-written).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cmm_twin.gateway.sources.base import Source
from cmm_twin.gateway.sources.calypso.header import RunHeader, read_header
from cmm_twin.gateway.sources.calypso.table import (
    Table,
    ends_with_end,
    last_line_is_end,
    mtime_ns,
    number,
    parse_table,
    read_text,
)
from cmm_twin.gateway.sources.characteristics import Characteristic, Part, Reading, RowBuilder
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings, ParsedChunk, RowError
from cmm_twin.physics.thermal import Flag

log = logging.getLogger(__name__)

CHR_SUFFIX = "_chr.txt"
HDR_SUFFIX = "_hdr.txt"
CHR_REQUIRED = ("id", "actual", "nominal")
CHR_COLUMNS = frozenset(
    {*CHR_REQUIRED, "uppertol", "lowertol", "unit", "planid", "partnb", "type", "comment", "featureid"}
)
"""The chr columns read (by name, in any order); others (deviation, exceed, group1...) are ignored."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _mirror(name: str, old: str, new: str) -> str:
    """`name` with its suffix `old` (matched case-insensitively) replaced by `new`, letter by letter
    in the case `name` has (`P_HDR.TXT` -> `P_CHR.TXT`)."""
    tail = name[-len(old) :]
    swapped = "".join(n.upper() if t.isupper() else n for t, n in zip(tail, new, strict=True))
    return name[: -len(old)] + swapped


class CalypsoSource(Source):
    """Calypso table files: `<prefix>_chr.txt`, with `<prefix>_hdr.txt` when there is one."""

    name = "calypso"
    patterns = ("*" + CHR_SUFFIX, "*" + HDR_SUFFIX)

    def __init__(self, settings: IngestSettings) -> None:
        super().__init__(settings)
        self.builder = RowBuilder(settings, "calypso")

    @classmethod
    def leader(cls, name: str) -> str:
        """A hdr file's unit is led by the chr file of the same prefix."""
        return _mirror(name, HDR_SUFFIX, CHR_SUFFIX) if name.lower().endswith(HDR_SUFFIX) else name

    @classmethod
    def optional_companions(cls, name: str) -> tuple[str, ...]:
        """The hdr file of a chr file (taken along when present)."""
        return (_mirror(name, CHR_SUFFIX, HDR_SUFFIX),) if name.lower().endswith(CHR_SUFFIX) else ()

    def waits_for_more(self, path: Path, read_to: int, size: int, stable: bool) -> bool:
        """A chr file waits until its last non-empty line is `END`, stable or not (an empty one too)."""
        return not ends_with_end(path, size)

    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        """The rows of the chr file `path` (with its hdr file when there is one beside it).
        FileRejected for a chr without its `END` line, a table that cannot be read, a bad hdr."""
        data, text = read_text(path)
        if not last_line_is_end(data):
            raise FileRejected("no closing line 'END' (the run is not complete)")
        table = parse_table(text, CHR_COLUMNS, CHR_REQUIRED)
        header = RunHeader()
        for companion in (path.parent / name for name in self.optional_companions(path.name)):
            if not companion.is_file():
                continue
            header = read_header(
                companion, self.settings.inputs, self.settings.plausible_min_c, self.settings.plausible_max_c
            )
        readings, errors = _readings(table, header, path)
        lines = text.count("\n") + (not text.endswith("\n"))
        chunk = self.builder.build(readings, errors, path.name, len(data), lines)
        log.debug("read %s: %d rows, %d row errors", path.name, len(chunk.rows) if chunk else 0, len(errors))
        return chunk


def _readings(table: Table, header: RunHeader, path: Path) -> tuple[list[Reading], list[RowError]]:
    """The readings of the chr table of `path` (one Part per `partnb`) and its row errors."""
    errors = [RowError(line, None, reason) for line, reason in table.bad_rows]
    timestamp, flags = header.timestamp, 0
    if timestamp is None:  # no hdr, or one without date and time: the chr file's modification time
        timestamp = _EPOCH + timedelta(microseconds=mtime_ns(path) // 1000)
        flags = Flag.TIMESTAMP_FROM_FILE
    prefix = path.name[: -len(CHR_SUFFIX)]
    parts: dict[str, Part] = {}
    readings: list[Reading] = []
    for count, (line, fields) in enumerate(table.rows, start=1):
        partnb = table.get(fields, "partnb") or header.partnb or prefix
        part = parts.get(partnb)
        if part is None:
            part = parts[partnb] = Part(
                partnb,
                part_number=table.get(fields, "planid") or header.planid,
                machine_id=header.machine,
                timestamp=timestamp,
                part_temp_c=header.part_temp_c,
                air_temp_c=header.air_temp_c,
                temp_line=line,
                flags=int(flags),
            )
        values: dict[str, float | None] = {}
        problem = None
        for column in ("actual", "nominal", "uppertol", "lowertol"):
            try:
                values[column] = number(table.get(fields, column))
            except ValueError as exc:
                problem = RowError(line, column, str(exc))
                break
        if problem is None and values["actual"] is None:
            problem = RowError(line, "actual", "no measured value")
        if problem is not None:
            errors.append(problem)
            continue
        actual = values["actual"]
        assert actual is not None
        characteristic = Characteristic(
            str(count),
            table.get(fields, "id"),
            _unit(table.get(fields, "unit"), table.get(fields, "type")),
            values["nominal"],
            values["lowertol"],
            values["uppertol"],
            line,
        )
        readings.append(Reading(characteristic, part, actual, line, "actual"))
    return readings, errors


def _unit(unit: str, kind: str) -> str:
    """The characteristic's unit: the `unit` column; when it is empty (or absent, as in older
    versions), degrees for a characteristic whose `type` names an angle, else mm."""
    if unit:
        return unit
    return "deg" if "angle" in kind.lower() else "mm"
