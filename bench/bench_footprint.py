"""Footprint of an idle edge gateway (issue 16): what it costs an industrial PC beside the CMM software.

The real gateway as a process on loopback in its default configuration (OPC UA server with the
Machinery nodesets, the embedded SQLite historian, the live page; MES off, as on a bench without
one), on an empty data directory. Prints:
- start-up: seconds from the process start to /health answering, to the first file dropped into
  the inbox at the start being processed (the intake is ready), and to the OPC UA endpoint
  answering a session (it may come up after /health; no goal); the median of three starts;
  goals /health and intake <= 1.5 s;
- idle CPU, % of one core, over a window with no file arriving and no client connected, after
  everything came up (utime + stime of /proc/<pid>/stat); goal <= 0.5 %;
- idle RSS (VmRSS) at the end of that window; goal <= 120 MB.

    .venv/bin/python -m bench.bench_footprint [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.bench_opcua_live import current_rss_mb, health_answers, start_gateway, wait_opcua
from bench.figures import Figure, progress, run_main
from tests.gateway_harness import GatewayProcess, csv_row, drop_file

START_GOAL_S = 1.5
IDLE_CPU_GOAL_PCT = 0.5
IDLE_RSS_GOAL_MB = 120.0
HEADER = "timestamp,machine_id,part_id,feature,material,nominal_mm,tolerance_mm,measured_mm,part_temp_c,air_temp_c\n"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rows_in(http_port: int) -> int:
    """The gateway's rows_in from /health (0 while it does not answer)."""
    import json  # noqa: PLC0415

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as response:
            return int(json.loads(response.read())["rows_in"])
    except OSError:
        return 0


def measure_start(data: Path, log: Path) -> tuple[dict[str, float], GatewayProcess, int]:
    """Start a gateway on `data` with one file already in its inbox; the seconds to /health, to that
    file's row counted, to the OPC UA endpoint answering. Returns the still-running gateway too."""
    drop_file(data / "inbox", "first.csv", HEADER + csv_row("P1"))
    gateway, http_port, opcua_port, started = start_gateway(data, log)
    while not health_answers(http_port):
        if gateway.proc.poll() is not None:
            raise SystemExit(f"bench_footprint: the gateway exited:\n{gateway.log_text()[-2000:]}")
        time.sleep(0.005)
    health_s = time.perf_counter() - started
    while rows_in(http_port) < 1:
        time.sleep(0.005)
    intake_s = time.perf_counter() - started
    answered, _ = asyncio.run(wait_opcua(opcua_port, None))
    gateway.wait_ready()
    return {"health_s": health_s, "intake_s": intake_s, "opcua_s": answered - started}, gateway, http_port


def measure_idle(gateway: GatewayProcess, window_s: float) -> tuple[float, float]:
    """% of a core and RSS (MB) of the gateway over `window_s` of idleness."""
    pid = gateway.proc.pid
    time.sleep(5.0)  # the Machinery nodesets load in the background after the endpoint answers
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    cpu_pct = 100.0 * (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    return cpu_pct, current_rss_mb(pid)


def figures(quick: bool = False) -> list[Figure]:
    """Three starts (the last one stays up for the idle window)."""
    window_s = 20.0 if quick else 60.0
    starts: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        root = Path(tmp)
        for round_no in range(3):
            progress(f"bench_footprint: start {round_no + 1} of 3")
            result, gateway, _ = measure_start(root / f"data{round_no}", root / f"gateway{round_no}.log")
            starts.append(result)
            try:
                if round_no == 2:
                    progress(f"bench_footprint: idle for {window_s:g} s")
                    cpu_pct, rss_mb = measure_idle(gateway, window_s)
            finally:
                gateway.stop()
    health_s, intake_s, opcua_s = (
        statistics.median(s[key] for s in starts) for key in ("health_s", "intake_s", "opcua_s")
    )
    return [
        Figure(
            "start: /health answering",
            health_s,
            "s",
            f"<= {START_GOAL_S} s",
            higher_is_better=False,
            met=health_s <= START_GOAL_S,
        ),
        Figure(
            "start: intake ready (a waiting file processed)",
            intake_s,
            "s",
            f"<= {START_GOAL_S} s",
            higher_is_better=False,
            met=intake_s <= START_GOAL_S,
        ),
        Figure("start: OPC UA endpoint answering", opcua_s, "s", higher_is_better=False),
        Figure(
            f"idle CPU over {window_s:g} s",
            cpu_pct,
            "% of a core",
            f"<= {IDLE_CPU_GOAL_PCT} %",
            higher_is_better=False,
            met=cpu_pct <= IDLE_CPU_GOAL_PCT,
        ),
        Figure(
            "idle RSS",
            rss_mb,
            "MB",
            f"<= {IDLE_RSS_GOAL_MB:g} MB",
            higher_is_better=False,
            met=rss_mb <= IDLE_RSS_GOAL_MB,
        ),
    ]


def main() -> None:
    """Run the benchmark and print one line per figure."""
    run_main(__doc__, figures)


if __name__ == "__main__":
    main()
