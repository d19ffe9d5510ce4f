"""`python -m cmm_twin run` as a real process with its three real children (mock MES, gateway,
simulator) on loopback: start-up, the URL block, prefixed output, Ctrl+C stopping everything in
order, the chaos demo, and bad options."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.rows import IngestSettings
from tests.gateway_harness import ROOT, free_ports

PREFIXES = ("mes       | ", "gateway   | ", "simulator | ", "launcher  | ")
STARTED_RE = re.compile(r"^launcher  \| .* started (mes|gateway|simulator) pid (\d+):", re.MULTILINE)


def alive(pid: int) -> bool:
    """True while a process with this pid runs (a zombie waiting for its reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class Twin:
    """The launcher as a subprocess on free loopback ports, its output (stdout and stderr) in a file."""

    def __init__(self, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.http_port, self.mes_port, self.opcua_port = free_ports(3)
        self.data = tmp_path / "data"
        self.out_path = tmp_path / "launcher.out"
        self._out = self.out_path.open("wb")
        command = [
            sys.executable, "-m", "cmm_twin", "run",
            "--data-dir", str(self.data),
            "--http-port", str(self.http_port),
            "--mes-port", str(self.mes_port),
            "--opcua-port", str(self.opcua_port),
            "--rate", "10",
            *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def child_pids(self) -> dict[str, list[int]]:
        """Every child the launcher said it started, by name (the MES twice after a chaos restart)."""
        pids: dict[str, list[int]] = {}
        for name, pid in STARTED_RE.findall(self.output()):
            pids.setdefault(name, []).append(int(pid))
        return pids

    def get_json(self, url: str) -> Any:
        """GET a JSON document; None when nothing answers (yet)."""
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def health(self) -> dict[str, Any]:
        return self.get_json(f"http://127.0.0.1:{self.http_port}/health") or {}

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited {self.proc.returncode} waiting for {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}:\n{self.output()[-6000:]}")
            time.sleep(0.1)

    def interrupt(self, timeout_s: float = 60.0) -> tuple[int, float]:
        """Ctrl+C: SIGINT to the launcher; its exit code and how long it took."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout_s)
        return code, time.monotonic() - start

    def close(self) -> None:
        """Whatever happened in the test, leave nothing running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pids in self.child_pids().values():
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self._out.close()


@pytest.fixture
def start_twin(tmp_path: Path) -> Iterator[Callable[..., Twin]]:
    twins: list[Twin] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> Twin:
        twin = Twin(tmp_path, *extra, env=env)
        twins.append(twin)
        return twin

    yield start
    for twin in twins:
        twin.close()


def assert_stopped_cleanly(twin: Twin, pids: list[int]) -> str:
    code, took_s = twin.interrupt()
    out = twin.output()
    assert code == 0, out[-6000:]
    assert took_s < 30
    assert [pid for pid in pids if alive(pid)] == []
    assert sorted(p.name for p in (twin.data / "inbox").iterdir() if p.name.startswith(".")) == []  # no half files
    # In the order of the data flow, each on SIGTERM, none killed.
    stopped = [out.index(f"INFO: {name} stopped [") for name in ("simulator", "gateway", "mes")]
    assert stopped == sorted(stopped), out[-4000:]
    assert "SIGKILL" not in out.split("stopping the simulator", 1)[1]
    assert "cmm-twin stopped cleanly" in out
    return out


def test_run_starts_the_twin_streams_its_logs_and_ctrl_c_stops_everything(start_twin: Callable[..., Twin]) -> None:
    twin = start_twin()
    twin.wait_until(lambda: twin.health().get("files_processed", 0) > 0, 60, "the gateway to process files")
    # A wide window: the simulator's time stamps need not follow the wall clock (the store takes ..2262).
    history = f"http://127.0.0.1:{twin.http_port}/api/v1/history?since=0&until=9000000000"
    twin.wait_until(lambda: bool((twin.get_json(history) or {}).get("points")), 60, "points in the historian")
    mes_stats = f"http://127.0.0.1:{twin.mes_port}/api/v1/stats"
    twin.wait_until(lambda: (twin.get_json(mes_stats) or {}).get("count", 0) > 0, 60, "records in the MES")
    pids = twin.child_pids()
    assert sorted(pids) == ["gateway", "mes", "simulator"]
    assert all(len(p) == 1 and alive(p[0]) for p in pids.values())

    out = assert_stopped_cleanly(twin, [p for ps in pids.values() for p in ps])

    # Every line comes behind a prefix (none split or mixed with another), except the URL block:
    # one block between two rules, printed once everything is up.
    for prefix in PREFIXES:
        assert f"\n{prefix}" in out, prefix
    block = [line for line in out.splitlines() if not line.startswith(PREFIXES)]
    assert len(block) > 2 and block[0] == block[-1] and set(block[0]) == {"="}, block[:5]
    assert block[1].startswith("cmm-twin is running")
    text = "\n".join(block)
    for url in (
        f"live page   http://127.0.0.1:{twin.http_port}/\n",
        f"http://127.0.0.1:{twin.http_port}/health",
        f"opc.tcp://127.0.0.1:{twin.opcua_port}/cmm-twin/",
        f"http://127.0.0.1:{twin.mes_port}/api/v1/stats",
        "Ctrl+C",
        "make chaos",
    ):
        assert url in text, url
    assert out.index("simulator started") < out.index("cmm-twin is running")
    assert re.search(r"^gateway   \| .*INFO: gateway ready: ", out, re.MULTILINE)
    assert re.search(r"^mes       \| .*INFO: batch: accepted=", out, re.MULTILINE)


def test_run_with_a_real_cmm_format_and_the_outbox(start_twin: Callable[..., Twin]) -> None:
    """`run --format dfq --outbox`: the simulated CMMs write Q-DAS files, the gateway delivers
    them to the MES and writes compensated QIF and DFQ files to data/outbox."""
    twin = start_twin("--format", "dfq", "--outbox")
    mes_stats = f"http://127.0.0.1:{twin.mes_port}/api/v1/stats"
    twin.wait_until(lambda: (twin.get_json(mes_stats) or {}).get("count", 0) > 0, 60, "records in the MES")
    outbox = twin.data / "outbox"

    def written() -> set[str]:
        return {p.suffix for p in outbox.iterdir() if not p.name.startswith(".")} if outbox.is_dir() else set()

    twin.wait_until(lambda: written() == {".qif", ".dfq"}, 60, "compensated QIF and DFQ files in the outbox")
    assert_stopped_cleanly(twin, [p for ps in twin.child_pids().values() for p in ps])
    # The round trip: the outbox's QIF, read back by the QIF source, holds the values at 20 degC
    # the MES received for that input file.
    stored = [
        json.loads(row[0])
        for row in sqlite3.connect(twin.data / "mes.sqlite").execute("SELECT record FROM measurements")
    ]
    assert stored and {r["source_format"] for r in stored} == {"qdas"}
    document = sorted(outbox.glob("*.qif"))[0]
    by_key = {(r["part_id"], r["feature"]): r for r in stored if Path(r["source_file"]).stem == document.stem}
    read_back = QifSource(IngestSettings(inputs=InputSettings(already_compensated=True))).read(document)
    assert read_back is not None and not read_back.errors and len(read_back.rows) == len(by_key) > 0
    for i in range(len(read_back.rows)):
        record = by_key[(read_back.rows.part_id[i], read_back.rows.feature[i])]
        assert read_back.rows.measured_mm[i] == pytest.approx(record["compensated_mm"], abs=1e-5)


def test_chaos_kills_the_mes_and_the_gateway_buffers_then_flushes(start_twin: Callable[..., Twin]) -> None:
    twin = start_twin("--chaos-after", "3", "--chaos-down", "4")
    twin.wait_until(lambda: "chaos: MES restarted" in twin.output(), 60, "the MES to be restarted")

    def recovered() -> bool:
        health = twin.health()
        mes = health.get("sinks", {}).get("mes", {})
        return bool(mes.get("state") == "connected" and mes.get("buffer_depth") == 0 and health["buffer_depth"] == 0)

    twin.wait_until(recovered, 60, "the gateway to flush its buffer to the MES")
    out = twin.output()
    killed = out.index("chaos: killing the MES for 4 s")
    lost = re.search(r"^gateway   \| .*WARNING: Network Lost! Buffering\.\.\.", out, re.MULTILINE)
    restarted = out.index("chaos: MES restarted")
    flushing = re.search(r"^gateway   \| .*INFO: Flushing buffer\.\.\.", out, re.MULTILINE)
    assert lost is not None and flushing is not None, out[-6000:]
    assert killed < lost.start() < flushing.start()
    assert killed < restarted < flushing.start()
    assert "DIED UNEXPECTEDLY" not in out
    pids = twin.child_pids()
    assert len(pids["mes"]) == 2  # the one killed, the one restarted
    assert not alive(pids["mes"][0])

    assert_stopped_cleanly(twin, [p for ps in pids.values() for p in ps])


def test_a_child_dying_stops_the_others_and_exits_1(start_twin: Callable[..., Twin]) -> None:
    twin = start_twin()
    twin.wait_until(lambda: "cmm-twin is running" in twin.output(), 60, "start-up")
    pids = twin.child_pids()
    os.kill(pids["gateway"][0], signal.SIGKILL)
    assert twin.proc.wait(30) == 1
    out = twin.output()
    assert f"gateway (pid {pids['gateway'][0]}) DIED UNEXPECTEDLY with signal SIGKILL" in out
    assert out.index("INFO: simulator stopped [") < out.index("INFO: mes stopped [")
    assert [pid for ps in pids.values() for pid in ps if alive(pid)] == []


def test_a_variable_of_one_program_does_not_reach_another(start_twin: Callable[..., Twin]) -> None:
    # Before each program had its own prefix, CMM_COUNT (the simulator's) reached the simulator
    # under the launcher: it wrote 2 parts, exited 0, and the launcher reported it dead.
    clashing = {"CMM_COUNT": "2", "CMM_SIM_COUNT": "2", "CMM_ONCE": "true", "CMM_MES_PORT": "1", "CMM_RATE": "0"}
    twin = start_twin(env={**os.environ, **clashing})
    twin.wait_until(lambda: twin.health().get("files_processed", 0) >= 6, 60, "more files than CMM_COUNT allows")
    assert "DIED UNEXPECTEDLY" not in twin.output()
    pids = twin.child_pids()
    assert sorted(pids) == ["gateway", "mes", "simulator"]
    assert all(alive(p[0]) for p in pids.values())
    assert_stopped_cleanly(twin, [p for ps in pids.values() for p in ps])


def test_the_launcher_killed_with_sigkill_leaves_no_child_running(start_twin: Callable[..., Twin]) -> None:
    twin = start_twin()
    twin.wait_until(lambda: "cmm-twin is running" in twin.output(), 60, "start-up")
    pids = [pid for ps in twin.child_pids().values() for pid in ps]
    twin.proc.kill()  # no chance to stop its children: the kernel tells them (parent-death signal)
    twin.proc.wait(10)
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in pids if alive(pid)] == []


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--rate", "fast"], {}, "--rate"),
        (["--opcua-port", "0"], {}, "--opcua-port"),
        ([], {"CMM_RUN_HTTP_PORT": "99999"}, "CMM_RUN_HTTP_PORT"),
    ],
)
def test_a_bad_option_exits_2_with_one_line_naming_it(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cmm_twin", "run", "--data-dir", str(tmp_path / "data"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and f"error: {named}: " in lines[0], result.stderr
    assert not (tmp_path / "data").exists()


def test_help_lists_the_run_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cmm_twin", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0
    assert re.search(r"^\s+run\s+start the whole twin", result.stdout, re.MULTILINE), result.stdout
