"""QIF documents through the real gateway (in-process): a results document is compensated,
delivered and archived; a hostile or broken one is quarantined with its reason, and the
gateway goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmm_twin.gateway.sources.inputs import InputSettings
from tests.gateway_harness import RecordingSink, drop_file, gateway_config, running_gateway, wait_for
from tests.qif_helpers import FIXTURES


async def test_results_are_delivered_and_hostile_documents_quarantined(tmp_path: Path) -> None:
    sink = RecordingSink()
    config = gateway_config(tmp_path, inputs=InputSettings(timezone="Europe/Berlin", machine_id="CMM-00"))
    async with running_gateway(config, sink):
        for name in ("billion_laughs.qif", "external_entity.qif", "truncated.qif"):
            drop_file(config.inbox, name, (FIXTURES / name).read_bytes())
        drop_file(config.inbox, "bracket.qif", (FIXTURES / "bracket_3_parts.qif").read_bytes())
        await wait_for((config.archive / "bracket.qif").exists, what="the results document archived")
        await wait_for(lambda: len(sink.records) == 69, what="69 records delivered")
        for name in ("billion_laughs.qif", "external_entity.qif", "truncated.qif"):
            await wait_for((config.quarantine / name).exists, what=f"{name} quarantined")
    records = sink.records
    assert {r["source_format"] for r in records} == {"qif"} and {r["source_file"] for r in records} == {"bracket.qif"}
    first = next(r for r in records if r["part_id"] == "SN-0001" and r["feature"] == "D_BORE1")
    assert first["compensated_mm"] == pytest.approx(25.0152 / (1 + 23.6e-6 * 3.4), abs=1e-12)
    assert (first["machine_id"], first["part_temp_c"], first["unit"]) == ("CMM-07", 23.4, "mm")
    assert (first["lower_tol_mm"], first["upper_tol_mm"]) == (0.0, 0.021)
    angle = next(r for r in records if r["part_id"] == "SN-0002" and r["feature"] == "ANG_CHAMFER")
    assert (angle["unit"], angle["compensation"], angle["compensated_mm"]) == ("deg", "none", 44.75)
    assumed = next(r for r in records if r["part_id"] == "SN-0003" and r["feature"] == "D_BORE1")
    assert "temperature_assumed" in assumed["flags"]
    reports = {
        name: json.loads((config.quarantine / f"{name}.errors.json").read_text())
        for name in ("billion_laughs.qif", "external_entity.qif")
    }
    assert "entity declaration 'lol' refused" in reports["billion_laughs.qif"]["file_error"]
    assert "external entity 'serial'" in reports["external_entity.qif"]["file_error"]
