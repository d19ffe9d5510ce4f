"""The accuracy proof (`python -m cmm_twin.accuracy`): its metrics on hand-made features, its goals,
the join with the embedded store, its options, and a small run end to end through the real gateway."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.accuracy.goals import ScenarioFigures, check_goals
from cmm_twin.accuracy.join import join, read_store, read_truth
from cmm_twin.accuracy.metrics import CellFigures, Features, cell_figures, grouped_figures, raw_verdict
from cmm_twin.accuracy.run import parts_for
from cmm_twin.gateway.sinks.historian.sqlite import HistoryStore
from cmm_twin.physics.decision import Verdict
from cmm_twin.records import RecordBatch
from cmm_twin.simulator.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parent.parent
NAN = math.nan
P, F, U = int(Verdict.PASS), int(Verdict.FAIL), int(Verdict.UNCERTAIN)


def features(rows: list[tuple[str, float, float, float, float, int, float, float, float, bool]]) -> Features:
    """Features from rows: unit, true, raw, compensated, U (um or mdeg), verdict, nominal, lower, upper, conforming."""
    columns = list(zip(*rows, strict=True))
    return Features(
        unit=np.array(columns[0], dtype=np.str_),
        true_value=np.array(columns[1], dtype=np.float64),
        raw_value=np.array(columns[2], dtype=np.float64),
        compensated_value=np.array(columns[3], dtype=np.float64),
        uncertainty_milli=np.array(columns[4], dtype=np.float64),
        verdict=np.array(columns[5], dtype=np.int8),
        nominal=np.array(columns[6], dtype=np.float64),
        lower_tol=np.array(columns[7], dtype=np.float64),
        upper_tol=np.array(columns[8], dtype=np.float64),
        conforming=np.array(columns[9], dtype=np.bool_),
    )


# Four lengths, nominal 10 mm, limits +-0.01 mm (errors in um by hand):
#   raw - true: 3, 3, -3, 5.5; compensated - true: 0.5, 1.5, -0.5, 1.0; U: 1, 1, 1, 2 (row 1 not covered)
#   rows 0, 1 conforming (row 1 FAILed by the verdict, its raw reading 12 um off is out too);
#   rows 2, 3 nonconforming (row 3 PASSed by the verdict; both raw readings, 8 and -9.5 um, inside).
LENGTHS = [
    ("mm", 10.002, 10.005, 10.0025, 1.0, P, 10.0, -0.01, 0.01, True),
    ("mm", 10.009, 10.012, 10.0105, 1.0, F, 10.0, -0.01, 0.01, True),
    ("mm", 10.011, 10.008, 10.0105, 1.0, U, 10.0, -0.01, 0.01, False),
    ("mm", 9.985, 9.9905, 9.986, 2.0, P, 10.0, -0.01, 0.01, False),
]
# An angle (45 deg +-0.05, 2 mdeg off raw and compensated, U 5 mdeg) and a length with an upper limit
# only (12 mm, +0.03): truly 12.01 (conforming), read 12.04 raw (the simple rule FAILs it), U NaN.
ANGLE = ("deg", 45.0, 45.002, 45.002, 5.0, P, 45.0, -0.05, 0.05, True)
ONE_SIDED = ("mm", 12.01, 12.04, 12.011, NAN, U, 12.0, NAN, 0.03, True)


def test_cell_figures_of_four_lengths_by_hand() -> None:
    c = cell_figures(features(LENGTHS))
    assert (c.n, c.n_errors, c.error_unit, c.mixed_units) == (4, 4, "um", False)
    assert c.rms_raw == pytest.approx(math.sqrt((9 + 9 + 9 + 30.25) / 4), abs=1e-9)
    assert c.max_raw == pytest.approx(5.5, abs=1e-9)
    assert c.rms_compensated == pytest.approx(math.sqrt((0.25 + 2.25 + 0.25 + 1.0) / 4), abs=1e-9)
    assert c.max_compensated == pytest.approx(1.5, abs=1e-9)
    assert c.coverage == 0.75
    assert (c.n_good, c.false_fail_verdict, c.false_fail_raw) == (2, 0.5, 0.5)
    assert (c.n_bad, c.false_pass_verdict, c.false_pass_raw) == (2, 0.5, 1.0)
    assert c.uncertain == 0.25


def test_a_mixed_cell_takes_errors_over_its_lengths_and_an_angle_cell_in_mdeg() -> None:
    mixed = features([*LENGTHS, ANGLE, ONE_SIDED])
    c = cell_figures(mixed)
    assert (c.n, c.n_errors, c.error_unit, c.mixed_units) == (6, 5, "um", True)
    assert c.max_raw == pytest.approx(30.0, abs=1e-9)  # the one-sided length, not the angle
    assert c.rms_compensated == pytest.approx(math.sqrt((0.25 + 2.25 + 0.25 + 1.0 + 1.0) / 5), abs=1e-9)
    assert c.coverage == 4 / 6  # the angle is covered (2 <= 5 mdeg), the length without U is not
    assert (c.n_good, c.false_fail_raw, c.false_fail_verdict) == (4, 0.5, 0.25)
    assert c.uncertain == 2 / 6
    angle = cell_figures(features([ANGLE]))
    assert (angle.error_unit, angle.mixed_units, angle.n_errors) == ("mdeg", False, 1)
    assert angle.rms_raw == pytest.approx(2.0, abs=1e-9)
    assert math.isnan(angle.false_pass_verdict) and angle.n_bad == 0
    by_kind = grouped_figures(mixed, np.array(["d", "d", "d", "d", "angle", "d"]))
    assert list(by_kind) == ["angle", "d"]
    assert (by_kind["angle"].n, by_kind["d"].n) == (1, 5)


def test_raw_verdict_is_the_simple_rule_on_the_reading_with_open_sides() -> None:
    rows = [
        ("mm", 12.0, 11.5, 11.5, 1.0, P, 12.0, NAN, 0.03, True),  # far below, no lower limit: PASS
        ("mm", 12.0, 12.031, 12.0, 1.0, P, 12.0, NAN, 0.03, True),  # 1 um above the upper limit: FAIL
        ("mm", 8.0, 7.95, 8.0, 1.0, P, 8.0, -0.04, NAN, True),  # 10 um below the lower limit: FAIL
        ("mm", 8.0, 99.0, 8.0, 1.0, P, 8.0, -0.04, NAN, True),  # far above, no upper limit: PASS
    ]
    assert raw_verdict(features(rows)).tolist() == [P, F, F, P]


def test_parts_for_writes_the_fewest_whole_parts_that_reach_the_features() -> None:
    sizes = [len(t.features) for t in CATALOGUE]
    # part k is of type (k // machines) % types: with 2 machines parts 0, 1 are type 0, parts 2, 3 type 1
    assert parts_for(1, 2) == 1
    assert parts_for(sizes[0], 2) == 1
    assert parts_for(sizes[0] + 1, 2) == 2
    assert parts_for(2 * sizes[0] + sizes[1], 2) == 3
    assert parts_for(2 * sizes[0] + sizes[1] + 1, 2) == 4


def cell(n: int, coverage: float, *, rms_raw: float = 5.0, rms_comp: float = 0.5, fp: float = 0.0) -> CellFigures:
    return CellFigures(n, "um", n, False, rms_raw, 9.0, rms_comp, 2.0, coverage, n, 0.0, 0.1, 0, fp, 0.3, 0.02)


def goal_table(scenarios: list[ScenarioFigures]) -> dict[tuple[str, str, str], bool]:
    return {(g.goal, g.scenario, g.cell): g.met for g in check_goals(scenarios)}


def test_goals_coverage_band_on_cells_of_500_or_more_and_the_rms_ratio_in_shop_only() -> None:
    lab = ScenarioFigures(
        "lab",
        cell(2000, 0.95, rms_raw=1.0, rms_comp=0.9),
        {"AL6061": cell(500, 0.9399), "INVAR36": cell(499, 0.5)},
        {"angle": cell(600, 0.97), "distance": cell(700, 0.9701)},
        truth_rows=2000,
        missing=0,
        extra_records=0,
        spec_mismatches=0,
    )
    shop = ScenarioFigures(
        "shop",
        cell(1000, 0.94, rms_raw=10.0, rms_comp=2.1, fp=0.0011),
        {},
        {},
        truth_rows=1001,
        missing=1,
        extra_records=0,
        spec_mismatches=0,
    )
    met = goal_table([lab, shop])
    assert met[("coverage", "lab", "all")] is True
    assert met[("coverage", "lab", "material AL6061")] is False
    assert ("coverage", "lab", "material INVAR36") not in met  # 499 features: not held to the band
    assert met[("coverage", "lab", "kind angle")] is True
    assert met[("coverage", "lab", "kind distance")] is False
    assert ("compensated RMS / raw RMS", "lab", "all") not in met
    assert met[("compensated RMS / raw RMS", "shop", "all")] is False  # 2.1 / 10 > 0.2
    assert met[("every truth row joined", "lab", "all")] is True
    assert met[("every truth row joined", "shop", "all")] is False
    assert met[("false PASS of truly bad (verdict)", "lab", "all")] is True
    assert met[("false PASS of truly bad (verdict)", "shop", "all")] is False
    assert met[("coverage", "shop", "all")] is True


TRUTH_HEADER = (
    "measurement_id,machine_id,part_id,part_number,feature,feature_kind,material,unit,timestamp,nominal,"
    "lower_tol,upper_tol,true_value,conforming\n"
)


def test_join_finds_each_record_and_counts_the_missing_the_extra_and_wrong_limits(tmp_path: Path) -> None:
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    stamp = "2026-01-05T06:00:00.000Z"
    (truth_dir / "part.csv").write_text(
        TRUTH_HEADER
        + f"m1,CMM-01,P1,FL-1,bore_d,inner_diameter,AL6061,mm,{stamp},40,0,0.025,40.01,1\n"
        + f"m2,CMM-01,P1,FL-1,angle,angle,AL6061,deg,{stamp},45,-0.05,0.05,45.06,0\n"
        + f"m3,CMM-01,P1,FL-1,depth,distance,AL6061,mm,{stamp},12,,0.03,12.01,1\n"
    )
    store = HistoryStore(tmp_path / "history.sqlite")
    columns = {
        "measurement_id": ["m1", "m2", "x9"],
        "timestamp": [stamp] * 3,
        "timestamp_ns": np.array([1, 2, 3], dtype=np.int64),
        "machine_id": ["CMM-01"] * 3,
        "part_id": ["P1"] * 3,
        "feature": ["bore_d", "angle", "other"],
        "material": ["AL6061"] * 3,
        "unit": ["mm", "deg", "mm"],
        "nominal_mm": np.array([40.0, 45.0, 5.0]),
        "lower_tol_mm": np.array([0.0, -0.05, -0.01]),
        "upper_tol_mm": np.array([0.026, 0.05, 0.01]),  # m1's upper limit differs from the truth's
        "measured_mm": np.array([40.02, 45.07, 5.0]),
        "compensated_mm": np.array([40.011, 45.07, 5.0]),
        "uncertainty_um": np.array([2.0, 8.0, 1.0]),
        "verdict": np.array([P, F, P], dtype=np.int8),
    }
    store.write(RecordBatch.with_blanks(3, columns))
    store.close()
    joined = join(read_truth(truth_dir), read_store(tmp_path / "history.sqlite"))
    assert joined.truth_rows == 3
    assert joined.missing_ids == ["m3"]
    assert joined.extra_records == 1
    assert joined.spec_mismatches == 1
    f = joined.features
    assert f.raw_value.tolist() == [40.02, 45.07]
    assert f.verdict.tolist() == [P, F]
    assert f.conforming.tolist() == [True, False]
    assert joined.feature_kind.tolist() == ["inner_diameter", "angle"]
    assert f.uncertainty_milli.tolist() == [2.0, 8.0]


def run_accuracy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmm_twin.accuracy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--features", "0"], "--features: expected a whole number 1..10000000, got '0'"),
        (["--scenarios", "lab,moon"], "--scenarios: expected a comma list of lab, shop, hot-parts, got 'lab,moon'"),
        (["--machines", "100"], "--machines: expected a whole number 1..99, got '100'"),
        (["--mpe", "1.5:0"], "--mpe: K must be a finite number > 0 mm/um, got '0' in '1.5:0'"),
        (["--frobnicate"], "arguments: unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], expected: str) -> None:
    done = run_accuracy(*args)
    assert done.returncode == 2
    assert done.stderr == f"python -m cmm_twin.accuracy: error: {expected}\n"
    assert done.stdout == ""


def test_a_used_workdir_and_a_json_file_in_no_directory_are_refused_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "work" / "shop").mkdir(parents=True)
    done = run_accuracy("--scenarios", "shop", "--workdir", str(tmp_path / "work"))
    assert done.returncode == 2
    assert done.stderr.startswith("python -m cmm_twin.accuracy: error: --workdir: ")
    assert "shop' exists (a previous run's?)" in done.stderr and done.stderr.count("\n") == 1
    missing = tmp_path / "nowhere" / "figures.json"
    done = run_accuracy("--json", str(missing))
    assert done.returncode == 2
    assert done.stderr == (
        f"python -m cmm_twin.accuracy: error: --json: directory {str(missing.parent)!r} does not exist\n"
    )
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["shop"]


def test_small_run_end_to_end_through_the_real_gateway(tmp_path: Path) -> None:
    """2,000 features per scenario through a real gateway each: every truth row joined, coverage
    within 94..99 % on every cell of >= 500 features, the table and the JSON complete."""
    out = tmp_path / "figures.json"
    done = run_accuracy("--features", "2000", "--json", str(out), "--workdir", str(tmp_path / "work"))
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert [s["scenario"] for s in document["scenarios"]] == ["lab", "shop", "hot-parts"]
    for s in document["scenarios"]:
        assert s["missing"] == 0 and s["missing_examples"] == [], s["scenario"]
        assert s["truth_rows"] >= 2000 and s["overall"]["n"] == s["truth_rows"]
        assert s["spec_mismatches"] == 0
    assert "| shop | all |" in done.stdout and "| hot-parts | kind angle |" in done.stdout
    coverage = [g for g in document["goals"] if g["goal"] == "coverage"]
    assert coverage, "no cell of >= 500 features"
    # U is never dishonest: at least 94 % in every cell. The goal's upper 97 % is missed where the
    # CMM's MPE (rectangular, within +-E0) dominates the budget: k = 2 then covers ~98 % by the
    # arithmetic of a rectangular-dominated sum (GUM G.2.3), not by an inflated u (README,
    # "Accuracy against the truth"). Beyond 99 % U would be wastefully large: the suite holds that.
    outside = [(g["scenario"], g["cell"], g["value"]) for g in coverage if not 0.94 <= g["value"] <= 0.99]
    assert outside == [], f"coverage outside 94..99 %: {outside}"
    assert not (tmp_path / "work" / "shop").exists()  # removed without --keep
