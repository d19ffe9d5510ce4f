"""Compensation health end to end: a real gateway process fed by the real simulator, once with the
gateway's `[materials.AL6061]` set to a steel-like CTE while the simulator's parts are 6061, once
with the right table.

With the wrong CTE the compensation leaves L x (alpha_true - alpha_configured) per kelvin in the
compensated deviation. The alarm must appear in /health, /metrics, /api/v1/capability, OPC UA and
on the page, naming the machine and characteristic; the records in the embedded store carry
`residual_thermal_slope`; a restart keeps the alarm (rebuilt from the store). With the right CTE no
alarm is raised and no record is flagged. Feature names, kinds and counts are read from the
records, never assumed (the simulator may measure several materials and feature kinds).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua.client.client import Client
from playwright.sync_api import sync_playwright

from cmm_twin.physics.materials import MATERIALS
from cmm_twin.simulator import cli as simulator_cli
from tests.gateway_harness import ROOT, GatewayProcess, free_port

CHROMIUM = "/usr/bin/chromium"
WRONG = "AL6061"
WRONG_CTE_PER_K = MATERIALS["STEEL_1020"].cte_per_k
"""The steel-like value the gateway is given for 6061 (23.6e-6 /K in truth)."""
MACHINES = 1
PARTS = 4000
WINDOW = 300
CONFIDENCE = 0.99
MIN_SAMPLES = 150
"""Many characteristics (each part kind has its own), each tested after every batch: a stricter
level and more values before the first decision keep chance alarms away (docs/capability.md)."""
DEADLINE_S = 60.0
Key = tuple[str, str]


@dataclass
class Twin:
    gateway: GatewayProcess
    opcua_url: str
    args: list[str]
    log: Path


def simulate(inbox: Path) -> None:
    """All parts at once into the inbox (the shop scenario when the simulator has scenarios: parts
    arrive up to ~6 K above the air, so a trend with the part temperature is observable)."""
    scenario = ["--scenario", "shop"] if any(o.flag == "--scenario" for o in simulator_cli.OPTIONS) else []
    command = [sys.executable, str(ROOT / "cmm_simulator.py"), "--outdir", str(inbox), "--rate", "0"]
    command += ["--machines", str(MACHINES), "--count", str(PARTS), "--seed", "7", *scenario]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=120)


def start(tmp_path: Path, *, wrong: bool) -> Twin:
    config = tmp_path / "gateway.toml"
    text = f"[quality]\nwindow = {WINDOW}\nconfidence = {CONFIDENCE}\nmin_samples = {MIN_SAMPLES}\n"
    if wrong:
        text += f'[materials.{WRONG}]\ncte_per_k = {WRONG_CTE_PER_K!r}\nsource = "wrong on purpose: steel"\n'
    config.write_text(text)
    opcua_url = f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/"
    args = ["--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0", "--config", str(config)]
    args += ["--historian", "sqlite", "--opcua-endpoint", opcua_url, "--settle-ms", "0"]
    gateway = GatewayProcess(args, tmp_path / "gateway.log")
    gateway.wait_ready()
    return Twin(gateway, opcua_url, args, tmp_path / "gateway.log")


def restart(twin: Twin) -> None:
    assert twin.gateway.stop() == 0
    twin.log = twin.log.with_name("gateway-restarted.log")
    twin.gateway = GatewayProcess(twin.args, twin.log)
    twin.gateway.wait_ready()


def wait_until_stored(gateway: GatewayProcess, files: int) -> dict[str, Any]:
    """Wait until every file is processed and the historian holds every record; the /health document."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        health: dict[str, Any] = gateway.get_json("/health")
        historian = health["sinks"]["historian"]
        if health["files_processed"] == files and historian["buffer_depth"] == 0 and historian["rows_out"] > 0:
            return health
        assert time.monotonic() < deadline, f"not all stored after {DEADLINE_S} s: {health}"
        time.sleep(0.2)


def stored_records(gateway: GatewayProcess) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        {
            "since": str(int(time.time()) - 86_400),
            "until": str(int(time.time()) + 86_400),
            "fields": "nominal_mm,flags,measurement_id",
            "limit": "100000",
        }
    )
    answer = gateway.get_json(f"/api/v1/history?{query}")
    assert not answer["truncated"]
    points: list[dict[str, Any]] = answer["points"]
    return points


def metric_values(text: str, name: str) -> dict[Key, float]:
    out: dict[Key, float] = {}
    pattern = re.compile(rf'^{name}\{{feature="([^"]+)",machine_id="([^"]+)"\}} (\S+)$', re.MULTILINE)
    for feature, machine, value in pattern.findall(text):
        out[(machine, feature)] = float(value)
    return out


async def read_opcua(url: str, keys: list[Key]) -> dict[Key, dict[str, Any]]:
    names = ("CpRaw", "CpkRaw", "Cp", "Cpk", "SampleSize", "ThermalSlope", "ThermalSlopeAlarm")
    out: dict[Key, dict[str, Any]] = {}
    async with Client(url, timeout=30) as client:
        ns = await client.get_namespace_index("urn:cmm-twin")
        for machine, feature in keys:
            nodes = [client.get_node(f"ns={ns};s=CMM/{machine}/Characteristics/{feature}/{n}") for n in names]
            out[(machine, feature)] = dict(zip(names, await client.read_values(nodes), strict=True))
    return out


def page_banner(port: int) -> tuple[str, list[Key], list[str]]:
    """The page's alarm banner text, the (machine, feature) of its tiles, console errors."""
    if shutil.which(CHROMIUM) is None:
        raise AssertionError(f"{CHROMIUM} is not installed: run `make test` (it installs Debian's chromium as root)")
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#quality-alarm:not([hidden])", timeout=60_000)
            banner = page.locator("#quality-alarm").inner_text()
            tiles = page.locator(".cap-tile.alarm").evaluate_all(
                "(tiles) => tiles.map((t) => [t.dataset.machine, t.dataset.feature])"
            )
        finally:
            browser.close()
    return banner, [(str(t[0]), str(t[1])) for t in tiles], problems


def characteristics(doc: dict[str, Any]) -> Iterator[tuple[Key, dict[str, Any]]]:
    for machine, features in sorted(doc["machines"].items()):
        for feature, entry in sorted(features.items()):
            yield (machine, feature), entry


@pytest.fixture
def inbox_files(tmp_path: Path) -> int:
    inbox = tmp_path / "data" / "inbox"
    simulate(inbox)
    return len(list(inbox.iterdir()))


def test_a_wrong_cte_raises_the_alarm_everywhere(tmp_path: Path, inbox_files: int) -> None:
    twin = start(tmp_path, wrong=True)
    try:
        health = wait_until_stored(twin.gateway, inbox_files)
        doc = twin.gateway.get_json("/api/v1/capability")
        records = stored_records(twin.gateway)
        material = {(r["machine_id"], r["feature"]): r["material"] for r in records}
        nominal = {(r["machine_id"], r["feature"]): r["nominal_mm"] for r in records}
        assert set(material) == {key for key, _ in characteristics(doc)}

        alarmed = [key for key, entry in characteristics(doc) if entry["alarm"]]
        assert alarmed, json.dumps(doc, indent=1)
        delta_cte = MATERIALS[WRONG].cte_per_k - WRONG_CTE_PER_K
        for key, entry in characteristics(doc):
            slope = entry["thermal_slope"]
            if slope is None:  # an angle: capability, no slope
                assert entry["unit"] == "deg" and not entry["alarm"]
                continue
            if material[key] != WRONG:
                assert not entry["alarm"], (key, entry)
                continue
            # The residual the wrong CTE leaves: L x delta alpha per kelvin, in um/K.
            expected = nominal[key] * 1000.0 * delta_cte
            stderr = slope["stderr_um_per_k"]
            assert abs(slope["um_per_k"] - expected) < 5 * stderr, (key, expected, slope)
            if expected - 0.5 > 4 * stderr:  # where the window can show it, it does
                assert entry["alarm"], (key, expected, slope)
            if entry["alarm"]:
                assert entry["n"] >= 20 and slope["ci_low"] > 0 and slope["um_per_k"] > 0.5
                assert entry["compensated"]["cpk"] is not None and entry["raw"]["cpk"] is not None
        slopes = {
            f"{k[0]}/{k[1]}": e["thermal_slope"]["um_per_k"] for k, e in characteristics(doc) if e["thermal_slope"]
        }
        print("slopes found with the wrong CTE, um/K:", slopes)

        # /health names every alarm and says compensation health is degraded (the gateway itself works).
        assert health["status"] == "ok"
        assert health["compensation_health"]["status"] == "degraded"
        assert sorted((a["machine_id"], a["feature"]) for a in health["compensation_health"]["alarms"]) == alarmed
        assert [(a["machine_id"], a["feature"]) for a in doc["alarms"]] == alarmed

        # /metrics: one alarm gauge per length characteristic, 1 exactly for the alarmed ones.
        metrics = twin.gateway.get_text("/metrics")
        alarm_gauges = metric_values(metrics, "cmm_thermal_slope_alarm")
        assert sorted(k for k, v in alarm_gauges.items() if v == 1.0) == alarmed
        assert metric_values(metrics, "cmm_thermal_slope_um_per_k")[alarmed[0]] == pytest.approx(
            doc["machines"][alarmed[0][0]][alarmed[0][1]]["thermal_slope"]["um_per_k"], abs=1e-6
        )
        assert 'cmm_capability_cpk{basis="raw",feature=' in metrics
        assert 'cmm_capability_cpk{basis="compensated",feature=' in metrics

        # The stored records of alarmed characteristics carry the flag; no other record does.
        flagged = {(r["machine_id"], r["feature"]) for r in records if "residual_thermal_slope" in r["flags"]}
        assert set(alarmed) <= flagged
        assert all(material[key] == WRONG for key in flagged)
        newest = {(r["machine_id"], r["feature"]): r for r in records}  # oldest first: the last one wins
        for key in alarmed:
            assert "residual_thermal_slope" in newest[key]["flags"]

        # OPC UA shows the same figures (a live sink: once it has caught up).
        keys = [key for key, _ in characteristics(doc)]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            opcua = asyncio.run(read_opcua(twin.opcua_url, keys))
            caught_up = all(opcua[key]["SampleSize"] == entry["n"] for key, entry in characteristics(doc))
            if caught_up or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for key, entry in characteristics(doc):
            values = opcua[key]
            assert values["ThermalSlopeAlarm"] is entry["alarm"]
            assert values["SampleSize"] == entry["n"]
            assert values["Cpk"] == pytest.approx(entry["compensated"]["cpk"], abs=1e-6)
            assert values["CpkRaw"] == pytest.approx(entry["raw"]["cpk"], abs=1e-6)
            if entry["thermal_slope"] is not None:
                assert values["ThermalSlope"] == pytest.approx(entry["thermal_slope"]["um_per_k"], abs=1e-6)

        # The page: an alarm banner naming machine and characteristic, the alarmed tiles marked.
        assert twin.gateway.http_port is not None
        banner, tiles, problems = page_banner(twin.gateway.http_port)
        assert not problems, problems
        for machine, feature in alarmed:
            assert f"{machine} {feature}:" in banner
        assert sorted(tiles) == alarmed

        # A restart rebuilds the windows from the embedded store: the same figures, the alarm on.
        restart(twin)
        assert twin.gateway.get_json("/api/v1/capability") == doc
        again = twin.gateway.get_json("/health")["compensation_health"]
        assert sorted((a["machine_id"], a["feature"]) for a in again["alarms"]) == alarmed
        opcua = asyncio.run(read_opcua(twin.opcua_url, alarmed))
        assert all(values["ThermalSlopeAlarm"] is True for values in opcua.values())
    finally:
        twin.gateway.stop()


def test_the_right_cte_raises_no_alarm(tmp_path: Path, inbox_files: int) -> None:
    twin = start(tmp_path, wrong=False)
    try:
        health = wait_until_stored(twin.gateway, inbox_files)
        doc = twin.gateway.get_json("/api/v1/capability")
        assert health["compensation_health"] == {"status": "ok", "alarms": []}
        assert doc["alarms"] == []
        entries = dict(characteristics(doc))
        assert entries and all(not e["alarm"] for e in entries.values())
        lengths = [e for e in entries.values() if e["thermal_slope"] is not None]
        assert lengths and all(e["n"] >= 20 for e in lengths)
        for entry in lengths:  # compensated: no trend left beyond the noise, better capability than raw
            slope = entry["thermal_slope"]
            assert abs(slope["um_per_k"]) < 4 * slope["stderr_um_per_k"] + 0.1, entry
        slopes = {f"{k[0]}/{k[1]}": e["thermal_slope"]["um_per_k"] for k, e in entries.items() if e["thermal_slope"]}
        print("slopes found with the right CTE, um/K:", slopes)
        metrics = twin.gateway.get_text("/metrics")
        assert set(metric_values(metrics, "cmm_thermal_slope_alarm").values()) == {0.0}
        records = stored_records(twin.gateway)
        assert records
        assert not [r for r in records if "residual_thermal_slope" in r["flags"]]
        opcua = asyncio.run(read_opcua(twin.opcua_url, list(entries)))
        assert all(values["ThermalSlopeAlarm"] is False for values in opcua.values())
    finally:
        twin.gateway.stop()
