"""Command line of the edge gateway (`cmm_edge_gateway.py`)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.config import PROG, GatewayConfig, load_config
from cmm_twin.gateway.limits import raise_open_file_limit
from cmm_twin.logs import setup_logging
from cmm_twin.options import load_or_report

log = logging.getLogger("cmm_twin.gateway")


async def serve(config: GatewayConfig) -> int:
    """Run the gateway until SIGINT/SIGTERM (or, with --once, until done); returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await Gateway(config).run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, run. Bad configuration exits 2 with one line."""
    config = load_or_report(PROG, lambda: load_config(argv))
    if config is None:
        return 2
    setup_logging(config.log_level)
    raise_open_file_limit()
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
    except CmmTwinError as exc:  # start-up faults (address taken, database unusable): one line, no traceback
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
