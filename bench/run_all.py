"""Every benchmark of the project, one after the other, and ONE markdown table of their figures
(`make bench`).

Each benchmark runs in its own process (`python -m bench.<module> --json`, so one benchmark's
memory does not show in another's RSS figures); its result lines and progress go to stderr, its
last stdout line is its figures as JSON. The table (columns: figure, value, goal, baseline measured
in the same run, ratio, met) is printed on stdout, ready to paste into the README. A missed goal is
reported in the table; the exit status is non-zero only if a benchmark crashed.

    .venv/bin/python -m bench.run_all [--quick]
        [--only physics,gateway,mes_raw,mes,historian,history_load,formats,accuracy,opcua_history,
                opcua_machinery,opcua_live]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.figures import JSON_KEY, RATIO_NOTE, Figure, markdown_table, parse_json_line, table_rows

ROOT = Path(__file__).resolve().parent.parent
FIGURES_PREFIX = f'{{"{JSON_KEY}":'

BENCHMARKS: dict[str, str] = {
    "physics": "bench.bench_physics",
    "gateway": "bench.bench_gateway",
    "mes_raw": "bench.bench_mes_raw",
    "mes": "bench.bench_mes",
    "historian": "bench.bench_historian",
    "history_load": "bench.bench_history_load",
    "formats": "bench.bench_formats",
    "accuracy": "bench.bench_accuracy",
    "opcua_history": "bench.bench_opcua_history",
    "opcua_machinery": "bench.bench_opcua_machinery",
    "opcua_live": "bench.bench_opcua_live",
    "footprint": "bench.bench_footprint",
}


@dataclass(frozen=True)
class Outcome:
    """What one benchmark process gave: its figures, or why it crashed."""

    name: str
    figures: list[Figure]
    error: str = ""
    seconds: float = 0.0


def benchmark_name(text: str) -> str:
    """'physics', 'bench_physics' or 'bench.bench_physics' -> 'physics'; ValueError if unknown."""
    name = text.strip().removeprefix("bench.").removeprefix("bench_")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {text!r} (known: {', '.join(BENCHMARKS)})")
    return name


def parse_only(text: str) -> list[str]:
    """The benchmarks named in `--only a,b`, in the order of BENCHMARKS."""
    try:
        chosen = {benchmark_name(part) for part in text.split(",") if part.strip()}
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if not chosen:
        raise argparse.ArgumentTypeError("no benchmark named")
    return [name for name in BENCHMARKS if name in chosen]


def run_benchmark(name: str, quick: bool) -> Outcome:
    """Run one benchmark module in its own process; its output goes to stderr, its figures line is parsed."""
    command = [sys.executable, "-m", BENCHMARKS[name], "--json", *(["--quick"] if quick else [])]
    started = time.perf_counter()
    figures_line = ""
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(FIGURES_PREFIX):
                figures_line = line
            else:
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
        code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        return Outcome(name, [], f"exit status {code}", seconds)
    try:
        return Outcome(name, parse_json_line(figures_line), seconds=seconds)
    except ValueError as e:
        return Outcome(name, [], f"no figures line ({e})", seconds)


def table(outcomes: list[Outcome]) -> str:
    """The one markdown table: every figure, and a row for each benchmark that crashed."""
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        rows += table_rows(outcome.figures)
        if outcome.error:
            rows.append((f"{outcome.name}: CRASHED ({outcome.error}, see its output above)", "", "", "", "", "**NO**"))
    return markdown_table(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks and print the table; returns non-zero if one crashed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes (e.g. 100k rows instead of 1M): a smoke run"
    )
    parser.add_argument(
        "--only", type=parse_only, default=list(BENCHMARKS), metavar="NAME[,NAME]", help=", ".join(BENCHMARKS)
    )
    args = parser.parse_args(argv)
    outcomes = []
    for name in args.only:
        print(f"== {name} ({BENCHMARKS[name]}{', quick' if args.quick else ''})", file=sys.stderr, flush=True)
        outcome = run_benchmark(name, args.quick)
        status = f"crashed: {outcome.error}" if outcome.error else f"{len(outcome.figures)} figure(s)"
        print(f"== {name}: {status}, {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nBenchmarks{' (--quick)' if args.quick else ''}, {time.strftime('%Y-%m-%d')},"
        f" {os.cpu_count()} cores, load average {load:.2f} at the end:\n"
    )
    print(table(outcomes))
    print(f"\n{RATIO_NOTE}")
    sys.stdout.flush()
    return 1 if any(outcome.error for outcome in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
