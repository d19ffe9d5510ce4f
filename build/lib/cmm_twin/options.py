"""The one configuration resolver of cmm-twin's programs, and the value parsers several share.

Each program describes its flags as a table of `Option`s made by `option_table(prefix, ...)`; the
table gives every option its environment variable, `<PREFIX><DEST>`. The prefix is the program's
own where names would clash: the gateway reads `CMM_<FLAG>`, the mock MES `CMM_MES_<FLAG>`, the
simulator `CMM_SIM_<FLAG>` and the launcher `CMM_RUN_<FLAG>`. Secrets (MES_TOKEN, INFLUX_TOKEN,
OPCUA_USER, OPCUA_PASSWORD) are never options.

`resolve` applies one rule everywhere: the flag wins, then the environment variable, then the
program's TOML file (the gateway's `--config`), then the default. An empty (or blank) environment
variable counts as unset. An invalid value raises ConfigError naming the flag, the variable or the
TOML key it came from; `ConfigErrorParser` turns command-line errors into ConfigError too, which
each entry point prints as one line before exiting 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from cmm_twin.envfile import load_env_file
from cmm_twin.errors import ConfigError

T = TypeVar("T")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENV_PREFIX = "CMM_"
"""Every option variable starts with it (the gateway's prefix; the others extend it)."""


@dataclass(frozen=True)
class Option:
    """One flag: its parser, default and help. Its environment variable is `env_prefix` + the
    flag's name in capitals (set by the program's `option_table`); in a TOML file the key is
    the flag's name with underscores."""

    flag: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    is_switch: bool = False
    required: bool = False
    env_prefix: str = ENV_PREFIX

    @property
    def dest(self) -> str:
        """Attribute name (and TOML key): `--data-dir` -> `data_dir`."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        """Environment variable: `--data-dir` -> `CMM_DATA_DIR` (with the gateway's prefix)."""
        return self.env_prefix + self.dest.upper()

    @property
    def usage(self) -> str:
        """The flag as typed: `--data-dir DIR`, or the bare flag of a switch."""
        return self.flag if self.is_switch else f"{self.flag} {self.metavar or self.dest.upper()}"


def option_table(env_prefix: str, options: Iterable[Option]) -> tuple[Option, ...]:
    """A program's options, each reading its variable under the program's `env_prefix`."""
    return tuple(dataclasses.replace(option, env_prefix=env_prefix) for option in options)


def show_default(value: Any) -> str:
    """A default as the help and the README show it (`off` for None/False, HOST:PORT joined)."""
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "off" if value is None or value is False else str(value)


class ConfigErrorParser(argparse.ArgumentParser):
    """An argument parser that raises ConfigError (printed as one line, exit 2, by the entry
    point) instead of printing usage and exiting itself. Values stay text: `resolve` parses them."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError("arguments", message)

    def add_options(self, options: Iterable[Option]) -> None:
        """One argument per option, its help naming its variable and default."""
        for option in options:
            shown = "required" if option.required else f"default {show_default(option.default)}"
            help_text = f"{option.help} (env {option.env}; {shown})"
            if option.is_switch:
                self.add_argument(option.flag, action="store_const", const="true", default=None, help=help_text)
            else:
                self.add_argument(
                    option.flag, metavar=option.metavar or option.dest.upper(), default=None, help=help_text
                )


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's value; None when it is unset, empty or blank (an empty variable is unset)."""
    value = environ.get(name)
    return value if value is not None and value.strip() else None


@dataclass(frozen=True)
class Resolved:
    """The parsed value of every option of a table, and where each value not defaulted came from."""

    values: dict[str, Any]
    """Every option's value by dest."""
    sources: dict[str, str]
    """Dest -> the flag, variable or `FILE: key` the value came from (defaults are absent)."""


def resolve(
    options: Iterable[Option],
    args: argparse.Namespace,
    environ: Mapping[str, str],
    file_values: Mapping[str, Any] | None = None,
    file_name: str = "",
) -> Resolved:
    """Flag, then environment variable, then `file_values` (a TOML file's keys), then default.

    Raises ConfigError naming the source of the first invalid value, or the flag of a missing
    required one.
    """
    file_values = {} if file_values is None else file_values
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in options:
        raw, source = _raw_value(option, args, environ, file_values, file_name)
        if raw is None:
            if option.required:
                raise ConfigError(option.flag, f"required (give {option.usage} or set {option.env})")
            values[option.dest] = option.default
            continue
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(source, str(exc)) from None
        sources[option.dest] = source
    return Resolved(values, sources)


def _raw_value(
    option: Option, args: argparse.Namespace, environ: Mapping[str, str], file_values: Mapping[str, Any], file_name: str
) -> tuple[str | None, str]:
    """The option's text and where it came from; None when nothing sets it."""
    flag_value: str | None = getattr(args, option.dest, None)
    if flag_value is not None:
        return flag_value, option.flag
    env_text = env_value(environ, option.env)
    if env_text is not None:
        return env_text, option.env
    if option.dest in file_values:
        raw = file_values[option.dest]
        return (str(raw).lower() if isinstance(raw, bool) else str(raw)), f"{file_name}: {option.dest}"
    return None, option.flag


def load_or_report(prog: str, load: Callable[[], T]) -> T | None:
    """A program's start: the untracked `.env` into the environment, then `load()` (its settings);
    None after printing a ConfigError as one line on stderr (the entry point then exits 2)."""
    load_env_file()
    try:
        return load()
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None


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


def parse_whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers in low..high (no upper bound when `high` is None)."""
    bound = f"{low}..{high}" if high is not None else f">= {low}"

    def parse(value: str) -> int:
        text = value.strip()
        if (
            re.fullmatch(r"[-+]?[0-9]{1,20}", text) is None
            or int(text) < low
            or (high is not None and int(text) > high)
        ):
            raise ValueError(f"expected a whole number {bound}, got {value!r}")
        return int(text)

    return parse


def parse_number(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """A parser of finite numbers >= low (> low when `low_open`) and <= high."""
    bound = (f"> {low:g}" if low_open else f">= {low:g}") + (f" and <= {high:g}" if math.isfinite(high) else "")

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not (low < number if low_open else low <= number) or number > high:
            raise ValueError(f"expected a number {bound}, got {value!r}")
        return number

    return parse


def parse_path(value: str) -> Path:
    """A file or directory path (`~` expanded); not empty."""
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value).expanduser()


def parse_text(value: str) -> str:
    """A non-empty text, stripped."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def parse_url(value: str) -> str:
    """An http(s)://host[:port]/... URL."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s)://host[:port]/... URL, got {value!r}")
    return value.strip()


def parse_switch(value: str) -> bool:
    """true/false, yes/no, on/off, 1/0 (empty: false)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def parse_positive(value: str) -> float:
    """A finite number > 0."""
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return number
