"""The result record every sink receives (docs/architecture.md, "The result record") and the measurement id."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmm_twin.physics.compensation import COMPENSATION_NAMES
from cmm_twin.physics.decision import VERDICT_NAMES
from cmm_twin.physics.thermal import flag_names

RESULT_FIELDS: tuple[str, ...] = (
    "measurement_id",
    "timestamp",
    "machine_id",
    "part_id",
    "feature",
    "material",
    "cte_per_k",
    "nominal_mm",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "measured_mm",
    "part_temp_c",
    "air_temp_c",
    "scale_temp_c",
    "compensated_mm",
    "correction_um",
    "deviation_um",
    "uncertainty_um",
    "verdict",
    "flags",
    "unit",
    "compensation",
    "source_format",
    "source_file",
)
"""Field names of a result record, in the order the MES payload and the docs list them.

`tolerance_mm` is null for an asymmetric or one-sided specification; `lower_tol_mm` and
`upper_tol_mm` are signed and relative to the nominal (null: no limit on that side). For
`unit: "deg"` (an angle) the `_mm` fields hold degrees and the `_um` fields thousandths of a
degree."""
UNITS = ("mm", "deg")
"""Units a record's values are in."""
SOURCE_FORMATS = ("csv", "qdas", "calypso", "qif")
"""Formats a record can come from (`source_format`)."""

MEASUREMENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cmm-twin:measurement")


def canonical_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with microseconds and `Z`: one spelling per instant, so ids are stable."""
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def measurement_id(machine_id: str, part_id: str, feature: str, timestamp: datetime) -> str:
    """UUIDv5 of `machine_id|part_id|feature|timestamp` (timestamp in canonical UTC form).

    The same measurement always gets the same id, however its timestamp was spelled
    (`Z` or `+00:00`, another offset), so a file dropped twice duplicates nothing downstream.
    """
    name = f"{machine_id}|{part_id}|{feature}|{canonical_timestamp(timestamp)}"
    return str(uuid.uuid5(MEASUREMENT_ID_NAMESPACE, name))


INBOX_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "machine_id",
    "part_id",
    "feature",
    "material",
    "nominal_mm",
    "tolerance_mm",
    "measured_mm",
    "part_temp_c",
    "air_temp_c",
    "scale_temp_c",
)
"""Columns of an inbox CSV file (README, "The CSV format (inbox)"), in contract order."""
INBOX_OPTIONAL_COLUMNS: tuple[str, ...] = ("material", "air_temp_c", "scale_temp_c")

FLOAT_COLUMNS: tuple[str, ...] = RESULT_FIELDS[RESULT_FIELDS.index("cte_per_k") : RESULT_FIELDS.index("verdict")]
"""Numeric fields of a result record; NaN in an optional temperature means "not given" (null)."""


@dataclass(frozen=True)
class RecordBatch:
    """A batch of result records held as columns (one list or array per field, equal lengths).

    Columns keep the hot path vectorised: sinks turn them into what they send (JSON objects, line
    protocol, OPC UA values) without building a Python object per row unless they must.
    `timestamp_ns` is the measurement time as Unix nanoseconds; `verdict` holds Verdict codes,
    `compensation` Compensation codes and `flags` bit masks of the physics `Flag`. `file_rows` is 0,
    except on the last record of an input file (set where the file's reading completes; not a
    result field), where it is the number of valid records of that file: a sink that writes one
    output per input file (the outbox) knows it has them all.
    """

    measurement_id: list[str]
    timestamp: list[str]
    timestamp_ns: NDArray[np.int64]
    machine_id: list[str]
    part_id: list[str]
    feature: list[str]
    material: list[str]
    cte_per_k: NDArray[np.float64]
    nominal_mm: NDArray[np.float64]
    tolerance_mm: NDArray[np.float64]
    lower_tol_mm: NDArray[np.float64]
    upper_tol_mm: NDArray[np.float64]
    measured_mm: NDArray[np.float64]
    part_temp_c: NDArray[np.float64]
    air_temp_c: NDArray[np.float64]
    scale_temp_c: NDArray[np.float64]
    compensated_mm: NDArray[np.float64]
    correction_um: NDArray[np.float64]
    deviation_um: NDArray[np.float64]
    uncertainty_um: NDArray[np.float64]
    verdict: NDArray[np.int8]
    flags: NDArray[np.int32]
    unit: list[str]
    compensation: NDArray[np.int8]
    source_format: list[str]
    source_file: list[str]
    file_rows: NDArray[np.int32]

    def __len__(self) -> int:
        return len(self.measurement_id)

    @staticmethod
    def empty() -> RecordBatch:
        """A batch of no records."""
        return RecordBatch.with_blanks(0, {})

    @staticmethod
    def with_blanks(rows: int, columns: Mapping[str, Any]) -> RecordBatch:
        """A batch of `rows` records from `columns`; columns not given are blank ("" / NaN / 0;
        TEXT_DEFAULTS for `unit`, `source_format`, `source_file`: what records spooled before
        those columns were).

        For sinks that send only some columns (see `Sink.columns`)."""
        values: dict[str, Any] = {}
        for name in RECORD_COLUMNS:
            if name in columns:
                values[name] = columns[name]
            elif name in TEXT_COLUMNS:
                values[name] = [TEXT_DEFAULTS.get(name, "")] * rows
            elif name in INT_COLUMNS:
                values[name] = np.zeros(rows, dtype=INT_COLUMNS[name])
            else:
                values[name] = np.full(rows, np.nan)
        return RecordBatch(**values)

    def take(self, index: slice | Sequence[int] | NDArray[np.intp]) -> RecordBatch:
        """The rows at `index` (a slice or integer positions), as a new batch."""
        values: dict[str, Any] = {}
        for f in fields(self):
            column = getattr(self, f.name)
            if isinstance(column, np.ndarray) or isinstance(index, slice):
                values[f.name] = column[index]
            else:
                values[f.name] = [column[i] for i in index]
        return RecordBatch(**values)

    def to_dicts(self) -> list[dict[str, Any]]:
        """The records as JSON-ready dicts with the RESULT_FIELDS names (NaN temperatures -> None).

        Rows with the same flags share one `flags` list: treat the dicts as read-only.
        """
        flag_lists = {m: flag_names(m) for m in np.unique(self.flags).tolist()}
        flags = [flag_lists[m] for m in self.flags.tolist()]
        columns: list[list[Any]] = [
            self.measurement_id,
            self.timestamp,
            self.machine_id,
            self.part_id,
            self.feature,
            self.material,
            *(_nullable(getattr(self, name)) for name in FLOAT_COLUMNS),
            VERDICT_NAMES[self.verdict].tolist(),
            flags,
            self.unit,
            COMPENSATION_NAMES[self.compensation].tolist(),
            self.source_format,
            self.source_file,
        ]
        return [dict(zip(RESULT_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]

    @staticmethod
    def concat(batches: Sequence[RecordBatch]) -> RecordBatch:
        """One batch holding the rows of `batches` in order."""
        values: dict[str, Any] = {}
        for f in fields(RecordBatch):
            columns = [getattr(b, f.name) for b in batches]
            if isinstance(columns[0], np.ndarray):
                values[f.name] = np.concatenate(columns)
            else:
                values[f.name] = [v for c in columns for v in c]
        return RecordBatch(**values)


def newest_per_characteristic(batch: RecordBatch) -> list[int]:
    """Positions of the last row of each (machine_id, feature) of `batch`, ascending (arrival order)."""
    # dict(zip(...)) runs in C and keeps the last position of each key.
    keys = zip(batch.machine_id, batch.feature, strict=True)
    return sorted(dict(zip(keys, range(len(batch)), strict=False)).values())


RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RecordBatch))
"""The column names of a RecordBatch, in order."""
TEXT_COLUMNS = frozenset(
    {"measurement_id", "timestamp", "machine_id", "part_id", "feature", "material"}
    | {"unit", "source_format", "source_file"}
)
TEXT_DEFAULTS: dict[str, str] = {"unit": "mm", "source_format": "csv", "source_file": "(spooled before source_file)"}
"""What a text column left blank holds: what records spooled before the column existed meant
(their file name was not kept: a placeholder the MES accepts)."""
INT_COLUMNS: dict[str, type[np.integer[Any]]] = {
    "timestamp_ns": np.int64,
    "verdict": np.int8,
    "flags": np.int32,
    "compensation": np.int8,
    "file_rows": np.int32,
}
"""Integer columns and their dtypes; every other non-text column is float64."""


def _nullable(column: NDArray[np.float64]) -> list[float | None]:
    values: list[float | None] = column.tolist()
    if np.isnan(column).any():
        return [None if math.isnan(v) else v for v in values]  # type: ignore[arg-type]
    return values
