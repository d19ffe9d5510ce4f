"""Read the simulator's truth files and the gateway's embedded store, and join them on measurement_id.

The truth is the simulator's contract (docs/simulator.md, "Ground truth"): one CSV per part in the
truth directory. The store is the embedded historian's SQLite file (`state/history.sqlite`),
opened read-only. Every truth row must find its record; the ones that do not are counted and
named (`Joined.missing_ids`), as are records without a truth row and records whose nominal or
limits differ from the truth's (the gateway read the specification wrong).
"""

from __future__ import annotations

import csv
import logging
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cmm_twin.accuracy.metrics import Features
from cmm_twin.errors import CmmTwinError
from cmm_twin.physics.decision import Verdict

log = logging.getLogger(__name__)

COMPARED_TRUTH_COLUMNS: tuple[str, ...] = (
    "measurement_id",
    "machine_id",
    "part_id",
    "part_number",
    "feature",
    "feature_kind",
    "material",
    "unit",
    "nominal",
    "lower_tol",
    "upper_tol",
    "true_value",
    "conforming",
)
"""The truth columns the comparison reads (the contract has more: temperatures, error terms)."""
STORE_COLUMNS: tuple[str, ...] = (
    "measurement_id",
    "unit",
    "measured_mm",
    "compensated_mm",
    "uncertainty_um",
    "verdict",
    "nominal_mm",
    "lower_tol_mm",
    "upper_tol_mm",
)
SPEC_TOLERANCE = 1e-9
"""Largest difference (in the unit) between the record's and the truth's nominal or limits."""
_VERDICT_CODES = {v.name: np.int8(v.value) for v in Verdict}


class AccuracyDataError(CmmTwinError):
    """A truth file or the store cannot be read as expected."""


@dataclass(frozen=True)
class Truth:
    """The truth rows of a run, as columns (values in the row's unit; NaN: an open side)."""

    measurement_id: list[str]
    machine_id: NDArray[np.str_]
    part_number: NDArray[np.str_]
    feature_kind: NDArray[np.str_]
    material: NDArray[np.str_]
    unit: NDArray[np.str_]
    nominal: NDArray[np.float64]
    lower_tol: NDArray[np.float64]
    upper_tol: NDArray[np.float64]
    true_value: NDArray[np.float64]
    conforming: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.measurement_id)


def _number(text: str, where: str) -> float:
    """A truth cell as a float; an empty cell is NaN (an open side)."""
    if not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise AccuracyDataError(f"{where}: expected a number, got {text!r}") from None


def read_truth(truth_dir: Path) -> Truth:
    """Every row of every `*.csv` truth file in `truth_dir` (files in name order)."""
    rows: list[dict[str, str]] = []
    for path in sorted(truth_dir.glob("*.csv")):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COMPARED_TRUTH_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise AccuracyDataError(f"{path}: truth file lacks the column(s) {', '.join(missing)}")
            for number, row in enumerate(reader, start=2):
                row["_where"] = f"{path.name}:{number}"
                rows.append(row)

    def text(name: str) -> NDArray[np.str_]:
        return np.array([r[name] for r in rows], dtype=np.str_)

    def numbers(name: str) -> NDArray[np.float64]:
        return np.array([_number(r[name], f"{r['_where']}: {name}") for r in rows], dtype=np.float64)

    conforming = text("conforming")
    odd = ~np.isin(conforming, ["0", "1"])
    if odd.any():
        where = rows[int(np.flatnonzero(odd)[0])]["_where"]
        raise AccuracyDataError(f"{where}: conforming must be 1 or 0, got {conforming[odd][0]!r}")
    return Truth(
        measurement_id=[r["measurement_id"] for r in rows],
        machine_id=text("machine_id"),
        part_number=text("part_number"),
        feature_kind=text("feature_kind"),
        material=text("material"),
        unit=text("unit"),
        nominal=numbers("nominal"),
        lower_tol=numbers("lower_tol"),
        upper_tol=numbers("upper_tol"),
        true_value=numbers("true_value"),
        conforming=conforming == "1",
    )


def read_store(history_path: Path) -> dict[str, tuple[object, ...]]:
    """Every measurement record of the embedded store, by measurement_id (`STORE_COLUMNS` order)."""
    if not history_path.is_file():
        raise AccuracyDataError(f"{history_path}: no embedded store (did the gateway run with --historian sqlite?)")
    db = sqlite3.connect(f"file:{history_path}?mode=ro", uri=True)
    try:
        cursor = db.execute(f"SELECT {', '.join(STORE_COLUMNS)} FROM cmm_measurement")
        return {str(row[0]): tuple(row) for row in cursor}
    except sqlite3.Error as exc:
        raise AccuracyDataError(f"{history_path}: cannot read the store: {exc}") from None
    finally:
        db.close()


@dataclass(frozen=True)
class Joined:
    """The truth rows that found their record, with the record's values; and what did not join."""

    features: Features
    material: NDArray[np.str_]
    feature_kind: NDArray[np.str_]
    machine_id: NDArray[np.str_]
    truth_rows: int
    missing_ids: list[str]
    """Truth rows without a record in the store (must be none: nothing may vanish)."""
    extra_records: int
    """Records in the store without a truth row."""
    spec_mismatches: int
    """Joined records whose unit, nominal or limits differ from the truth's."""


def _floats(values: Iterable[object]) -> NDArray[np.float64]:
    return np.array([math.nan if v is None else float(str(v)) for v in values], dtype=np.float64)


def _differ(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Elementwise: the values differ by more than SPEC_TOLERANCE, or exactly one of them is NaN."""
    with np.errstate(invalid="ignore"):
        apart = np.abs(a - b) > SPEC_TOLERANCE
    return np.asarray(apart | (np.isnan(a) != np.isnan(b)), dtype=np.bool_)


def join(truth: Truth, store: dict[str, tuple[object, ...]]) -> Joined:
    """Join the truth with the store's records on measurement_id."""
    found = [i for i, mid in enumerate(truth.measurement_id) if mid in store]
    missing = [mid for mid in truth.measurement_id if mid not in store]
    records = [store[truth.measurement_id[i]] for i in found]
    columns = list(zip(*records, strict=True)) if records else [()] * len(STORE_COLUMNS)
    by_name = dict(zip(STORE_COLUMNS, columns, strict=True))
    rows = np.array(found, dtype=np.intp)
    unknown = sorted({str(v) for v in by_name["verdict"]} - set(_VERDICT_CODES))
    if unknown:
        raise AccuracyDataError(f"store: unknown verdict(s) {', '.join(unknown)}")
    features = Features(
        unit=truth.unit[rows],
        true_value=truth.true_value[rows],
        raw_value=_floats(by_name["measured_mm"]),
        compensated_value=_floats(by_name["compensated_mm"]),
        uncertainty_milli=_floats(by_name["uncertainty_um"]),
        verdict=np.array([_VERDICT_CODES[str(v)] for v in by_name["verdict"]], dtype=np.int8),
        nominal=truth.nominal[rows],
        lower_tol=truth.lower_tol[rows],
        upper_tol=truth.upper_tol[rows],
        conforming=truth.conforming[rows],
    )
    mismatched = (
        (np.array([str(u) for u in by_name["unit"]], dtype=np.str_) != features.unit)
        | _differ(_floats(by_name["nominal_mm"]), features.nominal)
        | _differ(_floats(by_name["lower_tol_mm"]), features.lower_tol)
        | _differ(_floats(by_name["upper_tol_mm"]), features.upper_tol)
    )
    if missing:
        log.warning("%d of %d truth rows have no record in the store, e.g. %s", len(missing), len(truth), missing[0])
    truth_ids = set(truth.measurement_id)
    return Joined(
        features=features,
        material=truth.material[rows],
        feature_kind=truth.feature_kind[rows],
        machine_id=truth.machine_id[rows],
        truth_rows=len(truth),
        missing_ids=missing,
        extra_records=sum(1 for mid in store if mid not in truth_ids),
        spec_mismatches=int(mismatched.sum()),
    )
