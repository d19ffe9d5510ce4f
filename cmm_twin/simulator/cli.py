"""Command line of the CMM simulator (README, "The simulator").

`cmm_simulator.py [--outdir DIR] [--machines N] [--count N] [--rate HZ] [--seed S] [--truth-dir DIR]
[--speedup X] [--start ISO8601] [--format csv|dfq|calypso|qif] [--timezone ZONE] [--scenario lab|shop|hot-parts]
[--mpe A:K[,A:K...]] [--log-level LEVEL]`.
Every flag has an environment variable `CMM_SIM_<FLAG>` (`CMM_SIM_OUTDIR`, `CMM_SIM_RATE`,
`CMM_SIM_TRUTH_DIR`, ...) used when the flag is absent; an empty variable counts as unset (see
`cmm_twin.options`). Invalid values exit with code 2 and one line on stderr naming the flag or
variable. SIGINT and SIGTERM finish the file in hand and exit 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from cmm_twin.errors import ConfigError
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.logs import setup_logging
from cmm_twin.options import (
    ConfigErrorParser,
    Option,
    load_or_report,
    option_table,
    parse_log_level,
    parse_number,
    parse_path,
    parse_whole,
    resolve,
)
from cmm_twin.simulator.formats import FORMATS
from cmm_twin.simulator.machines import DEFAULT_MPE, MachineMpe, format_mpe, parse_mpe
from cmm_twin.simulator.scenario import SCENARIOS
from cmm_twin.simulator.shop import BLOCK_PARTS, MAX_MACHINES, ShopModel
from cmm_twin.simulator.writer import PartFileWriter, format_timestamp

log = logging.getLogger(__name__)

PROG = "cmm_simulator"
_STOP_POLL_S = 0.2
"""Longest pacing sleep between checks of the stop request."""


@dataclass(frozen=True)
class SimulatorSettings:
    """Validated settings of one simulator run."""

    outdir: Path
    machines: int = 3
    count: int | None = None
    """Parts to write; None runs until stopped."""
    rate_hz: float = 2.0
    """Parts per wall-clock second; 0 writes as fast as possible."""
    seed: int = 0
    truth_dir: Path | None = None
    speedup: float = 60.0
    """Shop seconds per wall second of time stamps."""
    start: datetime | None = None
    """Time stamp of part 0; None means now, truncated to the second."""
    format: str = "csv"
    """File format of the parts: csv, dfq (Q-DAS), calypso (Zeiss Calypso tables) or qif (QIF 3)."""
    timezone: str | None = None
    """IANA zone the local times of dfq and calypso files are written in; None: the host's."""
    scenario: str = "shop"
    """Preset of the shop model: lab, shop or hot-parts (`scenario.SCENARIOS`)."""
    mpe: tuple[MachineMpe, ...] = DEFAULT_MPE
    """(A um, K mm/um) of each machine's E0 = A + L/K, cycled over the machines."""
    log_level: str = "INFO"

    @property
    def wall_step_s(self) -> float:
        """Time-stamp step between parts: 1 / rate, or 1 s when writing as fast as possible."""
        return 1.0 / self.rate_hz if self.rate_hz > 0 else 1.0

    @property
    def shop_step_s(self) -> float:
        """Shop time between parts: wall step x speedup."""
        return self.wall_step_s * self.speedup


@dataclass(frozen=True)
class RunSummary:
    """What a run did."""

    parts: int
    measurements: int
    elapsed_s: float
    stopped: bool
    """True when a stop request (signal) ended the run before --count."""


def _parse_start(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time such as 2024-05-01T08:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"needs a UTC offset (Z or +HH:MM), got {text!r}")
    return moment.astimezone(UTC)


def _parse_format(text: str) -> str:
    name = text.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"expected one of {', '.join(FORMATS)}, got {text!r}")
    return name


def _parse_timezone(text: str) -> str:
    """An IANA zone name, checked as the gateway checks `[inputs] timezone`."""
    name = text.strip()
    try:
        InputSettings(timezone=name)
    except ConfigError as exc:
        raise ValueError(exc.reason) from None
    return name


def _parse_scenario(text: str) -> str:
    name = text.strip().lower()
    if name not in SCENARIOS:
        raise ValueError(f"expected one of {', '.join(SCENARIOS)}, got {text!r}")
    return name


ENV_PREFIX = "CMM_SIM_"
OPTIONS: tuple[Option, ...] = option_table(
    ENV_PREFIX,
    (
        Option(
            "--outdir",
            parse_path,
            Path("data/inbox"),
            "inbox directory the files go to (created if missing; the default is the gateway's default inbox)",
            "DIR",
        ),
        Option("--machines", parse_whole(1, MAX_MACHINES), 3, f"CMMs, 1..{MAX_MACHINES}", "N"),
        Option("--count", parse_whole(1), None, "stop after N parts (off: run until stopped)", "N"),
        Option("--rate", parse_number(0.0), 2.0, "parts per second (0 = max)", "HZ"),
        Option("--seed", parse_whole(0), 0, "random seed", "S"),
        Option("--truth-dir", parse_path, None, "also write the ground truth of every part here", "DIR"),
        Option(
            "--speedup",
            parse_number(0.0, low_open=True),
            60.0,
            "shop seconds per second of time stamps (60: a shop day in 24 min at 1 Hz)",
            "X",
        ),
        Option("--start", _parse_start, None, "time stamp of part 0 (off: now, to the second)", "ISO8601"),
        Option(
            "--format",
            _parse_format,
            "csv",
            "file format: csv (one file per part), dfq (Q-DAS), calypso (a _hdr.txt and a _chr.txt per part)"
            " or qif (QIF 3 results)",
            "FORMAT",
        ),
        Option(
            "--timezone",
            _parse_timezone,
            None,
            "IANA zone of the local times in dfq and calypso files, e.g. Europe/Berlin; set the gateway's"
            " [inputs] timezone alike (off: the host's zone, the gateway's default too)",
            "ZONE",
        ),
        Option(
            "--scenario",
            _parse_scenario,
            "shop",
            "shop model: lab (20 +- 0.5 degC, soaked parts), shop (18..26 degC, parts up to 6 K warm) or"
            " hot-parts (parts 4..12 K warm straight from machining)",
            "NAME",
        ),
        Option(
            "--mpe",
            parse_mpe,
            DEFAULT_MPE,
            "MPE E0 = A + L/K of each machine (A in um, K in mm/um), the list cycled over the machines",
            "A:K[,A:K...]",
        ),
        Option("--log-level", parse_log_level, "INFO", "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; values stay text here and are validated by `parse_settings`."""
    parser = ConfigErrorParser(
        prog=PROG,
        description="Simulate CMMs in a shop with drifting temperature; write the measurements of each part as"
        " an inbox file (CSV, or Q-DAS, Calypso or QIF with --format).",
        epilog=f"Every flag can also be set by the environment variable {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}RATE=0.",
        allow_abbrev=False,
    )
    parser.add_options(OPTIONS)
    return parser


def parse_settings(argv: list[str] | None, environ: Mapping[str, str]) -> SimulatorSettings:
    """Validated settings from the command line, then the environment, then the defaults.

    Raises ConfigError naming the flag (or environment variable) of the first invalid value.
    """
    values = resolve(OPTIONS, build_parser().parse_args(argv), environ).values
    values["rate_hz"] = values.pop("rate")
    settings = SimulatorSettings(**values)
    if settings.truth_dir is not None and _same_path(settings.truth_dir, settings.outdir):
        raise ConfigError("--truth-dir", "must differ from --outdir (truth files share the inbox file names)")
    return settings


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


# ----------------------------------------------------------------------------- run


def run(settings: SimulatorSettings, stop_requested: Callable[[], bool] = lambda: False) -> RunSummary:
    """Simulate and write parts until `settings.count` or `stop_requested()`; paced at `rate_hz`.

    Pacing targets absolute monotonic times (start + n / rate), so delays do not accumulate.
    The stop request is checked before every file: the file in hand is always finished.
    """
    start = settings.start or datetime.now(UTC).replace(microsecond=0)
    scenario = dataclasses.replace(SCENARIOS[settings.scenario], shop_step_s=settings.shop_step_s)
    model = ShopModel(scenario, seed=settings.seed, machines=settings.machines, mpe=settings.mpe)
    writer = PartFileWriter(
        settings.outdir,
        model.machine_ids,
        start,
        settings.wall_step_s,
        truth_dir=settings.truth_dir,
        fmt=settings.format,
        timezone=settings.timezone,
    )
    writer.prepare()
    log.info(
        "simulator started: outdir=%s format=%s scenario=%s mpe=%s timezone=%s machines=%d count=%s seed=%d"
        " rate=%g Hz speedup=%g start=%s truth_dir=%s",
        settings.outdir,
        settings.format,
        settings.scenario,
        format_mpe(settings.mpe),
        writer.inputs.zone,
        settings.machines,
        "unlimited" if settings.count is None else settings.count,
        settings.seed,
        settings.rate_hz,
        settings.speedup,
        format_timestamp(start),
        settings.truth_dir or "-",
    )

    period_s = 1.0 / settings.rate_hz if settings.rate_hz > 0 else 0.0
    t0 = time.monotonic()
    parts = measurements = 0
    stopped = False
    block = 0
    while not stopped and (settings.count is None or parts < settings.count):
        n_parts = BLOCK_PARTS if settings.count is None else min(BLOCK_PARTS, settings.count - parts)
        for part in model.parts(block * BLOCK_PARTS, n_parts).per_part():
            if period_s > 0.0:
                _sleep_until(t0 + parts * period_s, stop_requested)
            if stop_requested():
                stopped = True
                break
            path = writer.write_part(part)
            log.debug("wrote %s (%d rows)", path, len(part))
            parts += 1
            measurements += len(part)
        block += 1

    elapsed_s = time.monotonic() - t0
    log.info(
        "simulator %s: %d parts, %d measurements in %.1f s (%.1f parts/s) into %s",
        "stopped" if stopped else "done",
        parts,
        measurements,
        elapsed_s,
        parts / elapsed_s if elapsed_s > 0 else 0.0,
        settings.outdir,
    )
    return RunSummary(parts, measurements, elapsed_s, stopped)


def _sleep_until(deadline: float, stop_requested: Callable[[], bool]) -> None:
    """Sleep until monotonic `deadline`, waking at least every 0.2 s to honour a stop request."""
    while not stop_requested():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(remaining, _STOP_POLL_S))


class _StopOnSignal:
    """Context manager: SIGINT/SIGTERM set a stop flag (main thread only); old handlers restored on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.event.is_set():
            log.info("received %s: finishing the current file, then stopping", signal.Signals(signum).name)
        self.event.set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, set up logging, run; returns the exit code (0 ok, 1 I/O error, 2 bad usage)."""
    settings = load_or_report(PROG, lambda: parse_settings(argv, os.environ))
    if settings is None:
        return 2
    setup_logging(settings.log_level)
    for flag, directory in (("--outdir", settings.outdir), ("--truth-dir", settings.truth_dir)):
        if directory is None:
            continue
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            sys.stderr.write(f"{PROG}: error: {flag}: cannot create {str(directory)!r}: {exc.strerror or exc}\n")
            return 2
    with _StopOnSignal() as stop:
        try:
            run(settings, stop.event.is_set)
        except OSError as exc:
            log.error("cannot write: %s", exc)
            return 1
    return 0
