"""Shop-floor faults at the pipeline: a name too long to keep, a group holding one bad file, a
half-written last line, a file that grows after its move, values whose results overflow, a name
that would forge log lines, and a file quarantined unread. The real gateway runs in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.ingest import reports
from cmm_twin.gateway.sources.csv import CsvSource
from tests.gateway_harness import (
    HEADER,
    RecordingSink,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    wait_for,
)

DEADLINE_S = 60.0
LONG_NAME = "L" * 246 + ".csv"  # 250 bytes: its report `<name>.errors.json` exceeds NAME_MAX (255)
MEASURED_LAST = (
    "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,part_temp_c,air_temp_c,measured_mm\n"
)
"""A header with the measured value last: a line cut inside it still has all its fields."""


def measured_last_row(part_id: str, measured_mm: str = "100.0118") -> str:
    return f"2026-01-05T06:00:00Z,CMM-01,{part_id},length_x,AL6061,100.0,0.010,25.0,24.0,{measured_mm}"


def report(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".errors.json").read_text())
    return data


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def age(path: Path, seconds: float) -> None:
    """Set `path`'s mtime `seconds` into the past (a file nobody has touched for that long)."""
    past_ns = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(past_ns, past_ns))


# -- defect 2: a name too long to keep; one bad file never holds up its group -------------------


async def test_long_name_is_quarantined_under_a_short_name_and_its_group_is_archived(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    valid = [f"ok{i}.csv" for i in range(5)]
    for i, name in enumerate([*valid[:2], LONG_NAME, *valid[2:]]):  # waiting at start: read as one group
        path = drop_file(config.inbox, name, HEADER + csv_row(f"P{i}"))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i,) * 2)
    async with running_gateway(config, sink) as gateway:
        await wait_for(lambda: not names(config.inbox), DEADLINE_S, "the inbox to empty")
        await wait_for(lambda: len(sink.records) == 6, DEADLINE_S, "delivery")
        assert gateway.status.files_processed == 6
    assert names(config.archive) == valid
    stored = [n for n in names(config.quarantine) if not n.endswith(".errors.json")]
    assert len(stored) == 1 and stored[0] != LONG_NAME and stored[0].endswith(".csv")
    assert len(os.fsencode(stored[0] + ".errors.json")) < 255
    sidecar = report(config.quarantine / stored[0])
    assert sidecar["file"] == LONG_NAME
    assert sidecar["stored_as"] == stored[0]
    assert sidecar["rows_ok"] == 1 and sidecar["file_error"] is None
    assert sorted(r["part_id"] for r in sink.records) == [f"P{i}" for i in range(6)]
    assert "could not be processed" not in caplog.text
    assert f"stored as {stored[0]}" in caplog.text


async def test_long_name_with_rejected_rows_and_a_name_taken_twice(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        for round_ in range(2):  # the second one needs another shortened name
            drop_file(config.inbox, LONG_NAME, HEADER + csv_row(f"G{round_}") + csv_row("B", measured_mm="x"))
            await wait_for(lambda: not names(config.inbox), DEADLINE_S, "the inbox to empty")
        # leaving the inbox means spooled; the sink gets the rows a moment later
        await wait_for(lambda: len(sink.records) == 2, DEADLINE_S, "both valid rows at the sink")
    stored = [n for n in names(config.quarantine) if not n.endswith(".errors.json")]
    assert len(stored) == 2
    for name in stored:
        sidecar = report(config.quarantine / name)
        assert sidecar["file"] == LONG_NAME
        assert sidecar["rows_rejected"] == 1
        assert sidecar["errors"][0]["column"] == "measured_mm"
    assert sorted(r["part_id"] for r in sink.records) == ["G0", "G1"]


async def test_a_failing_group_falls_back_to_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault the reader cannot turn into a report (here: injected) costs only its own file."""
    real = CsvSource.read_many

    def poisoned(source: CsvSource, paths: list[Path], *args: Any) -> Any:
        if any(p.name == "poison.csv" for p in paths):
            raise RuntimeError("injected fault")
        return real(source, paths, *args)

    monkeypatch.setattr(CsvSource, "read_many", poisoned)
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    for i, name in enumerate(["a.csv", "poison.csv", "b.csv", "c.csv"]):
        path = drop_file(config.inbox, name, HEADER + csv_row(name))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i,) * 2)
    async with running_gateway(config, sink):
        await wait_for(lambda: len(names(config.archive)) == 3, DEADLINE_S, "the good files")
        await wait_for(lambda: len(sink.records) == 3, DEADLINE_S, "delivery")
    assert names(config.archive) == ["a.csv", "b.csv", "c.csv"]
    assert names(config.inbox) == ["poison.csv"]
    assert "trying each file on its own" in caplog.text


# -- defect 4: a half-written last line ---------------------------------------------------------


async def test_half_written_last_line_waits_for_its_line_end(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, settle_ms=60_000.0)  # never stable within the test
    async with running_gateway(config, sink) as gateway:
        path = config.inbox / "no_rename.csv"
        with path.open("w") as writer:  # a writer that does not rename into place, then pauses
            writer.write(MEASURED_LAST + measured_last_row("S1") + "\n" + measured_last_row("S2", "100.01"))
        await wait_for(lambda: len(sink.records) >= 1, DEADLINE_S, "the complete row")
        await asyncio.sleep(1.0)  # the gateway looks at the file again meanwhile (every 0.25 s)
        assert [r["part_id"] for r in sink.records] == ["S1"]
        assert gateway.status.rows_in == 1 and gateway.status.rows_rejected == 0
        assert path.exists() and not names(config.archive) and not names(config.quarantine)
        with path.open("a") as writer:
            writer.write("18\n")
        await wait_for(lambda: names(config.archive) == ["no_rename.csv"], DEADLINE_S, "the archive")
        await wait_for(lambda: len(sink.records) == 2, DEADLINE_S, "delivery")
    assert [(r["part_id"], r["measured_mm"]) for r in sink.records] == [("S1", 100.0118), ("S2", 100.0118)]
    assert not names(config.quarantine)


async def test_unterminated_last_line_of_a_stable_file_is_read(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, settle_ms=2000.0)
    old = drop_file(config.inbox, "old.csv", MEASURED_LAST + measured_last_row("OLD"))  # no final line end
    age(old, 10.0)
    async with running_gateway(config, sink):
        await wait_for(lambda: names(config.archive) == ["old.csv"], DEADLINE_S, "the stable file")
        # a fresh one is read once it has kept its size for the settle time (seen by the gateway)
        drop_file(config.inbox, "fresh.csv", MEASURED_LAST + measured_last_row("FRESH"))
        await wait_for(lambda: "fresh.csv" in names(config.archive), DEADLINE_S, "the fresh file")
        await wait_for(lambda: len(sink.records) == 2, DEADLINE_S, "delivery")
    assert [(r["part_id"], r["measured_mm"]) for r in sink.records] == [("OLD", 100.0118), ("FRESH", 100.0118)]


async def test_big_file_with_a_half_written_last_line(tmp_path: Path) -> None:
    """The chunk path (files above the group size) holds the last line the same way."""
    sink = RecordingSink()
    config = gateway_config(tmp_path, settle_ms=60_000.0, chunk_rows=500)
    rows = [measured_last_row(f"B{i}") + "\n" for i in range(3000)]  # about 300 kB
    async with running_gateway(config, sink):
        path = config.inbox / "big.csv"
        path.write_text(MEASURED_LAST + "".join(rows) + measured_last_row("LAST", "100.01"))
        await wait_for(lambda: len(sink.records) >= 3000, DEADLINE_S, "the complete rows")
        await asyncio.sleep(1.0)
        assert [r["measured_mm"] for r in sink.records[2999:]] == [100.0118]
        assert path.exists()
        with path.open("a") as writer:
            writer.write("18\n")
        await wait_for(lambda: names(config.archive) == ["big.csv"], DEADLINE_S, "the archive")
        await wait_for(lambda: len(sink.records) == 3001, DEADLINE_S, "delivery")
    assert sink.records[-1]["part_id"] == "LAST" and sink.records[-1]["measured_mm"] == 100.0118
    assert not names(config.quarantine)


async def test_once_reads_an_unterminated_last_line_after_the_settle_time(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, settle_ms=500.0, once=True)
    drop_file(config.inbox, "last.csv", MEASURED_LAST + measured_last_row("ONCE"))
    gateway = Gateway(config, extra_sinks=[sink], environ={})
    async with asyncio.timeout(DEADLINE_S):
        code = await gateway.run(asyncio.Event())
    assert code == 0
    assert [r["part_id"] for r in sink.records] == ["ONCE"]
    assert names(config.archive) == ["last.csv"]


# -- defect 5: a file that grows between its read and its move ----------------------------------


async def test_rows_appended_before_the_move_are_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_move = reports.move
    appended: list[Path] = []

    def move_while_a_writer_appends(source: Path, target: Path) -> None:
        if source.name == "grows.csv" and not appended:
            with source.open("a") as writer:  # the writer appends after the gateway read the file
                writer.write(csv_row("LATE1") + csv_row("LATE2"))
            appended.append(source)
        real_move(source, target)

    monkeypatch.setattr(reports, "move", move_while_a_writer_appends)
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    content = HEADER + csv_row("EARLY1") + csv_row("EARLY2")
    async with running_gateway(config, sink) as gateway:
        drop_file(config.inbox, "grows.csv", content)
        tail_name = f"grows.tail-{len(content)}.csv"
        await wait_for(lambda: names(config.archive) == [tail_name], DEADLINE_S, "the rest of the file")
        await wait_for(lambda: len(sink.records) == 4, DEADLINE_S, "delivery")
        assert gateway.status.files_processed == 1
        assert gateway.status.rows_in == 4
    assert [r["part_id"] for r in sink.records] == ["EARLY1", "EARLY2", "LATE1", "LATE2"]
    assert (config.archive / tail_name).read_text() == content + csv_row("LATE1") + csv_row("LATE2")
    assert not names(config.inbox) and not names(config.quarantine)


# -- defect 7: finite inputs whose results overflow ---------------------------------------------


async def test_overflowing_and_implausible_lengths_are_rejected_per_row(tmp_path: Path) -> None:
    content = (
        HEADER
        + csv_row("OK1")  # line 2
        + csv_row("HUGE", measured_mm="1e308", part_temp_c="19.0", air_temp_c="19.0")  # line 3
        + csv_row("MAX", measured_mm="1.7e308", part_temp_c="19.0", air_temp_c="19.0")  # line 4
        + csv_row("NOM", nominal_mm="1e308")  # line 5
        + csv_row("TOL", tolerance_mm="2e4")  # line 6
        # 9999.9 mm at -20 degC: 9999.9 / (1 - 23.6e-6 * 40) = 10009.35 mm compensated, above 10 m
        + csv_row("COLD", nominal_mm="9999.9", measured_mm="9999.9", part_temp_c="-20", air_temp_c="-20")  # line 7
        + csv_row("OK2")  # line 8
    )
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        drop_file(config.inbox, "overflow.csv", content)
        await wait_for(lambda: not names(config.inbox), DEADLINE_S, "the file to leave the inbox")
        await wait_for(lambda: len(sink.records) >= 2, DEADLINE_S, "delivery")
    assert names(config.quarantine) == ["overflow.csv", "overflow.csv.errors.json"]
    sidecar = report(config.quarantine / "overflow.csv")
    by_line = {e["line"]: e for e in sidecar["errors"]}
    assert sorted(by_line) == [3, 4, 5, 6, 7]
    assert [by_line[n]["column"] for n in (3, 4, 5, 6, 7)] == [
        "measured_mm",
        "measured_mm",
        "nominal_mm",
        "tolerance_mm",
        "measured_mm",
    ]
    assert "must be <= 10000 mm" in by_line[3]["reason"]
    assert "10009.348825" in by_line[7]["reason"]
    assert [r["part_id"] for r in sink.records] == ["OK1", "OK2"]
    for record in sink.records:  # no inf or nan reaches a record
        floats = {k: v for k, v in record.items() if isinstance(v, float)}
        assert {"compensated_mm", "deviation_um", "uncertainty_um", "correction_um"} <= set(floats)
        assert np.isfinite(list(floats.values())).all(), floats


# -- names in log lines, and a file quarantined unread ------------------------------------------


async def test_a_newline_in_a_file_name_cannot_forge_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cmm_twin.gateway.ingest")
    name = "evil\n2026-01-05 INFO: forged.csv"
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        drop_file(config.inbox, name, HEADER + csv_row("E1") + csv_row("E2", measured_mm="x"))
        await wait_for((config.quarantine / name).exists, DEADLINE_S, "the quarantine")
    lines = [r.getMessage() for r in caplog.records if "evil" in r.getMessage()]
    assert lines, "the file was not logged"
    for line in lines:
        assert "\n" not in line
        assert "evil\\n2026-01-05 INFO: forged.csv" in line
    assert len([line for line in lines if "rows ok" in line]) == 1


async def test_quarantine_unread_moves_a_link_itself_with_its_reason(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the gateway\n")
    elsewhere = tmp_path / "links"
    elsewhere.mkdir()
    link = elsewhere / "link.csv"
    link.symlink_to(secret)
    dangling = elsewhere / "dangling.csv"
    dangling.symlink_to(tmp_path / "missing.csv")
    config = gateway_config(tmp_path)
    async with running_gateway(config, RecordingSink()) as gateway:
        assert gateway.pipeline is not None
        outcome = await gateway.pipeline.quarantine_unread(link, "symbolic link refused")
        await gateway.pipeline.quarantine_unread(dangling, "symbolic link refused")
        assert outcome is not None and outcome.quarantined
        assert await gateway.pipeline.quarantine_unread(elsewhere / "gone.csv", "x") is None
        assert gateway.status.files_processed == 2
    moved = config.quarantine / "link.csv"
    assert moved.is_symlink() and os.readlink(moved) == str(secret)
    assert secret.read_text() == "not for the gateway\n"
    assert (config.quarantine / "dangling.csv").is_symlink()
    assert report(moved)["file_error"] == "symbolic link refused"
    assert not link.is_symlink() and not dangling.is_symlink()
