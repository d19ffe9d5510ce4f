"""What the outbox writes for one input file: its compensated records as a QIF 3 results document
(`<stem>.qif`), and for a Q-DAS input the original DFQ with the compensated values in place of the
measured ones (`<stem>.dfq`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources.rows import FileRejected, IngestSettings
from cmm_twin.logs import safe_name

log = logging.getLogger(__name__)

QIF_STATUS = {"PASS": "PASS", "FAIL": "FAIL", "UNCERTAIN": "INDETERMINATE", "UNDEFINED": "UNDEFINED"}
"""Verdict -> QIF CharacteristicStatusEnum (INDETERMINATE is ISO 14253-1's undecided zone)."""
DECIMALS = {"mm": 5, "deg": 4}
"""Decimal places of the values written: 0.01 um, 0.0001 degree."""


@dataclass(frozen=True)
class Output:
    """One file of the outbox."""

    name: str
    data: bytes


def report_of(records: Sequence[dict[str, Any]], coverage_factor: float) -> Report:
    """The compensated records of one input file as a Report: characteristics in first-seen
    order, one part per part id (a characteristic met again on a part starts a new part), values
    at 20 degC with u_c = U / k."""
    characteristics: dict[str, ReportCharacteristic] = {}
    for r in records:
        if r["feature"] not in characteristics:
            unit = r["unit"]
            characteristics[r["feature"]] = ReportCharacteristic(
                number=len(characteristics) + 1,
                name=r["feature"],
                unit=unit,
                nominal=r["nominal_mm"],
                lower=r["lower_tol_mm"],
                upper=r["upper_tol_mm"],
                decimals=DECIMALS.get(unit, 5),
            )
    order = {name: i for i, name in enumerate(characteristics)}
    parts: list[tuple[dict[str, Any], dict[int, ReportValue]]] = []
    current: dict[str, tuple[dict[str, Any], dict[int, ReportValue]]] = {}
    for r in records:
        slot = order[r["feature"]]
        entry = current.get(r["part_id"])
        if entry is None or slot in entry[1]:
            entry = current[r["part_id"]] = (r, {})
            parts.append(entry)
        entry[1][slot] = ReportValue(
            r["compensated_mm"],
            r["uncertainty_um"] / 1000.0 / coverage_factor,
            QIF_STATUS.get(r["verdict"], "UNDEFINED"),
        )
    return Report(
        part_number=Path(records[0]["source_file"]).stem,
        part_description=f"compensated to 20 degC by cmm-twin from {records[0]['source_file']}",
        characteristics=list(characteristics.values()),
        parts=[_part(first, values, len(characteristics)) for first, values in parts],
    )


def _part(first: dict[str, Any], values: dict[int, ReportValue], count: int) -> ReportPart:
    assumed = "temperature_assumed" in first["flags"]
    return ReportPart(
        part_id=first["part_id"],
        machine_id=first["machine_id"],
        timestamp=datetime.fromisoformat(first["timestamp"]),
        values=[values.get(i, ReportValue(None)) for i in range(count)],
        part_temp_c=None if assumed else first["part_temp_c"],
        air_temp_c=first["air_temp_c"],
    )


def outputs(
    records: Sequence[dict[str, Any]],
    formats: Sequence[str],
    coverage_factor: float,
    settings: IngestSettings,
    originals: Sequence[Path],
) -> list[Output]:
    """The outbox files of one input file's records. `originals`: where the input file may be
    now (inbox, archive, quarantine), for the DFQ, which keeps everything of the original but the
    values."""
    from cmm_twin.formats.qdas import compensated_dfq  # noqa: PLC0415 (the writers load only with the outbox)
    from cmm_twin.formats.qif import write_qif_results  # noqa: PLC0415

    source_file = records[0]["source_file"]
    stem = Path(source_file).stem
    out: list[Output] = []
    if "qif" in formats:
        out.append(Output(f"{stem}.qif", write_qif_results(report_of(records, coverage_factor))))
    if "dfq" in formats and records[0]["source_format"] == "qdas":
        found = _original(originals, source_file)
        if found is None:
            log.warning("outbox: %s is in none of %s: no DFQ written for it", safe_name(source_file), originals)
        else:
            description, values = found
            compensated = {r["measurement_id"]: r["compensated_mm"] for r in records}
            try:
                data = compensated_dfq(description, compensated, settings, dfx=values, name=source_file)
            except FileRejected as exc:  # changed since it was read (a new file under the same name)
                log.warning("outbox: %s cannot be read again (%s): no DFQ written for it", safe_name(source_file), exc)
            else:
                out.append(Output(f"{stem}.dfq", data))
    return out


def _original(directories: Sequence[Path], source_file: str) -> tuple[bytes, bytes | None] | None:
    """The bytes of the Q-DAS input (a .dfq; or a .dfd and its .dfx) from the first directory
    holding it."""
    for directory in directories:
        try:
            first = (directory / source_file).read_bytes()
        except OSError:
            continue
        if not source_file.lower().endswith(".dfd"):
            return first, None
        values_name = source_file[:-4] + (".DFX" if source_file[-4:].isupper() else ".dfx")
        try:
            return first, (directory / values_name).read_bytes()
        except OSError:
            continue
    return None
