"""A real VictoriaMetrics (Debian's `victoria-metrics`) on loopback, speaking the InfluxDB v2 write
API, for historian tests and the benchmark. The test command installs the package (scripts/
system-deps.sh); the server picks its own port (127.0.0.1:0), read back from /proc."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

BINARY = "victoria-metrics"


def listening_ports(pid: int) -> list[int]:
    """TCP ports process `pid` listens on (its socket inodes matched against /proc/net/tcp)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                    ports.append(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class VictoriaMetrics:
    """One VictoriaMetrics process; `start()` again after `stop()` reuses its port and data."""

    def __init__(self, data_dir: Path, auth: tuple[str, str] | None = None) -> None:
        if shutil.which(BINARY) is None:
            raise AssertionError(f"{BINARY} is not installed: run `make test` (it installs Debian's package as root)")
        self.data_dir = data_dir
        self.auth = auth
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.with_suffix(".log")

    @property
    def url(self) -> str:
        """The base URL of the InfluxDB-compatible API."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, auth: tuple[str, str] | bool | None = False, timeout_s: float = 60.0) -> None:
        """Start (with basic auth when `auth` or the constructor's `auth` says so) and wait until ready."""
        if auth is not False:
            self.auth = auth  # type: ignore[assignment]
        args = [
            BINARY,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data_dir}",
            "-retentionPeriod=100y",
            "-dedup.minScrapeInterval=1ms",  # same series and timestamp = one point, as in InfluxDB
            "-search.disableCache",
            "-loggerLevel=WARN",
        ]
        if self.auth:
            args += [f"-httpAuth.username={self.auth[0]}", f"-httpAuth.password={self.auth[1]}"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"victoria-metrics exited with {self.proc.returncode}: {self.log_path.read_text()}"
                )
            ports = listening_ports(self.proc.pid)
            if ports:
                self.port = ports[0]
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                        if response.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.05)
        raise AssertionError(f"victoria-metrics not ready after {timeout_s} s")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(self.url + path + query)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Every series matching `match` (after flushing), as VictoriaMetrics' export JSON lines."""
        self._get("/internal/force_flush")
        body = self._get("/api/v1/export", {"match[]": match})
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, metric: str) -> dict[tuple[tuple[str, str], ...], dict[int, float]]:
        """{sorted labels without __name__: {timestamp_ms: value}} of one metric name."""
        out: dict[tuple[tuple[str, str], ...], dict[int, float]] = {}
        for series in self.export(f'{{__name__="{metric}"}}'):
            labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k != "__name__"))
            points = out.setdefault(labels, {})
            points.update(zip(series["timestamps"], series["values"], strict=True))
        return out
