"""The accuracy report: a Markdown table of every cell, the goals met and missed, and the JSON of all figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from cmm_twin.accuracy.goals import Goal, ScenarioFigures
from cmm_twin.accuracy.metrics import CellFigures

TABLE_HEADER = (
    "scenario",
    "cell",
    "n",
    "error unit",
    "RMS raw",
    "RMS comp.",
    "max raw",
    "max comp.",
    "coverage (U, k=2)",
    "good n",
    "false FAIL verdict",
    "false FAIL raw",
    "bad n",
    "false PASS verdict",
    "false PASS raw",
    "UNCERTAIN",
)
ALIGN = ("---", "---", *("---:" for _ in TABLE_HEADER[2:]))
TABLE_NOTE = (
    "Errors are |value - truth| in um for lengths and in thousandths of a degree (mdeg) for angles; a cell"
    " holding both shows its lengths' errors (`um, lengths`). Coverage: share with |compensated - truth| <= U."
    " False FAIL: share of truly conforming features failed; false PASS: share of truly nonconforming"
    " features passed; `verdict` is the gateway's, `raw` the simple rule on the raw reading. UNCERTAIN:"
    " share of all features. A dash: no features to take the share of."
)


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _percent(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value * 100:.{digits}f} %"


def _row(scenario: str, label: str, c: CellFigures) -> tuple[str, ...]:
    unit = f"{c.error_unit}, lengths" if c.mixed_units else c.error_unit
    return (
        scenario,
        label,
        str(c.n),
        unit,
        _number(c.rms_raw),
        _number(c.rms_compensated),
        _number(c.max_raw),
        _number(c.max_compensated),
        _percent(c.coverage, 1),
        str(c.n_good),
        _percent(c.false_fail_verdict),
        _percent(c.false_fail_raw),
        str(c.n_bad),
        _percent(c.false_pass_verdict),
        _percent(c.false_pass_raw),
        _percent(c.uncertain, 1),
    )


def markdown_table(scenarios: Sequence[ScenarioFigures]) -> str:
    """One Markdown table: a row per cell of every scenario."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join(ALIGN) + "|"]
    for s in scenarios:
        lines += ["| " + " | ".join(_row(s.scenario, label, cell)) + " |" for label, cell in s.cells()]
    return "\n".join(lines)


def _goal_value(goal: Goal) -> str:
    if goal.goal.startswith(("coverage", "false")):
        return _percent(goal.value, 1 if goal.goal == "coverage" else 3)
    if goal.goal.startswith("compensated RMS"):
        return _number(goal.value)
    return f"{goal.value:.0f}"


def goals_markdown(goals: Sequence[Goal]) -> str:
    """The goals as a Markdown list: met or MISSED, the value and the target."""
    met = sum(g.met for g in goals)
    lines = [f"Goals: {met} of {len(goals)} met."]
    for g in goals:
        status = "met" if g.met else "**MISSED**"
        lines.append(f"- {status}: {g.goal}, {g.scenario} / {g.cell}: {_goal_value(g)} (goal {g.target})")
    return "\n".join(lines)


def _clean(value: Any) -> Any:
    """NaN -> None, so the JSON is standard."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def json_document(scenarios: Sequence[ScenarioFigures], goals: Sequence[Goal], run: dict[str, Any]) -> dict[str, Any]:
    """All figures: the run's settings, every cell of every scenario, every goal."""
    document: dict[str, Any] = _clean(
        {
            "run": run,
            "scenarios": [asdict(s) for s in scenarios],
            "goals": [asdict(g) for g in goals],
            "goals_met": all(g.met for g in goals),
        }
    )
    return document
