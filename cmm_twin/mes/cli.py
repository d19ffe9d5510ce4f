"""Command line of the mock MES (`mock_mes.py`).

Every flag also comes from the environment variable `CMM_MES_<FLAG>` (the flag wins; an empty
variable counts as unset; see `cmm_twin.options`). An invalid value is one line on stderr naming
the flag or variable, exit 2. The bearer token is never a flag: it comes from MES_TOKEN in the
environment or an untracked `.env`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

from cmm_twin.errors import CmmTwinError
from cmm_twin.logs import setup_logging
from cmm_twin.mes.server import MesConfig, create_app
from cmm_twin.mes.store import StoreError
from cmm_twin.options import (
    ConfigErrorParser,
    Option,
    load_or_report,
    option_table,
    parse_host,
    parse_log_level,
    parse_number,
    parse_path,
    parse_whole,
    resolve,
)

PROG = "mock_mes.py"
TOKEN_ENV = "MES_TOKEN"
MAX_BODY_MB_LIMIT = 1024.0
GC_GEN0_THRESHOLD = 50_000
"""Parsing a 500-record batch allocates ~10,000 short-lived containers; with CPython's default
threshold (700) the cyclic GC would run ~15 times per batch (~10 % of the ingest CPU)."""

log = logging.getLogger("cmm_twin.mes")
ready_log = logging.getLogger("cmm_twin.mes.ready")
"""Logs the start-up line; INFO whatever --log-level says, since scripts and tests wait for it."""


def _machine_list(value: str) -> frozenset[str]:
    machines = frozenset(m.strip() for m in value.split(",") if m.strip())
    if not machines:
        raise ValueError("expected one or more machine ids separated by commas")
    bad = sorted(m for m in machines if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", m) is None)
    if bad:
        raise ValueError(f"not a machine id: {bad[0]!r}")
    return machines


ENV_PREFIX = "CMM_MES_"
OPTIONS: tuple[Option, ...] = option_table(
    ENV_PREFIX,
    (
        Option("--host", parse_host, "127.0.0.1", "address to listen on", "HOST"),
        Option("--port", parse_whole(0, 65535), 8000, "TCP port (0: any free port, logged at start)", "PORT"),
        Option("--db", parse_path, Path("data/mes.sqlite"), "SQLite database file (created if missing)", "PATH"),
        Option("--fail-rate", parse_number(0.0, 1.0), 0.0, "share of POSTs answered 503 + Retry-After: 1 (0..1)", "F"),
        Option("--latency-ms", parse_number(0.0, 600_000.0), 0.0, "delay before answering each /api/ request", "N"),
        Option("--seed", parse_whole(-(2**63), 2**63 - 1), 0, "seed of the fault injection (reproducible runs)", "S"),
        Option(
            "--known-machines",
            _machine_list,
            None,
            "comma-separated machine ids the MES knows; records of others are answered 422 (default: any)",
            "IDS",
        ),
        Option(
            "--max-body-mb",
            parse_number(0.0, MAX_BODY_MB_LIMIT, low_open=True),
            16.0,
            "largest request body (413 above)",
            "M",
        ),
        Option(
            "--log-level",
            parse_log_level,
            "INFO",
            "DEBUG, INFO, WARNING or ERROR (the start-up line is always logged)",
            "LEVEL",
        ),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The mock MES command line (defaults are applied after the environment)."""
    parser = ConfigErrorParser(
        prog=PROG,
        description=f"cmm-twin mock MES (aiohttp + SQLite); requires a bearer token when {TOKEN_ENV} is set",
    )
    parser.add_options(OPTIONS)
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> MesConfig:
    """Parse and validate flags and `CMM_MES_<FLAG>` variables (and MES_TOKEN); raises ConfigError."""
    environ = os.environ if environ is None else environ
    values = resolve(OPTIONS, build_parser().parse_args(argv), environ).values
    return MesConfig(**values, token=environ.get(TOKEN_ENV) or None)


async def serve(config: MesConfig, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`); raises StoreError or OSError when it cannot start."""
    stop = asyncio.Event() if stop is None else stop
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        gc.freeze()  # what start-up created lives on: keep it out of every collection
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        ready_log.info(
            "mock MES listening on http://%s:%d (db %s, %s, fail-rate %g, latency %g ms)",
            shown,
            port,
            config.db,
            "bearer token required" if config.token else "no token required",
            config.fail_rate,
            config.latency_ms,
        )
        await stop.wait()
        log.info("mock MES stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, validate, serve. Bad configuration exits 2 with one line on stderr."""
    config = load_or_report(PROG, lambda: load_config(argv))
    if config is None:
        return 2
    setup_logging(config.log_level)
    ready_log.setLevel(logging.INFO)
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        return 0
    except StoreError as exc:
        print(f"{PROG}: error: --db: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except CmmTwinError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
