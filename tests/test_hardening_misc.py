"""Shop-floor hardening: the simulator's temp files, the MES's content type and re-measurement conflicts.

Real components on loopback: the simulator's own command line, the real mock MES (in-process and as
a process through the gateway harness), the real gateway and its embedded historian (SQLite).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cmm_twin.gateway.sinks.historian.lineprotocol import MEASUREMENT
from cmm_twin.gateway.sinks.historian.sqlite import HistoryQuery, HistoryStore
from cmm_twin.mes.cli import load_config
from cmm_twin.mes.server import MEASUREMENTS_PATH, create_app
from cmm_twin.simulator.cli import main as simulator_main
from cmm_twin.simulator.writer import temp_name
from tests.gateway_harness import (
    HEADER,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    serving,
    wait_for,
    with_overrides,
)
from tests.test_mock_mes import make_record

# ----------------------------------------------------------------------------- simulator temp files


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that runs for the whole test (stands for a simulator still writing)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait(timeout=60)


def ended_pid() -> int:
    """The pid of a process that has ended (stands for a simulator killed with SIGKILL)."""
    process = subprocess.Popen(["true"])
    process.wait(timeout=60)
    return process.pid


def test_simulator_start_removes_only_its_own_dead_temp_files(
    tmp_path: Path, live_process: subprocess.Popen[bytes]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    others = {
        ".x.csv.tmp": "another writer's rows, still being written\n",  # another writer's rename protocol
        ".CMM-01_00000099.csv.tmp": "timestamp,machine_id\n",  # the simulator's old name: not provably ours
        temp_name("CMM-02_20260105T060000000_00000001.csv", live_process.pid): "a live simulator's part\n",
        ".cmmsim-notapid-x.csv.tmp": "not the simulator's pattern\n",
    }
    for name, text in others.items():
        (inbox / name).write_text(text)
    dead = inbox / temp_name("CMM-01_20260105T060000000_00000007.csv", ended_pid())
    dead.write_text("timestamp,machine_id\n2024-")

    assert simulator_main(["--outdir", str(inbox), "--count", "2", "--rate", "0"]) == 0

    assert not dead.exists()
    for name, text in others.items():
        assert (inbox / name).read_text() == text, name
    assert len(list(inbox.glob("*.csv"))) == 2


# ----------------------------------------------------------------------------- the MES's content type


def mes_app(tmp_path: Path) -> web.Application:
    """The real mock MES application (its configuration through its own command line)."""
    return create_app(load_config(["--db", str(tmp_path / "mes.db")], {}))


async def post(session: aiohttp.ClientSession, url: str, body: bytes, content_type: str | None) -> tuple[int, Any]:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with session.post(url + MEASUREMENTS_PATH, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def get(session: aiohttp.ClientSession, url: str, path: str) -> Any:
    async with session.get(url + path) as response:
        assert response.status == 200
        return await response.json()


async def test_mes_takes_only_json_bodies(tmp_path: Path) -> None:
    body = json.dumps([make_record(1)]).encode()
    async with serving(mes_app(tmp_path)) as url, aiohttp.ClientSession(skip_auto_headers={"Content-Type"}) as session:
        # what a web page can send cross-site without a CORS preflight, or no type at all
        for content_type in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", None):
            status, answer = await post(session, url, body, content_type)
            assert status == 415, content_type
            given = content_type or "none"
            assert answer == {
                "error": f"Content-Type must be application/json (optionally with charset), got {given!r}"
            }
        assert await get(session, url, "/api/v1/stats") == {"count": 0, "duplicates": 0, "conflicts": 0}
        assert await post(session, url, body, "application/json; charset=utf-8") == (
            200,
            {"accepted": 1, "duplicates": 0},
        )
        assert await post(session, url, body, "Application/JSON") == (200, {"accepted": 0, "duplicates": 1})


# ----------------------------------------------------------------------------- re-measurement conflicts


def conflict_rows(db: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(measurement_id, stored record, received record) of each row of the MES's conflicts table."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT measurement_id, stored_record, received_record, received_at FROM conflicts ORDER BY id"
        ).fetchall()
    for *_, received_at in rows:
        assert datetime.fromisoformat(received_at).tzinfo is not None
    return [(mid, json.loads(stored), json.loads(received)) for mid, stored, received, _ in rows]


async def test_mes_answers_409_for_a_remeasurement_and_keeps_both_values(tmp_path: Path) -> None:
    first = [make_record(i) for i in range(3)]
    remeasured = make_record(1, measured_mm=100.0218, compensated_mm=100.01, deviation_um=10.0, verdict="FAIL")
    async with serving(mes_app(tmp_path)) as url, aiohttp.ClientSession() as session:

        async def send(records: list[dict[str, Any]]) -> tuple[int, Any]:
            return await post(session, url, json.dumps(records).encode(), "application/json")

        assert await send(first) == (200, {"accepted": 3, "duplicates": 0})
        # an exact replay is a duplicate, as before; a value that differs is a conflict
        batch = [make_record(5), first[0], remeasured, make_record(6)]
        expected = {
            "conflicts": [
                {
                    "index": 2,
                    "measurement_id": first[1]["measurement_id"],
                    "field": "measured_mm",
                    "stored": 100.0118,
                    "received": 100.0218,
                }
            ]
        }
        assert await send(batch) == (409, expected)
        assert await send(batch) == (409, expected)  # sent again (a gateway restarted): counted once
        assert await get(session, url, "/api/v1/stats") == {"count": 3, "duplicates": 0, "conflicts": 1}
        # a repeat inside one batch is compared with its first occurrence
        twice = [make_record(7), make_record(7, verdict="UNCERTAIN"), make_record(7)]
        status, answer = await send(twice)
        assert status == 409
        assert answer["conflicts"] == [
            {
                "index": 1,
                "measurement_id": twice[0]["measurement_id"],
                "field": "verdict",
                "stored": "PASS",
                "received": "UNCERTAIN",
            }
        ]
        # same values spelled otherwise are the same measurement: a duplicate, not a conflict
        respelled = make_record(2, timestamp=first[2]["timestamp"].replace("Z", "+00:00"), nominal_mm=100)
        respelled["flags"] = list(reversed(respelled["flags"]))
        assert await send([respelled, make_record(5), make_record(6)]) == (200, {"accepted": 2, "duplicates": 1})
        assert await get(session, url, "/api/v1/stats") == {"count": 5, "duplicates": 1, "conflicts": 2}
        stored = await get(session, url, MEASUREMENTS_PATH)
    assert [r["part_id"] for r in stored] == ["P000000", "P000001", "P000002", "P000005", "P000006"]
    assert stored[1]["measured_mm"] == 100.0118  # the first value stays the record
    assert conflict_rows(tmp_path / "mes.db") == [
        (first[1]["measurement_id"], first[1], remeasured),
        (twice[0]["measurement_id"], twice[0], twice[1]),
    ]
    # the counters survive a restart
    async with serving(mes_app(tmp_path)) as url, aiohttp.ClientSession() as session:
        assert await get(session, url, "/api/v1/stats") == {"count": 5, "duplicates": 1, "conflicts": 2}


def recent_stamp(seconds: int) -> str:
    """A measurement time a few minutes ago (inside the historian's retention)."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_gateway_keeps_the_first_value_and_dead_letters_a_remeasurement(tmp_path: Path) -> None:
    t1, t2, t3, t4 = (recent_stamp(s) for s in (1, 2, 3, 4))
    files = {
        "a.csv": [csv_row("P1", timestamp=t1), csv_row("P2", timestamp=t2)],
        # P2 again with another value (and verdict) in a later file; P4 twice in one file
        "b.csv": [csv_row("P2", timestamp=t2, measured_mm="100.0618"), csv_row("P3", timestamp=t3)],
        "c.csv": [csv_row("P4", timestamp=t4), csv_row("P4", timestamp=t4, measured_mm="100.0119")],
    }
    config = gateway_config(tmp_path / "data", historian="sqlite", sink_backoff_min_s=0.05, sink_backoff_max_s=0.2)
    dead_letter = config.state_dir / "dead_letter.jsonl"
    async with serving(mes_app(tmp_path)) as url, aiohttp.ClientSession() as session:
        config = with_overrides(config, mes_url=url)
        async with running_gateway(config) as gateway:
            for name, lines in files.items():  # one after the other: "first" is the order of arrival
                drop_file(config.inbox, name, HEADER + "".join(lines))
                await wait_for((config.archive / name).exists, what=f"{name} archived")
            await wait_for(
                lambda: gateway.status.rows_in == 6 and gateway.status.buffer_depth == 0,
                what="every row delivered or dead-lettered",
            )
            stats = await get(session, url, "/api/v1/stats")
            stored = await get(session, url, MEASUREMENTS_PATH)
    assert stats == {"count": 4, "duplicates": 0, "conflicts": 2}
    assert [(r["part_id"], r["measured_mm"]) for r in stored] == [
        ("P1", 100.0118),
        ("P2", 100.0118),
        ("P3", 100.0118),
        ("P4", 100.0118),
    ]
    dead = [json.loads(line) for line in dead_letter.read_text().splitlines()]
    assert [(d["sink"], d["record"]["part_id"], d["record"]["measured_mm"]) for d in dead] == [
        ("mes", "P2", 100.0618),
        ("mes", "P4", 100.0119),
    ]
    assert dead[0]["reason"] == (
        "conflict: the MES holds another value for this measurement "
        "(field measured_mm: stored 100.0118 received 100.0618)"
    )
    assert dead[1]["reason"].startswith("conflict: the MES holds another value for this measurement (field measured_mm")
    # the embedded historian keeps the first value too: one point per measurement
    history = HistoryStore(config.history_path)
    try:
        points = history.query(HistoryQuery(MEASUREMENT, 0, 2**62, ("measured_mm",), machine_id="CMM-01", limit=100))
    finally:
        history.close()
    assert points.fields["measured_mm"] == [100.0118] * 4
    assert points.tags["verdict"] == ["PASS"] * 4  # not the re-measured FAIL (another series in InfluxDB)
