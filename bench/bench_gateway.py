"""Benchmark of the edge gateway (issue: edge gateway), run as a real process on loopback.

Prints:
- latency from the rename of a file into the inbox to the OPC UA data change seen by an external
  asyncua client subscription (p50, p99 over N files); goal p50 <= 30 ms, p99 <= 100 ms;
- throughput of a backlog of 1,000 files x 100 rows (goal >= 1,000 files/s);
- throughput of one 1,000,000-row file through validation, compensation and the OPC UA sink
  (goal >= 100,000 rows/s) and the gateway's peak RSS meanwhile (goal <= 150 MB), beside the
  RSS of the idle gateway measured in the same run (the baseline).
These measure the ingest path (`--historian none`, as in the gateway issue). Then the same big
file through a second gateway in the default configuration (the embedded SQLite historian,
which keeps every row): rows/s until the historian holds them all, and its peak RSS.

    .venv/bin/python -m bench.bench_gateway [--files 300] [--rows 1000000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from bench.figures import Figure, add_common_arguments, emit, progress
from tests.gateway_harness import HEADER, GatewayProcess, free_port

LATENCY_P50_MS = 30.0
LATENCY_P99_MS = 100.0
BACKLOG_FILES_PER_S = 1000.0
BIG_FILE_ROWS_PER_S = 100_000.0
PEAK_RSS_MB = 150.0


def _row(i: int, machine: str = "CMM-01", measured_mm: float | None = None) -> str:
    measured = 100.0118 + (i % 97) * 1e-4 if measured_mm is None else measured_mm
    return (
        f"2026-01-05T06:00:00.{i % 1000:03d}Z,{machine},P{i:08d},length_x,AL6061,100.0,0.010,{measured:.4f},25.0,24.0\n"
    )


def _write(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)


class _Changes:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.values: list[tuple[float, float]] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append((time.perf_counter(), float(val)))
        self.event.set()


async def measure_latency(data_dir: Path, opcua_port: int, files: int) -> list[float]:
    """Rename `files` one-row files into the inbox, one at a time; ms until the data change arrives."""
    inbox = data_dir / "inbox"
    staging = data_dir / "staging"
    staging.mkdir(exist_ok=True)
    _write(inbox / "warmup.csv", HEADER + _row(0, measured_mm=100.0))
    latencies_ms: list[float] = []
    async with Client(f"opc.tcp://127.0.0.1:{opcua_port}/cmm-twin/", timeout=10) as client:
        ns = await client.get_namespace_index("urn:cmm-twin")
        while True:
            try:
                machine = await client.nodes.objects.get_child([f"{ns}:CMM", f"{ns}:CMM-01"])
                break
            except UaError:
                await asyncio.sleep(0.05)
        node = await machine.get_child(f"{ns}:MeasuredLength")
        handler = _Changes()
        subscription = await client.create_subscription(
            ua.CreateSubscriptionParameters(RequestedPublishingInterval=0, RequestedMaxKeepAliveCount=1000), handler
        )
        await subscription.subscribe_data_change(node, sampling_interval=ua.Double(0.0))
        await asyncio.sleep(0.5)
        for k in range(files):
            measured = round(100.001 + (k % 2) * 0.001 + k * 1e-7, 7)
            tmp = staging / f"lat_{k:05d}.csv"
            _write(tmp, HEADER + _row(k + 1, measured_mm=measured).replace(f"{measured:.4f}", f"{measured:.7f}"))
            handler.event.clear()
            t0 = time.perf_counter()
            os.rename(tmp, inbox / tmp.name)
            async with asyncio.timeout(10):
                while not any(abs(v - measured) < 1e-9 and t >= t0 for t, v in handler.values):
                    await handler.event.wait()
                    handler.event.clear()
            arrived = next(t for t, v in handler.values if abs(v - measured) < 1e-9 and t >= t0)
            latencies_ms.append((arrived - t0) * 1000)
            handler.values.clear()
            await asyncio.sleep(0.005)
        await subscription.delete()
    return latencies_ms


def wait_files(gateway: GatewayProcess, count: int, timeout_s: float) -> None:
    """Wait until the gateway has processed `count` files (polled gently: the poll costs the
    gateway CPU, so the end time is taken from its log, not from the poll)."""
    deadline = time.monotonic() + timeout_s
    while gateway.get_json("/health")["files_processed"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(gateway.log_text()[-2000:])
        time.sleep(0.05)


def last_logged_file_time(gateway: GatewayProcess, prefix: str) -> float:
    """Wall time (s since the epoch) of the last 'file: ... rows ok' log line for files `prefix*`."""
    stamps = re.findall(rf"^(\S+ \S+) INFO: {prefix}\S*: \d+ rows ok", gateway.log_text(), re.MULTILINE)
    moment = datetime.strptime(stamps[-1], "%Y-%m-%d %H:%M:%S,%f")
    return moment.timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def figures(
    quick: bool = False,
    *,
    files: int | None = None,
    backlog_files: int | None = None,
    backlog_rows: int = 100,
    rows: int | None = None,
) -> list[Figure]:
    """Latency, backlog, one big file and peak RSS (beside the idle RSS) of one gateway process."""
    files = files or (50 if quick else 300)
    backlog_files = backlog_files or (300 if quick else 1000)
    rows = rows or (100_000 if quick else 1_000_000)
    out: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="cmm-bench-") as tmp:
        data = Path(tmp) / "data"
        opcua_port = free_port()
        gateway = GatewayProcess(
            [
                "--data-dir", str(data),
                "--http", "127.0.0.1:0",
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{opcua_port}/cmm-twin/",
                "--historian", "none",
            ],
            Path(tmp) / "gateway.log",
        )  # fmt: skip
        try:
            gateway.wait_ready(60)
            idle_rss_mb = gateway.peak_rss_mb()

            progress(f"gateway: latency over {files} files")
            latencies = asyncio.run(measure_latency(data, opcua_port, files))
            latency = f"gateway: rename into the inbox -> OPC UA data change at a client, {{}} ({files} files)"
            p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
            out.append(
                Figure(
                    latency.format("p50"),
                    p50,
                    "ms",
                    f"<= {LATENCY_P50_MS:.0f} ms",
                    higher_is_better=False,
                    met=p50 <= LATENCY_P50_MS,
                )
            )
            out.append(
                Figure(
                    latency.format("p99"),
                    p99,
                    "ms",
                    f"<= {LATENCY_P99_MS:.0f} ms",
                    higher_is_better=False,
                    met=p99 <= LATENCY_P99_MS,
                )
            )
            done = gateway.get_json("/health")["files_processed"]

            progress(f"gateway: backlog of {backlog_files:,} files x {backlog_rows} rows")
            staging = Path(tmp) / "backlog"
            staging.mkdir()
            lines = "".join(_row(i, f"CMM-0{i % 3 + 1}") for i in range(backlog_rows))
            for k in range(backlog_files):
                _write(staging / f"backlog_{k:05d}.csv", HEADER + lines)
            started = time.time()
            for k in range(backlog_files):
                os.rename(staging / f"backlog_{k:05d}.csv", data / "inbox" / f"backlog_{k:05d}.csv")
            wait_files(gateway, done + backlog_files, 300)
            elapsed = last_logged_file_time(gateway, "backlog_") - started
            files_per_s = backlog_files / elapsed
            backlog = f"gateway: backlog of {backlog_files:,} files x {backlog_rows} rows ({elapsed:.2f} s)"
            out.append(
                Figure(
                    backlog,
                    files_per_s,
                    "files/s",
                    f">= {BACKLOG_FILES_PER_S:,.0f} files/s",
                    met=files_per_s >= BACKLOG_FILES_PER_S,
                )
            )
            out.append(Figure("gateway: the same backlog, in rows", backlog_files * backlog_rows / elapsed, "rows/s"))

            progress(f"gateway: one {rows:,}-row file")
            big = Path(tmp) / "big.csv"
            write_big_file(big, rows)
            size_mb = big.stat().st_size / 1e6
            elapsed, peak_mb = process_big_file(gateway, big, data / "inbox" / "big.csv", historian=False)
            rows_per_s = rows / elapsed
            out.append(
                Figure(
                    f"gateway: one {rows:,}-row file ({size_mb:.0f} MB) through validation, compensation and OPC UA"
                    f" ({elapsed:.2f} s)",
                    rows_per_s,
                    "rows/s",
                    f">= {BIG_FILE_ROWS_PER_S:,.0f} rows/s",
                    met=rows_per_s >= BIG_FILE_ROWS_PER_S,
                )
            )
            out.append(
                Figure(
                    "gateway: peak RSS during that file (VmHWM of the whole run)",
                    peak_mb,
                    "MB",
                    f"<= {PEAK_RSS_MB:.0f} MB",
                    baseline=idle_rss_mb,
                    baseline_name="idle gateway",
                    higher_is_better=False,
                    met=peak_mb <= PEAK_RSS_MB,
                )
            )
        finally:
            gateway.stop()

        progress(f"gateway: one {rows:,}-row file with the embedded historian (default configuration)")
        data = Path(tmp) / "data-historian"
        gateway = GatewayProcess(
            [
                "--data-dir", str(data),
                "--http", "127.0.0.1:0",
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
            ],
            Path(tmp) / "gateway-historian.log",
        )  # fmt: skip
        try:
            gateway.wait_ready(60)
            big = Path(tmp) / "big-historian.csv"
            write_big_file(big, rows)
            elapsed, peak_mb = process_big_file(gateway, big, data / "inbox" / "big.csv", historian=True)
            out.append(
                Figure(
                    f"gateway, default configuration: the same file until the embedded historian holds every row"
                    f" ({elapsed:.2f} s)",
                    rows / elapsed,
                    "rows/s",
                )
            )
            out.append(Figure("gateway, default configuration: peak RSS during that file", peak_mb, "MB"))
        finally:
            gateway.stop()
    return out


def write_big_file(path: Path, rows: int) -> None:
    """`rows` valid rows on three machines, written in blocks."""
    with path.open("w") as f:
        f.write(HEADER)
        for start in range(0, rows, 50_000):
            f.write("".join(_row(i, f"CMM-0{i % 3 + 1}") for i in range(start, min(rows, start + 50_000))))


def process_big_file(gateway: GatewayProcess, staged: Path, target: Path, historian: bool) -> tuple[float, float]:
    """Rename `staged` into the inbox; (seconds until it is processed, or with `historian` until
    the historian's buffer is empty too; peak RSS in MB meanwhile)."""
    before = gateway.get_json("/health")["files_processed"]
    started = time.perf_counter()
    os.rename(staged, target)
    peak_mb = 0.0
    deadline = time.monotonic() + 600
    while True:
        health = gateway.get_json("/health")
        if health["files_processed"] > before and not (historian and health["buffer_depth"]):
            break
        peak_mb = max(peak_mb, gateway.peak_rss_mb())
        if time.monotonic() > deadline:
            raise TimeoutError("big file not processed in 600 s")
        time.sleep(0.01)
    return time.perf_counter() - started, max(peak_mb, gateway.peak_rss_mb())


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=None, help="files for the latency figure (default 300)")
    parser.add_argument("--backlog-files", type=int, default=None, help="default 1,000")
    parser.add_argument("--backlog-rows", type=int, default=100)
    parser.add_argument("--rows", type=int, default=None, help="rows of the big file (default 1,000,000)")
    add_common_arguments(parser)
    args = parser.parse_args()
    result = figures(
        args.quick, files=args.files, backlog_files=args.backlog_files, backlog_rows=args.backlog_rows, rows=args.rows
    )
    emit(result, as_json=args.json)


if __name__ == "__main__":
    main()
