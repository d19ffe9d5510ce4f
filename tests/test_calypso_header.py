"""The Calypso run header `<prefix>_hdr.txt`: what it gives its chr file, and how a bad one is named."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cmm_twin.gateway.sources import FileRejected, IngestSettings
from cmm_twin.gateway.sources.calypso import CalypsoSource
from cmm_twin.gateway.sources.inputs import InputSettings, PartSettings
from cmm_twin.physics.thermal import Flag

CHR = "id\tactual\tnominal\tuppertol\tlowertol\r\nBore\t10.001\t10\t0.01\t-0.01\r\nEND\r\n"


def source(**inputs: object) -> CalypsoSource:
    settings = InputSettings(**{"timezone": "Europe/Berlin", "machine_id": "CMM-07", **inputs})  # type: ignore[arg-type]
    return CalypsoSource(IngestSettings(inputs=settings))


def run(tmp_path: Path, hdr: str, chr_text: str = CHR) -> Path:
    """A chr file (mtime 2026-01-02 03:04:05Z) with `hdr` beside it."""
    chr_path = tmp_path / "run_chr.txt"
    chr_path.write_text(chr_text, encoding="utf-8")
    ns = int(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 1_000_000_000
    os.utime(chr_path, ns=(ns, ns))
    (tmp_path / "run_hdr.txt").write_text(hdr, encoding="utf-8")
    return chr_path


def test_the_header_gives_time_part_machine_and_temperatures(tmp_path: Path) -> None:
    # summer time: 14:30 in Berlin is 12:30 UTC; dd.mm.yyyy is taken too; planid/partnb from the hdr
    hdr = "Date\tTime\tplanid\tpartnb\toperator\tmachine\ttemperature\tair_temp\r\n"
    hdr += "15.07.2026\t14:30\tB-220\tS-99\tA. Roth\tPRISMO-2\t24,0\t22.5\r\n"
    chunk = source(parts={"B-220": PartSettings(material="STEEL_1020")}).read(run(tmp_path, hdr))
    assert chunk is not None and chunk.errors == []
    rows = chunk.rows
    assert rows.timestamp == ["2026-07-15T12:30:00.000000Z"]
    assert (rows.part_id, rows.machine_id, rows.material) == (["S-99"], ["PRISMO-2"], ["STEEL_1020"])
    assert (rows.part_temp_c.tolist(), rows.air_temp_c.tolist()) == ([24.0], [22.5])
    assert rows.flags.tolist() == [0]


def test_a_header_without_date_and_time_leaves_the_file_time(tmp_path: Path) -> None:
    hdr = "partnb\tpart_temp\r\nS-1\t20.5\r\n"
    chunk = source().read(run(tmp_path, hdr))
    assert chunk is not None
    assert chunk.rows.timestamp == ["2026-01-02T03:04:05.000000Z"]
    assert chunk.rows.flags.tolist() == [int(Flag.TIMESTAMP_FROM_FILE)]
    assert (chunk.rows.part_id, chunk.rows.machine_id, chunk.rows.part_temp_c.tolist()) == (["S-1"], ["CMM-07"], [20.5])


def test_the_chr_row_names_its_part_before_the_header(tmp_path: Path) -> None:
    chr_text = "partnb\tid\tactual\tnominal\r\nROW-1\tBore\t10.001\t10\r\nEND\r\n"
    chunk = source().read(run(tmp_path, "partnb\r\nHDR-1\r\n", chr_text))
    assert chunk is not None and chunk.rows.part_id == ["ROW-1"]


@pytest.mark.parametrize(
    ("hdr", "reason"),
    [
        ("date\ttime\r\n2026-03-12\t9h41\r\n", "run_hdr.txt, line 2, column 'time': not a time (HH:MM:SS): '9h41'"),
        (
            "date\ttime\r\n2026-03-12\t\r\n",
            "run_hdr.txt, line 2, column 'time': empty or missing (date and time go together)",
        ),
        (
            "date\r\n12/03/2026\r\n",
            "run_hdr.txt, line 2, column 'date': not a date (yyyy-mm-dd or dd.mm.yyyy): '12/03/2026'",
        ),
        ("part_temp\r\nwarm\r\n", "run_hdr.txt, line 2, column 'part_temp': not a number: 'warm'"),
        (
            "air_temp\r\n95\r\n",
            "run_hdr.txt, line 2, column 'air_temp': temperature 95 degC outside the plausible range -20..80 degC",
        ),
        ("partnb\r\nS-1\r\nS-2\r\n", "run_hdr.txt, line 3: more than one data row"),
        ("partnb\r\n\r\n", "run_hdr.txt, line 1: no data row under the header"),
        ("partnb\tmachine\r\nS-1\r\n", "run_hdr.txt, line 2: expected 2 tab-separated fields, got 1"),
        ("partnb;machine\r\nS-1;M\r\n", "run_hdr.txt, line 1: the columns are separated by ';', not by tabs"),
        (
            "S-1\tCMM-07\r\n",
            "run_hdr.txt, line 1: no header row (no column named air_temp, air_temperature, "
            "airtemp, ambient_temp, date, machine, operator, part_temp, part_temperature, partnb, parttemp, planid, "
            "room_temp, temperature, time, workpiece_temp)",
        ),
    ],
)
def test_a_bad_header_rejects_the_run_naming_file_line_and_column(tmp_path: Path, hdr: str, reason: str) -> None:
    with pytest.raises(FileRejected) as caught:
        source().read(run(tmp_path, hdr))
    assert (caught.value.line, caught.value.reason) == (None, reason)
