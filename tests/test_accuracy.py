"""Does compensation work? The simulator's ground truth against the physics' compensated lengths.

Run with `pytest -s tests/test_accuracy.py` to see the figures. The model carries every error a
real shop has (per-machine CMM error within its MPE, per-sensor offsets, per-lot CTE, the surface
of a warm part cooler than its core): compensation cannot remove those, only the thermal error.
Bounds: in the shop and hot-parts scenarios the compensated RMS error is at most a quarter of the
raw one and below 2.5 um; good features (by truth) given FAIL after compensation stay below 0.5 %,
while the simple rule on raw readings rejects several times more.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from cmm_twin.physics import VERDICT_NAMES, Verdict, evaluate
from cmm_twin.physics.materials import MATERIALS
from cmm_twin.simulator.cli import main
from cmm_twin.simulator.scenario import SCENARIOS
from cmm_twin.simulator.shop import ShopModel

UM_PER_MM = 1000.0
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Figures:
    """Accuracy figures of a set of length measurements against their truth."""

    measurements: int
    rms_compensated_um: float
    rms_raw_um: float
    max_abs_compensated_um: float
    good: int
    raw_reject_share: float
    fail_share: float
    verdicts: dict[str, int]

    def __str__(self) -> str:
        return (
            f"{self.measurements} lengths: RMS(compensated - true) = {self.rms_compensated_um:.3f} um "
            f"(max {self.max_abs_compensated_um:.3f} um), RMS(raw - true) = {self.rms_raw_um:.3f} um; "
            f"of {self.good} good by truth: raw simple rule rejects {self.raw_reject_share:.2%}, "
            f"compensated verdict FAIL {self.fail_share:.2%}; all verdicts {self.verdicts}"
        )


def figures(
    measured_mm: FloatArray,
    part_temp_c: FloatArray,
    air_temp_c: FloatArray,
    nominal_mm: FloatArray,
    lower_mm: FloatArray,
    upper_mm: FloatArray,
    materials: list[str],
    true_mm: FloatArray,
) -> Figures:
    """Evaluate the rows with the materials-table CTE and compare with the truth (NaN limit: open)."""
    cte = np.array([MATERIALS[m].cte_per_k for m in materials])
    cte_u = np.array([MATERIALS[m].cte_u_per_k for m in materials])
    result = evaluate(
        measured_mm,
        part_temp_c,
        nominal_mm,
        np.ones_like(nominal_mm),
        cte,
        cte_u,
        air_temp_c=air_temp_c,
        lower_tol_mm=lower_mm,
        upper_tol_mm=upper_mm,
    )
    error_um = (result.compensated_mm - true_mm) * UM_PER_MM
    raw_error_um = (measured_mm - true_mm) * UM_PER_MM

    def inside(value_mm: FloatArray) -> NDArray[np.bool_]:
        deviation = value_mm - nominal_mm
        with np.errstate(invalid="ignore"):
            return np.asarray(~(deviation < lower_mm) & ~(deviation > upper_mm))

    good = inside(true_mm)
    return Figures(
        measurements=int(measured_mm.size),
        rms_compensated_um=float(np.sqrt(np.mean(error_um**2))),
        rms_raw_um=float(np.sqrt(np.mean(raw_error_um**2))),
        max_abs_compensated_um=float(np.abs(error_um).max()),
        good=int(good.sum()),
        raw_reject_share=float(np.mean(~inside(measured_mm)[good])),
        fail_share=float(np.mean(result.verdict[good] == Verdict.FAIL)),
        verdicts={str(name): int(np.sum(result.verdict == v)) for v, name in enumerate(VERDICT_NAMES)},
    )


@pytest.mark.parametrize("scenario", ["shop", "hot-parts"])
def test_compensation_accuracy_on_the_model(scenario: str) -> None:
    batch = ShopModel(SCENARIOS[scenario], seed=0, machines=3).parts(0, 2500)
    lengths = batch.select(batch.unit == "mm")
    assert len(lengths) > 9000
    result = figures(
        lengths.measured,
        lengths.part_temp_c,
        lengths.air_temp_c,
        lengths.nominal,
        lengths.lower_tol,
        lengths.upper_tol,
        lengths.material.tolist(),
        lengths.true_value,
    )
    print(f"\nmodel, {scenario}: {result}")
    assert result.rms_raw_um > 5.0, str(result)
    assert result.rms_compensated_um <= result.rms_raw_um / 4.0, str(result)
    assert result.rms_compensated_um <= 2.5, str(result)
    assert result.fail_share < 0.005, str(result)
    assert result.raw_reject_share > 5 * result.fail_share, str(result)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_compensation_accuracy_end_to_end_through_csv(tmp_path: Path) -> None:
    outdir, truth_dir = tmp_path / "inbox", tmp_path / "truth"
    args = ["--outdir", str(outdir), "--truth-dir", str(truth_dir), "--count", "210", "--rate", "0"]
    assert main([*args, "--seed", "1", "--start", "2024-05-01T06:00:00Z", "--scenario", "hot-parts"]) == 0
    rows: list[dict[str, str]] = []
    truths: list[dict[str, str]] = []
    for path in sorted(outdir.glob("*.csv")):
        rows += read_csv(path)
        truths += read_csv(truth_dir / path.name)
    assert len(rows) == len(truths) == 30 * 32  # 210 parts: 30 of each of the 7 types, 32 features a round
    for row, true in zip(rows, truths, strict=True):
        for key in ("machine_id", "part_id", "feature", "timestamp", "material", "unit"):
            assert row[key] == true[key]
    lengths = [i for i, row in enumerate(rows) if row["unit"] == "mm"]
    assert {rows[i]["material"] for i in lengths} == set(MATERIALS)

    def column(source: list[dict[str, str]], name: str) -> FloatArray:
        return np.array([float(source[i][name] or "nan") for i in lengths], dtype=np.float64)

    result = figures(
        column(rows, "measured_mm"),
        column(rows, "part_temp_c"),
        column(rows, "air_temp_c"),
        column(rows, "nominal_mm"),
        np.where(np.isnan(column(rows, "tolerance_mm")), column(rows, "lower_tol_mm"), -column(rows, "tolerance_mm")),
        np.where(np.isnan(column(rows, "tolerance_mm")), column(rows, "upper_tol_mm"), column(rows, "tolerance_mm")),
        [rows[i]["material"] for i in lengths],
        column(truths, "true_length_20c_mm"),
    )
    print(f"\nend to end through CSV files (210 parts, hot parts): {result}")
    assert result.rms_compensated_um <= result.rms_raw_um / 4.0, str(result)
    assert result.rms_compensated_um <= 3.0, str(result)
