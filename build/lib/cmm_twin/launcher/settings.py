"""Options of `python -m cmm_twin run`: flags and `CMM_RUN_<FLAG>` variables (see `cmm_twin.options`).

The launcher reads only its own variables; its children get their settings as flags from it and
none of the `CMM_*` variables of its environment (`child_environment`), so a variable meant for
one program never changes another.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmm_twin.errors import ConfigError
from cmm_twin.options import (
    ENV_PREFIX,
    ConfigErrorParser,
    Option,
    option_table,
    parse_number,
    parse_path,
    parse_switch,
    parse_whole,
    resolve,
)
from cmm_twin.simulator.formats import FORMATS
from cmm_twin.simulator.shop import MAX_MACHINES

PROG = "python -m cmm_twin run"
STOP_TIMEOUT_S = 20.0
"""SIGTERM to SIGKILL, per child."""
CHAOS_COMMAND = "make chaos  (= python -m cmm_twin run --chaos-after 20 --chaos-down 15)"
PORT_OPTIONS = ("http_port", "mes_port", "opcua_port")


def _port(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        text = value.strip()
        if re.fullmatch(r"[0-9]{1,5}", text) is None or not low <= int(text) <= 65535:
            raise ValueError(f"expected a TCP port {low}..65535, got {value!r}")
        return int(text)

    return parse


def _format(value: str) -> str:
    name = value.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"expected one of {', '.join(FORMATS)}, got {value!r}")
    return name


RUN_ENV_PREFIX = ENV_PREFIX + "RUN_"
OPTIONS: tuple[Option, ...] = option_table(
    RUN_ENV_PREFIX,
    (
        Option(
            "--data-dir",
            parse_path,
            Path("data"),
            "data directory: the gateway's inbox/, archive/, quarantine/, state/, plus truth/ and mes.sqlite",
            "DIR",
        ),
        Option("--http-port", _port(0), 8080, "gateway HTTP port: live page, /health, /metrics (0: any free)", "PORT"),
        Option("--mes-port", _port(0), 8000, "mock MES port (0: any free)", "PORT"),
        Option("--opcua-port", _port(1), 4840, "OPC UA server port (0 is not supported)", "PORT"),
        Option("--rate", parse_number(0.0), 2.0, "parts per second the simulator writes (0: flat out)", "HZ"),
        Option(
            "--speedup",
            parse_number(0.0, low_open=True),
            240.0,
            "shop seconds per wall second (240: a day in 6 min)",
            "X",
        ),
        Option("--machines", parse_whole(1, MAX_MACHINES), 3, f"simulated CMMs, 1..{MAX_MACHINES}", "N"),
        Option(
            "--format",
            _format,
            "csv",
            f"file format the simulated CMMs write: {', '.join(FORMATS)} (Q-DAS, Zeiss Calypso, QIF 3)",
            "FORMAT",
        ),
        Option(
            "--outbox",
            parse_switch,
            False,
            "the gateway also writes compensated QIF (and DFQ for Q-DAS) files to DATA_DIR/outbox",
            is_switch=True,
        ),
        Option(
            "--chaos-after",
            parse_number(0.0, low_open=True),
            None,
            "chaos demo: kill the MES (SIGKILL) this many seconds after start-up",
            "S",
        ),
        Option(
            "--chaos-down",
            parse_number(0.0, low_open=True),
            15.0,
            "chaos demo: seconds the MES stays down before it is restarted (needs --chaos-after)",
            "S",
        ),
    ),
)


@dataclass(frozen=True)
class LauncherSettings:
    """Validated options of one launch."""

    data_dir: Path
    http_port: int
    mes_port: int
    opcua_port: int
    rate: float
    """Parts per wall second (0: as fast as the simulator can)."""
    speedup: float
    """Shop seconds per wall second: a shop day lasts 86,400 / speedup wall seconds."""
    machines: int
    format: str
    """What the simulator writes: csv, dfq, calypso or qif."""
    outbox: bool
    """Whether the gateway writes compensated files to DATA_DIR/outbox."""
    chaos_after: float | None
    """Seconds after start-up at which the MES is killed; None: no chaos."""
    chaos_down: float
    stop_timeout_s: float = STOP_TIMEOUT_S


def build_parser() -> argparse.ArgumentParser:
    """The command line of `run` (values stay text here; `load_settings` validates them)."""
    parser = ConfigErrorParser(
        prog=PROG,
        description=(
            "Start the mock MES, the edge gateway and the shop simulator on 127.0.0.1 and stream their "
            "logs; Ctrl+C stops the simulator, then the gateway, then the MES."
        ),
        epilog=f"Chaos demo (the MES killed and restarted): {CHAOS_COMMAND}",
        allow_abbrev=False,
    )
    parser.add_options(OPTIONS)
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> LauncherSettings:
    """Flags, then `CMM_RUN_<FLAG>` variables (an empty one counts as unset), then defaults; validated.

    Raises ConfigError naming the flag or variable of the first invalid value.
    """
    environ = os.environ if environ is None else environ
    resolved = resolve(OPTIONS, build_parser().parse_args(argv), environ)
    values, given = resolved.values, resolved.sources
    if "chaos_down" in given and values["chaos_after"] is None:
        raise ConfigError(given["chaos_down"], "needs --chaos-after (the chaos demo is off without it)")
    seen: dict[int, str] = {}
    for dest in PORT_OPTIONS:
        port, source = values[dest], given.get(dest, "--" + dest.replace("_", "-"))
        if port != 0 and port in seen:
            raise ConfigError(source, f"port {port} is already taken by {seen[port]}")
        seen[port] = source
    return LauncherSettings(**values)


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: the launcher's without any `CMM_*` option variable (the child
    gets its settings as flags), unbuffered output."""
    env = {name: value for name, value in environ.items() if not name.startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    return env
