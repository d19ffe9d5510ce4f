"""Benchmark of the accuracy proof: `python -m cmm_twin.accuracy` at full size (20,000 features in each
of the lab, shop and hot-parts scenarios, 12 machines, seed 1) through real gateway processes.

Prints the accuracy table and the goals (docs/accuracy.md), the time the run took, and one figure
per goal kind: the worst coverage cell, the largest false PASS and false FAIL shares, the largest
compensated/raw RMS ratio, the truth rows without a record; each with its goal and whether it is met.

    .venv/bin/python -m bench.bench_accuracy [--features 20000] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

from bench.figures import Figure, add_common_arguments, emit, progress
from cmm_twin.accuracy.cli import run
from cmm_twin.accuracy.goals import (
    COVERAGE_BAND,
    FALSE_FAIL_MAX,
    FALSE_PASS_MAX,
    RMS_RATIO_MAX,
    Goal,
    ScenarioFigures,
    check_goals,
)
from cmm_twin.accuracy.report import TABLE_NOTE, goals_markdown, markdown_table
from cmm_twin.accuracy.run import AccuracySettings
from cmm_twin.logs import setup_logging

FULL_FEATURES = 20_000
QUICK_FEATURES = 2_000


def _worst(goals: Sequence[Goal], name: str, key: str = "max") -> Goal | None:
    chosen = [g for g in goals if g.goal == name and not math.isnan(g.value)]
    if not chosen:
        return None
    if key == "band":
        low, high = COVERAGE_BAND
        return max(chosen, key=lambda g: max(low - g.value, g.value - high))
    return max(chosen, key=lambda g: g.value)


def figures(results: Sequence[ScenarioFigures], elapsed_s: float, features: int) -> list[Figure]:
    """The benchmark's figures from the run's results."""
    goals = check_goals(results)
    out = [Figure(f"accuracy: whole run, {features:,} features x {len(results)} scenarios", elapsed_s, "s",
                  higher_is_better=False)]  # fmt: skip
    missing = sum(s.missing for s in results)
    out.append(Figure("accuracy: truth rows without a record", missing, "rows", "0", higher_is_better=False,
                      met=missing == 0))  # fmt: skip
    coverage = _worst(goals, "coverage", "band")
    if coverage is not None:
        within = all(g.met for g in goals if g.goal == "coverage")
        out.append(
            Figure(
                f"accuracy: coverage farthest from the band ({coverage.scenario} / {coverage.cell})",
                coverage.value * 100,
                "%",
                f"{COVERAGE_BAND[0]:.0%}..{COVERAGE_BAND[1]:.0%} in every cell of >= 500",
                met=within,
            )
        )
    for name, label, limit in (
        ("false PASS of truly bad (verdict)", "largest false PASS of bad features", FALSE_PASS_MAX),
        ("false FAIL of good (verdict)", "largest false FAIL of good features", FALSE_FAIL_MAX),
        ("compensated RMS / raw RMS", "largest compensated/raw RMS of lengths", RMS_RATIO_MAX),
    ):
        goal = _worst(goals, name)
        if goal is None:
            continue
        percent = not name.startswith("compensated")
        out.append(
            Figure(
                f"accuracy: {label} ({goal.scenario})",
                goal.value * (100 if percent else 1),
                "%" if percent else "",
                f"<= {limit:.1%}" if percent else f"<= {limit:g} in shop and hot-parts",
                higher_is_better=False,
                met=all(g.met for g in goals if g.goal == name),
            )
        )
    return out


def main() -> None:
    """Run the full proof, print its table, goals and time, then the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=None, help=f"features per scenario (default {FULL_FEATURES:,})")
    add_common_arguments(parser)
    args = parser.parse_args()
    features = args.features or (QUICK_FEATURES if args.quick else FULL_FEATURES)
    setup_logging("INFO")
    progress(f"accuracy: {features:,} features per scenario through real gateways ...")
    started = time.monotonic()
    results, _ = run(AccuracySettings(features=features))
    elapsed_s = time.monotonic() - started
    print(markdown_table(results))
    print(f"\n{TABLE_NOTE}\n")
    print(goals_markdown(check_goals(results)))
    print(f"\nTime taken: {elapsed_s:.0f} s\n")
    emit(figures(results, elapsed_s, features), as_json=args.json)


if __name__ == "__main__":
    main()
