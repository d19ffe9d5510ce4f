"""The MES sink on the real runner and the real gateway, against a server that injects faults at
the network edge (503 twice then 200, 429 with Retry-After, 401, 413, 422, 409). The real mock MES is
exercised by the chaos tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cmm_twin.gateway.sinks.base import Delivered, Refused, Rejected, Retry, Split
from cmm_twin.gateway.sinks.http import parse_retry_after
from cmm_twin.gateway.sinks.mes.sink import classify
from tests.gateway_harness import (
    HEADER,
    csv_row,
    drop_file,
    free_port,
    gateway_config,
    running_gateway,
    serving,
    wait_for,
)


@pytest.mark.parametrize(
    ("status", "body", "batch_len", "expected"),
    [
        (200, '{"accepted": 2, "duplicates": 0}', 2, Delivered()),
        (503, "down", 2, Retry("HTTP 503: down", None)),
        (500, "boom", 2, Retry("HTTP 500: boom", None)),
        (408, "", 2, Retry("HTTP 408: ", None)),
        (429, "slow", 2, Retry("HTTP 429: slow", None)),
        (401, "no", 2, Refused("HTTP 401: no (check MES_TOKEN)")),
        (403, "no", 2, Refused("HTTP 403: no (check MES_TOKEN)")),
        (404, "what", 2, Refused("HTTP 404: what (check --mes-url)")),
        (413, "big", 2, Split("HTTP 413: big")),
        (422, '{"errors": [{"index": 1, "field": "verdict", "message": "bad"}]}', 2, Rejected({1: "verdict: bad"})),
        (422, "not json", 2, Split("HTTP 422: not json")),
        (422, "not json", 1, Rejected({0: "HTTP 422: not json"})),
        (
            409,
            '{"conflicts": [{"index": 1, "measurement_id": "x", "field": "measured_mm", "stored": 100.0118,'
            ' "received": 100.0125}, {"index": 9, "field": "verdict"}]}',
            2,
            Rejected(
                {
                    1: "conflict: the MES holds another value for this measurement "
                    "(field measured_mm: stored 100.0118 received 100.0125)"
                }
            ),
        ),
        (409, "not json", 2, Split("HTTP 409: not json")),
        (409, '{"conflicts": "x"}', 1, Rejected({0: 'HTTP 409: {"conflicts": "x"}'})),
        (400, "{}", 1, Rejected({0: "HTTP 400: {}"})),
    ],
)
def test_answers_are_classified(status: int, body: str, batch_len: int, expected: object) -> None:
    assert classify(status, body, None, batch_len) == expected


def test_422_indices_out_of_range_are_ignored() -> None:
    body = '{"errors": [{"index": 7, "field": "x", "message": "m"}, {"index": 0, "field": "y", "message": "n"}]}'
    assert classify(422, body, None, 2) == Rejected({0: "y: n"})


def test_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 <= (parse_retry_after(in_future) or 0) <= 61


@dataclass
class EdgeServer:
    """An MES stand-in that answers from a script, then 200 (storing what it accepts)."""

    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    judge: Callable[[list[dict[str, Any]]], tuple[int, dict[str, str], str] | None] | None = None
    stored: list[dict[str, Any]] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)
    content_types: set[str] = field(default_factory=set)
    batch_sizes: list[int] = field(default_factory=list)
    accepted_sizes: list[int] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        records = json.loads(await request.read())
        self.requests.append(time.monotonic())
        self.content_types.add(request.headers.get("Content-Type", ""))
        self.batch_sizes.append(len(records))
        answer = self.script.pop(0) if self.script else (self.judge(records) if self.judge else None)
        if answer is not None:
            status, headers, text = answer
            return web.Response(status=status, headers=headers, text=text)
        self.stored.extend(records)
        self.accepted_sizes.append(len(records))
        return web.json_response({"accepted": len(records), "duplicates": 0})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


@contextlib.asynccontextmanager
async def edge_on(port: int) -> AsyncIterator[EdgeServer]:
    """An EdgeServer listening on 127.0.0.1:`port` (0: any free port) until the block ends."""
    server = EdgeServer()
    app = web.Application()
    app.router.add_post("/api/v1/measurements", server.handle)
    app.router.add_get("/health", server.health)
    async with serving(app, port) as server.url:
        yield server


@pytest.fixture
async def edge() -> AsyncIterator[EdgeServer]:
    async with edge_on(0) as server:
        yield server


def rows(n: int, prefix: str = "P") -> str:
    return HEADER + "".join(csv_row(f"{prefix}{i:04d}", timestamp=f"2026-01-05T06:00:{i % 60:02d}Z") for i in range(n))


async def test_503_twice_then_200_delivers_everything_once_with_the_two_log_lines(
    tmp_path: Path, edge: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    edge.script = [(503, {}, "down"), (503, {}, "down")]
    config = gateway_config(tmp_path, mes_url=edge.url, sink_backoff_min_s=0.05, sink_backoff_max_s=0.2)
    caplog.set_level(logging.INFO)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "a.csv", rows(30))
        await wait_for(lambda: len(edge.stored) == 30 and gateway.status.buffer_depth == 0)
        assert gateway.status.sinks["mes"].state == "connected"
    assert [r["part_id"] for r in edge.stored] == [f"P{i:04d}" for i in range(30)]
    assert edge.content_types == {"application/json"}  # the type the MES requires (415 otherwise)
    messages = [r.getMessage() for r in caplog.records]
    lost = [m for m in messages if m.startswith("Network Lost! Buffering...")]
    flushing = [i for i, m in enumerate(messages) if m.startswith("Flushing buffer...")]
    assert len(lost) == 1 and len(flushing) == 1
    assert messages.index(lost[0]) < flushing[0]
    assert any(m.startswith("buffer drained: mes") for m in messages)


async def test_retry_after_is_honoured(tmp_path: Path, edge: EdgeServer) -> None:
    edge.script = [(429, {"Retry-After": "1"}, "slow down")]
    config = gateway_config(tmp_path, mes_url=edge.url, sink_backoff_min_s=0.01, sink_backoff_max_s=5.0)
    async with running_gateway(config):
        drop_file(config.inbox, "a.csv", rows(3))
        await wait_for(lambda: len(edge.stored) == 3)
    assert edge.requests[1] - edge.requests[0] >= 0.95


async def test_invalid_records_go_to_dead_letters_and_the_rest_is_delivered(tmp_path: Path, edge: EdgeServer) -> None:
    def judge(records: list[dict[str, Any]]) -> tuple[int, dict[str, str], str] | None:
        bad = [i for i, r in enumerate(records) if r["part_id"].endswith("3")]
        if not bad:
            return None
        errors = [{"index": i, "field": "part_id", "message": "unknown part"} for i in bad]
        return 422, {"Content-Type": "application/json"}, json.dumps({"errors": errors})

    edge.judge = judge
    config = gateway_config(tmp_path, mes_url=edge.url)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "a.csv", rows(20))
        await wait_for(lambda: len(edge.stored) == 18 and gateway.status.buffer_depth == 0)
    dead = [json.loads(line) for line in (config.state_dir / "dead_letter.jsonl").read_text().splitlines()]
    assert [d["record"]["part_id"] for d in dead] == ["P0003", "P0013"]
    assert all(d["reason"] == "part_id: unknown part" and d["sink"] == "mes" for d in dead)
    assert [r["part_id"] for r in edge.stored] == [f"P{i:04d}" for i in range(20) if i % 10 != 3]


async def test_413_splits_the_batch(tmp_path: Path, edge: EdgeServer) -> None:
    edge.judge = lambda records: (413, {}, "too big") if len(records) > 8 else None
    config = gateway_config(tmp_path, mes_url=edge.url)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "a.csv", rows(40))
        await wait_for(lambda: len(edge.stored) == 40 and gateway.status.buffer_depth == 0)
    assert [r["part_id"] for r in edge.stored] == [f"P{i:04d}" for i in range(40)]
    assert max(edge.batch_sizes) == 40
    assert max(edge.accepted_sizes) <= 8


async def test_401_stops_forwarding_loudly_and_keeps_the_data(
    tmp_path: Path, edge: EdgeServer, caplog: pytest.LogCaptureFixture
) -> None:
    edge.script = [(401, {}, "bad token")] * 2
    config = gateway_config(tmp_path, mes_url=edge.url, sink_backoff_min_s=0.05, sink_backoff_max_s=0.5)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "a.csv", rows(5))
        await wait_for(lambda: gateway.status.sinks["mes"].state == "refused" and gateway.status.buffer_depth == 5)
        assert not edge.stored
        await wait_for(lambda: len(edge.stored) == 5)  # the token was "fixed"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "refuses the gateway: HTTP 401: bad token (check MES_TOKEN)" in errors[0]


async def test_mes_down_at_start_buffers_then_delivers(tmp_path: Path) -> None:
    port = free_port()
    config = gateway_config(
        tmp_path, mes_url=f"http://127.0.0.1:{port}", sink_backoff_min_s=0.05, sink_backoff_max_s=0.2
    )
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "a.csv", rows(10))
        await wait_for(lambda: gateway.status.sinks["mes"].state == "buffering" and gateway.status.buffer_depth == 10)
        assert (config.archive / "a.csv").exists()  # the file is done: its rows are held in the spool
        async with edge_on(port) as server:
            await wait_for(lambda: len(server.stored) == 10 and gateway.status.buffer_depth == 0)
            await asyncio.sleep(1.2)
            assert gateway.status.sinks["mes"].state == "connected"


async def test_spool_limit_pauses_intake_and_resumes_when_drained(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    config = gateway_config(
        tmp_path,
        mes_url=f"http://127.0.0.1:{port}",
        spool_limit_mb=0.2,
        sink_backoff_min_s=0.05,
        sink_backoff_max_s=0.2,
    )
    async with running_gateway(config) as gateway:
        taken = 0
        while not gateway.status.intake_paused:  # about 60 KB of spool per file
            assert taken < 30, "the spool limit never stopped the intake"
            drop_file(config.inbox, f"f{taken:02d}.csv", rows(150, prefix=f"F{taken:02d}-"))
            taken += 1
            await wait_for(
                lambda: gateway.status.files_processed == taken or gateway.status.intake_paused,  # noqa: B023
                what="the file",
            )
            await asyncio.sleep(0.6)  # the spool is measured every 0.5 s
        taken = gateway.status.files_processed
        for k in range(len(list(config.archive.glob("*.csv"))) + len(list(config.inbox.glob("*.csv"))), 12):
            drop_file(config.inbox, f"f{k:02d}.csv", rows(150, prefix=f"F{k:02d}-"))
        await asyncio.sleep(1.0)
        assert gateway.status.files_processed == taken
        assert len(list(config.inbox.glob("*.csv"))) == 12 - taken, "files were taken while the spool was full"
        async with edge_on(port) as server:
            await wait_for(lambda: len(server.stored) == 12 * 150, timeout_s=60, what="everything delivered")
            # Delivered records leave the spool at the next purge (every 5 s); then intake resumes.
            await wait_for(lambda: not gateway.status.intake_paused, timeout_s=60, what="intake to resume")
            assert not list(config.inbox.glob("*.csv"))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("spool full (") for m in messages)
    assert any(m.startswith("spool has room again") for m in messages)
    assert len({r["measurement_id"] for r in server.stored}) == 12 * 150
