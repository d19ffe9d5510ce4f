"""The three bare commands of the original design meet on one machine (issue 16, part 0).

`python mock_mes.py`, `python cmm_edge_gateway.py` and `python cmm_simulator.py`, each with no
option, in one working directory: the simulator writes into data/inbox, the gateway reads it and
delivers to the MES on 127.0.0.1:8000, which stores into data/mes.sqlite. The story: the MES is
stopped with Ctrl+C (the gateway says "Network Lost! Buffering..."), started again ("Flushing
buffer..."), and every row reaches it once; a gateway restarted with a spooled backlog says
"Flushing buffer..." when it drains it.

The processes run with no option at all. Only their listening ports move, through environment
variables, to free ones: the defaults (8000, 8080, 4840) are fixed ports another run on this machine
may hold. That the default ports and paths meet is checked on the parsed defaults themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmm_twin.gateway import config as gateway_config
from cmm_twin.mes import cli as mes_cli
from cmm_twin.simulator import cli as simulator_cli
from tests.gateway_harness import ROOT, free_ports

DEADLINE_S = 60.0


def test_the_defaults_meet_on_one_machine() -> None:
    """What the bare commands use, parsed from an empty command line and environment."""
    mes = mes_cli.load_config([], {})
    gateway = gateway_config.load_config([], environ={})
    simulator = simulator_cli.parse_settings([], {})
    assert (mes.host, mes.port, mes.db) == ("127.0.0.1", 8000, Path("data/mes.sqlite"))
    assert gateway.options["mes_url"] == f"http://{mes.host}:{mes.port}"
    assert gateway.http == ("127.0.0.1", 8080)
    assert gateway.options["opcua_endpoint"].startswith("opc.tcp://127.0.0.1:4840/")
    assert gateway.inbox == simulator.outdir == Path("data/inbox")
    assert simulator.rate_hz == 2.0  # `make run`'s rate
    # '' (or off) turns the MES sink off; so does an explicit empty flag
    assert gateway_config.load_config(["--mes-url", ""], environ={}).options["mes_url"] is None
    assert gateway_config.load_config([], environ={"CMM_MES_URL": "off"}).options["mes_url"] is None


class Program:
    """One bare script as a subprocess of the test, its output (stdout and stderr) in a log file."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str], log_name: str) -> None:
        self.log_path = cwd / log_name
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / script)], cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def text(self) -> str:
        """What it logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1) -> None:
        """Until `needle` appears `count` times in its log."""
        wait(lambda: self.text().count(needle) >= count, f"{needle!r} x{count} in {self.log_path.name}", self)

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Send `sig` (Ctrl+C by default) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def wait(predicate: object, what: str, program: Program | None = None) -> None:
    """Poll `predicate` until it holds; fail after 60 s, showing the program's log."""
    assert callable(predicate)
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if program is not None and program.proc.poll() is not None:
            raise AssertionError(f"{program.log_path.name} exited waiting for {what}:\n{program.text()[-3000:]}")
        if time.monotonic() > deadline:
            log = program.text()[-3000:] if program is not None else ""
            raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {what}\n{log}")
        time.sleep(0.05)


def archived_rows(cwd: Path) -> int:
    """Data rows of the files the gateway archived (each has one header line)."""
    return sum(len(p.read_text().splitlines()) - 1 for p in (cwd / "data" / "archive").rglob("*.csv"))


def get_json(url: str) -> object:
    import json  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], list[Program]]]:
    """A working directory, the environment (free ports only), and the programs to stop at the end."""
    mes_port, http_port, opcua_port = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CMM_", "MES_"))}
    env |= {
        "CMM_MES_PORT": str(mes_port),
        "CMM_MES_URL": f"http://127.0.0.1:{mes_port}",
        "CMM_HTTP": f"127.0.0.1:{http_port}",
        "CMM_OPCUA_ENDPOINT": f"opc.tcp://127.0.0.1:{opcua_port}/cmm-twin/",
        "PYTHONUNBUFFERED": "1",
    }
    programs: list[Program] = []
    yield tmp_path, env, programs
    for program in reversed(programs):
        program.stop(signal.SIGKILL)


def test_three_bare_commands_tell_the_outage_story(shop: tuple[Path, dict[str, str], list[Program]]) -> None:
    cwd, env, programs = shop
    mes_url, health_url = env["CMM_MES_URL"], f"http://{env['CMM_HTTP']}/health"

    def start(script: str, log_name: str) -> Program:
        program = Program(script, cwd, env, log_name)
        programs.append(program)
        return program

    def stored() -> int:
        stats = get_json(f"{mes_url}/api/v1/stats")
        assert isinstance(stats, dict)
        return int(stats["count"])

    def health() -> dict[str, object]:
        document = get_json(health_url)
        assert isinstance(document, dict)
        return document

    mes = start("mock_mes.py", "mes-1.log")
    mes.wait_for("mock MES listening")
    gateway = start("cmm_edge_gateway.py", "gateway-1.log")
    gateway.wait_for("gateway ready")
    simulator = start("cmm_simulator.py", "simulator-1.log")
    wait(lambda: stored() >= 6, "the first rows at the MES", gateway)

    assert mes.stop(signal.SIGINT) == 0  # Ctrl+C
    gateway.wait_for("WARNING: Network Lost! Buffering...")
    wait(lambda: int(str(health()["buffer_depth"])) >= 6, "rows buffered while the MES is away", gateway)
    mes = start("mock_mes.py", "mes-2.log")
    mes.wait_for("mock MES listening")
    gateway.wait_for("INFO: Flushing buffer...")
    assert simulator.stop(signal.SIGINT) == 0

    def delivered_all() -> bool:
        inbox_empty = not list((cwd / "data" / "inbox").glob("*.csv"))
        return inbox_empty and health()["buffer_depth"] == 0 and stored() == archived_rows(cwd)

    wait(delivered_all, "every row at the MES", gateway)

    # A gateway stopped with a backlog says "Flushing buffer..." when it starts draining it.
    assert mes.stop(signal.SIGINT) == 0
    more = start("cmm_simulator.py", "simulator-2.log")
    wait(lambda: more.proc.poll() is not None or int(str(health()["buffer_depth"])) >= 6, "a backlog", gateway)
    assert more.stop(signal.SIGINT) == 0
    wait(lambda: not list((cwd / "data" / "inbox").glob("*.csv")), "the inbox read", gateway)
    assert gateway.stop(signal.SIGTERM) == 0
    mes = start("mock_mes.py", "mes-3.log")
    mes.wait_for("mock MES listening")
    gateway = start("cmm_edge_gateway.py", "gateway-2.log")
    gateway.wait_for("INFO: Flushing buffer...")
    wait(delivered_all, "the backlog at the MES", gateway)

    # Every row once: as many records at the MES as rows in the files the gateways archived, no id twice.
    records: list[dict[str, object]] = []
    after = 0
    while page := get_json(f"{mes_url}/api/v1/measurements?after={after}&limit=10000"):
        assert isinstance(page, list)
        records += page
        after = int(page[-1]["seq"])
    ids = [str(r["measurement_id"]) for r in records]
    assert len(ids) == len(set(ids)) == stored()
    assert len(ids) == archived_rows(cwd)
    assert (cwd / "data" / "mes.sqlite").exists()
