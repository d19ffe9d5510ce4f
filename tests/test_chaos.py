"""Chaos engineering: the simulator, the gateway and the mock MES as real processes on loopback,
with the MES or the gateway killed (SIGKILL) mid-run. Every valid measurement must end in the MES
exactly once (`make chaos-test` runs only these)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from cmm_twin.simulator.catalogue import CATALOGUE
from tests.gateway_harness import (
    HEADER,
    GatewayProcess,
    MesProcess,
    csv_row,
    drop_file,
    free_port,
    run_simulator,
    truth_ids,
)

pytestmark = pytest.mark.chaos


def simulated_records(parts: int, machines: int = 3, machine: int | None = None) -> int:
    """Records the simulator writes for parts 0..parts-1 (on `machine` only, if given): each part
    has the features of its type, (k // machines) % 7 in the catalogue."""
    return sum(
        len(CATALOGUE[(k // machines) % len(CATALOGUE)].features)
        for k in range(parts)
        if machine is None or k % machines == machine
    )


def fast_backoff(tmp_path: Path) -> Path:
    """Shorter backoff than the production 0.5..30 s, so recovery is seen within the test."""
    path = tmp_path / "gateway.toml"
    path.write_text("[sinks]\nbackoff_min_s = 0.2\nbackoff_max_s = 1.0\n")
    return path


def gateway_for(tmp_path: Path, mes: str, name: str = "gateway", *extra: str) -> GatewayProcess:
    """A real gateway process on loopback delivering to `mes`; `extra` flags override the defaults."""
    args = [
        "--data-dir", str(tmp_path / "data"),
        "--http", "127.0.0.1:0",
        "--mes-url", mes,
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--settle-ms", "50",
        "--config", str(fast_backoff(tmp_path)),
        *extra,
    ]  # fmt: skip
    gateway = GatewayProcess(args, tmp_path / f"{name}.log")
    gateway.wait_ready()
    return gateway


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_delivered(gateway: GatewayProcess, files: int, timeout_s: float, what: str) -> None:
    """Wait until the gateway has taken `files` files and holds nothing unacknowledged."""

    def done() -> bool:
        health = gateway.get_json("/health")
        return bool(health["files_processed"] == files and health["buffer_depth"] == 0)

    wait_until(done, timeout_s, what)


def assert_exactly_once(mes: MesProcess, truth: Path) -> int:
    expected = truth_ids(truth)
    stored = [r["measurement_id"] for r in mes.all_records()]
    counts = Counter(stored)
    assert not [i for i, n in counts.items() if n > 1], "a measurement is stored twice"
    missing = set(expected) - set(stored)
    assert not missing, f"{len(missing)} of {len(expected)} measurements never reached the MES"
    assert len(stored) == len(expected)
    assert mes.get_json("/api/v1/stats")["count"] == len(expected)
    return len(expected)


def test_mes_killed_and_restarted_while_the_shop_runs(tmp_path: Path) -> None:
    port = free_port()
    mes = MesProcess(tmp_path / "mes.sqlite", port, tmp_path / "mes1.log")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes.url)
    simulator = run_simulator(tmp_path / "data" / "inbox", tmp_path / "truth", "--count", "400", "--rate", "80")
    try:
        time.sleep(1.5)
        mes.stop(signal.SIGKILL)  # the MES dies mid-run
        time.sleep(2.5)
        wait_until(lambda: gateway.get_json("/health")["sinks"]["mes"]["state"] == "buffering", 60, "buffering")
        assert gateway.get_json("/health")["buffer_depth"] > 0
        mes = MesProcess(tmp_path / "mes.sqlite", port, tmp_path / "mes2.log")
        mes.wait_ready()
        assert simulator.wait(60) == 0
        wait_delivered(gateway, 400, 60, "the backlog to drain")
        count = assert_exactly_once(mes, tmp_path / "truth")
        assert count == simulated_records(400) == 1829
    finally:
        simulator.kill()
        assert gateway.stop() == 0
        mes.stop()
    log = gateway.log_text()
    lost = log.index("WARNING: Network Lost! Buffering...")
    flushing = log.index("INFO: Flushing buffer...")
    assert lost < flushing
    assert log.count("WARNING: Network Lost! Buffering...") == 1
    assert "buffer drained: mes" in log[flushing:]


def test_gateway_killed_during_an_outage_with_thousands_spooled(tmp_path: Path) -> None:
    port = free_port()
    mes_url = f"http://127.0.0.1:{port}"  # the MES is down from the start
    gateway = gateway_for(tmp_path, mes_url, "gateway1")
    simulator = run_simulator(tmp_path / "data" / "inbox", tmp_path / "truth", "--count", "875", "--rate", "0")
    assert simulator.wait(120) == 0
    records = simulated_records(875)
    assert records == 4001
    wait_until(lambda: gateway.get_json("/health")["buffer_depth"] == records, 120, "4,001 records spooled")
    gateway.stop(signal.SIGKILL)
    mes = MesProcess(tmp_path / "mes.sqlite", port, tmp_path / "mes.log")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes_url, "gateway2")
    try:
        wait_until(lambda: gateway.get_json("/health")["buffer_depth"] == 0, 120, "the spool to drain")
        assert assert_exactly_once(mes, tmp_path / "truth") == records
        assert mes.get_json("/api/v1/stats")["duplicates"] == 0
    finally:
        assert gateway.stop() == 0
        mes.stop()


def test_mes_failing_30_percent_of_requests(tmp_path: Path) -> None:
    port = free_port()
    mes = MesProcess(tmp_path / "mes.sqlite", port, tmp_path / "mes.log", "--fail-rate", "0.3", "--seed", "7")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes.url)
    simulator = run_simulator(tmp_path / "data" / "inbox", tmp_path / "truth", "--count", "300", "--rate", "100")
    try:
        assert simulator.wait(60) == 0
        wait_delivered(gateway, 300, 120, "everything delivered")
        assert assert_exactly_once(mes, tmp_path / "truth") == simulated_records(300) == 1371
    finally:
        simulator.kill()
        assert gateway.stop() == 0
        mes.stop()
    assert "injected failure" in gateway.log_text()


def test_mes_rejecting_some_records_as_invalid(tmp_path: Path) -> None:
    port = free_port()
    # The MES's master data knows CMM-01 and CMM-02 only: the records of CMM-03 are invalid to it.
    mes = MesProcess(tmp_path / "mes.sqlite", port, tmp_path / "mes.log", "--known-machines", "CMM-01,CMM-02")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes.url)
    simulator = run_simulator(tmp_path / "data" / "inbox", tmp_path / "truth", "--count", "150", "--rate", "0")
    try:
        assert simulator.wait(60) == 0
        wait_delivered(gateway, 150, 120, "everything delivered or dead-lettered")
        expected = truth_ids(tmp_path / "truth")
        stored = [r["measurement_id"] for r in mes.all_records()]
        dead = [
            json.loads(line) for line in (tmp_path / "data" / "state" / "dead_letter.jsonl").read_text().splitlines()
        ]
        dead_ids = [d["record"]["measurement_id"] for d in dead]
        cmm_03 = simulated_records(150, machine=2)  # 50 parts
        assert len(stored) == len(set(stored)) == simulated_records(150) - cmm_03 == 458  # CMM-01 and CMM-02
        assert len(dead_ids) == len(set(dead_ids)) == cmm_03 == 229
        assert sorted(stored + dead_ids) == sorted(expected)
        assert {d["record"]["machine_id"] for d in dead} == {"CMM-03"}
        assert {d["reason"] for d in dead} == {"machine_id: unknown machine 'CMM-03' (not in --known-machines)"}
    finally:
        simulator.kill()
        assert gateway.stop() == 0
        mes.stop()
    assert "mes rejected record" in gateway.log_text()


def test_a_file_name_too_long_to_archive_among_a_shop_run(tmp_path: Path) -> None:
    """A 248-byte name (its `.errors.json` report would pass the 255-byte limit) arrives while the
    simulator writes: it is quarantined under a shortened name naming the original, and neither it
    nor the files read with it are held up or counted twice."""
    mes = MesProcess(tmp_path / "mes.sqlite", free_port(), tmp_path / "mes.log")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes.url)
    inbox = tmp_path / "data" / "inbox"
    long_name = "L" * 244 + ".csv"
    try:
        simulator = run_simulator(inbox, tmp_path / "truth", "--count", "100", "--rate", "0")
        drop_file(inbox, long_name, HEADER + csv_row("LONG", timestamp="2026-01-05T07:00:00Z"))
        assert simulator.wait(60) == 0
        wait_delivered(gateway, 101, 120, "every file processed and delivered")
        stored = [r["measurement_id"] for r in mes.all_records()]
        assert len(stored) == len(set(stored)) == simulated_records(100) + 1 == 458  # and the long file's row
        assert set(truth_ids(tmp_path / "truth")) < set(stored)
        assert mes.get_json("/api/v1/stats")["duplicates"] == 0
        reports = list((tmp_path / "data" / "quarantine").glob("*.errors.json"))
        assert len(reports) == 1
        report = json.loads(reports[0].read_text())
        assert report["file"] == long_name
        assert (tmp_path / "data" / "quarantine" / report["stored_as"]).is_file()
        assert not list(inbox.glob("*.csv"))
    finally:
        assert gateway.stop() == 0
        mes.stop()
    log = gateway.log_text()
    assert "Traceback" not in log
    assert "could not be processed" not in log


HALF_LINE_HEADER = (
    "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,part_temp_c,air_temp_c,measured_mm\n"
)


def half_line_row(part_id: str, measured_mm: str) -> str:
    return f"2026-01-05T06:00:0{part_id[-1]}Z,CMM-01,{part_id},length_x,AL6061,100.0,0.010,25.0,24.0,{measured_mm}\n"


def test_a_writer_caught_mid_line_never_delivers_a_cut_value(tmp_path: Path) -> None:
    """A writer that appends without the rename protocol has written `...,100.01` of `100.0118`
    and closed the file when the gateway looks: the cut line is not taken; once the writer ends
    the line, 100.0118 is delivered, once."""
    mes = MesProcess(tmp_path / "mes.sqlite", free_port(), tmp_path / "mes.log")
    mes.wait_ready()
    gateway = gateway_for(tmp_path, mes.url, "gateway", "--settle-ms", "30000")
    inbox = tmp_path / "data" / "inbox"
    path = inbox / "appended.csv"
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(HALF_LINE_HEADER + half_line_row("P1", "100.0031") + half_line_row("P2", "99.9990"))
            f.write(half_line_row("P3", "100.0118")[:-3])  # "...,100.01": the rest is not written yet
        wait_until(lambda: mes.get_json("/api/v1/stats")["count"] == 2, 60, "the two complete rows")
        assert path.exists()  # the cut line holds the file in the inbox
        with path.open("a", encoding="utf-8") as f:
            f.write("18\n")
        wait_delivered(gateway, 1, 60, "the file to be finished")
        measured = {r["part_id"]: r["measured_mm"] for r in mes.all_records()}
        assert measured == {"P1": 100.0031, "P2": 99.999, "P3": 100.0118}
        assert mes.get_json("/api/v1/stats")["duplicates"] == 0
        assert (tmp_path / "data" / "archive" / "appended.csv").exists()
        assert not list((tmp_path / "data" / "quarantine").iterdir())
    finally:
        assert gateway.stop() == 0
        mes.stop()
