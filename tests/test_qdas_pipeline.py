"""Q-DAS files through the real pipeline and a real gateway: archived, quarantined with their
reports, a pair leaving the inbox together, a lone half quarantined after the wait."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from cmm_twin.formats.qdas import write_dfq
from cmm_twin.formats.report import Report, ReportCharacteristic, ReportPart, ReportValue
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.records import measurement_id
from tests.gateway_harness import RecordingSink, drop_file, gateway_config, running_gateway
from tests.gateway_harness import wait_for as wait_until
from tests.pipeline_harness import running_pipeline, wait_for
from tests.test_qdas_source import MALFORMED, MALFORMED_CASES

FIXTURES = Path(__file__).parent / "fixtures" / "qdas"
INPUTS = InputSettings(timezone="Europe/Berlin", companion_wait_s=0.5)
AL_CTE = 23.6e-6


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def report_of(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_name(path.name + ".errors.json").read_text())
    return data


def simulated(parts: int) -> bytes:
    report = Report(
        "W-1",
        "Welle",
        [ReportCharacteristic(1, "Durchmesser", "mm", 20.0, -0.021, 0.0, 4)],
        [
            ReportPart(f"S-{i}", "CMM-9", datetime(2026, 7, 1, 8, i, tzinfo=UTC), [ReportValue(19.99 + i / 1000)], 22.0)
            for i in range(1, parts + 1)
        ],
    )
    return write_dfq(report, ZoneInfo("Europe/Berlin"))


async def test_a_clean_dfq_is_published_and_archived(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=INPUTS)
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "run1.dfq", simulated(3))
        await wait_for(lambda: names(config.archive) == ["run1.dfq"], "the archive")
        await wait_for(run.pipeline.idle.is_set, "the pipeline to idle")
    assert run.part_ids() == ["S-1", "S-2", "S-3"]
    (batch,) = run.batches
    assert batch.source_format == ["qdas"] * 3 and batch.source_file == ["run1.dfq"] * 3
    assert float(batch.compensated_mm[0]) == 19.991 / (1 + AL_CTE * 2.0)
    assert names(config.quarantine) == []


async def test_a_description_without_values_is_archived(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=INPUTS)
    description = b"K0100 1\r\nK1001 W-1\r\nK2001/1 1\r\nK2101/1 20\r\n"
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "plan.dfq", description)
        await wait_for(lambda: names(config.archive) == ["plan.dfq"], "the archive")
    assert run.part_ids() == [] and names(config.quarantine) == []


async def test_a_pair_waits_for_its_values_and_leaves_with_them(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=InputSettings(timezone="Europe/Berlin"))
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "bracket.dfx", (FIXTURES / "bracket.dfx").read_bytes())  # the values come first
        await wait_for(lambda: names(config.inbox) == ["bracket.dfx"], "the values file to be seen")
        drop_file(config.inbox, "bracket.dfd", (FIXTURES / "bracket.dfd").read_bytes())
        await wait_for(lambda: "bracket.dfd.errors.json" in names(config.quarantine), "the quarantine report")
        await wait_for(run.pipeline.idle.is_set, "the pipeline to idle")
    assert names(config.quarantine) == ["bracket.dfd", "bracket.dfd.errors.json", "bracket.dfx"]
    assert names(config.inbox) == [] and len(run.part_ids()) == 14
    report = report_of(config.quarantine / "bracket.dfd")
    assert report["rows_ok"] == 14 and report["rows_rejected"] == 1
    assert report["errors"] == [
        {"line": 2, "column": "K0002/2", "reason": "value '49.987' marked invalid (attribute 255) (in bracket.dfx)"}
    ]


async def test_a_lone_half_is_quarantined_after_the_wait(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=INPUTS)
    async with running_pipeline(config) as run:
        drop_file(config.inbox, "LONE.DFD", (FIXTURES / "bracket.dfd").read_bytes())
        drop_file(config.inbox, "values.dfx", (FIXTURES / "bracket.dfx").read_bytes())
        await wait_for(lambda: len(names(config.quarantine)) == 4, "both lone halves in quarantine")
    assert run.part_ids() == []
    report = report_of(config.quarantine / "LONE.DFD")
    assert report["file_error"] == "incomplete qdas unit: LONE.DFX did not come with it within 0.5 s"
    report = report_of(config.quarantine / "values.dfx")
    assert report["file_error"] == "incomplete qdas unit: values.dfd did not come with it within 0.5 s"


async def test_every_malformed_fixture_is_quarantined_with_its_reason(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, inputs=INPUTS)
    files = sorted(p.name for p in MALFORMED.iterdir())
    async with running_pipeline(config) as run:
        for name in files:
            drop_file(config.inbox, name, (MALFORMED / name).read_bytes())
        reports = [f"{name}.errors.json" for name, _, _ in MALFORMED_CASES]
        await wait_for(lambda: set(reports) <= set(names(config.quarantine)), "every report")
        await wait_for(lambda: names(config.inbox) == [], "an empty inbox")
    assert run.part_ids() == []
    assert names(config.quarantine) == sorted(files + reports)  # a pair's .dfx beside its .dfd
    for name, line, reason in MALFORMED_CASES:
        expected = reason if line is None else f"line {line}: {reason}"
        assert report_of(config.quarantine / name)["file_error"] == expected, name


async def test_a_gateway_delivers_dfq_records_to_its_sinks(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, inputs=INPUTS)
    async with running_gateway(config, sink):
        drop_file(config.inbox, "run2.dfq", simulated(2))
        await wait_until(lambda: len(sink.records) == 2, what="delivery")
        await wait_until((config.archive / "run2.dfq").exists, what="the archive")
    first = sink.records[0]
    assert first["source_format"] == "qdas" and first["unit"] == "mm" and first["compensation"] == "gateway"
    assert first["measurement_id"] == measurement_id(
        "CMM-9", "S-1", "Durchmesser", datetime(2026, 7, 1, 8, 1, tzinfo=UTC)
    )
    assert (first["lower_tol_mm"], first["upper_tol_mm"], first["tolerance_mm"]) == (-0.021, 0.0, None)
