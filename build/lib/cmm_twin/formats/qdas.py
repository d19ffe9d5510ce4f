"""Q-DAS AQDEF writers: a DFQ from a Report (the simulator's `--format dfq`), and an inbox DFQ (or
.dfd + .dfx pair) with its values replaced by the gateway's compensated ones (the outbox).
The layout: docs/formats/qdas.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import tzinfo

import numpy as np

from cmm_twin.formats.report import Report, ReportCharacteristic
from cmm_twin.gateway.sources.characteristics import ANGLE_UNITS_DEG, LENGTH_UNITS_MM, RowBuilder
from cmm_twin.gateway.sources.qdas.document import Document
from cmm_twin.gateway.sources.qdas.numbers import decimals_of
from cmm_twin.gateway.sources.qdas.source import read_document
from cmm_twin.gateway.sources.qdas.text import UTF8_BOM, Text
from cmm_twin.gateway.sources.rows import IngestSettings

UNIT_TEXT = {"mm": "mm", "um": "µm", "inch": "inch", "deg": "°", "degC": "°C"}
"""K2142 of each Report unit."""
ENCODING = "cp1252"
"""What the DFQ writer encodes in (Windows-1252, as Q-DAS exporters on Windows do); lines end in CR LF."""
PART_TEMPERATURE = "Part temperature"
AIR_TEMPERATURE = "Air temperature"
"""Descriptions of the temperature characteristics added for the parts' temperatures."""


def write_dfq(report: Report, zone: tzinfo) -> bytes:
    """`report` as a DFQ: K0100, K1001/K1002, the characteristics (K2001, K2002, K2142, K2022,
    K2101, limits as allowances K2112/K2113), then per part its values as `K0001/n/m` and the value
    set's K0004 (local time in `zone`), K0010 and K0014 as `/0/m` keys. When no characteristic is
    a temperature (unit `degC`), the parts' part and air temperatures are written as two added
    characteristics in °C. Windows-1252 (characters it lacks become `?`), CR LF."""
    characteristics = list(report.characteristics)
    temperatures: list[tuple[int, str]] = []  # (index, which ReportPart temperature)
    if not any(c.unit == "degC" for c in characteristics):
        for attribute, name in (("part_temp_c", PART_TEMPERATURE), ("air_temp_c", AIR_TEMPERATURE)):
            if any(getattr(p, attribute) is not None for p in report.parts):
                number = len(characteristics) + 1
                characteristics.append(ReportCharacteristic(number, name, "degC", None, decimals=2))
                temperatures.append((number, attribute))
    lines = [f"K0100 {len(characteristics)}", f"K1001 {_one_line(report.part_number)}"]
    lines.append(f"K1002 {_one_line(report.part_description)}")
    for index, c in enumerate(characteristics, start=1):
        lines += _characteristic(index, c)
    for m, part in enumerate(report.parts, start=1):
        for index, (c, value) in enumerate(zip(characteristics, part.values, strict=False), start=1):
            if value.value is not None and math.isfinite(value.value):
                lines.append(f"K0001/{index}/{m} {value.value:.{c.decimals}f}")
        for index, attribute in temperatures:
            temp = getattr(part, attribute)
            if temp is not None:
                lines.append(f"K0001/{index}/{m} {temp:.2f}")
        lines.append(f"K0004/0/{m} {part.timestamp.astimezone(zone).strftime('%d.%m.%Y/%H:%M:%S')}")
        lines.append(f"K0010/0/{m} {_one_line(part.machine_id)}")
        lines.append(f"K0014/0/{m} {_one_line(part.part_id)}")
    return ("\r\n".join(lines) + "\r\n").encode(ENCODING, errors="replace")


def _characteristic(index: int, c: ReportCharacteristic) -> list[str]:
    lines = [
        f"K2001/{index} {c.number}",
        f"K2002/{index} {_one_line(c.name)}",
        f"K2142/{index} {UNIT_TEXT.get(c.unit, c.unit)}",
        f"K2022/{index} {c.decimals}",
    ]
    for key, number in ((2101, c.nominal), (2112, c.lower), (2113, c.upper)):
        if number is not None:
            lines.append(f"K{key}/{index} {_plain(number)}")
    return lines


def _plain(number: float) -> str:
    """The shortest decimal that reads back as `number`, without an exponent."""
    return str(np.format_float_positional(number, trim="-"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def compensated_dfq(
    original: bytes,
    compensated: Mapping[str, float],
    settings: IngestSettings,
    dfx: bytes | None = None,
    name: str = "original.dfq",
) -> bytes:
    """`original` (a DFQ; or a .dfd, with its .dfx's bytes as `dfx`) with each value whose
    measurement id is in `compensated` replaced by that value (mm, or degrees for an angle),
    converted back to its characteristic's unit and written with one decimal more than the original
    value had (K2022's when more) and the original's decimal separator. Everything else
    stays byte for byte. A pair comes back as one DFQ: the .dfd, then the .dfx (its BOM dropped;
    in the .dfd's encoding, or both in UTF-8 when the .dfd's cannot hold the .dfx's text).
    `settings` must be those the gateway read the file with (the ids depend on them); `name` is
    used in messages. Raises FileRejected for a file the source rejects."""
    document = read_document(original, name, settings, dfx)
    texts = [_edited(document, origin, edits) for origin, edits in enumerate(_edits(document, compensated, settings))]
    if len(texts) == 1:
        return texts[0].encode(document.texts[0].codec)
    head, values = texts[0], texts[1].removeprefix("\ufeff")
    codec = document.texts[0].codec
    try:
        return head.encode(codec) + values.encode(codec)
    except UnicodeEncodeError:
        body = (head.removeprefix("\ufeff") + values).encode("utf-8")
        return UTF8_BOM + body if original.startswith(UTF8_BOM) else body


def _edits(
    document: Document, compensated: Mapping[str, float], settings: IngestSettings
) -> list[list[tuple[int, int, str]]]:
    """Per file of the document: (start, end, new text) of each value to replace."""
    numbered = [replace(r, line=i) for i, r in enumerate(document.readings)]  # line: the reading's position
    chunk = RowBuilder(settings, "qdas").build(numbered, [], "", 0, 0)
    edits: list[list[tuple[int, int, str]]] = [[] for _ in document.texts]
    if chunk is None:
        return edits
    decimals = {id(s.characteristic): s.decimals for s in document.specs.values()}
    for position, measurement in zip(chunk.rows.line.tolist(), chunk.rows.measurement_id, strict=True):
        value = compensated.get(measurement)
        if value is None:
            continue
        reading, found = document.readings[position], document.fields[position]
        unit = reading.characteristic.unit.strip().lower()
        scale = LENGTH_UNITS_MM.get(unit) or ANGLE_UNITS_DEG.get(unit) or 1.0
        # One decimal more than the reading had (K2022 when it asks for more): the correction to
        # 20 degC is often below the last digit the CMM wrote, and SPC software must get it.
        places = max(decimals_of(found.text) + 1, decimals[id(reading.characteristic)] or 0)
        text = f"{value / scale:.{places}f}"
        if float(text) == float(found.text.replace(",", ".")):
            continue  # not corrected (an angle, a value the CMM software compensated): kept as written
        if "," in found.text:
            text = text.replace(".", ",")
        edits[found.origin].append((found.start, found.start + len(found.text), text))
    return edits


def _edited(document: Document, origin: int, edits: Sequence[tuple[int, int, str]]) -> str:
    """The text of file `origin` with `edits` applied."""
    text: Text = document.texts[origin]
    pieces: list[str] = []
    done = 0
    for start, end, new in sorted(edits):
        pieces += [text.text[done:start], new]
        done = end
    pieces.append(text.text[done:])
    return "".join(pieces)
