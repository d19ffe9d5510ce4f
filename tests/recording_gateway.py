"""Runs the real gateway with one extra durable sink that records every delivered record in a
JSONL file (fsynced before it acknowledges). Used by the crash tests as a subprocess:

    python tests/recording_gateway.py RECORD.jsonl [gateway flags...]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmm_twin.gateway.app import Gateway
from cmm_twin.gateway.config import load_config
from cmm_twin.logs import setup_logging
from tests.gateway_harness import RecordingSink


async def _run(record_path: Path, argv: list[str]) -> int:
    config = load_config(argv)
    setup_logging(config.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await Gateway(config, extra_sinks=[RecordingSink(path=record_path)]).run(stop)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_run(Path(sys.argv[1]), sys.argv[2:])))
