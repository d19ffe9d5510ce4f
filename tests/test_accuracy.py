"""Does compensation work? The simulator's ground truth against the physics' compensated lengths.

Run with `pytest -s tests/test_accuracy.py` to see the figures. Bounds: compensated error RMS
<= 1.5 um while raw error RMS > 5 um; among measurements in tolerance by truth, the simple rule on
raw readings rejects > 20 % while the guard-banded verdict after compensation says FAIL for < 1 %.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cmm_twin.physics import VERDICT_NAMES, Verdict, evaluate, lookup_material
from cmm_twin.simulator.cli import main
from cmm_twin.simulator.shop import ShopModel, ShopScenario

UM_PER_MM = 1000.0
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Figures:
    """Accuracy figures of a set of measurements against their truth."""

    measurements: int
    rms_compensated_um: float
    rms_raw_um: float
    max_abs_compensated_um: float
    in_tolerance: int
    raw_reject_share: float
    fail_share: float
    uncertain_share: float
    verdicts: dict[str, int]
    """Verdict counts over all measurements."""

    def __str__(self) -> str:
        return (
            f"{self.measurements} measurements: RMS(compensated - true) = {self.rms_compensated_um:.3f} um "
            f"(max {self.max_abs_compensated_um:.3f} um), RMS(raw - true) = {self.rms_raw_um:.3f} um; "
            f"of {self.in_tolerance} in tolerance by truth: raw simple rule rejects {self.raw_reject_share:.1%}, "
            f"compensated verdict FAIL {self.fail_share:.2%}, UNCERTAIN {self.uncertain_share:.1%}; "
            f"all verdicts {self.verdicts}"
        )


def figures(
    measured_mm: FloatArray,
    part_temp_c: FloatArray,
    air_temp_c: FloatArray,
    nominal_mm: FloatArray,
    tolerance_mm: FloatArray,
    true_length_20c_mm: FloatArray,
    material: str = "AL6061",
) -> Figures:
    """Evaluate the rows with the materials-table CTE and compare with the truth."""
    table = lookup_material(material)
    result = evaluate(
        measured_mm, part_temp_c, nominal_mm, tolerance_mm, table.cte_per_k, table.cte_u_per_k, air_temp_c=air_temp_c
    )
    error_um = (result.compensated_mm - true_length_20c_mm) * UM_PER_MM
    raw_error_um = (measured_mm - true_length_20c_mm) * UM_PER_MM
    in_tolerance = np.abs(true_length_20c_mm - nominal_mm) <= tolerance_mm
    raw_rejected = np.abs(measured_mm - nominal_mm) > tolerance_mm
    verdicts = result.verdict[in_tolerance]
    return Figures(
        measurements=int(measured_mm.size),
        rms_compensated_um=float(np.sqrt(np.mean(error_um**2))),
        rms_raw_um=float(np.sqrt(np.mean(raw_error_um**2))),
        max_abs_compensated_um=float(np.abs(error_um).max()),
        in_tolerance=int(in_tolerance.sum()),
        raw_reject_share=float(raw_rejected[in_tolerance].mean()),
        fail_share=float(np.mean(verdicts == Verdict.FAIL)),
        uncertain_share=float(np.mean(verdicts == Verdict.UNCERTAIN)),
        verdicts={str(name): int(np.sum(result.verdict == v)) for v, name in enumerate(VERDICT_NAMES)},
    )


def test_compensation_accuracy_on_10000_measurements() -> None:
    batch = ShopModel(ShopScenario(), seed=0, machines=3).parts(0, 5000)
    assert len(batch) == 10_000
    result = figures(
        batch.measured_mm,
        batch.part_temp_c,
        batch.air_temp_c,
        batch.nominal_mm,
        batch.tolerance_mm,
        batch.true_length_20c_mm,
    )
    span = (
        f"air {batch.true_air_temp_c.min():.2f}..{batch.true_air_temp_c.max():.2f} degC, "
        f"part {batch.true_part_temp_c.min():.2f}..{batch.true_part_temp_c.max():.2f} degC"
    )
    print(f"\nmodel, default scenario: {result}; {span}")
    assert result.rms_compensated_um <= 1.5, str(result)
    assert result.rms_raw_um > 5.0, str(result)
    assert result.in_tolerance > 9000, str(result)
    assert result.raw_reject_share > 0.20, str(result)
    assert result.fail_share < 0.01, str(result)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_compensation_accuracy_end_to_end_through_csv(tmp_path: Path) -> None:
    outdir, truth_dir = tmp_path / "inbox", tmp_path / "truth"
    args = ["--outdir", str(outdir), "--truth-dir", str(truth_dir), "--count", "200", "--rate", "0"]
    assert main([*args, "--seed", "1", "--start", "2024-05-01T06:00:00Z"]) == 0
    rows: list[dict[str, str]] = []
    truths: list[dict[str, str]] = []
    for path in sorted(outdir.glob("*.csv")):
        rows += read_csv(path)
        truths += read_csv(truth_dir / path.name)
    assert len(rows) == len(truths) == 400
    for row, true in zip(rows, truths, strict=True):
        assert (row["machine_id"], row["part_id"], row["feature"], row["timestamp"]) == (
            true["machine_id"],
            true["part_id"],
            true["feature"],
            true["timestamp"],
        )
    assert {row["material"] for row in rows} == {"AL6061"}

    def column(source: list[dict[str, str]], name: str) -> FloatArray:
        return np.array([float(r[name]) for r in source], dtype=np.float64)

    result = figures(
        column(rows, "measured_mm"),
        column(rows, "part_temp_c"),
        column(rows, "air_temp_c"),
        column(rows, "nominal_mm"),
        column(rows, "tolerance_mm"),
        column(truths, "true_length_20c_mm"),
        material=rows[0]["material"],
    )
    print(f"\nend to end through CSV files (200 parts): {result}")
    assert result.rms_compensated_um <= 1.5, str(result)
