"""The physics bridge: any source's ValidRows -> compensated, decided result records."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.rows import RowError, ValidRows
from cmm_twin.physics.thermal import PhysicsConfig, ThermalLimits, evaluate, implausible_results
from cmm_twin.records import RecordBatch


def to_records(rows: ValidRows, config: PhysicsConfig) -> RecordBatch:
    """Compensate, decide and flag `rows` with the physics; the result records of the rows.

    Raises PhysicsInputError when a value passed the reader's checks but not the physics' (the
    reader's plausible range is wider than `config.limits`): a configuration mistake.
    """
    result = evaluate(
        rows.measured_mm,
        rows.part_temp_c,
        rows.nominal_mm,
        rows.tolerance_mm,
        rows.cte_per_k,
        rows.cte_u_per_k,
        air_temp_c=rows.air_temp_c,
        scale_temp_c=rows.scale_temp_c,
        config=config,
        lower_tol_mm=rows.lower_tol_mm,
        upper_tol_mm=rows.upper_tol_mm,
        part_temp_u_k=rows.part_temp_u_k,
        compensation=rows.compensation,
        machine_id=rows.machine_id,
    )
    return RecordBatch(
        measurement_id=rows.measurement_id,
        timestamp=rows.timestamp,
        timestamp_ns=rows.timestamp_ns,
        machine_id=rows.machine_id,
        part_id=rows.part_id,
        feature=rows.feature,
        material=rows.material,
        cte_per_k=rows.cte_per_k,
        nominal_mm=rows.nominal_mm,
        tolerance_mm=rows.tolerance_mm,
        lower_tol_mm=rows.lower_tol_mm,
        upper_tol_mm=rows.upper_tol_mm,
        measured_mm=rows.measured_mm,
        part_temp_c=rows.part_temp_c,
        air_temp_c=rows.air_temp_c,
        scale_temp_c=rows.scale_temp_c,
        compensated_mm=result.compensated_mm,
        correction_um=result.correction_um,
        deviation_um=result.deviation_um,
        uncertainty_um=result.uncertainty_um,
        verdict=result.verdict,
        flags=result.flags | rows.flags,
        unit=rows.unit,
        compensation=rows.compensation,
        source_format=rows.source_format,
        source_file=rows.source_file,
        file_rows=np.zeros(len(rows), dtype=np.int32),
    )


def reject_implausible(
    records: RecordBatch, lines: NDArray[np.int64], limits: ThermalLimits
) -> tuple[RecordBatch, list[RowError]]:
    """`records` without the rows whose computed results are implausible (`implausible_results`),
    and a RowError for each of those (on `measured_mm`, the input the result follows from).
    `lines` are the rows' line numbers (`ValidRows.line` of the rows `records` was made from)."""
    compensated = records.compensated_mm
    bad = implausible_results(limits, compensated, records.correction_um, records.deviation_um, records.uncertainty_um)
    if not bad.any():
        return records, []
    errors = []
    for i in np.flatnonzero(bad).tolist():
        value = float(compensated[i])
        errors.append(
            RowError(
                int(lines[i]),
                "measured_mm",
                f"gives a compensated length of {value!r} mm, outside |L| <= {limits.max_length_mm:g} mm"
                " (limits.max_length_mm)"
                if math.isfinite(value)
                else f"gives a non-finite compensated result ({value!r})",
                records.machine_id[i],
                records.feature[i],
            )
        )
    return records.take(np.flatnonzero(~bad)), errors
