"""Command line of the accuracy proof: `python -m cmm_twin.accuracy` (docs/accuracy.md).

`python -m cmm_twin.accuracy [--features N] [--scenarios lab,shop,hot-parts] [--seed S] [--machines N]
[--mpe A:K[,...]] [--workdir DIR] [--keep] [--json FILE] [--check] [--log-level LEVEL]`.
Every flag has an environment variable `CMM_ACCURACY_<FLAG>`. Prints the Markdown table and the
goals on stdout (progress on stderr). Exit codes: 0 done (with --check: every goal met), 1 a goal
missed with --check, or a run failed; 2 bad options.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path

from cmm_twin.accuracy.goals import ScenarioFigures, check_goals
from cmm_twin.accuracy.report import TABLE_NOTE, goals_markdown, json_document, markdown_table
from cmm_twin.accuracy.run import SCENARIOS, AccuracySettings, check_simulator_options, run_scenario
from cmm_twin.errors import CmmTwinError, ConfigError
from cmm_twin.logs import setup_logging
from cmm_twin.options import (
    ConfigErrorParser,
    Option,
    load_or_report,
    option_table,
    parse_log_level,
    parse_path,
    parse_switch,
    parse_text,
    parse_whole,
    resolve,
)
from cmm_twin.simulator.shop import MAX_MACHINES

log = logging.getLogger(__name__)

PROG = "python -m cmm_twin.accuracy"
ENV_PREFIX = "CMM_ACCURACY_"


def parse_scenarios(text: str) -> tuple[str, ...]:
    """A comma list of scenario names (each once, in the order given)."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise ValueError(f"expected a comma list of {', '.join(SCENARIOS)}, got {text!r}")
    return names


OPTIONS: tuple[Option, ...] = option_table(
    ENV_PREFIX,
    (
        Option("--features", parse_whole(1, 10_000_000), 20_000, "features per scenario (whole parts)", "N"),
        Option("--scenarios", parse_scenarios, SCENARIOS, "comma list of lab, shop, hot-parts", "LIST"),
        Option("--seed", parse_whole(0), 1, "random seed of the simulator", "S"),
        Option("--machines", parse_whole(1, MAX_MACHINES), 12, f"CMMs, 1..{MAX_MACHINES}", "N"),
        Option(
            "--mpe",
            parse_text,
            None,
            "per-machine MPE E0 = A + L/K as A:K[,A:K...] (um, mm/um), cycled over the machines; passed to the"
            " simulator and mirrored in the gateway's [machines] (off: the simulator's default)",
            "A:K",
        ),
        Option("--workdir", parse_path, None, "directory of the run's files (off: a temporary directory)", "DIR"),
        Option("--keep", parse_switch, False, "keep the work directory (a temporary one is removed)", is_switch=True),
        Option("--json", parse_path, None, "also write every figure to this JSON file", "FILE"),
        Option("--check", parse_switch, False, "exit 1 when a goal is missed", is_switch=True),
        Option("--log-level", parse_log_level, "INFO", "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; values stay text here and are validated by `parse_settings`."""
    parser = ConfigErrorParser(
        prog=PROG,
        description="Run the simulator with ground truth through a real gateway into its embedded store and"
        " compare the results with the truth: errors, coverage of U, false PASS and FAIL; check the goals.",
        epilog=f"Every flag can also be set by the environment variable {ENV_PREFIX}<FLAG>.",
        allow_abbrev=False,
    )
    parser.add_options(OPTIONS)
    return parser


def parse_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> AccuracySettings:
    """Validated settings: flag, then environment, then default; ConfigError naming the first bad one."""
    values = resolve(OPTIONS, build_parser().parse_args(argv), environ).values
    values["json_path"] = values.pop("json")
    settings = AccuracySettings(**values)
    check_simulator_options(settings, Path(tempfile.gettempdir()) / "cmm-accuracy-check")
    if settings.json_path is not None and not settings.json_path.parent.is_dir():
        raise ConfigError("--json", f"directory {str(settings.json_path.parent)!r} does not exist")
    if settings.workdir is not None:
        taken = [name for name in settings.scenarios if (settings.workdir / name).exists()]
        if taken:
            raise ConfigError(
                "--workdir",
                f"{str(settings.workdir / taken[0])!r} exists (a previous run's?): remove it or choose another"
                " directory",
            )
    return settings


def _workdir(settings: AccuracySettings) -> AbstractContextManager[str]:
    if settings.workdir is None:
        if settings.keep:
            return nullcontext(tempfile.mkdtemp(prefix="cmm-accuracy-"))
        return tempfile.TemporaryDirectory(prefix="cmm-accuracy-")
    return nullcontext(str(settings.workdir))


def run(settings: AccuracySettings) -> tuple[list[ScenarioFigures], float]:
    """Every scenario of `settings`; returns their figures and the seconds the whole run took."""
    started = time.monotonic()
    with _workdir(settings) as root:
        workdir = Path(root)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            results = [run_scenario(settings, name, workdir) for name in settings.scenarios]
        finally:
            if settings.workdir is not None and not settings.keep:
                for name in settings.scenarios:
                    shutil.rmtree(workdir / name, ignore_errors=True)
            elif settings.keep:
                log.info("work directory kept: %s", workdir)
    return results, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run every scenario, print the table and the goals; returns the exit code."""
    settings = load_or_report(PROG, lambda: parse_settings(argv, os.environ))
    if settings is None:
        return 2
    setup_logging(settings.log_level)
    try:
        results, elapsed_s = run(settings)
    except (CmmTwinError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    goals = check_goals(results)
    print(
        f"Accuracy against the simulator's truth: {settings.features} features per scenario, seed {settings.seed},"
        f" {settings.machines} machines, {elapsed_s:.0f} s.\n"
    )
    print(markdown_table(results))
    print(f"\n{TABLE_NOTE}\n")
    print(goals_markdown(goals))
    sys.stdout.flush()
    if settings.json_path is not None:
        run_info = {**asdict(settings), "elapsed_s": elapsed_s}
        document = json_document(results, goals, json.loads(json.dumps(run_info, default=str)))
        try:
            settings.json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(
                f"{PROG}: error: --json: cannot write {str(settings.json_path)!r}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
    if settings.check and not all(g.met for g in goals):
        return 1
    return 0
