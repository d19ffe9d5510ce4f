"""The simulator's parts in the real CMM formats (`--format dfq|calypso|qif`): one measurement
report per part, written by the format writers of `cmm_twin.formats`.

A part becomes a `Report`: one characteristic per feature (its nominal, its limits in mm or
degrees, None for an open side, the measured value), the part number of its type (the key of the
gateway's part catalogue, `catalogue.parts_table`), and the part's temperatures where the format
keeps them: Q-DAS as the characteristics `part temperature` and `air temperature` (degC; the
gateway takes such characteristics as temperatures, not measurements), Calypso in the run header,
QIF as the part's ObjectTemperature.

Times: each format keeps the part's time at its own resolution (`carried_moment`): CSV and QIF to
the millisecond, Q-DAS and Calypso local times to the second, written in the zone given
(`--timezone`). `read_back_moment` is the instant the gateway derives from what a file holds (a
local time read in the same zone, the first of two equal local times when the clocks go back):
the ground truth and its measurement ids use it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.simulator.shop import PartBatch

FORMATS: Final = ("csv", "dfq", "calypso", "qif")
"""Formats the simulator writes (`--format`)."""
LOCAL_TIME_FORMATS: Final = ("dfq", "calypso")
"""Formats whose times are local, written in `--timezone`."""
LENGTH_DECIMALS = 5
"""Decimal places of lengths (0.01 um, as in the CSV files)."""
ANGLE_DECIMALS = 4
"""Decimal places of angles (0.0001 degree, as in the CSV files and the gateway's outbox)."""
TEMPERATURE_DECIMALS = 3
PART_TEMPERATURE = "part temperature"
AIR_TEMPERATURE = "air temperature"
CALYPSO_SUFFIXES = ("_hdr.txt", "_chr.txt")


def carried_moment(fmt: str, moment: datetime) -> datetime:
    """`moment` at the resolution `fmt` keeps: whole seconds for the local-time formats, else
    milliseconds."""
    if fmt in LOCAL_TIME_FORMATS:
        return moment.replace(microsecond=0)
    return moment - timedelta(microseconds=moment.microsecond % 1000)


def read_back_moment(fmt: str, moment: datetime, inputs: InputSettings) -> datetime:
    """The instant (UTC) the gateway reads from a `fmt` file holding `moment` (at its resolution):
    a local time is read in `inputs.zone` by the gateway's rule (`InputSettings.local`)."""
    carried = carried_moment(fmt, moment)
    if fmt not in LOCAL_TIME_FORMATS:
        return carried
    # in UTC: an aware time of the repeated hour never compares equal across zones
    return inputs.local(carried.astimezone(inputs.zone).replace(tzinfo=None)).astimezone(UTC)


def _limit(value: float) -> float | None:
    return None if math.isnan(value) else value


def part_report(fmt: str, part: PartBatch, machine: str, moment: datetime) -> Report:
    """The report of one part (the rows of `part`) measured on `machine` at `moment` (aware,
    taken at the resolution `fmt` keeps)."""
    characteristics = [
        ReportCharacteristic(
            number=i + 1,
            name=name,
            unit=unit,
            nominal=nominal,
            lower=_limit(lower),
            upper=_limit(upper),
            decimals=ANGLE_DECIMALS if unit == "deg" else LENGTH_DECIMALS,
        )
        for i, (name, unit, nominal, lower, upper) in enumerate(
            zip(
                part.feature.tolist(),
                part.unit.tolist(),
                part.nominal.tolist(),
                part.lower_tol.tolist(),
                part.upper_tol.tolist(),
                strict=True,
            )
        )
    ]
    values = [ReportValue(float(v)) for v in part.measured.tolist()]
    part_temp, air_temp = float(part.part_temp_c[0]), float(part.air_temp_c[0])
    temperatures_as_characteristics = fmt == "dfq"
    if temperatures_as_characteristics:
        for name, value in ((PART_TEMPERATURE, part_temp), (AIR_TEMPERATURE, air_temp)):
            characteristics.append(
                ReportCharacteristic(len(characteristics) + 1, name, "degC", None, decimals=TEMPERATURE_DECIMALS)
            )
            values.append(ReportValue(value))
    number, material = str(part.part_number[0]), str(part.material[0])
    return Report(
        part_number=number,
        part_description=f"simulated part {number} ({material})",
        characteristics=characteristics,
        parts=[
            ReportPart(
                part_id=str(part.part_id[0]),
                machine_id=machine,
                timestamp=carried_moment(fmt, moment),
                values=values,
                part_temp_c=None if temperatures_as_characteristics else part_temp,
                air_temp_c=None if temperatures_as_characteristics else air_temp,
            )
        ],
    )


def encode(fmt: str, report: Report, inputs: InputSettings, stem: str) -> list[tuple[str, bytes]]:
    """The files of `report` in format `fmt` (not csv), named after `stem`, in the order they
    must appear in the inbox (the file that completes the unit last): `<stem>.dfq`; `<stem>.qif`;
    `<stem>_hdr.txt` then `<stem>_chr.txt`."""
    # The writers are imported only when their format is asked for.
    if fmt == "dfq":
        from cmm_twin.formats.qdas import write_dfq  # noqa: PLC0415

        return [(f"{stem}.dfq", write_dfq(report, inputs.zone))]
    if fmt == "qif":
        from cmm_twin.formats.qif import write_qif_results  # noqa: PLC0415

        return [(f"{stem}.qif", write_qif_results(report))]
    if fmt == "calypso":
        from cmm_twin.formats.calypso import write_calypso  # noqa: PLC0415

        files = write_calypso(report, inputs.zone)
        suffixes = [next((s for s in CALYPSO_SUFFIXES if name.endswith(s)), None) for name, _ in files]
        if suffixes != list(CALYPSO_SUFFIXES):
            raise ValueError(f"expected a _hdr.txt and a _chr.txt file of one part, got {[n for n, _ in files]}")
        return [(stem + suffix, data) for suffix, (_, data) in zip(CALYPSO_SUFFIXES, files, strict=True)]
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
