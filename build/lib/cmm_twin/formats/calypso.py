"""Writer of Zeiss Calypso table files: per measured part a run header `<prefix>_hdr.txt` and the
characteristics `<prefix>_chr.txt` (tab-separated, a header row, the last line `END`), as the
gateway's Calypso source reads them (docs/formats/calypso.md)."""

from __future__ import annotations

import math
import re
from datetime import tzinfo

from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart

CHR_COLUMNS = (
    "planid",
    "partnb",
    "id",
    "type",
    "actual",
    "nominal",
    "uppertol",
    "lowertol",
    "deviation",
    "exceed",
    "unit",
    "featureid",
    "comment",
)
HDR_COLUMNS = ("date", "time", "planid", "partnb", "description", "operator", "machine", "part_temp", "air_temp")
UNITS = {"mm": "mm", "um": "µm", "inch": "inch", "deg": "°", "degc": "°C"}
"""Report units -> how the unit column spells them."""
LINE_END = "\r\n"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def write_calypso(report: Report, zone: tzinfo) -> list[tuple[str, bytes]]:
    """Per part of `report`: `(name, bytes)` of its `<prefix>_hdr.txt`, then of its
    `<prefix>_chr.txt` (write them in this order: the chr file's `END` closes the run). Times are
    written in `zone`; the prefix is `<part number>_<part id>_<local date>_<time>`. A value that
    is None (not measured) or not finite is left out of the chr file."""
    files: list[tuple[str, bytes]] = []
    for part in report.parts:
        local = part.timestamp.astimezone(zone)
        prefix = "_".join((_file_safe(report.part_number), _file_safe(part.part_id), local.strftime("%Y%m%d_%H%M%S")))
        files.append((f"{prefix}_hdr.txt", _hdr(report, part, zone)))
        files.append((f"{prefix}_chr.txt", _chr(report, part)))
    return files


def _hdr(report: Report, part: ReportPart, zone: tzinfo) -> bytes:
    local = part.timestamp.astimezone(zone)
    row = (
        local.strftime("%Y-%m-%d"),
        local.strftime("%H:%M:%S"),
        report.part_number,
        part.part_id,
        report.part_description,
        "",
        part.machine_id,
        _temperature(part.part_temp_c),
        _temperature(part.air_temp_c),
    )
    return _table(HDR_COLUMNS, [row], end=False)


def _temperature(value: float | None) -> str:
    """A temperature in degC, exactly (the shortest text that reads back as the same float)."""
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _chr(report: Report, part: ReportPart) -> bytes:
    rows = []
    for characteristic, value in zip(report.characteristics, part.values, strict=True):
        if value.value is None or not math.isfinite(value.value):
            continue
        rows.append(_chr_row(report, part, characteristic, value.value))
    return _table(CHR_COLUMNS, rows, end=True)


def _chr_row(report: Report, part: ReportPart, c: ReportCharacteristic, value: float) -> tuple[str, ...]:
    places = c.decimals

    def fixed(number: float | None) -> str:
        return "" if number is None else f"{number:.{places}f}"

    unit = c.unit.strip().lower()
    kind = "angle" if unit == "deg" else "temperature" if unit == "degc" else "distance"
    deviation = exceed = ""
    if c.nominal is not None:
        deviation = fixed(value - c.nominal)
        # Calypso fills `exceed` only when the value is out of tolerance: by how much.
        if c.upper is not None and value > c.nominal + c.upper:
            exceed = fixed(value - c.nominal - c.upper)
        elif c.lower is not None and value < c.nominal + c.lower:
            exceed = fixed(value - c.nominal - c.lower)
    return (
        report.part_number,
        part.part_id,
        c.name,
        kind,
        fixed(value),
        fixed(c.nominal),
        fixed(c.upper),
        fixed(c.lower),
        deviation,
        exceed,
        UNITS.get(unit, c.unit),
        str(c.number),
        "",
    )


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]], end: bool) -> bytes:
    """Tab-separated lines (CR LF), UTF-8; tabs and line breaks inside values become spaces."""
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(cell) for cell in row) for row in rows]
    if end:
        lines.append("END")
    return (LINE_END.join(lines) + LINE_END).encode("utf-8")


def _cell(text: str) -> str:
    return re.sub(r"[\t\r\n]", " ", text)


def _file_safe(text: str) -> str:
    """`text` usable in a file name ([A-Za-z0-9_.-]; others become `-`)."""
    safe = _UNSAFE.sub("-", text.strip())
    return safe if safe.strip("-.") else "part"
