"""The figures every benchmark returns, and how they are printed (one module's lines, the JSON line
`bench.run_all` reads back, and the one markdown table of `bench.run_all`).

A figure is one measured value with its unit, its goal as human text (">= 1,000 files/s"), whether
the goal is met (decided by the benchmark, None when there is no goal) and, where there is one, a
baseline measured in the same run. The ratio to the baseline is always oriented so that above 1
means better than the baseline: value/baseline when higher is better (rates), baseline/value when
lower is better (times, memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

JSON_KEY = "figures"


@dataclass(frozen=True)
class Figure:
    """One measured value of a benchmark."""

    name: str
    value: float
    unit: str
    goal: str = ""
    baseline: float | None = None
    baseline_name: str = ""
    higher_is_better: bool = True
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """value/baseline (higher is better) or baseline/value (lower is better); None without a baseline."""
        if self.baseline is None:
            return None
        numerator, denominator = (self.value, self.baseline) if self.higher_is_better else (self.baseline, self.value)
        return numerator / denominator if denominator else None

    @property
    def ratio_formula(self) -> str:
        """Which way the ratio is taken, as printed in the table."""
        return "value/baseline" if self.higher_is_better else "baseline/value"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        """The figure back from `to_json`."""
        baseline = data.get("baseline")
        met = data.get("met")
        return cls(
            name=str(data["name"]),
            value=float(data["value"]),
            unit=str(data["unit"]),
            goal=str(data.get("goal", "")),
            baseline=None if baseline is None else float(baseline),
            baseline_name=str(data.get("baseline_name", "")),
            higher_is_better=bool(data.get("higher_is_better", True)),
            met=None if met is None else bool(met),
        )


def format_number(value: float) -> str:
    """About three significant digits, thousands separated: 8.72, 80.3, 1,176, 38,312."""
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_value(value: float, unit: str) -> str:
    """A number with its unit."""
    return f"{format_number(value)} {unit}".rstrip()


def format_ratio(figure: Figure) -> str:
    """'12.1x (baseline/value)', or '' without a baseline."""
    ratio = figure.ratio
    if ratio is None:
        return ""
    number = f"{ratio:.1f}" if ratio >= 10 else f"{ratio:.2f}"
    return f"{number}x ({figure.ratio_formula})"


def format_baseline(figure: Figure) -> str:
    """'97.0 ms (plain Python loop)', or '' without a baseline."""
    if figure.baseline is None:
        return ""
    text = format_value(figure.baseline, figure.unit)
    return f"{text} ({figure.baseline_name})" if figure.baseline_name else text


def format_met(met: bool | None) -> str:
    """'yes', '**NO**' (stands out in the table) or '' when there is no goal."""
    if met is None:
        return ""
    return "yes" if met else "**NO**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


TABLE_HEADER = ("figure", "value", "goal", "baseline (same run)", "ratio", "met")
RATIO_NOTE = (
    "ratio: value/baseline for rates (higher is better), baseline/value for times and memory (lower is better);"
    " above 1 means better than the baseline."
)


def table_rows(figures: Iterable[Figure]) -> list[tuple[str, str, str, str, str, str]]:
    """The cells of each figure's row in the table's column order."""
    return [
        (
            figure.name,
            format_value(figure.value, figure.unit),
            figure.goal,
            format_baseline(figure),
            format_ratio(figure),
            format_met(figure.met),
        )
        for figure in figures
    ]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of `rows` under TABLE_HEADER (numbers right-aligned)."""
    lines = [
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|---|---:|---|---|---:|---|",
    ]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def human_lines(figures: Sequence[Figure]) -> list[str]:
    """One aligned line per figure: name, value, goal and verdict, baseline and ratio."""
    width = max((len(figure.name) for figure in figures), default=0)
    lines = []
    for figure in figures:
        parts = [f"{figure.name:<{width}}  {format_value(figure.value, figure.unit):>18}"]
        if figure.goal:
            verdict = "" if figure.met is None else (": ok" if figure.met else ": BELOW GOAL")
            parts.append(f"goal {figure.goal}{verdict}")
        if figure.baseline is not None:
            parts.append(f"baseline {format_baseline(figure)}, ratio {format_ratio(figure)}")
        lines.append("  ".join(parts))
    return lines


def json_line(figures: Sequence[Figure]) -> str:
    """The figures as one JSON line (what `--json` prints last)."""
    return json.dumps({JSON_KEY: [figure.to_json() for figure in figures]})


def parse_json_line(line: str) -> list[Figure]:
    """The figures of a `json_line`; ValueError if the line is not one."""
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get(JSON_KEY), list):
        raise ValueError(f"not a figures line: {line[:200]!r}")
    return [Figure.from_json(item) for item in data[JSON_KEY]]


def emit(figures: Sequence[Figure], as_json: bool = False) -> None:
    """What a benchmark's `main()` prints: its lines, then (with `--json`) the JSON line last."""
    for line in human_lines(figures):
        print(line)
    if as_json:
        print(json_line(figures))
    sys.stdout.flush()


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the results)."""
    print(message, file=sys.stderr, flush=True)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """`--quick` (smaller sizes, a smoke run) and `--json` (the figures as JSON on the last line)."""
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line last")


def run_main(doc: str | None, figures: Callable[[bool], Sequence[Figure]]) -> None:
    """A benchmark's command line: the common arguments, then print `figures(quick)`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args()
    emit(figures(args.quick), as_json=args.json)
