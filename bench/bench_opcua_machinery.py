"""What the OPC UA Machinery model (OPC 40001-1) costs: loading the DI, IA and Machinery nodesets
into a running server (time, memory, the longest time the event loop is held meanwhile, which is
how late a /health answer can be), the nodes of each machine, and the per-batch `observe` and the
idle `tick` the sink calls.

Needs the nodesets (scripts/nodesets.sh, or CMM_OPCUA_NODESETS).

    .venv/bin/python -m bench.bench_opcua_machinery [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import tempfile
import time
from pathlib import Path

from asyncua.server.server import Server

from bench.figures import Figure, progress, run_main
from cmm_twin.gateway.sinks.opcua.address_space import AddressSpace
from cmm_twin.gateway.sinks.opcua.machinery import MachineryModel
from cmm_twin.gateway.sinks.opcua.nodesets import NODESETS_ENV, default_nodesets_dir, nodeset_paths
from cmm_twin.gateway.sinks.opcua.settings import OpcUaSettings

LOAD_GOAL_S = 1.5
STALL_GOAL_MS = 100.0
RSS_GOAL_MB = 30.0


def rss_mb() -> float:
    """This process's resident set size, MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def _watch(stop: asyncio.Event, gaps: list[float]) -> None:
    """How long the loop is held: the lateness of 5 ms sleeps."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.005)
        gaps.append(time.perf_counter() - before - 0.005)


async def measure(machines: int, observations: int) -> list[Figure]:
    directory = Path(os.environ.get(NODESETS_ENV) or default_nodesets_dir())
    nodeset_paths(directory)  # the reason, when they are missing
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0/cmm-twin/")
    space = await AddressSpace.create(server)
    await server.start()
    try:
        with tempfile.TemporaryDirectory() as state:
            settings = OpcUaSettings(state_dir=Path(state), nodesets_dir=directory)
            model = MachineryModel(server, space.ns, settings)
            rss_before = rss_mb()
            stop, gaps = asyncio.Event(), list[float]()
            watcher = asyncio.create_task(_watch(stop, gaps))
            await asyncio.sleep(0.02)
            started = time.perf_counter()
            if not await model.load():
                raise RuntimeError(model.status)
            load_s = time.perf_counter() - started
            stop.set()
            await watcher
            rss_loaded = rss_mb()
            progress(f"nodesets loaded in {load_s:.2f} s, +{rss_loaded - rss_before:.1f} MB")

            now = dt.datetime.now(dt.UTC)
            for m in range(machines):  # the machines' measurement objects, which the Machinery ones link to
                await space.ensure_machine(f"CMM-{m:03d}")
            rss_cmm = rss_mb()
            started = time.perf_counter()
            for m in range(machines):
                await model.observe(now, ok=[(f"CMM-{m:03d}", "length")])
            build_ms = (time.perf_counter() - started) * 1000 / machines
            rss_machines = rss_mb() - rss_cmm
            started = time.perf_counter()
            for i in range(observations):
                await model.observe(now, ok=[(f"CMM-{i % machines:03d}", "length")])
            observe_us = (time.perf_counter() - started) * 1e6 / observations
            started = time.perf_counter()
            for _ in range(observations):
                await model.tick(now)
            tick_us = (time.perf_counter() - started) * 1e6 / observations
    finally:
        await server.stop()
    stall_ms = max(gaps) * 1000
    return [
        Figure("Machinery nodesets: load on a running server", load_s, "s", f"<= {LOAD_GOAL_S:g} s",
               higher_is_better=False, met=load_s <= LOAD_GOAL_S),
        Figure("Machinery nodesets: longest event-loop hold while loading", stall_ms, "ms",
               f"<= {STALL_GOAL_MS:g} ms", higher_is_better=False, met=stall_ms <= STALL_GOAL_MS),
        Figure("Machinery nodesets: RSS", rss_loaded - rss_before, "MB", f"<= {RSS_GOAL_MB:g} MB",
               higher_is_better=False, met=rss_loaded - rss_before <= RSS_GOAL_MB),
        Figure(f"Machinery: nodes of one machine ({machines} machines)", build_ms, "ms", higher_is_better=False),
        Figure(f"Machinery: RSS of {machines} machines", rss_machines, "MB", higher_is_better=False),
        Figure("Machinery: observe, state unchanged", observe_us, "µs", higher_is_better=False),
        Figure("Machinery: tick, nothing due", tick_us, "µs", higher_is_better=False),
    ]  # fmt: skip


def figures(quick: bool) -> list[Figure]:
    """The benchmark's figures."""
    return asyncio.run(measure(machines=10 if quick else 100, observations=1_000 if quick else 20_000))


def main() -> None:
    """Run the benchmark and print the figures."""
    run_main(__doc__, figures)


if __name__ == "__main__":
    main()
