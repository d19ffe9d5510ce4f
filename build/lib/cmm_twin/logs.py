"""One log format for every cmm-twin process."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s [%(name)s]"
"""Gives lines like `... WARNING: Network Lost! Buffering... [cmm_twin.gateway.runner]`."""


def setup_logging(level: str) -> None:
    """Log to stderr at `level`; chatty libraries (asyncua, aiohttp access, watchfiles' "N changes
    detected" per file) only from WARNING."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("asyncua", "aiohttp.access", "watchfiles"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def safe_name(name: object) -> str:
    """`name` (a file name or path) as it may appear in a log line: printable names as they are,
    others repr-style quoted and escaped (`'a\\nb.csv'`), so a newline or control character in a
    name can never forge a log line."""
    text = str(name)
    return text if text.isprintable() else repr(text)
