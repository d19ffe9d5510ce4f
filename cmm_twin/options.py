"""What the command lines of cmm-twin share: a flag with its `CMM_<FLAG>` environment variable,
and the parsers of values that several programs take."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from cmm_twin.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Option:
    """One flag: its parser, default and help. Its environment variable is `CMM_<FLAG>`; in a TOML
    file the key is the flag's name with underscores."""

    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    is_switch: bool = False
    required: bool = False

    @property
    def dest(self) -> str:
        """Attribute name (and TOML key): `--data-dir` -> `data_dir`."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        """Environment variable: `--data-dir` -> `CMM_DATA_DIR`."""
        return "CMM_" + self.dest.upper()


class ConfigErrorParser(argparse.ArgumentParser):
    """An argument parser that raises ConfigError (printed as one line, exit 2, by the entry
    point) instead of printing usage and exiting itself."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError("arguments", message)


def parse_log_level(value: str) -> str:
    """DEBUG, INFO, WARNING or ERROR (any case)."""
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return level


def parse_host(value: str) -> str:
    """An IP address or `localhost` (no name lookups: the gateway binds where it is told)."""
    host = value.strip()
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"expected an IP address or localhost, got {value!r}") from None
    return host
