"""The goals of issue 13's proof (docs/accuracy.md, "Goals"), checked on the figures of each scenario."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from cmm_twin.accuracy.metrics import CellFigures

COVERAGE_BAND = (0.94, 0.97)
"""Coverage of |compensated - true| <= U (k = 2) wanted: honest (>= 94 %) and not wasteful (<= 97 %)."""
COVERAGE_MIN_FEATURES = 500
"""Cells with fewer features are not held to the coverage band (their share scatters too much)."""
FALSE_PASS_MAX = 0.001
"""Largest share of truly nonconforming features the verdict may PASS."""
FALSE_FAIL_MAX = 0.005
"""Largest share of truly conforming features the verdict may FAIL."""
RMS_RATIO_MAX = 0.2
"""Compensated RMS error at most this share of the raw RMS error, in the scenarios of RMS_SCENARIOS."""
RMS_SCENARIOS = ("shop", "hot-parts")


@dataclass(frozen=True)
class ScenarioFigures:
    """The figures of one scenario: all features, by material, by feature kind; and the join's counts."""

    scenario: str
    overall: CellFigures
    by_material: dict[str, CellFigures]
    by_kind: dict[str, CellFigures]
    truth_rows: int
    missing: int
    """Truth rows without a record in the store."""
    extra_records: int
    spec_mismatches: int
    parts: int = 0
    elapsed_s: float = 0.0
    missing_examples: list[str] = field(default_factory=list)

    def cells(self) -> Iterator[tuple[str, CellFigures]]:
        """(label, figures) of every cell: `all`, then `material X`, then `kind Y`."""
        yield "all", self.overall
        for name, figures in self.by_material.items():
            yield f"material {name}", figures
        for name, figures in self.by_kind.items():
            yield f"kind {name}", figures


@dataclass(frozen=True)
class Goal:
    """One goal checked on one scenario (or one cell of it)."""

    goal: str
    scenario: str
    cell: str
    value: float
    target: str
    met: bool


def _at_most(value: float, limit: float) -> bool:
    """A share over no features (NaN) cannot miss its limit."""
    return math.isnan(value) or value <= limit


def check_goals(scenarios: Sequence[ScenarioFigures]) -> list[Goal]:
    """Every goal on every scenario, in table order."""
    goals: list[Goal] = []
    low, high = COVERAGE_BAND
    for s in scenarios:
        goals.append(Goal("every truth row joined", s.scenario, "all", float(s.missing), "0 missing", s.missing == 0))
        goals.append(
            Goal(
                "records carry the truth's nominal and limits",
                s.scenario,
                "all",
                float(s.spec_mismatches),
                "0 mismatches",
                s.spec_mismatches == 0,
            )
        )
        for label, cell in s.cells():
            if cell.n >= COVERAGE_MIN_FEATURES:
                met = low <= cell.coverage <= high
                goals.append(Goal("coverage", s.scenario, label, cell.coverage, f"{low:.0%}..{high:.0%}", bool(met)))
        overall = s.overall
        goals.append(
            Goal(
                "false PASS of truly bad (verdict)",
                s.scenario,
                "all",
                overall.false_pass_verdict,
                f"<= {FALSE_PASS_MAX:.1%}",
                _at_most(overall.false_pass_verdict, FALSE_PASS_MAX),
            )
        )
        goals.append(
            Goal(
                "false FAIL of good (verdict)",
                s.scenario,
                "all",
                overall.false_fail_verdict,
                f"<= {FALSE_FAIL_MAX:.1%}",
                _at_most(overall.false_fail_verdict, FALSE_FAIL_MAX),
            )
        )
        if s.scenario in RMS_SCENARIOS:
            ratio = overall.rms_compensated / overall.rms_raw if overall.rms_raw > 0 else math.nan
            goals.append(
                Goal(
                    "compensated RMS / raw RMS",
                    s.scenario,
                    "all",
                    ratio,
                    f"<= {RMS_RATIO_MAX:g}",
                    bool(ratio <= RMS_RATIO_MAX),
                )
            )
    return goals
