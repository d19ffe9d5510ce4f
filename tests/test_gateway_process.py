"""The gateway as a real process: OPC UA data changes seen by a real client, /health and
/metrics, clean SIGTERM, one-line configuration errors, kill -9 mid-file, bounded memory."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from tests.gateway_harness import HEADER, ROOT, GatewayProcess, csv_row, drop_file, free_port


def gateway_args(data_dir: Path, opcua_port: int, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--opcua-endpoint",
        f"opc.tcp://127.0.0.1:{opcua_port}/cmm-twin/",
        "--settle-ms",
        "50",
        *extra,
    ]


class Changes:
    """asyncua subscription handler collecting data changes."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ua.DataValue]] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.items.append((val, data.monitored_item.Value))


async def test_renamed_file_shows_up_as_opcua_data_change(tmp_path: Path) -> None:
    opcua_port = free_port()
    gateway = GatewayProcess(gateway_args(tmp_path, opcua_port), tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        inbox = tmp_path / "inbox"
        drop_file(inbox, "first.csv", HEADER + csv_row("P1"))
        async with asyncio.timeout(60):
            client = Client(f"opc.tcp://127.0.0.1:{opcua_port}/cmm-twin/", timeout=60)
            async with client:
                ns = await client.get_namespace_index("urn:cmm-twin")
                objects = client.nodes.objects
                while True:  # the machine object appears with its first measurement
                    try:
                        machine = await objects.get_child([f"{ns}:CMM", f"{ns}:CMM-01"])
                        break
                    except UaError:
                        await asyncio.sleep(0.05)
                compensated = await machine.get_child(f"{ns}:CompensatedLength")
                verdict = await machine.get_child(f"{ns}:Verdict")
                handler = Changes()
                subscription = await client.create_subscription(10, handler)
                await subscription.subscribe_data_change([compensated])
                while not handler.items:  # the initial value
                    await asyncio.sleep(0.01)
                # 99.9990 mm at 19 degC: L20 = 99.999 / (1 - 23.6e-6) = 100.00135998...
                drop_file(inbox, "second.csv", HEADER + csv_row("P2", measured_mm="99.9990", part_temp_c="19.0",
                                                                 timestamp="2026-01-05T06:01:00.250Z"))  # fmt: skip
                expected = 99.999 / (1 - 23.6e-6)
                while not any(abs(v - expected) < 1e-9 for v, _ in handler.items):
                    await asyncio.sleep(0.01)
                _, data_value = next((v, d) for v, d in handler.items if abs(v - expected) < 1e-9)
                assert data_value.SourceTimestamp == datetime(2026, 1, 5, 6, 1, 0, 250000, tzinfo=UTC)
                units_node = await compensated.get_child("0:EngineeringUnits")
                units = await units_node.read_value()
                assert units.UnitId == 5066068
                assert units.DisplayName.Text == "mm"
                assert await verdict.read_value() == "PASS"
                gateway_object = await objects.get_child(f"{ns}:Gateway")
                files = await gateway_object.get_child(f"{ns}:FilesProcessed")
                while await files.read_value() < 2:
                    await asyncio.sleep(0.05)
                await subscription.delete()
    finally:
        assert gateway.stop() == 0, gateway.log_text()


def test_health_metrics_and_clean_sigterm(tmp_path: Path) -> None:
    gateway = GatewayProcess(gateway_args(tmp_path, free_port()), tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        drop_file(tmp_path / "inbox", "ok.csv", HEADER + csv_row("P1") + csv_row("P2", measured_mm="x"))
        deadline = time.monotonic() + 60
        while (h := gateway.get_json("/health"))["files_processed"] < 1 or h["buffer_depth"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = gateway.get_json("/health")
        assert health["status"] == "ok"
        assert health["rows_rejected"] == 1
        assert health["buffer_depth"] == 0
        assert health["sinks"]["opcua"]["state"] == "connected"
        assert health["sinks"]["historian"] == {**health["sinks"]["historian"], "state": "connected", "rows_out": 1}
        assert health["uptime_s"] > 0
        metrics = gateway.get_text("/metrics")
        assert "cmm_rows_in_total 1.0" in metrics
        assert 'cmm_rows_rejected_total{column="measured_mm"} 1.0' in metrics
        assert 'cmm_files_processed_total{destination="quarantine"} 1.0' in metrics
        assert 'cmm_end_to_end_latency_seconds_count{sink="opcua"}' in metrics
        assert 'cmm_buffer_depth{sink="opcua"} 0.0' in metrics
    finally:
        code = gateway.stop(signal.SIGTERM)
    log = gateway.log_text()
    assert code == 0, log
    assert "Traceback" not in log
    assert "gateway stopped: 1 files, 1 rows in, 1 rejected" in log
    assert "ok.csv: 1 rows ok, 1 rejected" in log


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--http", "nonsense"], {}, "--http: expected HOST:PORT"),
        (["--historian", "mongo"], {}, "--historian: expected one of sqlite, influx, none"),
        (["--opcua-endpoint", "http://x"], {}, "--opcua-endpoint: 'http://x' must use the opc.tcp scheme"),
        ([], {"CMM_SETTLE_MS": "-5"}, "CMM_SETTLE_MS: must be >= 0"),
        (["--config", "/nonexistent.toml"], {}, "--config: no such file"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), "--data-dir", str(tmp_path), *args],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]


def test_bad_toml_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[physics]\nrule = "guard_banded"\npart_temp_u = 0.3\n')
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), "--data-dir", str(tmp_path), "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "physics.part_temp_u: unknown key" in done.stderr


def write_big_file(path: Path, rows: int) -> None:
    """A file of `rows` valid rows (unique part ids), written in blocks."""
    with path.open("w") as f:
        f.write(HEADER)
        block = 50_000
        for start in range(0, rows, block):
            f.write(
                "".join(
                    f"2026-01-05T06:00:00Z,CMM-0{i % 3 + 1},P{i:08d},length_x,AL6061,100.0,0.010,"
                    f"{100.0118 + (i % 7) * 1e-4:.4f},25.0,24.0\n"
                    for i in range(start, min(rows, start + block))
                )
            )


def test_kill_9_mid_file_neither_skips_nor_respools(tmp_path: Path) -> None:
    rows = 300_000
    staging = tmp_path / "big.csv.tmp"
    write_big_file(staging, rows)
    record = tmp_path / "record.jsonl"
    script = [str(ROOT / "tests" / "recording_gateway.py"), str(record)]
    # Chunks of 5,000 rows and POSTs of 500: a re-spooled chunk would show as 5,000 repeats, while
    # at-least-once delivery may repeat only the batches in flight (one sent, one being acknowledged).
    toml = tmp_path / "gateway.toml"
    toml.write_text("[ingest]\nchunk_rows = 5000\n[sinks]\nbatch_size = 500\n")
    args = gateway_args(tmp_path / "data", free_port(), "--config", str(toml))
    first = GatewayProcess(args, tmp_path / "first.log", script=script)
    first.wait_ready()
    (tmp_path / "data" / "inbox").mkdir(parents=True, exist_ok=True)
    staging.rename(tmp_path / "data" / "inbox" / "big.csv")
    deadline = time.monotonic() + 120
    while not record.exists() or record.stat().st_size < 20_000_000:  # tens of thousands of rows in
        assert time.monotonic() < deadline, first.log_text()
        assert first.proc.poll() is None, first.log_text()
        time.sleep(0.01)
    first.stop(signal.SIGKILL)
    # The recording sink lives in the killed process: a write cut by the kill leaves a torn last
    # line, a batch never reported Delivered (so it is sent again). Keep the whole lines only.
    held = record.read_bytes()
    record.write_bytes(held[: held.rfind(b"\n") + 1])
    delivered_before = sum(1 for _ in record.open())
    assert 0 < delivered_before < rows, "the kill came too late to test anything"

    second = GatewayProcess(args, tmp_path / "second.log", script=script)
    second.wait_ready()
    deadline = time.monotonic() + 180
    while not (tmp_path / "data" / "archive" / "big.csv").exists() or second.get_json("/health")["buffer_depth"]:
        assert time.monotonic() < deadline, second.log_text()
        time.sleep(0.1)
    assert second.stop() == 0
    ids: list[str] = []
    by_id: dict[str, str] = {}
    with record.open() as f:
        for line in f:
            record_dict = json.loads(line)
            ids.append(record_dict["measurement_id"])
            if record_dict["measurement_id"] in by_id:  # a re-send after the crash is the same record
                assert json.loads(by_id[record_dict["measurement_id"]]) == record_dict
            by_id[record_dict["measurement_id"]] = line
    part_ids = {json.loads(v)["part_id"] for v in by_id.values()}
    assert len(part_ids) == rows, "rows were skipped"
    resent = len(ids) - len(by_id)
    assert resent <= 2 * 500, f"{resent} records delivered twice"
    print(f"kill -9 after {delivered_before} of {rows} rows; after restart all {rows} present, {resent} re-sent")


def test_very_large_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    rows = 2_000_000  # about 200 MB
    staging = tmp_path / "huge.csv.tmp"
    write_big_file(staging, rows)
    size_mb = staging.stat().st_size / 1e6
    # The ingest path alone (no durable sink): the historian's own rate is benchmarked in bench/.
    args = gateway_args(tmp_path / "data", free_port(), "--historian", "none")
    gateway = GatewayProcess(args, tmp_path / "gateway.log")
    gateway.wait_ready()
    (tmp_path / "data" / "inbox").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staging.rename(tmp_path / "data" / "inbox" / "huge.csv")
    peak_mb = 0.0
    deadline = time.monotonic() + 240
    try:
        while not (tmp_path / "data" / "archive" / "huge.csv").exists():
            assert time.monotonic() < deadline, gateway.log_text()
            peak_mb = max(peak_mb, gateway.peak_rss_mb())
            time.sleep(0.05)
        elapsed_s = time.monotonic() - started
        peak_mb = max(peak_mb, gateway.peak_rss_mb())
    finally:
        assert gateway.stop() == 0
    rate = rows / elapsed_s
    print(f"{size_mb:.0f} MB file, {rows} rows in {elapsed_s:.1f} s ({rate:,.0f} rows/s), peak RSS {peak_mb:.0f} MB")
    assert f"huge.csv: {rows} rows ok, 0 rejected" in gateway.log_text()
    assert peak_mb < 250, f"peak RSS {peak_mb:.0f} MB"


def test_once_processes_the_inbox_and_exits_0(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    for k in range(5):
        drop_file(inbox, f"f{k}.csv", HEADER + csv_row(f"P{k}"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), *gateway_args(tmp_path, free_port()), "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [f"f{k}.csv" for k in range(5)]
    assert not list(inbox.iterdir())
    assert "gateway stopped: 5 files, 5 rows in, 0 rejected, 0 buffered" in done.stderr


def test_health_is_503_while_a_sink_cannot_start_and_the_sink_is_retried(tmp_path: Path) -> None:
    taken = socket.socket()  # hold the OPC UA port so the server cannot bind it
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    gateway = GatewayProcess(gateway_args(tmp_path, port), tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        health = gateway.get_json("/health")
        assert health["status"] == "failed"
        assert health["sinks"]["opcua"]["state"] == "failed"
        assert f"127.0.0.1:{port}" in health["sinks"]["opcua"]["last_error"]
        drop_file(tmp_path / "inbox", "still.csv", HEADER + csv_row("P1"))  # the inbox still works
        deadline = time.monotonic() + 60
        while not (tmp_path / "archive" / "still.csv").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        taken.close()  # the port is free again: the runner's next attempt opens the server
        deadline = time.monotonic() + 90  # the retry backs off up to 30 s
        while (health := gateway.get_json("/health"))["sinks"]["opcua"]["state"] != "connected":
            assert time.monotonic() < deadline, health
            time.sleep(0.2)
        assert health["status"] == "ok" and health["sinks"]["opcua"]["last_error"] is None
    finally:
        taken.close()
        assert gateway.stop() == 0
    assert "sink opcua could not start" in gateway.log_text()
    assert re.search(r"sink opcua started \(attempt \d+\)", gateway.log_text())
    assert "Traceback" not in gateway.log_text()
