"""Benchmark of the historian path (issue: historian), real processes on loopback, side by side in
one run against the same database (VictoriaMetrics from Debian's packages, InfluxDB v2 write API):

- drain: the gateway holds N rows in its spool (the database was down while they arrived); the
  database starts and the gateway drains the backlog into it (batches of 5,000 points, line
  protocol built per batch from the spool). Rows/s from the first delivery until the historian's
  buffer depth is 0;
- raw: a minimal client writing the same rows as pre-built line protocol (5,000 lines a request,
  one request at a time) into a fresh database, measured in the same run;
- goal: drain >= 50 % of raw.

    .venv/bin/python -m bench.bench_historian [--rows 1000000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
from numpy.typing import NDArray

from bench.bench_mes import wait_health
from bench.figures import Figure, add_common_arguments, emit, progress
from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sinks.historian.lineprotocol import measurement_body
from cmm_twin.gateway.sources.rows import ValidRows
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.physics.thermal import PhysicsConfig
from cmm_twin.records import RecordBatch
from tests.gateway_harness import HEADER, GatewayProcess, free_port
from tests.victoria import VictoriaMetrics

BATCH = 5_000
DRAIN_OF_RAW = 0.5


def make_rows(rows: int) -> RecordBatch:
    """`rows` measurements 1 ms apart ending an hour ago, on three machines, as the gateway computes them."""
    stamps = (time.time_ns() // 1_000_000 - 3_600_000 - rows + np.arange(rows)) * 1_000_000
    return synthetic_records(stamps.astype(np.int64), np.full(rows, 21.5))


def synthetic_records(stamps_ns: NDArray[np.int64], air_temp_c: NDArray[np.float64]) -> RecordBatch:
    """One record per time stamp, on three machines in turn, aluminium parts of 100 mm measured
    warm, through the gateway's own bridge from rows to records (physics included)."""
    rows = len(stamps_ns)
    i = np.arange(rows)
    al = MATERIALS["AL6061"]
    iso = np.datetime_as_string(stamps_ns.astype("datetime64[ns]"), unit="ms")
    valid = ValidRows(
        line=i + 2,
        measurement_id=[""] * rows,
        timestamp=[f"{t}Z" for t in iso.tolist()],
        timestamp_ns=stamps_ns,
        machine_id=[f"CMM-0{k % 3 + 1}" for k in range(rows)],
        part_id=[f"P{k:09d}" for k in range(rows)],
        feature=["length_x"] * rows,
        material=["AL6061"] * rows,
        cte_per_k=np.full(rows, al.cte_per_k),
        cte_u_per_k=np.full(rows, al.cte_u_per_k),
        nominal_mm=np.full(rows, 100.0),
        tolerance_mm=np.full(rows, 0.010),
        measured_mm=(100.0118 + (i % 97) * 1e-4).astype(np.float64),
        part_temp_c=(20.0 + (i % 80) * 0.1).astype(np.float64),
        air_temp_c=air_temp_c,
        scale_temp_c=np.full(rows, np.nan),
        lower_tol_mm=np.full(rows, -0.010),
        upper_tol_mm=np.full(rows, 0.010),
        part_temp_u_k=np.full(rows, np.nan),  # the configured thermometer's
        compensation=np.zeros(rows, dtype=np.int8),  # the gateway compensates
        flags=np.zeros(rows, dtype=np.int32),
        unit=["mm"] * rows,
        source_format=["csv"] * rows,
        source_file=[f"H_{k // 20_000 * 20_000:09d}.csv" for k in range(rows)],  # as `write_inbox` names them
    )
    return to_records(valid, PhysicsConfig())


def write_inbox(batch: RecordBatch, inbox: Path, staging: Path, per_file: int = 20_000) -> None:
    """The rows of `batch` as CSV files, renamed into the inbox."""
    staging.mkdir(parents=True, exist_ok=True)
    inbox.mkdir(parents=True, exist_ok=True)
    measured = [f"{v:.4f}" for v in batch.measured_mm.tolist()]
    temps = [f"{v:.1f}" for v in batch.part_temp_c.tolist()]
    for start in range(0, len(batch), per_file):
        name = f"H_{start:09d}.csv"
        lines = "".join(
            f"{batch.timestamp[k]},{batch.machine_id[k]},{batch.part_id[k]},length_x,AL6061,100.0,0.010,"
            f"{measured[k]},{temps[k]},21.5\n"
            for k in range(start, min(len(batch), start + per_file))
        )
        (staging / name).write_text(HEADER + lines)
        (staging / name).rename(inbox / name)


def stored_points(vm: VictoriaMetrics) -> int:
    """How many `measured_mm` points the database holds."""
    urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=60).read()
    query = urllib.parse.urlencode({"query": "sum(count_over_time(cmm_measurement_measured_mm[1d]))"})
    with urllib.request.urlopen(f"{vm.url}/api/v1/query?{query}", timeout=120) as response:
        result = json.loads(response.read())["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


async def raw_rate(url: str, bodies: list[bytes], rows: int) -> float:
    """Rows/s of a minimal client posting pre-built line protocol, one request at a time."""
    async with aiohttp.ClientSession(headers={"Content-Type": "text/plain; charset=utf-8"}) as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(f"{url}/api/v2/write", params={"precision": "ns"}, data=body) as response:
                await response.read()
                if response.status != 204:
                    raise RuntimeError(f"raw write answered {response.status}")
        return rows / (time.perf_counter() - started)


def measure(rows: int) -> dict[str, float]:
    """{"drain": rows/s, "raw": rows/s} measured in one run."""
    batch = make_rows(rows)
    with tempfile.TemporaryDirectory(prefix="cmm-bench-historian-") as tmp_text:
        tmp = Path(tmp_text)
        vm = VictoriaMetrics(tmp / "vm-drain")
        vm.port = free_port()
        data = tmp / "data"
        gateway = GatewayProcess(
            [
                "--data-dir", str(data), "--http", "127.0.0.1:0", "--historian", "influx",
                "--influx-url", vm.url, "--influx-org", "bench", "--influx-bucket", "cmm",
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
            ],
            tmp / "gateway.log",
        )  # fmt: skip
        try:
            gateway.wait_ready(60)
            write_inbox(batch, data / "inbox", tmp / "staging")
            wait_health(gateway, lambda h: h["buffer_depth"] == rows, 900)
            vm.start()
            # Timed from the gateway's first delivery (its retry backoff is not the drain rate).
            first = wait_health(gateway, lambda h: h["buffer_depth"] < rows, 120)
            started = time.perf_counter()
            wait_health(gateway, lambda h: h["buffer_depth"] == 0, 900)
            drain = first["buffer_depth"] / (time.perf_counter() - started)
            stored = stored_points(vm)
            if stored != rows:
                raise AssertionError(f"the database holds {stored} points, expected {rows}")
        finally:
            gateway.stop()
            vm.stop()
        bodies = [measurement_body(batch.take(slice(i, i + BATCH))) for i in range(0, rows, BATCH)]
        raw_vm = VictoriaMetrics(tmp / "vm-raw")
        raw_vm.start()
        try:
            raw = asyncio.run(raw_rate(raw_vm.url, bodies, rows))
            stored = stored_points(raw_vm)
            if stored != rows:
                raise AssertionError(f"the raw database holds {stored} points, expected {rows}")
        finally:
            raw_vm.stop()
    return {"drain": drain, "raw": raw}


def figures(quick: bool = False, *, rows: int | None = None) -> list[Figure]:
    """The drain rate beside the raw rate into the same database, measured in one run (`measure`)."""
    rows = rows or (100_000 if quick else 1_000_000)
    progress(f"historian: spooling {rows:,} rows, the drain into VictoriaMetrics, then the raw writes")
    rates = measure(rows)
    return [
        Figure(
            f"historian: gateway drain of {rows:,} spooled rows into VictoriaMetrics (InfluxDB v2 write API)",
            rates["drain"],
            "rows/s",
            f">= {DRAIN_OF_RAW * 100:.0f} % of raw",
            baseline=rates["raw"],
            baseline_name=f"raw: the same rows as pre-built line protocol, {BATCH:,} a request",
            met=rates["drain"] / rates["raw"] >= DRAIN_OF_RAW,
        )
    ]


def main() -> None:
    """Run the benchmark and print the figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="default 1,000,000 (100,000 with --quick)")
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick, rows=args.rows), as_json=args.json)


if __name__ == "__main__":
    main()
