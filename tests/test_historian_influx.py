"""The InfluxDB v2 historian against a real database speaking the write API (VictoriaMetrics from
Debian's packages, on loopback), read back value by value; faults: 503 twice then 204 (an edge
proxy in front of the real database), the database stopped and restarted, 401 (the database
with basic auth on), 400 naming a line and 413 (an edge server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.sinks.base import Delivered, Refused, Retry
from cmm_twin.gateway.sinks.historian.influx import InfluxSink
from cmm_twin.gateway.sinks.historian.lineprotocol import FIELD_KEYS, TAG_KEYS, Precision, measurement_lines
from cmm_twin.records import RecordBatch
from tests.gateway_harness import (
    HEADER,
    RecordingSink,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    serving,
    wait_for,
)
from tests.test_opcua_sink import make_batch
from tests.victoria import VictoriaMetrics

Samples = dict[tuple[tuple[str, str], ...], dict[int, float]]


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def influx_config(data_dir: Path, url: str, **overrides: Any) -> GatewayConfig:
    base: dict[str, Any] = {
        "historian": "influx",
        "influx_url": url,
        "influx_org": "plant",
        "influx_bucket": "cmm",
        "sink_backoff_min_s": 0.05,
        "sink_backoff_max_s": 0.5,
        "health_interval_s": 0.2,
    }
    return gateway_config(data_dir, **{**base, **overrides})


def rows(count: int, start: datetime, machines: tuple[str, ...] = ("CMM-01", "CMM-02")) -> str:
    """`count` CSV rows, 10 ms apart, alternating machines; every 7th has no air temperature."""
    lines = []
    for i in range(count):
        moment = start + timedelta(milliseconds=10 * i)
        lines.append(
            csv_row(
                f"P{i}",
                timestamp=moment.isoformat().replace("+00:00", "Z"),
                machine_id=machines[i % len(machines)],
                feature="length_x" if i % 3 else "bore_d",
                measured_mm=f"{100 + (i % 50) * 0.0007:.4f}",
                part_temp_c=f"{20 + (i % 80) * 0.1:.1f}",
                air_temp_c="" if i % 7 == 0 else "21.5",
            )
        )
    return HEADER + "".join(lines)


def time_ms(iso: str) -> int:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def expected_samples(records: list[dict[str, Any]]) -> dict[str, Samples]:
    """What the database must hold per field, from the records the gateway delivered."""
    out: dict[str, Samples] = {f: {} for f in FIELD_KEYS}
    for r in records:
        labels = tuple(sorted((t, str(r[t])) for t in TAG_KEYS))
        for f in FIELD_KEYS:
            if r[f] is not None:
                out[f].setdefault(labels, {})[time_ms(r["timestamp"])] = r[f]
    return out


def assert_holds(vm: VictoriaMetrics, records: list[dict[str, Any]]) -> None:
    """Every field of every record is in the database with its value, and nothing else is."""
    for name, expected in expected_samples(records).items():
        got = vm.samples(f"cmm_measurement_{name}")
        assert got.keys() == expected.keys(), name
        for labels, points in expected.items():
            assert got[labels].keys() == points.keys(), (name, labels)
            for t, value in points.items():
                assert math.isclose(got[labels][t], value, rel_tol=1e-12, abs_tol=1e-12), (name, labels, t)


async def historian_idle(gateway: Any, rows_in: int) -> None:
    await wait_for(
        lambda: gateway.status.rows_in == rows_in and gateway.status.sinks["historian"].rows_out >= rows_in,
        what=f"{rows_in} rows delivered to the historian",
    )


async def test_measurements_and_health_land_in_the_database_value_by_value(tmp_path: Path, vm: VictoriaMetrics) -> None:
    truth = RecordingSink("truth")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    config = influx_config(tmp_path, vm.url, historian_batch_size=70)
    async with running_gateway(config, truth) as gateway:
        drop_file(config.inbox, "a.csv", rows(150, start))
        drop_file(config.inbox, "b.csv", rows(150, start + timedelta(seconds=10), ("CMM-03",)))
        await historian_idle(gateway, 300)

        def files() -> dict[int, float]:
            return vm.samples("gateway_health_files_processed").get((), {0: 0.0})

        await wait_for(lambda: max(files().values()) == 2, what="a health point counting both files")
    assert len(truth.records) == 300
    assert sum(r["air_temp_c"] is None for r in truth.records) == 2 * 22, "rows without air temperature"
    assert_holds(vm, truth.records)
    assert {dict(labels)["verdict"] for labels in vm.samples("cmm_measurement_measured_mm")} <= {
        "PASS",
        "FAIL",
        "UNCERTAIN",
    }
    assert list(vm.samples("gateway_health_files_processed")) == [()], "gateway_health has no tags"
    assert max(vm.samples("gateway_health_historian_connected")[()].values()) == 1
    assert set(vm.samples("gateway_health_buffer_depth")[()].values()) >= {0}


@dataclass
class EdgeProxy:
    """Answers InfluxDB writes from a script first, then forwards them to the real database."""

    upstream: str
    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    forwarded_ms: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    url: str = ""

    async def write(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(body)
        if self.script:
            status, headers, text = self.script.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.upstream}/api/v2/write", params=request.query, data=body, headers={"Content-Type": "text/plain"}
            ) as answer,
        ):
            text = await answer.text()
            if answer.status == 204:
                for line in body.decode().splitlines():
                    if line.startswith("cmm_measurement,"):
                        self.forwarded_ms.append(int(line.rsplit(" ", 1)[1]) // 1_000_000)
            return web.Response(status=answer.status, text=text)

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def edge_proxy(upstream: str) -> AsyncIterator[EdgeProxy]:
    proxy = EdgeProxy(upstream)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_post("/api/v2/write", proxy.write)
    app.router.add_get("/ping", proxy.ping)
    async with serving(app) as proxy.url:
        yield proxy


async def test_503_twice_then_204_loses_nothing_and_keeps_order(
    tmp_path: Path, vm: VictoriaMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    truth = RecordingSink("truth")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    async with edge_proxy(vm.url) as proxy:
        proxy.script = [(503, {"Retry-After": "0"}, "busy"), (503, {}, "busy")]
        config = influx_config(tmp_path, proxy.url, historian_batch_size=40)
        async with running_gateway(config, truth) as gateway:
            drop_file(config.inbox, "a.csv", rows(200, start))
            await historian_idle(gateway, 200)
    assert_holds(vm, truth.records)
    assert proxy.forwarded_ms == [time_ms(r["timestamp"]) for r in truth.records], "delivered in spool order, once"
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("Network Lost! Buffering... (historian: HTTP 503") for m in messages) == 1
    assert sum(m.startswith("Flushing buffer... (historian") for m in messages) == 1


async def test_database_down_for_a_while_then_back(
    tmp_path: Path, vm: VictoriaMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    truth = RecordingSink("truth")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=4)
    config = influx_config(tmp_path, vm.url)
    async with running_gateway(config, truth) as gateway:
        drop_file(config.inbox, "a.csv", rows(100, start))
        await historian_idle(gateway, 100)
        vm.stop()
        drop_file(config.inbox, "b.csv", rows(100, start + timedelta(seconds=5)))
        historian = gateway.status.sinks["historian"]
        await wait_for(lambda: historian.state == "buffering" and historian.buffer_depth == 100, what="buffering")
        await asyncio.sleep(1.0)  # health samples pile up while the database is away
        vm.start()
        await historian_idle(gateway, 200)

        def depth() -> dict[int, float]:
            return vm.samples("gateway_health_buffer_depth")[()]

        def drained_point() -> bool:
            points = depth()
            return points[max(points)] == 0

        await wait_for(drained_point, what="a health point with the buffer drained")
    assert_holds(vm, truth.records)
    # The gateway's depth counts every durable sink: the recording sink adds its own for a moment.
    assert max(depth().values()) >= 100, "the outage's buffer depth was written after recovery"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Network Lost! Buffering... (historian:") for m in messages)
    assert any(m.startswith("Flushing buffer... (historian: 100 records buffered)") for m in messages)


async def test_401_stops_loudly_keeps_the_data_and_resumes_once_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    vm = VictoriaMetrics(tmp_path / "vm", auth=("grafana", "not-the-gateways-token"))
    vm.start()
    truth = RecordingSink("truth")
    try:
        config = influx_config(tmp_path, vm.url, sink_backoff_max_s=1.0)
        async with running_gateway(config, truth) as gateway:
            drop_file(config.inbox, "a.csv", rows(60, datetime.now(UTC) - timedelta(minutes=2)))
            historian = gateway.status.sinks["historian"]
            await wait_for(lambda: historian.state == "refused" and historian.buffer_depth == 60, what="refused")
            vm.stop()
            vm.start(auth=None)  # the credentials are fixed
            await historian_idle(gateway, 60)
        assert_holds(vm, truth.records)
    finally:
        vm.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("historian refuses the gateway: HTTP 401" in m and "check INFLUX_TOKEN" in m for m in errors)
    assert any("60 records stay spooled" in m for m in errors)


@dataclass
class EdgeInflux:
    """An InfluxDB stand-in: answers from a script first, refuses bodies over `max_lines` with 413,
    and with `reject_line` answers 400 once, quoting that line of the body as InfluxDB does."""

    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    max_lines: int | None = None
    reject_line: int | None = None
    lines: list[str] = field(default_factory=list)
    url: str = ""

    async def write(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        if self.script:
            status, headers, text = self.script.pop(0)
            return web.Response(status=status, headers=headers, text=text)
        if self.max_lines is not None and len(body.splitlines()) > self.max_lines:
            return web.json_response({"code": "request too large", "message": "too many points"}, status=413)
        if self.reject_line is not None:
            bad = body.splitlines()[self.reject_line]
            self.reject_line = None
            message = f"unable to parse '{bad}': invalid field format"
            return web.json_response({"code": "invalid", "message": message}, status=400)
        self.lines += body.splitlines()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def edge_influx() -> AsyncIterator[EdgeInflux]:
    server = EdgeInflux()
    app = web.Application()
    app.router.add_post("/api/v2/write", server.write)
    async with serving(app) as server.url:
        yield server


def data_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("cmm_measurement,")]


async def test_413_splits_the_batch(tmp_path: Path) -> None:
    truth = RecordingSink("truth")
    async with edge_influx() as server:
        server.max_lines = 6
        config = influx_config(tmp_path, server.url, historian_batch_size=20, health_interval_s=60)
        async with running_gateway(config, truth) as gateway:
            drop_file(config.inbox, "a.csv", rows(20, datetime.now(UTC) - timedelta(minutes=1)))
            await historian_idle(gateway, 20)
    stamps = [int(line.rsplit(" ", 1)[1]) // 1_000_000 for line in data_lines(server.lines)]
    assert stamps == [time_ms(r["timestamp"]) for r in truth.records], "all delivered, in order, once"
    assert not (config.state_dir / "dead_letter.jsonl").exists()


async def test_400_naming_a_line_dead_letters_that_record_only(tmp_path: Path) -> None:
    truth = RecordingSink("truth")
    async with edge_influx() as server:
        server.reject_line = 3
        config = influx_config(tmp_path, server.url, historian_batch_size=20, health_interval_s=60)
        async with running_gateway(config, truth) as gateway:
            drop_file(config.inbox, "a.csv", rows(20, datetime.now(UTC) - timedelta(minutes=1)))
            await historian_idle(gateway, 20)
    dead = [json.loads(line) for line in (config.state_dir / "dead_letter.jsonl").read_text().splitlines()]
    assert [d["record"]["measurement_id"] for d in dead] == [truth.records[3]["measurement_id"]]
    assert dead[0]["sink"] == "historian" and "unable to parse" in dead[0]["reason"]
    stamps = [int(line.rsplit(" ", 1)[1]) // 1_000_000 for line in data_lines(server.lines)]
    assert stamps == [time_ms(r["timestamp"]) for i, r in enumerate(truth.records) if i != 3]


def small_batch() -> RecordBatch:
    now_ns = time.time_ns()
    return make_batch([("CMM-01", now_ns + i * 1_000_000, 100.0 + i * 0.001, "PASS") for i in range(4)])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((401, {}, '{"code":"unauthorized","message":"unauthorized access"}'), "Refused:check INFLUX_TOKEN"),
        ((403, {}, "{}"), "Refused:check INFLUX_TOKEN"),
        ((404, {}, '{"code":"not found","message":"bucket not found"}'), "Refused:check --influx-org"),
        ((429, {"Retry-After": "7"}, "{}"), "Retry:7.0"),
        ((503, {}, "down"), "Retry:None"),
        ((500, {}, "boom"), "Retry:None"),
        ((413, {}, "{}"), "Split:"),
        ((400, {}, '{"code":"invalid","message":"no line named"}'), "Split:"),
    ],
)
async def test_influx_sink_classifies_answers(answer: tuple[int, dict[str, str], str], expected: str) -> None:
    batch = small_batch()
    kind, _, detail = expected.partition(":")
    async with edge_influx() as server:
        sink = InfluxSink(server.url, "plant", "cmm", "t0ken", Precision.NS)
        await sink.open()
        try:
            server.script = [answer]
            outcome = await sink.write(batch)
            assert type(outcome).__name__ == kind, outcome
            if isinstance(outcome, Refused):
                assert detail in outcome.reason
            if isinstance(outcome, Retry):
                assert str(outcome.retry_after_s) == detail
            assert isinstance(await sink.write(batch), Delivered)
            assert server.lines == measurement_lines(batch)
        finally:
            await sink.close()


async def test_influx_sink_unreachable_is_transient() -> None:
    async with edge_influx() as server:
        url = server.url
    sink = InfluxSink(url, "plant", "cmm", None)
    await sink.open()
    try:
        assert isinstance(await sink.write(small_batch()), Retry)
        assert await sink.ping() is False
    finally:
        await sink.close()
