"""The live page: `GET /`, its static files, the SSE stream `/api/v1/events` and `/api/v1/rejects`,
against the real gateway in-process over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from yarl import URL

from cmm_twin.gateway import web
from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.sinks.page.feed import PageFeed
from cmm_twin.gateway.sinks.page.stream import MAX_CLIENTS
from cmm_twin.records import RecordBatch
from tests.gateway_harness import HEADER, RecordingSink, csv_row, drop_file, gateway_config, running_gateway, wait_for

PAGE_FIELDS = (
    "machine_id",
    "part_id",
    "feature",
    "unit",
    "nominal_mm",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "measured_mm",
    "compensated_mm",
    "part_temp_c",
    "air_temp_c",
    "deviation_um",
    "uncertainty_um",
    "verdict",
)


class SseReader:
    """Reads Server-Sent Events from an open response: (event, data as JSON, id)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next_event(self, timeout_s: float = 60.0) -> tuple[str, Any, str | None]:
        event, data, event_id = "message", "", None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.response.content.readline(max_line_length=1 << 24)
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n")
                if not line:
                    if data:
                        return event, json.loads(data), event_id
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "":
                    self.comments.append(value)
                elif field == "event":
                    event = value
                elif field == "data":
                    data += value
                elif field == "id":
                    event_id = value

    async def wait_event(self, name: str, timeout_s: float = 60.0) -> tuple[Any, str | None]:
        """The next event called `name` (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            event, data, event_id = await self.next_event(max(0.01, deadline - time.monotonic()))
            if event == name:
                return data, event_id


def page_feed(gateway: Gateway) -> PageFeed:
    """The running gateway's page sink."""
    feed = gateway.sink("page")
    assert isinstance(feed, PageFeed)
    return feed


def iso_to_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def assert_same_record(page: dict[str, Any], record: dict[str, Any]) -> None:
    for name in PAGE_FIELDS:
        assert page[name] == record[name], name
    assert page["time"] == record["timestamp"]
    assert page["t"] == iso_to_ms(record["timestamp"])


async def test_page_and_its_files_are_served_from_the_gateway_only(tmp_path: Path) -> None:
    async with running_gateway(gateway_config(tmp_path / "data")) as gateway, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{gateway.http_port}"
        async with http.get(base + "/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            html = await response.text()
        references = re.findall(r'(?:src|href)="([^"]*)"', html)
        assert sorted(r for r in references if r != "data:,") == ["/static/app.js", "/static/style.css"]
        for element_id in ("stream-state", "mes-state", "historian-state", "buffer-depth", "files-processed"):
            assert f'id="{element_id}"' in html
        for canvas in ("chart-thermal", "chart-deviation", "chart-buffer"):
            assert re.search(rf'<canvas id="{canvas}"[^>]*data-points="0"', html), canvas
        texts = [html]
        for name, content_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(f"{base}/static/{name}") as response:
                assert response.status == 200
                assert response.content_type == content_type
                assert response.charset == "utf-8"
                texts.append(await response.text())
        for text in texts:
            assert "http://" not in text and "https://" not in text
            assert "url(" not in text and "@import" not in text
        for path in ("/static/nope.js", "/static/index.html", "/static/..", "/static/..%2Fweb.py", "/static/%2e%2e"):
            async with http.get(URL(base + path, encoded=True)) as response:
                assert response.status == 404, path
        async with http.get(URL(base + "/static/../web.py", encoded=True)) as response:
            assert response.status == 404


async def test_events_stream_records_health_and_rejects(tmp_path: Path) -> None:
    recorder = RecordingSink()
    config = gateway_config(tmp_path / "data", historian="sqlite")
    async with running_gateway(config, recorder) as gateway, aiohttp.ClientSession() as http:
        events_url = f"http://127.0.0.1:{gateway.http_port}/api/v1/events"
        async with http.get(events_url) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            assert response.headers["Cache-Control"].startswith("no-cache")
            stream = SseReader(response)
            snapshot, first_id = await stream.wait_event("snapshot")
            assert snapshot["records"] == [] and snapshot["rejects"] == [] and snapshot["resumed"] is False
            assert snapshot["health"]["buffer_depth"] == 0
            assert snapshot["history"] is True  # the embedded historian is on by default
            assert first_id is not None

            rows = [
                csv_row("P1", timestamp="2026-01-05T06:00:00Z", measured_mm="100.0118", part_temp_c="25.0"),
                csv_row("P1", timestamp="2026-01-05T06:00:00Z", feature="length_y", nominal_mm="60.0",
                        measured_mm="60.0071", part_temp_c="25.0", air_temp_c=""),
                csv_row("P2", timestamp="2026-01-05T06:00:10Z", machine_id="CMM-02", measured_mm="100.0300"),
            ]  # fmt: skip
            drop_file(config.inbox, "good.csv", HEADER + "".join(rows))
            received: list[dict[str, Any]] = []
            counts: dict[str, dict[str, int]] = {}
            ids: list[str | None] = []
            while len(received) < 3:
                body, event_id = await stream.wait_event("records")
                received += body["records"]
                counts = body["counts"]
                ids.append(event_id)
                assert body["gap"] is False
            await wait_for(lambda: len(recorder.records) == 3, what="the recorder")
            assert len(received) == 3
            by_key = {(r["machine_id"], r["part_id"], r["feature"]): r for r in recorder.records}
            for page_record in received:
                assert_same_record(page_record, by_key[page_record["machine_id"], page_record["part_id"],
                                                      page_record["feature"]])  # fmt: skip
            assert [r["id"] for r in received] == [1, 2, 3]
            assert ids[-1] == f"{page_feed(gateway).boot}-3"
            assert received[1]["air_temp_c"] is None
            expected = Counter((r["machine_id"], r["verdict"]) for r in recorder.records)
            assert {(m, v): n for m, c in counts.items() for v, n in c.items() if n} == dict(expected)
            assert counts["CMM-02"]["FAIL"] == 1  # 30 µm long: outside the tolerance

            health, _ = await stream.wait_event("health")
            while health["sinks"]["recorder"]["rows_out"] < 3 or health["buffer_depth"]:
                health, _ = await stream.wait_event("health")  # a newer state comes within a tick
            assert health["buffer_depth"] == 0 and health["files_processed"] == 1
            assert set(health["sinks"]) >= {"recorder", "historian", "page"}

            bad = HEADER + csv_row("P3", timestamp="2026-01-05T06:01:00Z", measured_mm="abc") + csv_row("P4")
            drop_file(config.inbox, "bad.csv", bad)
            rejects, _ = await stream.wait_event("rejects")
            assert [r["file"] for r in rejects["rejects"]] == ["bad.csv"]
            await wait_for(lambda: page_feed(gateway).last_id == 4, what="the valid row of bad.csv")

        async with http.get(events_url) as response:
            snapshot, _ = await SseReader(response).wait_event("snapshot")
        assert [r["id"] for r in snapshot["records"]] == [1, 2, 3, 4]
        assert snapshot["records"][:3] == received
        assert snapshot["records"][3]["part_id"] == "P4"
        assert snapshot["tolerances"]["length_y"] == {
            "tolerance_mm": 0.01,
            "lower_tol_mm": -0.01,
            "upper_tol_mm": 0.01,
            "nominal_mm": 60.0,
            "unit": "mm",
        }
        (reject,) = snapshot["rejects"]
        assert reject["file"] == "bad.csv"
        assert reject["rows_ok"] == 1 and reject["rows_rejected"] == 1 and reject["file_error"] is None
        assert reject["errors"] == [{"line": 2, "column": "measured_mm", "reason": reject["errors"][0]["reason"]}]
        assert "abc" in reject["errors"][0]["reason"]
        assert snapshot["counts"]["CMM-01"]["PASS"] >= 2

        async with http.get(f"http://127.0.0.1:{gateway.http_port}/api/v1/rejects") as response:
            assert (await response.json())["rejects"] == snapshot["rejects"]

        async with http.get(events_url, params={"machine_id": "CMM-02"}) as response:
            only, _ = await SseReader(response).wait_event("snapshot")
        assert [r["part_id"] for r in only["records"]] == ["P2"]

        async with http.get(events_url, headers={"Last-Event-ID": f"{page_feed(gateway).boot}-2"}) as response:
            resumed, _ = await SseReader(response).wait_event("snapshot")
        assert resumed["resumed"] is True
        assert [r["id"] for r in resumed["records"]] == [3, 4]
        async with http.get(events_url, headers={"Last-Event-ID": "another-process-2"}) as response:
            fresh, _ = await SseReader(response).wait_event("snapshot")
        assert fresh["resumed"] is False and len(fresh["records"]) == 4


async def test_gateway_stops_promptly_with_an_open_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A shutdown timeout far longer than any stop: a stream that did not end by itself would hold
    # the stop for a minute, whatever the machine's load.
    monkeypatch.setattr(web, "SHUTDOWN_TIMEOUT_S", 60.0)
    async with aiohttp.ClientSession() as http:
        async with running_gateway(gateway_config(tmp_path / "data", historian="none")) as gateway:
            base = f"http://127.0.0.1:{gateway.http_port}"
            response = await http.get(base + "/api/v1/events")
            stream = SseReader(response)
            snapshot, _ = await stream.wait_event("snapshot")
            assert snapshot["history"] is False  # the page then does not ask /api/v1/history (404)
            async with http.get(base + "/api/v1/history") as history:
                assert history.status == 404
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 30.0  # the stream ended at once, not at the shutdown timeout
        with pytest.raises(EOFError):  # the stream ends cleanly, no reset
            await stream.next_event(timeout_s=60)
        response.release()


async def test_at_most_max_clients_streams(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(gateway_config(tmp_path / "data")) as gateway, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gateway.http_port}/api/v1/events"
        streams = [await http.get(url) for _ in range(MAX_CLIENTS)]
        for response in streams:
            assert response.status == 200
            await SseReader(response).wait_event("snapshot")
        async with http.get(url) as refused:
            assert refused.status == 503
            assert "too many" in (await refused.json())["error"]
            assert refused.headers["Retry-After"] == "10"
        for response in streams:
            response.close()

        async def admitted() -> bool:
            async with http.get(url) as again:
                return again.status == 200

        deadline = time.monotonic() + 60
        while not await admitted():  # a closed stream frees its place within a tick
            assert time.monotonic() < deadline, "closed streams were not released"
            await asyncio.sleep(0.2)
    noisy = [
        r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(("aiohttp", "cmm_twin.gateway"))
    ]
    assert noisy == []


def test_feed_ring_is_bounded_and_counts_every_record(tmp_path: Path) -> None:
    feed = PageFeed(tmp_path, capacity=4)

    def batch(machines: list[str], verdicts: list[int]) -> RecordBatch:
        n = len(machines)
        return RecordBatch.with_blanks(
            n,
            {
                "machine_id": machines,
                "feature": ["length_x"] * n,
                "timestamp": ["2026-01-05T06:00:00.000000Z"] * n,
                "timestamp_ns": np.full(n, 1_767_592_800_000_000_000, dtype=np.int64),
                "tolerance_mm": np.full(n, 0.01),
                "verdict": np.array(verdicts, dtype=np.int8),
            },
        )

    for b in (batch(["A", "B", "A"], [0, 1, 2]), batch(["A"] * 6, [0, 0, 0, 0, 3, 1])):
        feed.count(b)
        feed.add(b)
    feed.superseded(batch(["B"], [2]))  # dropped by the runner in a burst: counted, not in the ring
    assert feed.last_id == 9 and feed.first_id == 6
    assert [r["id"] for r in feed.ring] == [6, 7, 8, 9]
    assert feed.counts == {
        "A": {"PASS": 5, "FAIL": 1, "UNCERTAIN": 1, "UNDEFINED": 1},
        "B": {"PASS": 0, "FAIL": 1, "UNCERTAIN": 1, "UNDEFINED": 0},
    }
    records, gap = feed.records_after(2)
    assert gap is True and [r["id"] for r in records] == [6, 7, 8, 9]
    records, gap = feed.records_after(7)
    assert gap is False and [r["id"] for r in records] == [8, 9]
    assert feed.records_after(9) == ([], False)
    assert feed.records_after(0, machine_id="B") == ([], True)
    assert feed.ring[-1]["verdict"] == "FAIL" and feed.ring[-1]["t"] == 1_767_592_800_000
    assert list(feed.tolerances) == ["length_x"] and feed.tolerances["length_x"]["tolerance_mm"] == 0.01
    assert feed.ring[-2]["verdict"] == "UNDEFINED"


def test_feed_carries_limits_and_unit_of_angles_and_one_sided_zones(tmp_path: Path) -> None:
    feed = PageFeed(tmp_path)
    nan = math.nan
    batch = RecordBatch.with_blanks(
        2,
        {
            "machine_id": ["A", "A"],
            "feature": ["angle_a", "flatness"],
            "timestamp": ["2026-01-05T06:00:00.000000Z"] * 2,
            "timestamp_ns": np.full(2, 1_767_592_800_000_000_000, dtype=np.int64),
            "nominal_mm": np.array([90.0, 0.0]),
            "tolerance_mm": np.array([nan, nan]),
            "lower_tol_mm": np.array([-0.05, nan]),
            "upper_tol_mm": np.array([0.1, 0.004]),
            "unit": ["deg", "mm"],
            "verdict": np.array([0, 0], dtype=np.int8),
        },
    )
    feed.count(batch)
    feed.add(batch)
    angle, flatness = (orjson.loads(orjson.dumps(r)) for r in feed.ring)  # as the stream sends them
    assert {k: angle[k] for k in ("unit", "tolerance_mm", "lower_tol_mm", "upper_tol_mm")} == {
        "unit": "deg",
        "tolerance_mm": None,
        "lower_tol_mm": -0.05,
        "upper_tol_mm": 0.1,
    }
    assert (flatness["unit"], flatness["lower_tol_mm"], flatness["upper_tol_mm"]) == ("mm", None, 0.004)
    assert orjson.loads(orjson.dumps(feed.tolerances))["flatness"] == {
        "tolerance_mm": None,
        "lower_tol_mm": None,
        "upper_tol_mm": 0.004,
        "nominal_mm": 0.0,
        "unit": "mm",
    }
