"""Benchmark of the MES path (issue: MES path), real processes on loopback, side by side:

- drain: the gateway holds N records in its spool (the MES was down while they arrived); the
  mock MES starts and the gateway drains the backlog into it. Records/s from the MES start until
  the gateway's buffer depth is 0 (goal >= 20,000/s and >= 50 % of the raw rate);
- raw: the mock MES's own ingest rate for the same records posted directly, in batches of 500, by
  a minimal client (pre-encoded JSON, one request at a time), measured in the same run;
- RSS: the gateway's peak RSS while it holds 1,000,000 records spooled (goal < 150 MB).

    .venv/bin/python -m bench.bench_mes [--records 200000] [--spool-records 1000000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.figures import Figure, add_common_arguments, emit, progress
from tests.gateway_harness import HEADER, GatewayProcess, MesProcess, free_port

DRAIN_RECORDS_PER_S = 20_000.0
DRAIN_OF_RAW = 0.5
SPOOLED_RSS_MB = 150.0


def write_inbox(inbox: Path, staging: Path, records: int, per_file: int, prefix: str) -> None:
    """`records` rows in files of `per_file`, renamed into the inbox."""
    staging.mkdir(parents=True, exist_ok=True)
    inbox.mkdir(parents=True, exist_ok=True)
    for start in range(0, records, per_file):
        name = f"{prefix}_{start:09d}.csv"
        rows = "".join(
            f"2026-01-05T06:{(i // 1000) % 60:02d}:{(i // 10) % 60:02d}.{i % 1000:03d}Z,CMM-0{i % 3 + 1},"
            f"{prefix}{i:09d},length_x,AL6061,100.0,0.010,{100.0118 + (i % 97) * 1e-4:.4f},25.0,24.0\n"
            for i in range(start, min(records, start + per_file))
        )
        (staging / name).write_text(HEADER + rows)
        (staging / name).rename(inbox / name)


def wait_health(gateway: GatewayProcess, predicate: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        health: dict[str, Any] = gateway.get_json("/health")
        if predicate(health):
            return health
        if time.monotonic() > deadline:
            raise TimeoutError(f"{health}\n{gateway.log_text()[-3000:]}")
        time.sleep(0.05)


async def raw_rate(url: str, records: list[dict[str, Any]], batch: int = 500) -> float:
    """Records/s of a minimal client posting pre-encoded batches one at a time."""
    bodies = [json.dumps(records[i : i + batch]).encode() for i in range(0, len(records), batch)]
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        started = time.perf_counter()
        for body in bodies:
            async with session.post(url + "/api/v1/measurements", data=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"raw post answered {response.status}")
        return len(records) / (time.perf_counter() - started)


async def fetch_all(url: str, total: int) -> list[dict[str, Any]]:
    """Every stored record of an MES, without its seq."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as session:
        after = 0
        while len(out) < total:
            async with session.get(f"{url}/api/v1/measurements", params={"after": after, "limit": 10000}) as r:
                page = await r.json()
            if not page:
                break
            after = page[-1]["seq"]
            out.extend({k: v for k, v in rec.items() if k != "seq"} for rec in page)
    return out


def figures(quick: bool = False, *, records: int | None = None, spool_records: int | None = None) -> list[Figure]:
    """Drain rate beside the raw rate of the same records (one run), then peak RSS with a large spool."""
    records = records or (20_000 if quick else 200_000)
    spool_records = spool_records or (100_000 if quick else 1_000_000)
    out: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="cmm-bench-mes-") as tmp_text:
        tmp = Path(tmp_text)
        mes_port = free_port()
        mes_url = f"http://127.0.0.1:{mes_port}"
        data = tmp / "data"
        gateway = GatewayProcess(
            [
                "--data-dir", str(data), "--http", "127.0.0.1:0", "--mes-url", mes_url,
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
                "--historian", "none",  # the MES path alone: buffer depth is the MES's
            ],
            tmp / "gateway.log",
        )  # fmt: skip
        mes: MesProcess | None = None
        try:
            gateway.wait_ready(60)
            progress(f"MES: spooling {records:,} records, then the drain")
            write_inbox(data / "inbox", tmp / "staging", records, 2000, "D")
            wait_health(
                gateway,
                lambda h: h["buffer_depth"] == records and h["files_processed"] * 2000 >= records,
                600,
            )
            mes = MesProcess(tmp / "mes.sqlite", mes_port, tmp / "mes.log")
            mes.wait_ready()
            # Timed from the gateway's first delivery (its retry backoff is not the drain rate).
            first = wait_health(gateway, lambda h: h["buffer_depth"] < records, 120)
            started = time.perf_counter()
            wait_health(gateway, lambda h: h["buffer_depth"] == 0, 600)
            drain = first["buffer_depth"] / (time.perf_counter() - started)
            stored = asyncio.run(fetch_all(mes_url, records))
            assert len(stored) == records, len(stored)
            mes.stop()
            mes = None

            progress("MES: raw ingest of the same records")
            raw_mes = MesProcess(tmp / "raw.sqlite", free_port(), tmp / "raw.log")
            try:
                raw_mes.wait_ready()
                raw = asyncio.run(raw_rate(raw_mes.url, stored))
            finally:
                raw_mes.stop()
            out.append(
                Figure(
                    f"MES: gateway drain of {records:,} spooled records into the mock MES",
                    drain,
                    "records/s",
                    f">= {DRAIN_RECORDS_PER_S:,.0f}/s and >= {DRAIN_OF_RAW * 100:.0f} % of raw",
                    baseline=raw,
                    baseline_name="raw ingest of the same records, minimal client, batches of 500",
                    met=drain >= DRAIN_RECORDS_PER_S and drain / raw >= DRAIN_OF_RAW,
                )
            )

            # RSS with a large backlog: the MES is down again while the records arrive.
            progress(f"MES: spooling {spool_records:,} records (MES down) for the RSS")
            write_inbox(data / "inbox", tmp / "staging", spool_records, 20_000, "S")
            peak = 0.0
            deadline = time.monotonic() + 900
            while gateway.get_json("/health")["buffer_depth"] < spool_records:
                peak = max(peak, gateway.peak_rss_mb())
                if time.monotonic() > deadline:
                    raise TimeoutError("spooling took too long")
                time.sleep(0.05)
            peak = max(peak, gateway.peak_rss_mb())
            spool_mb = gateway.get_json("/health")["spool_mb"]
            out.append(
                Figure(
                    f"MES: gateway peak RSS with {spool_records:,} records spooled ({spool_mb:.0f} MB spool)",
                    peak,
                    "MB",
                    f"< {SPOOLED_RSS_MB:.0f} MB",
                    higher_is_better=False,
                    met=peak < SPOOLED_RSS_MB,
                )
            )
        finally:
            if mes is not None:
                mes.stop()
            gateway.stop()
    return out


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=None, help="records drained (default 200,000)")
    parser.add_argument("--spool-records", type=int, default=None, help="records spooled for the RSS (default 1M)")
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick, records=args.records, spool_records=args.spool_records), as_json=args.json)


if __name__ == "__main__":
    main()
