"""Benchmark of the MES path (issue: MES path), real processes on loopback, side by side:

- drain: the gateway holds N records in its spool (the MES was down while they arrived); the
  mock MES starts and the gateway drains the backlog into it. Records/s from the MES start until
  the gateway's buffer depth is 0 (goal >= 20,000/s and >= 50 % of the raw rate);
- raw: the mock MES's own ingest rate for the same records posted directly, in batches of 500, by
  a minimal client (pre-encoded JSON, one request at a time), measured in the same run;
- RSS: the gateway's peak RSS while it holds 1,000,000 records spooled (goal < 150 MB).

    .venv/bin/python -m bench.bench_mes [--records 200000] [--spool-records 1000000]
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

from tests.gateway_harness import HEADER, GatewayProcess, MesProcess, free_port


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--spool-records", type=int, default=1_000_000)
    args = parser.parse_args()
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cmm-bench-mes-") as tmp_text:
        tmp = Path(tmp_text)
        mes_port = free_port()
        mes_url = f"http://127.0.0.1:{mes_port}"
        data = tmp / "data"
        gateway = GatewayProcess(
            [
                "--data-dir", str(data), "--http", "127.0.0.1:0", "--mes-url", mes_url,
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
            ],
            tmp / "gateway.log",
        )  # fmt: skip
        mes: MesProcess | None = None
        try:
            gateway.wait_ready(60)
            write_inbox(data / "inbox", tmp / "staging", args.records, 2000, "D")
            wait_health(
                gateway,
                lambda h: h["buffer_depth"] == args.records and h["files_processed"] * 2000 >= args.records,
                600,
            )
            mes = MesProcess(tmp / "mes.sqlite", mes_port, tmp / "mes.log")
            mes.wait_ready()
            # Timed from the gateway's first delivery (its retry backoff is not the drain rate).
            first = wait_health(gateway, lambda h: h["buffer_depth"] < args.records, 120)
            started = time.perf_counter()
            wait_health(gateway, lambda h: h["buffer_depth"] == 0, 600)
            drain = first["buffer_depth"] / (time.perf_counter() - started)
            records = asyncio.run(fetch_all(mes_url, args.records))
            assert len(records) == args.records, len(records)
            mes.stop()
            mes = None

            raw_mes = MesProcess(tmp / "raw.sqlite", free_port(), tmp / "raw.log")
            try:
                raw_mes.wait_ready()
                raw = asyncio.run(raw_rate(raw_mes.url, records))
            finally:
                raw_mes.stop()
            results["drain (gateway -> MES)"] = (
                f"{drain:,.0f} records/s ({args.records:,} spooled records; goal >= 20,000)"
            )
            results["raw (minimal client -> MES)"] = f"{raw:,.0f} records/s (same records, batches of 500)"
            results["drain / raw"] = f"{drain / raw:.0%} (goal >= 50 %)"

            # RSS with a large backlog: the MES is down again while the records arrive.
            write_inbox(data / "inbox", tmp / "staging", args.spool_records, 20_000, "S")
            peak = 0.0
            deadline = time.monotonic() + 900
            while gateway.get_json("/health")["buffer_depth"] < args.spool_records:
                peak = max(peak, gateway.peak_rss_mb())
                if time.monotonic() > deadline:
                    raise TimeoutError("spooling took too long")
                time.sleep(0.05)
            peak = max(peak, gateway.peak_rss_mb())
            spool_mb = gateway.get_json("/health")["spool_mb"]
            results["gateway peak RSS, 1M spooled"] = (
                f"{peak:.0f} MB with {args.spool_records:,} records spooled ({spool_mb:.0f} MB spool; goal < 150)"
            )
        finally:
            if mes is not None:
                mes.stop()
            gateway.stop()
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
