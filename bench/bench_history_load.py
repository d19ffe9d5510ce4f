"""Benchmark of `/api/v1/history` under load, the real gateway on loopback:

- a history database is filled with N points (default 200,000, 3 machines, within the last hour)
  before the gateway starts (`--historian sqlite`, the default);
- 20 clients each ask at once for the newest 100,000 points (`limit=100000`), and read the whole
  answer;
- meanwhile `/health` is asked every 100 ms on its own connection.

Figures: the gateway's peak RSS over the run (VmHWM from /proc; goal < 200 MB) and the /health
latency during the load, p50 and max (goal: max < 1 s).

    .venv/bin/python -m bench.bench_history_load [--rows 200000] [--clients 20] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.bench_historian import make_rows
from bench.figures import Figure, add_common_arguments, emit, progress
from cmm_twin.gateway.sinks.historian.sqlite import HistoryStore
from tests.gateway_harness import GatewayProcess, free_port

LIMIT = 100_000
RSS_GOAL_MB = 200.0
HEALTH_GOAL_S = 1.0
HEALTH_INTERVAL_S = 0.1
POINT_MARK = b'{"time":'


def fill(path: Path, rows: int) -> None:
    """`rows` points in the history database at `path` (written directly, in batches)."""
    batch = make_rows(rows)
    store = HistoryStore(path)
    try:
        for start in range(0, rows, 50_000):
            store.write(batch.take(slice(start, start + 50_000)))
    finally:
        store.close()


async def load(port: int, clients: int, rows: int) -> tuple[list[float], list[int]]:
    """Fire `clients` history queries at once while timing /health; (health latencies s, points per answer)."""
    base = f"http://127.0.0.1:{port}"
    now_s = int(time.time())
    params = {"since": str(now_s - 86_400), "until": str(now_s + 60), "limit": str(LIMIT)}
    latencies: list[float] = []
    done = asyncio.Event()

    async def probe(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            started = time.perf_counter()
            async with session.get(f"{base}/health") as response:
                await response.read()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def query(session: aiohttp.ClientSession) -> int:
        # The answer is read as it comes and its points counted, not parsed: parsing 20 documents
        # of 25 MB would block this process's event loop and show up as /health latency.
        async with session.get(f"{base}/api/v1/history", params=params) as response:
            if response.status != 200:
                raise RuntimeError(f"history answered {response.status}: {await response.text()}")
            head, points, carry = b"", 0, b""
            async for chunk in response.content.iter_chunked(1 << 16):
                if len(head) < 400:
                    head += chunk[:400]
                points += (carry + chunk).count(POINT_MARK)
                carry = chunk[-(len(POINT_MARK) - 1) :]
        count = int(head.split(b'"count":', 1)[1].split(b",", 1)[0])
        if count != points or count != min(rows, LIMIT):
            raise AssertionError(f"incomplete answer: count {count}, {points} points")
        return count

    timeout = aiohttp.ClientTimeout(total=900)
    connector = aiohttp.TCPConnector(limit=clients)
    async with (
        aiohttp.ClientSession(timeout=timeout) as health_session,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
    ):
        prober = asyncio.create_task(probe(health_session))
        try:
            counts = await asyncio.gather(*(query(session) for _ in range(clients)))
        finally:
            done.set()
            await prober
    return latencies, counts


def measure(rows: int, clients: int) -> dict[str, float]:
    """{"rss_mb", "health_p50_s", "health_max_s", "seconds"} of one run."""
    with tempfile.TemporaryDirectory(prefix="cmm-bench-history-load-") as tmp_text:
        tmp = Path(tmp_text)
        data = tmp / "data"
        progress(f"history load: filling the history database with {rows:,} points")
        fill(data / "state" / "history.sqlite", rows)
        gateway = GatewayProcess(
            [
                "--data-dir", str(data), "--http", "127.0.0.1:0",
                "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
            ],
            tmp / "gateway.log",
        )  # fmt: skip
        try:
            port = gateway.wait_ready(120)
            progress(f"history load: {clients} concurrent queries at limit={LIMIT:,}")
            started = time.perf_counter()
            latencies, _ = asyncio.run(load(port, clients, rows))
            seconds = time.perf_counter() - started
            rss = gateway.peak_rss_mb()
        finally:
            gateway.stop()
    return {
        "rss_mb": rss,
        "health_p50_s": statistics.median(latencies),
        "health_max_s": max(latencies),
        "seconds": seconds,
    }


def figures(quick: bool = False, *, rows: int | None = None, clients: int = 20) -> list[Figure]:
    """Peak RSS and /health latency of the gateway while `clients` history queries run at once."""
    rows = rows or (120_000 if quick else 200_000)
    result = measure(rows, clients)
    load_name = f"{clients} concurrent /api/v1/history queries at limit={LIMIT:,} ({rows:,} points stored)"
    return [
        Figure(
            f"history: gateway peak RSS during {load_name}",
            result["rss_mb"],
            "MB",
            f"< {RSS_GOAL_MB:.0f} MB",
            higher_is_better=False,
            met=result["rss_mb"] < RSS_GOAL_MB,
        ),
        Figure(
            f"history: /health latency p50 during the same load ({result['seconds']:.1f} s)",
            result["health_p50_s"] * 1000,
            "ms",
            higher_is_better=False,
        ),
        Figure(
            "history: /health latency max during the same load",
            result["health_max_s"] * 1000,
            "ms",
            f"< {HEALTH_GOAL_S * 1000:.0f} ms",
            higher_is_better=False,
            met=result["health_max_s"] < HEALTH_GOAL_S,
        ),
    ]


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="points stored (default 200,000; 120,000 with --quick)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent history queries (default 20)")
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick, rows=args.rows, clients=args.clients), as_json=args.json)


if __name__ == "__main__":
    main()
