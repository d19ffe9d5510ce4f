"""Calypso files through the real pipeline (real SQLite, real inbox folder): a chr file leaves the
inbox with its hdr, a lone hdr is quarantined after the companion wait, a chr without END waits."""

from __future__ import annotations

import json
from pathlib import Path

from cmm_twin.gateway.sources.inputs import InputSettings
from tests.gateway_harness import drop_file, gateway_config
from tests.pipeline_harness import running_pipeline, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "calypso"


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def drop_fixture(inbox: Path, name: str) -> None:
    drop_file(inbox, name, (FIXTURES / name).read_bytes())


async def test_a_run_leaves_the_inbox_with_its_header_and_a_lone_header_is_quarantined(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=InputSettings(timezone="Europe/Berlin", companion_wait_s=0.5))
    async with running_pipeline(config) as run:
        drop_fixture(config.inbox, "4711-A_GH-0001_hdr.txt")  # the header first, as Calypso writes them
        drop_fixture(config.inbox, "4711-A_GH-0001_chr.txt")
        drop_file(config.inbox, "orphan_hdr.txt", "partnb\r\nS-1\r\n")
        await wait_for(
            lambda: names(config.archive) == ["4711-A_GH-0001_chr.txt", "4711-A_GH-0001_hdr.txt"], "the run archived"
        )
        await wait_for(lambda: len(run.part_ids()) == 23, "the run published")
        await wait_for(lambda: "orphan_hdr.txt.errors.json" in names(config.quarantine), "the lone hdr quarantined")
    assert names(config.inbox) == []
    assert names(config.quarantine) == ["orphan_hdr.txt", "orphan_hdr.txt.errors.json"]
    report = json.loads((config.quarantine / "orphan_hdr.txt.errors.json").read_text())
    assert report["file_error"] == "incomplete calypso unit: orphan_chr.txt did not come with it within 0.5 s"
    assert len(run.part_ids()) == 23 and set(run.part_ids()) == {"GH-0001"}
    batch = run.batches[0]
    assert set(batch.timestamp) == {"2026-03-12T08:41:07.000000Z"} and set(batch.machine_id) == {"CONTURA_07"}
    assert set(batch.source_format) == {"calypso"} and set(batch.source_file) == {"4711-A_GH-0001_chr.txt"}


async def test_a_chr_without_end_stays_in_the_inbox_until_it_gets_end(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config) as run:
        drop_fixture(config.inbox, "4711-A_GH-0002_chr.txt")  # no END: the run is not finished
        drop_fixture(config.inbox, "B-220_0007_chr.txt")
        await wait_for(lambda: names(config.archive) == ["B-220_0007_chr.txt"], "the finished run archived")
        await wait_for(lambda: len(run.part_ids()) == 4, "the finished run published")
        # the unfinished one was looked at meanwhile (it came first) and left alone
        assert names(config.inbox) == ["4711-A_GH-0002_chr.txt"] and names(config.quarantine) == []
        assert set(run.part_ids()) == {"0007"}
        with (config.inbox / "4711-A_GH-0002_chr.txt").open("ab") as f:
            f.write(b"END\r\n")
        await wait_for(lambda: "4711-A_GH-0002_chr.txt" in names(config.archive), "the run archived once finished")
        await wait_for(lambda: len(run.part_ids()) == 6, "the run published once finished")
    assert run.part_ids() == ["0007"] * 4 + ["GH-0002"] * 2


async def test_a_bad_header_quarantines_the_run_with_its_header(tmp_path: Path) -> None:
    config = gateway_config(tmp_path)
    async with running_pipeline(config) as run:
        drop_fixture(config.inbox, "baddate_hdr.txt")
        drop_fixture(config.inbox, "baddate_chr.txt")
        await wait_for(lambda: "baddate_chr.txt.errors.json" in names(config.quarantine), "the quarantine")
    assert names(config.quarantine) == ["baddate_chr.txt", "baddate_chr.txt.errors.json", "baddate_hdr.txt"]
    report = json.loads((config.quarantine / "baddate_chr.txt.errors.json").read_text())
    expected = "baddate_hdr.txt, line 2, column 'date': not a date (yyyy-mm-dd or dd.mm.yyyy): '2026-13-40'"
    assert report["file_error"] == expected
    assert run.part_ids() == []
