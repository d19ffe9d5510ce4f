"""The real gateway (in-process) against good and bad inbox files: where each file goes, what
its report says, what reaches a durable sink, and that the next good file is still processed."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.physics import compensate_to_20c
from cmm_twin.records import measurement_id
from tests.gateway_harness import (
    HEADER,
    RecordingSink,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    wait_for,
)

GOOD = HEADER + csv_row("P1") + csv_row("P2", measured_mm="99.9990", part_temp_c="19.0", air_temp_c="19.5")


def report_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".errors.json").read_text())
    return data


async def process(tmp_path: Path, name: str, content: str | bytes) -> tuple[RecordingSink, Path]:
    """Drop `content` then a good file; wait for the good one; return the sink and data dir."""
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink) as gateway:
        drop_file(config.inbox, name, content)
        drop_file(config.inbox, "zz_next_good.csv", HEADER + csv_row("NEXT"))
        await wait_for((config.archive / "zz_next_good.csv").exists, what="the next good file")
        await wait_for(lambda: any(r["part_id"] == "NEXT" for r in sink.records), what="delivery")
        assert gateway.status.files_processed >= 1
    return sink, tmp_path


async def test_good_file_is_compensated_delivered_and_archived(tmp_path: Path) -> None:
    sink, data = await process(tmp_path, "good.csv", GOOD)
    assert (data / "archive" / "good.csv").exists()
    assert not list((data / "quarantine").iterdir())
    first, second = sink.records[0], sink.records[1]
    assert first["part_id"] == "P1"
    assert first["compensated_mm"] == pytest.approx(100.0, abs=1e-9)
    assert first["correction_um"] == pytest.approx(-11.8, abs=1e-6)
    # DESIGN's 2.8408 for 100 mm at 25 degC, plus the gradient term of air 1 K below the part:
    # u(T)^2 = 0.2^2 + (0.2 * 1 K)^2 / 3, u_c^2 = 0.464136 + 5.5696 * 0.053333 + 1.080360 + 0.25
    assert first["uncertainty_um"] == pytest.approx(2.8926, abs=1e-3)
    assert first["verdict"] == "PASS"
    assert first["timestamp"] == "2026-01-05T06:00:00.000000Z"
    assert first["measurement_id"] == measurement_id("CMM-01", "P1", "length_x", datetime(2026, 1, 5, 6, 0, tzinfo=UTC))
    assert second["compensated_mm"] == pytest.approx(float(compensate_to_20c(99.999, 19.0, 23.6e-6)), abs=1e-12)
    assert second["flags"] == []


async def test_same_file_dropped_twice_gives_the_same_ids(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        drop_file(config.inbox, "twice.csv", GOOD)
        await wait_for(lambda: len(sink.records) == 2)
        drop_file(config.inbox, "twice.csv", GOOD)
        await wait_for(lambda: len(sink.records) == 4)
    ids = [r["measurement_id"] for r in sink.records]
    assert ids[:2] == ids[2:]
    assert sorted(p.name for p in config.archive.iterdir()) == ["twice.1.csv", "twice.csv"]


async def test_empty_file_is_quarantined(tmp_path: Path) -> None:
    sink, data = await process(tmp_path, "empty.csv", b"")
    report = report_of(data / "quarantine" / "empty.csv")
    assert report["file_error"] == "empty file"
    assert report["rows_ok"] == 0
    assert [r["part_id"] for r in sink.records] == ["NEXT"]


async def test_header_only_file_is_archived_with_no_rows(tmp_path: Path) -> None:
    sink, data = await process(tmp_path, "header_only.csv", HEADER)
    assert (data / "archive" / "header_only.csv").exists()
    assert [r["part_id"] for r in sink.records] == ["NEXT"]


async def test_missing_required_column_rejects_the_whole_file(tmp_path: Path) -> None:
    content = (
        "timestamp,machine_id,part_id,feature,nominal_mm,tolerance_mm,part_temp_c\n"
        "2026-01-05T06:00:00Z,M,P,f,100,0.01,25\n"
    )
    sink, data = await process(tmp_path, "no_measured.csv", content)
    report = report_of(data / "quarantine" / "no_measured.csv")
    assert "measured_mm" in report["file_error"]
    assert [r["part_id"] for r in sink.records] == ["NEXT"]


async def test_bad_values_are_reported_by_line_and_column_and_good_rows_go_on(tmp_path: Path) -> None:
    content = (
        HEADER
        + csv_row("OK1")  # line 2
        + csv_row("B1", measured_mm="abc")  # line 3
        + csv_row("B2", measured_mm="nan")  # line 4
        + csv_row("B3", part_temp_c="inf")  # line 5
        + csv_row("B4", part_temp_c="95")  # line 6
        + csv_row("B5", nominal_mm="-100")  # line 7
        + csv_row("B6", air_temp_c="-60")  # line 8
        + csv_row("OK2")  # line 9
    )
    sink, data = await process(tmp_path, "mixed.csv", content)
    report = report_of(data / "quarantine" / "mixed.csv")
    assert report["rows_ok"] == 2
    assert report["rows_rejected"] == 6
    by_line = {e["line"]: e for e in report["errors"]}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8]
    assert by_line[3]["column"] == "measured_mm"
    assert "abc" in by_line[3]["reason"]
    assert by_line[4]["column"] == "measured_mm"
    assert by_line[5]["column"] == "part_temp_c"
    assert by_line[6]["column"] == "part_temp_c"
    assert "plausible range" in by_line[6]["reason"]
    assert by_line[7]["column"] == "nominal_mm"
    assert by_line[8]["column"] == "air_temp_c"
    assert [r["part_id"] for r in sink.records] == ["OK1", "OK2", "NEXT"]


async def test_non_utf8_file_delivers_nothing(tmp_path: Path) -> None:
    content = (HEADER + csv_row("OK1")).encode() + csv_row("BAD").replace("BAD", "B\xff").encode("latin-1")
    sink, data = await process(tmp_path, "latin1.csv", content)
    report = report_of(data / "quarantine" / "latin1.csv")
    assert "UTF-8" in report["file_error"]
    assert "line 3" in report["file_error"]
    assert [r["part_id"] for r in sink.records] == ["NEXT"]


async def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    content = ("\ufeff" + HEADER + csv_row("W1") + csv_row("W2")).replace("\n", "\r\n")
    sink, data = await process(tmp_path, "windows.csv", content)
    assert (data / "archive" / "windows.csv").exists()
    assert [r["part_id"] for r in sink.records] == ["W1", "W2", "NEXT"]


async def test_directory_named_csv_is_left_alone(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    (config.inbox / "x.csv").mkdir(parents=True)
    async with running_gateway(config, sink):
        drop_file(config.inbox, "after_dir.csv", HEADER + csv_row("NEXT"))
        await wait_for((config.archive / "after_dir.csv").exists)
    assert (config.inbox / "x.csv").is_dir()
    assert not list(config.quarantine.iterdir())


async def test_file_deleted_before_it_is_read(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        path = config.inbox / "vanishing.csv"
        with path.open("w") as writer:  # an open writer keeps the gateway from reading it
            writer.write(HEADER + csv_row("GONE"))
            writer.flush()
            await asyncio.sleep(0.3)
            path.unlink()
        drop_file(config.inbox, "after_delete.csv", HEADER + csv_row("NEXT"))
        await wait_for((config.archive / "after_delete.csv").exists)
        await wait_for(lambda: len(sink.records) == 1, what="delivery")
    assert [r["part_id"] for r in sink.records] == ["NEXT"]
    assert not list(config.quarantine.iterdir())
    assert not (config.archive / "vanishing.csv").exists()


async def test_file_still_being_written_is_not_read_half_written(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, settle_ms=5000.0)  # only the open-writer check can let it through
    async with running_gateway(config, sink):
        path = config.inbox / "slow_writer.csv"
        with path.open("w") as writer:
            writer.write(HEADER + csv_row("S1") + "2026-01-05T06:00:00Z,CMM-01,S2,len")
            writer.flush()
            await asyncio.sleep(0.5)
            assert not sink.records, "read while the writer still had the file open"
            writer.write("gth_x,AL6061,100.0,0.010,100.0118,25.0,24.0\n" + csv_row("S3"))
        await wait_for((config.archive / "slow_writer.csv").exists)
        await wait_for(lambda: len(sink.records) == 3, what="delivery")  # archived = spooled; delivery follows
    assert [r["part_id"] for r in sink.records] == ["S1", "S2", "S3"]


async def test_only_csv_names_are_taken(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    async with running_gateway(config, sink):
        drop_file(config.inbox, "notes.txt", HEADER + csv_row("TXT"))
        drop_file(config.inbox, ".hidden.csv", HEADER + csv_row("HIDDEN"))
        drop_file(config.inbox, "real.csv", HEADER + csv_row("REAL"))
        await wait_for((config.archive / "real.csv").exists)
        await wait_for(lambda: len(sink.records) == 1, what="delivery")
    assert [r["part_id"] for r in sink.records] == ["REAL"]
    assert (config.inbox / "notes.txt").exists()
    assert (config.inbox / ".hidden.csv").exists()


async def test_files_waiting_at_start_are_taken_oldest_first(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    for i, name in enumerate(["c.csv", "a.csv", "b.csv"]):
        path = drop_file(config.inbox, name, HEADER + csv_row(name))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 1_000_000_000,) * 2)
    async with running_gateway(config, sink):
        await wait_for(lambda: len(sink.records) == 3)
    assert [r["part_id"] for r in sink.records] == ["c.csv", "a.csv", "b.csv"]
