"""The pipeline driven without a whole gateway (real SQLite, real inbox folder, a publish callback)."""

from __future__ import annotations

import json
from pathlib import Path

from cmm_twin.records import RecordBatch
from tests.gateway_harness import HEADER, csv_row, drop_file, gateway_config
from tests.pipeline_harness import WITH_NUMBERS, WITH_PAIRS, running_pipeline, wait_for


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


async def test_a_good_file_is_archived_and_published_once(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "good.csv", HEADER + csv_row("A") + csv_row("B"))
        await wait_for(lambda: names(config.archive) == ["good.csv"], "the archive")
        await wait_for(run.pipeline.idle.is_set, "the pipeline to idle")
    assert run.part_ids() == ["A", "B"]
    assert names(config.inbox) == [] and names(config.quarantine) == []


async def test_a_bad_row_is_quarantined_with_its_report(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "bad.csv", HEADER + csv_row("A") + csv_row("B", measured_mm="x"))
        await wait_for(lambda: "bad.csv.errors.json" in names(config.quarantine), "the quarantine")
    assert run.part_ids() == ["A"]
    report = json.loads((config.quarantine / "bad.csv.errors.json").read_text())
    assert report["rows_ok"] == 1 and report["rows_rejected"] == 1
    assert report["errors"][0]["line"] == 3 and report["errors"][0]["column"] == "measured_mm"


async def test_a_restart_resumes_after_the_last_committed_chunk(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, chunk_rows=1000)
    rows = [csv_row(f"P{i:05d}") for i in range(4000)]  # > 256 KiB: read chunk by chunk
    drop_file(config.inbox, "big.csv", HEADER + "".join(rows))
    first: list[RecordBatch] = []
    async with running_pipeline(config, stop_after_batches=1, batches=first):
        await wait_for(lambda: len(first) >= 1, "the first chunk")
    assert names(config.inbox) == ["big.csv"]  # stopped mid-file
    done_first = sum(len(b) for b in first)
    assert 0 < done_first < 4000
    async with running_pipeline(config) as run:
        await wait_for(lambda: names(config.archive) == ["big.csv"], "the rest of the file")
    delivered = [p for b in first for p in b.part_id] + run.part_ids()
    assert delivered == [f"P{i:05d}" for i in range(4000)]  # nothing skipped, nothing twice


async def test_a_second_source_is_delivered_archived_and_quarantined(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config, WITH_NUMBERS) as run:
        drop_file(config.inbox, "lengths.txt", "100.0118\n100.0120\n")
        drop_file(config.inbox, "broken.TXT", "100.0118\nabc\n")
        drop_file(config.inbox, "rows.csv", HEADER + csv_row("C"))
        await wait_for(lambda: names(config.archive) == ["lengths.txt", "rows.csv"], "the archive")
        await wait_for(lambda: "broken.TXT.errors.json" in names(config.quarantine), "the quarantine")
    assert sorted(run.part_ids()) == ["C", "broken-1", "lengths-1", "lengths-2"]
    report = json.loads((config.quarantine / "broken.TXT.errors.json").read_text())
    assert report["errors"] == [{"line": 2, "column": "measured_mm", "reason": "not a number: 'abc'"}]


async def test_a_name_no_source_claims_stays_in_the_inbox(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "lengths.txt", "100.0118\n")
        drop_file(config.inbox, "rows.csv", HEADER + csv_row("C"))
        await wait_for(lambda: names(config.archive) == ["rows.csv"], "the archive")
        await wait_for(run.pipeline.idle.is_set, "the pipeline to idle")
    assert names(config.inbox) == ["lengths.txt"]


async def test_a_unit_of_two_files_leaves_the_inbox_together(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config, WITH_PAIRS) as run:
        drop_file(config.inbox, "m1.vals", "100.0118\n100.0120\n")  # the companion comes first
        await wait_for(lambda: names(config.inbox) == ["m1.vals"], "the companion to be seen")
        drop_file(config.inbox, "m1.pair", "header\n")
        await wait_for(lambda: names(config.archive) == ["m1.pair", "m1.vals"], "the unit in the archive")
    assert run.part_ids() == ["m1-1", "m1-2"]
    assert names(config.inbox) == []


async def test_a_lone_half_is_quarantined_with_a_reason_after_the_wait(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config, WITH_PAIRS) as run:
        drop_file(config.inbox, "lone.vals", "100.0\n")
        drop_file(config.inbox, "alone.pair", "header\n")
        await wait_for(lambda: len(names(config.quarantine)) == 4, "both halves in quarantine")
    assert run.part_ids() == []
    vals = json.loads((config.quarantine / "lone.vals.errors.json").read_text())
    assert vals["file_error"] == "incomplete pair unit: lone.pair did not come with it within 0.5 s"
    pair = json.loads((config.quarantine / "alone.pair.errors.json").read_text())
    assert pair["file_error"] == "incomplete pair unit: alone.vals did not come with it within 0.5 s"
