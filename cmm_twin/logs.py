"""One log format for every cmm-twin process, its journald variant, the rotated log file, and the
escaping that keeps every log line one line (docs/logging.md)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cmm_twin.errors import ConfigError
from cmm_twin.options import Option, parse_number, parse_path, parse_whole

LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s [%(name)s]"
"""Gives lines like `... WARNING: Network Lost! Buffering... [cmm_twin.gateway.runner]`."""
JOURNAL_FORMAT = "%(levelname)s: %(message)s [%(name)s]"
"""Under systemd: journald stamps each line itself; `<N>` (the syslog priority) goes before it."""
SYSLOG_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
"""sd-daemon(3) line prefixes by level, so `journalctl -p warning` selects warnings and errors."""
NOISY_LOGGERS = ("asyncua", "aiohttp.access", "watchfiles")
PER_FILE: Mapping[str, object] = {"per_file": True}
"""`extra=` of the gateway's one line per inbox file: the summary folds these to DEBUG when many
files arrive (cmm_twin.gateway.summary)."""

LOG_FILE_OPTIONS: tuple[Option, ...] = (
    Option(
        "--log-file",
        parse_path,
        None,
        "also log to this file (stderr keeps logging), rotated at --log-file-max-mb; its directory must exist",
        "PATH",
    ),
    Option(
        "--log-file-max-mb",
        parse_number(0.0, 1e6, low_open=True),
        10.0,
        "size at which the log file is rotated to PATH.1 (PATH.1 to PATH.2, ...)",
        "MB",
    ),
    Option("--log-file-keep", parse_whole(1, 1000), 5, "rotated log files kept (PATH.1 .. PATH.N)", "N"),
)
"""The log file options every program adds to its table (`option_table` gives them its prefix)."""


@dataclass(frozen=True)
class LogFile:
    """Where a program also logs, and how the file is rotated."""

    path: Path
    max_mb: float = 10.0
    keep: int = 5

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> LogFile | None:
        """The log file of resolved option `values` (by dest); None when --log-file is not given."""
        path = values.get("log_file")
        if path is None:
            return None
        return cls(Path(path), float(values.get("log_file_max_mb", 10.0)), int(values.get("log_file_keep", 5)))


def pop_log_file(values: dict[str, Any]) -> LogFile | None:
    """The log file of resolved option `values`, its three options taken out of `values` (for a
    program whose settings class has no field for them)."""
    log_file = LogFile.of(values)
    for option in LOG_FILE_OPTIONS:
        values.pop(option.dest, None)
    return log_file


def one_line(text: str) -> str:
    """`text` with every character that is not printable (newline, carriage return, tab, ESC of an
    ANSI sequence, other control and separator characters) escaped as Python would (`\\n`,
    `\\x1b`), so user or network text can never forge or colour a log line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def safe_name(name: object) -> str:
    """`name` (a file name or path) as it may appear in a log line: printable names as they are,
    others repr-style quoted and escaped (`'a\\nb.csv'`), so a newline or control character in a
    name can never forge a log line."""
    text = str(name)
    return text if text.isprintable() else repr(text)


class OneLineFormatter(logging.Formatter):
    """The message of every record on one line (see `one_line`); a traceback follows on its own
    lines as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JournalFormatter(OneLineFormatter):
    """No time stamp (journald adds one) and the record's syslog priority `<N>` before every line,
    those of a traceback too, so each journal entry gets the record's priority."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (between two levels: that of the level below)."""
    return next((p for level, p in sorted(SYSLOG_PRIORITY.items(), reverse=True) if levelno >= level), 7)


def under_journald(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is connected to the journal: systemd sets JOURNAL_STREAM to the
    `device:inode` of a service's stdout/stderr, and a child whose stderr goes elsewhere (a pipe
    of the launcher) inherits the variable, so the numbers are compared (systemd.exec(5))."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(stream.fileno())
        return stat.st_dev == int(device) and stat.st_ino == int(inode)
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: str, log_file: LogFile | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Log to stderr at `level` (journald's format when stderr is the journal) and, with `log_file`,
    to that file too (rotated, always time-stamped); chatty libraries (asyncua, aiohttp access,
    watchfiles' "N changes detected" per file) only from WARNING.

    Raises ConfigError naming --log-file when the file cannot be opened for writing.
    """
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JournalFormatter() if under_journald(sys.stderr, environ) else OneLineFormatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [stderr]
    if log_file is not None:
        handlers.append(_file_handler(log_file))
    logging.basicConfig(level=level, handlers=handlers)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if log_file is not None:
        logging.getLogger(__name__).info(
            "logging to %s too (rotated at %g MB, %d kept)", safe_name(log_file.path), log_file.max_mb, log_file.keep
        )


def start_logging(prog: str, level: str, log_file: LogFile | None) -> bool:
    """`setup_logging` at a program's start; False after printing why the log file cannot be
    written as one line (the entry point then exits 2)."""
    try:
        setup_logging(level, log_file)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return False
    return True


def _file_handler(log_file: LogFile) -> logging.Handler:
    path = log_file.path
    try:
        handler = logging.handlers.RotatingFileHandler(
            path,
            maxBytes=max(1, int(log_file.max_mb * 1e6)),
            backupCount=log_file.keep,
            encoding="utf-8",
            errors="backslashreplace",
        )
    except FileNotFoundError:
        raise ConfigError(
            "--log-file", f"cannot write {safe_name(path)}: no directory {safe_name(path.parent)}"
        ) from None
    except IsADirectoryError:
        raise ConfigError("--log-file", f"{safe_name(path)} is a directory: give a file name in it") from None
    except OSError as exc:
        raise ConfigError("--log-file", f"cannot write {safe_name(path)}: {exc.strerror or exc}") from None
    handler.setFormatter(OneLineFormatter(LOG_FORMAT))
    return handler
