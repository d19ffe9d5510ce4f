"""Benchmark of OPC UA history and results (issue 14, parts 2 and 4), a real asyncua server and
client on loopback (in this one process: one core encodes and decodes) and a real SQLite historian:

- HistoryRead of 10,000 values of one characteristic in a store of 1,000 characteristics
  (10 machines x 100 features) x 1,000 points plus those 10,000, interleaved in time, following
  the continuation points: NumValuesPerNode 0 (the server's pages of 2,000) and pages of 1,000
  (goal: < 1 s);
- the same reads with an index (machine_id, feature, time_ns) on the table, and the store's write
  rate without and with that index (the index is not in the product: this measures what it would
  give and cost);
- ResultReady: events emitted per second by `ResultEvents.emit` with one client subscribed, and
  until that client has received them all.

    .venv/bin/python -m bench.bench_opcua_history [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.figures import Figure, progress, run_main
from cmm_twin.gateway.sinks.historian.sqlite import HistoryStore, SqliteHistorianSink
from cmm_twin.gateway.sinks.opcua.results import result_ready_type_id
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch
from tests.test_opcua_history import at, char_id, details, read_pages
from tests.test_opcua_history import serving as history_server
from tests.test_opcua_results import Events, wait_for_count
from tests.test_opcua_results import serving as results_server

READ_GOAL_S = 1.0
VALUES = 10_000
T0_NS = 1_795_766_400_000_000_000
BATCH = 5_000
INDEX_SQL = "CREATE INDEX IF NOT EXISTS bench_characteristic ON cmm_measurement (machine_id, feature, time_ns)"
_PASS = VERDICT_NAMES.tolist().index("PASS")


def records(machines: list[str], features: list[str], stamps_ns: np.ndarray[Any, Any]) -> RecordBatch:
    """One record per time stamp, the characteristic given per row."""
    n = len(stamps_ns)
    k = np.arange(n)
    return RecordBatch.with_blanks(
        n,
        {
            "measurement_id": [""] * n,
            "timestamp": [""] * n,
            "timestamp_ns": stamps_ns.astype(np.int64),
            "machine_id": machines,
            "part_id": [f"P{i}" for i in k.tolist()],
            "feature": features,
            "material": ["AL6061"] * n,
            "compensated_mm": 100.0 + (k % 97) * 1e-4,
            "deviation_um": (k % 97) * 0.1,
            "uncertainty_um": np.full(n, 2.5),
            "verdict": np.full(n, _PASS, dtype=np.int8),
            "flags": np.zeros(n, dtype=np.int32),
            "unit": ["mm"] * n,
        },
    )


def store_batches(characteristics: int, points: int) -> list[RecordBatch]:
    """`characteristics` x `points` records (10 machines) plus VALUES of CMM-00/TARGET, interleaved
    in time, in write batches of BATCH rows."""
    names = [(f"CMM-{c % 10:02d}", f"F{c // 10:03d}") for c in range(characteristics)]
    rows = characteristics * points + VALUES
    every = rows // VALUES  # one row in `every` is the target's; the others cycle through the characteristics
    machines: list[str] = []
    features: list[str] = []
    other = 0
    for i in range(rows):
        if i % every == every - 1 and i // every < VALUES:
            machine_id, feature = "CMM-00", "TARGET"
        else:
            machine_id, feature = names[other % characteristics]
            other += 1
        machines.append(machine_id)
        features.append(feature)
    stamps = T0_NS + np.arange(rows, dtype=np.int64) * 1_000_000
    return [
        records(machines[s : s + BATCH], features[s : s + BATCH], stamps[s : s + BATCH]) for s in range(0, rows, BATCH)
    ]


def fill(path: Path, batches: list[RecordBatch], index: bool) -> float:
    """Write `batches` into a new store at `path` (with the index when asked); rows/s."""
    store = HistoryStore(path)
    try:
        if index:
            with sqlite3.connect(path) as db:
                db.execute(INDEX_SQL)
            db.close()
        started = time.perf_counter()
        for b in batches:
            store.write(b)
        seconds = time.perf_counter() - started
    finally:
        store.close()
    return sum(len(b) for b in batches) / seconds


async def read_times(path: Path, repeats: int) -> dict[str, float]:
    """Median seconds of reading the VALUES values of CMM-00/TARGET/CompensatedLength: with
    NumValuesPerNode 0 (the server's pages) and in pages of 1,000."""
    sink = SqliteHistorianSink(path)
    await sink.open()
    times: dict[str, list[float]] = {"NumValuesPerNode 0 (server pages of 2,000)": [], "pages of 1,000": []}
    try:
        async with history_server(sink.stream, [("CMM-00", "TARGET")]) as client:
            ns = await client.get_namespace_index("urn:cmm-twin")
            node = client.get_node(char_id(ns, "CMM-00", "TARGET", "CompensatedLength"))
            for _ in range(repeats):
                for name, per_call in zip(times, (0, 1_000), strict=True):
                    started = time.perf_counter()
                    values, _ = await read_pages(node, details(at(T0_NS), at(T0_NS + 10**15), per_call))
                    times[name].append(time.perf_counter() - started)
                    if len(values) != VALUES:
                        raise AssertionError(f"read {len(values)} values, not {VALUES}")
    finally:
        await sink.close()
    return {name: statistics.median(spent) for name, spent in times.items()}


async def event_rates(rows: int) -> tuple[float, float]:
    """(events/s of `emit`, events/s until one subscribed client has them all) for `rows` records."""
    batch = records(["CMM-01"] * rows, ["D1"] * rows, T0_NS + np.arange(rows, dtype=np.int64) * 1_000_000)
    async with results_server() as (client, events, ns):
        handler = Events()
        subscription = await client.create_subscription(50, handler)
        await subscription.subscribe_events(client.nodes.server, client.get_node(result_ready_type_id(ns)), queuesize=0)
        started = time.perf_counter()
        await events.emit(batch)
        emitted = time.perf_counter() - started
        await wait_for_count(handler.received, rows)
        received = time.perf_counter() - started
    return rows / emitted, rows / received


def figures(quick: bool = False) -> list[Figure]:
    """HistoryRead times without and with an index, the store's write rates, the event rates."""
    characteristics = 100 if quick else 1_000
    batches = store_batches(characteristics, 1_000)
    rows = sum(len(b) for b in batches)
    store = f"{characteristics:,} characteristics x 1,000 points + {VALUES:,}"
    results: dict[bool, tuple[float, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="cmm-bench-opcua-history-") as tmp:
        for index in (False, True):
            path = Path(tmp) / f"history-{int(index)}.sqlite"
            progress(f"opcua history: writing {rows:,} points {'with' if index else 'without'} the index")
            rate = fill(path, batches, index)
            progress("opcua history: HistoryRead of 10,000 values")
            results[index] = rate, asyncio.run(read_times(path, 1 if quick else 3))
    progress("opcua results: ResultReady events")
    emit_rate, delivered_rate = asyncio.run(event_rates(2_000 if quick else 10_000))
    out: list[Figure] = []
    for name, seconds in results[False][1].items():
        out.append(
            Figure(
                f"opcua: HistoryRead of {VALUES:,} values, {name} ({store} points stored)",
                seconds * 1000,
                "ms",
                f"< {READ_GOAL_S * 1000:.0f} ms",
                baseline=results[True][1][name] * 1000,
                baseline_name="the same with an index by characteristic",
                higher_is_better=False,
                met=seconds < READ_GOAL_S,
            )
        )
    out.append(
        Figure(
            f"opcua: history store writes without an index by characteristic ({BATCH:,}-row batches)",
            results[False][0],
            "rows/s",
            baseline=results[True][0],
            baseline_name="with the index",
        )
    )
    out.append(Figure("opcua: ResultReady events emitted (one subscribed client)", emit_rate, "events/s"))
    out.append(Figure("opcua: ResultReady events received by that client", delivered_rate, "events/s"))
    return out


def main() -> None:
    """Run the benchmark and print the figures."""
    run_main(__doc__, figures)


if __name__ == "__main__":
    main()
