"""The live page in a real browser: Debian's headless Chromium driven by Playwright's Python API.

The whole twin runs as real processes on loopback (mock MES, gateway with the embedded
historian, simulator). The test waits until the charts have data, kills the MES and sees the
buffer rise and the MES shown as disconnected, restarts it and sees the buffer drain to zero;
no console errors throughout. Screenshots go to test-artifacts/ (CMM_TEST_ARTIFACTS overrides).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, sync_playwright

from cmm_twin.gateway.sinks.base import Delivered
from cmm_twin.records import RecordBatch, canonical_timestamp
from tests.gateway_harness import (
    HEADER,
    ROOT,
    GatewayProcess,
    MesProcess,
    csv_row,
    drop_file,
    free_port,
    gateway_config,
    run_simulator,
    running_gateway,
    wait_for,
)
from tests.test_page import page_feed

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("CMM_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # the machine has no network: no update or sync probes
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[tuple[GatewayProcess, MesProcess, Path]]:
    if shutil.which(CHROMIUM) is None:
        raise AssertionError(f"{CHROMIUM} is not installed: run `make test` (it installs Debian's chromium as root)")
    data = tmp_path / "data"
    mes_port = free_port()
    mes = MesProcess(tmp_path / "mes.sqlite", mes_port, tmp_path / "mes.log")
    mes.wait_ready()
    gateway = GatewayProcess(
        [
            "--data-dir", str(data), "--http", "127.0.0.1:0", "--mes-url", mes.url,
            "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
            "--historian", "sqlite", "--health-interval-s", "1", "--settle-ms", "50",
        ],
        tmp_path / "gateway.log",
    )  # fmt: skip
    simulator = run_simulator(data / "inbox", tmp_path / "truth", "--rate", "4", "--speedup", "240")
    try:
        gateway.wait_ready(60)
        yield gateway, mes, tmp_path
    finally:
        simulator.send_signal(signal.SIGTERM)
        simulator.wait(30)
        gateway.stop()
        mes.stop()  # the first MES process (killed by the test)


def text_of(page: Page, element_id: str) -> str:
    return page.locator(f"#{element_id}").inner_text().strip()


def test_live_page_shows_the_twin_and_an_mes_outage(twin: tuple[GatewayProcess, MesProcess, Path]) -> None:
    gateway, mes, tmp_path = twin
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    problems.append(f"console error: {message.text}")

            def on_page_error(error: Error) -> None:
                problems.append(f"page error: {error}")

            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(f"http://127.0.0.1:{gateway.http_port}/#window=10m")

            # Every chart has data.
            page.wait_for_function(
                """() => {
                    const charts = [...document.querySelectorAll('canvas[data-points]')];
                    return charts.length >= 3 && charts.every(c => Number(c.dataset.points) > 0);
                }""",
                timeout=60_000,
            )
            # A capability tile per machine and characteristic: raw Cpk next to compensated Cpk, and n.
            page.wait_for_function(
                """() => [...document.querySelectorAll('.cap-tile')].some(t =>
                    /^-?\\d+\\.\\d\\d$/.test(t.querySelector('.raw').innerText)
                    && /^-?\\d+\\.\\d\\d$/.test(t.querySelector('.compensated').innerText)
                    && /n \\d+/.test(t.querySelector('.n').innerText))""",
                timeout=60_000,
            )
            tiles = page.locator(".cap-tile").evaluate_all(
                "(ts) => ts.map((t) => t.dataset.machine + '/' + t.dataset.feature)"
            )
            assert tiles and len(tiles) == len(set(tiles)), tiles
            page.wait_for_function("() => document.querySelector('#mes-state').innerText.includes('connected')")
            assert text_of(page, "mes-state").startswith("connected"), text_of(page, "mes-state")
            page.screenshot(path=str(ARTIFACTS / "live-page.png"))

            # The MES dies: the page shows it disconnected and the buffer rising.
            mes.proc.kill()
            mes.proc.wait(10)
            page.wait_for_function(
                """() => !document.querySelector('#mes-state').innerText.startsWith('connected')
                         && Number(document.querySelector('#buffer-depth').innerText.replace(/[^0-9]/g, '')) > 0""",
                timeout=60_000,
            )
            assert text_of(page, "mes-state") in ("buffering", "disconnected"), text_of(page, "mes-state")
            # The buffer chart has a series for each sink with a buffer, the MES's among them.
            page.wait_for_function("() => document.querySelector('#chart-buffer').dataset.series === 'historian,mes'")
            page.screenshot(path=str(ARTIFACTS / "live-page-mes-outage.png"))

            # The MES comes back: the buffer drains to zero and the MES shows connected again.
            restarted = MesProcess(mes.db, mes.port, tmp_path / "mes-restarted.log")
            try:
                restarted.wait_ready()
                page.wait_for_function(
                    """() => document.querySelector('#mes-state').innerText.startsWith('connected')
                             && document.querySelector('#buffer-depth').innerText.trim() === '0'""",
                    timeout=90_000,
                )
                page.screenshot(path=str(ARTIFACTS / "live-page-recovered.png"))
            finally:
                restarted.stop()
        finally:
            browser.close()
    assert not problems, problems
    foreign = [url for url in requests if not url.startswith(f"http://127.0.0.1:{gateway.http_port}/")]
    assert not foreign, f"the page works offline: no request leaves the gateway ({foreign})"
    assert "Network Lost! Buffering..." in gateway.log_text()
    assert "Flushing buffer..." in gateway.log_text()


def angle_and_one_sided_batch() -> RecordBatch:
    """Three angles of CMM-01 (asymmetric -0.05/+0.1 deg, the last without any limit) and a
    flatness with an upper limit only, as a format source delivers them."""
    nan = math.nan
    start_ns = time.time_ns() - 60 * 10**9
    stamps = np.array([start_ns + k * 10**9 for k in range(4)], dtype=np.int64)
    return RecordBatch.with_blanks(
        4,
        {
            "machine_id": ["CMM-01"] * 4,
            "part_id": ["P1", "P2", "P3", "P3"],
            "feature": ["angle_a", "angle_a", "angle_a", "flatness"],
            "timestamp": [canonical_timestamp(datetime.fromtimestamp(t / 1e9, UTC)) for t in stamps.tolist()],
            "timestamp_ns": stamps,
            "nominal_mm": np.array([90.0, 90.0, 90.0, 0.0]),
            "measured_mm": np.array([90.01, 89.97, 90.2, 0.003]),
            "compensated_mm": np.array([90.01, 89.97, 90.2, 0.003]),
            "part_temp_c": np.full(4, 21.0),
            "deviation_um": np.array([10.0, -30.0, 200.0, 3.0]),
            "uncertainty_um": np.array([5.0, 5.0, 5.0, 0.5]),
            "tolerance_mm": np.full(4, nan),
            "lower_tol_mm": np.array([-0.05, -0.05, nan, nan]),
            "upper_tol_mm": np.array([0.1, 0.1, nan, 0.004]),
            "unit": ["deg", "deg", "deg", "mm"],
            "verdict": np.array([0, 0, 3, 0], dtype=np.int8),
        },
    )


def watched_page(browser: Browser, url: str, problems: list[str]) -> Page:
    """A 1280x800 page of `browser` at `url`, its console errors and page errors into `problems`."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(url)
    return page


def read_limits_page(url: str) -> tuple[list[str], list[str]]:
    """The page's latest-measurement line for the angle and the flatness, its UNDEFINED count, and
    any console or page errors."""
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = watched_page(browser, url, problems)
            page.wait_for_function("() => Number(document.querySelector('#chart-deviation').dataset.points) === 3")
            page.wait_for_function("() => document.querySelector('#count-undefined').innerText.trim() === '1'")
            texts = [text_of(page, "latest-measurement"), text_of(page, "count-undefined")]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "live-page-angle.png"))
            page.select_option("#feature-select", "flatness")
            page.wait_for_function("() => Number(document.querySelector('#chart-deviation').dataset.points) === 1")
            texts.append(text_of(page, "latest-measurement"))
        finally:
            browser.close()
    return texts, problems


async def test_page_shows_limits_units_and_undefined_verdicts(tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        raise AssertionError(f"{CHROMIUM} is not installed: run `make test` (it installs Debian's chromium as root)")
    async with running_gateway(gateway_config(tmp_path / "data")) as gateway:
        assert await page_feed(gateway).write(angle_and_one_sided_batch()) == Delivered()
        texts, problems = await asyncio.to_thread(read_limits_page, f"http://127.0.0.1:{gateway.http_port}/")
    assert not problems, problems
    angle, undefined, flatness = texts
    assert angle.startswith("latest P3 (angle, °) at ")
    assert " UTC · limits none / none m° · UNDEFINED · 3 parts shown" in angle
    assert undefined == "1"
    assert flatness.startswith("latest P3 at ")
    assert " UTC · limits none / +4.0 µm · PASS · 1 parts shown" in flatness


LAYOUT_PROBLEMS = """() => {
    const width = window.innerWidth;
    const out = [];
    if (document.scrollingElement.scrollWidth > width) out.push('scrollWidth ' + document.scrollingElement.scrollWidth);
    for (const el of document.body.querySelectorAll('*')) {
        const box = el.getBoundingClientRect();
        if (!box.width && !box.height) continue;
        if (box.left < -0.5 || box.right > width + 0.5) {
            const name = el.tagName + '#' + el.id + '.' + el.className;
            out.push(name + ' ' + box.left.toFixed(1) + '..' + box.right.toFixed(1));
        }
    }
    return out;
}"""
CHART_STATE = """() => [...document.querySelectorAll('canvas.chart')].map(c => ({
    id: c.id, points: Number(c.dataset.points), segments: Number(c.dataset.segments),
    span: Number(c.dataset.xMax) - Number(c.dataset.xMin)}))"""


def wait_for_window(page: Page, span_ms: int, thermal_points: str) -> list[dict[str, Any]]:
    """Wait until every chart spans `span_ms` and the thermal chart satisfies `thermal_points` (JS, n)."""
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('canvas.chart')].every(c =>
                Number(c.dataset.xMax) - Number(c.dataset.xMin) === {span_ms})
            && (n => {thermal_points})(Number(document.querySelector('#chart-thermal').dataset.points))""",
        timeout=60_000,
    )
    charts: list[dict[str, Any]] = page.evaluate(CHART_STATE)
    return charts


def gap_rows() -> str:
    """length_x of CMM-01 every 20 s from 50 to 30 minutes ago and from 20 minutes ago to now: a
    10-minute pause in the middle (61 + 61 rows)."""
    now = int(time.time()) // 20 * 20
    stamps = [now - 3000 + 20 * k for k in range(61)] + [now - 1200 + 20 * k for k in range(61)]
    rows = [
        csv_row(
            f"P{k}",
            timestamp=datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            measured_mm=f"{100.0 * (1 + 23.6e-6 * math.sin(k / 7)) + 0.0015 * math.sin(k / 3):.5f}",
            part_temp_c=f"{20.0 + math.sin(k / 7):.3f}",
        )
        for k, t in enumerate(stamps)
    ]
    return HEADER + "".join(rows)


def steer_the_page(url: str) -> tuple[list[list[dict[str, Any]]], dict[str, list[str]], list[str]]:
    """Drive the time window and two widths; returns the charts' state per step, the layout
    problems per width, and console or page errors."""
    problems: list[str] = []
    steps: list[list[dict[str, Any]]] = []
    layout: dict[str, list[str]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = watched_page(browser, url, problems)
            steps.append(wait_for_window(page, 3_600_000, "n === 122"))  # the default: 1 h
            page.click("#window-control button[data-window='10m']")
            steps.append(wait_for_window(page, 600_000, "n > 0 && n < 40"))
            page.click("#window-control button[data-window='24h']")
            steps.append(wait_for_window(page, 86_400_000, "n === 122"))
            page.reload()  # the choice survives a reload
            steps.append(wait_for_window(page, 86_400_000, "n === 122"))
            assert page.get_attribute("#window-control button[data-window='24h']", "aria-pressed") == "true"
            page.click("#window-control button[data-window='1h']")
            wait_for_window(page, 3_600_000, "n === 122")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            for width, height in ((1280, 800), (390, 844), (360, 740)):
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_function(
                    "() => [...document.querySelectorAll('canvas.chart')].every(c => "
                    "Math.abs(c.width / (window.devicePixelRatio || 1) - c.clientWidth) < 2)"
                )
                layout[str(width)] = page.evaluate(LAYOUT_PROBLEMS)
                if width != 360:
                    page.screenshot(path=str(ARTIFACTS / f"live-page-{width}.png"), full_page=True)
        finally:
            browser.close()
    return steps, layout, problems


async def test_the_time_window_governs_every_chart_and_gaps_break_lines(tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        raise AssertionError(f"{CHROMIUM} is not installed: run `make test` (it installs Debian's chromium as root)")
    config = gateway_config(tmp_path / "data", historian="sqlite", health_interval_s=1.0)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "gap.csv", gap_rows())
        await wait_for(lambda: gateway.status.files_processed == 1, what="the file processed")
        await wait_for(lambda: gateway.status.sinks["historian"].buffer_depth == 0, what="the history written")
        steps, layout, problems = await asyncio.to_thread(steer_the_page, f"http://127.0.0.1:{gateway.http_port}/")
    assert not problems, problems
    one_hour, ten_minutes, a_day, reloaded = ({c["id"]: c for c in step} for step in steps)
    assert set(one_hour) == {"chart-thermal", "chart-deviation", "chart-buffer"}
    for charts in (one_hour, a_day, reloaded):
        for chart_id in ("chart-thermal", "chart-deviation"):
            assert (charts[chart_id]["points"], charts[chart_id]["segments"]) == (122, 2), charts  # the gap
        assert charts["chart-buffer"]["points"] > 0, charts
    assert all(c["span"] == 3_600_000 for c in one_hour.values())
    assert all(c["span"] == 600_000 for c in ten_minutes.values())
    assert all(c["span"] == 86_400_000 for c in a_day.values())
    assert ten_minutes["chart-thermal"]["segments"] == ten_minutes["chart-deviation"]["segments"] == 1
    assert layout == {"1280": [], "390": [], "360": []}, layout
