"""Helpers for tests that run the real gateway in-process or as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.sinks.base import Delivered, Sink, WriteOutcome
from cmm_twin.records import RecordBatch

ROOT = Path(__file__).resolve().parent.parent

HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,air_temp_c\n"


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1:`port` (0: any free port) until the block ends; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind port 0 and read it back)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now: all bound at once, so two calls in
    a row can never hand out the same port."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


class RecordingSink(Sink):
    """A durable sink that keeps what it receives (in memory, and in a JSONL file if given)."""

    durable = True

    def __init__(self, name: str = "recorder", path: Path | None = None) -> None:
        self.name = name
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.batches = 0

    async def open(self) -> None:
        pass

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        records = batch.to_dicts()
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
        self.records.extend(records)
        self.batches += 1
        return Delivered()

    async def close(self) -> None:
        pass


def gateway_config(data_dir: Path, **overrides: Any) -> GatewayConfig:
    """A config for in-process tests: loopback, HTTP port 0, no OPC UA, no historian and no MES unless
    asked (so a test's buffer depth is that of the sinks it is about). `overrides` name config
    fields or options (a plugin's, like `mes_url` or `historian`)."""
    base = GatewayConfig(
        data_dir=data_dir,
        http=("127.0.0.1", 0),
        sinks_off=frozenset({"opcua"}),
        settle_ms=50.0,
        options={"historian": "none", "mes_url": None},
    )
    return with_overrides(base, **overrides)


def with_overrides(config: GatewayConfig, **overrides: Any) -> GatewayConfig:
    """`config` with some fields or option values replaced."""
    typed = {k: v for k, v in overrides.items() if k in GatewayConfig.__dataclass_fields__}
    options = {k: v for k, v in overrides.items() if k not in typed}
    return replace(config, **typed, options={**config.options, **options})


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig, *sinks: Sink) -> AsyncIterator[Gateway]:
    """Start a Gateway in this event loop; stop it cleanly on exit."""
    gateway = Gateway(config, extra_sinks=sinks, environ={})
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises the start-up error
    assert gateway.ready.is_set(), "gateway did not start within 60 s"
    try:
        yield gateway
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await task


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll `predicate` every 10 ms until it holds; fail after `timeout_s` (generous: a loaded
    machine is slow, and the test judges the outcome, not the speed)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def drop_file(inbox: Path, name: str, content: str | bytes) -> Path:
    """Write a file under a dot-name and rename it into the inbox, as a well-behaved writer does."""
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.tmp"
    data = content.encode() if isinstance(content, str) else content
    tmp.write_bytes(data)
    target = inbox / name
    tmp.replace(target)
    return target


def csv_row(
    part_id: str = "P1",
    *,
    timestamp: str = "2026-01-05T06:00:00Z",
    machine_id: str = "CMM-01",
    feature: str = "length_x",
    material: str = "AL6061",
    nominal_mm: str = "100.0",
    tolerance_mm: str = "0.010",
    measured_mm: str = "100.0118",
    part_temp_c: str = "25.0",
    air_temp_c: str = "24.0",
) -> str:
    """One data line in the simulator's column order."""
    return (
        ",".join(
            [
                timestamp,
                machine_id,
                part_id,
                feature,
                material,
                nominal_mm,
                tolerance_mm,
                measured_mm,
                part_temp_c,
                air_temp_c,
            ]
        )
        + "\n"
    )


READY_RE = re.compile(r"gateway ready: .* HTTP http://([\d.]+):(\d+)/health")


class GatewayProcess:
    """The gateway as a real subprocess (stderr to a log file); stopped by the test."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        script: list[str] | None = None,
        *,
        cwd: Path | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """`cwd`: the working directory (default the repository, so relative paths in `args`
        are relative to it); `prefix`: a command the gateway runs under (e.g. `setpriv ...`)."""
        self.log_path = log_path
        self._log = log_path.open("ab")
        command = [*prefix, sys.executable, *(script or [str(ROOT / "cmm_edge_gateway.py")]), *args]
        self.proc = subprocess.Popen(command, cwd=cwd or ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.http_port: int | None = None

    def log_text(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        """Wait for the 'gateway ready' line; returns the HTTP port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = READY_RE.search(self.log_text())
            if match:
                self.http_port = int(match.group(2))
                return self.http_port
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.02)
        raise AssertionError(f"gateway not ready after {timeout_s} s:\n{self.log_text()}")

    def get_json(self, path: str) -> Any:
        """GET http://127.0.0.1:<port><path> as JSON (any status)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def get_text(self, path: str) -> str:
        """GET http://127.0.0.1:<port><path> as text."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=60) as response:
            return str(response.read().decode())

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (kill -9 after `timeout_s`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)

    def peak_rss_mb(self) -> float:
        """VmHWM of the running process, MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


MES_READY_RE = re.compile(r"mock MES listening on http://([\d.]+):(\d+)")


class MesProcess:
    """The real mock MES as a subprocess on 127.0.0.1:`port` with database `db`."""

    def __init__(self, db: Path, port: int, log_path: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.port = port
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "mock_mes.py"), "--port", str(port), "--db", str(db), *extra],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until it listens."""
        deadline = time.monotonic() + timeout_s
        while not MES_READY_RE.search(self.log_path.read_text(errors="replace")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mock MES did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.02)

    def get_json(self, path: str) -> Any:
        """GET a JSON document from the MES."""
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def all_records(self) -> list[dict[str, Any]]:
        """Every stored record, in arrival order."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get_json(f"/api/v1/measurements?after={after}&limit=10000")
            if not page:
                return out
            out.extend(page)
            after = page[-1]["seq"]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send `sig`, wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


def run_simulator(outdir: Path, truth: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Start the real simulator writing into `outdir` (ground truth in `truth`)."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cmm_simulator.py"), "--outdir", str(outdir), "--truth-dir", str(truth), *extra],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def truth_ids(truth: Path) -> list[str]:
    """measurement_id of every measurement the simulator wrote (from its truth files)."""
    ids: list[str] = []
    for path in sorted(truth.glob("*.csv")):
        lines = path.read_text().splitlines()[1:]
        ids.extend(line.split(",", 1)[0] for line in lines if line)
    return ids
