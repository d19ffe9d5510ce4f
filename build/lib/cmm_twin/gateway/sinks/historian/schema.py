"""The tables of the embedded historian (`sqlite.py`): their columns, keys and the rows of a batch.

`cmm_measurement` holds the line protocol's tags and fields and every other field of the result
record; its primary key is time_ns and `KEY_TAGS` (as in the first version, so an existing
history keeps it). Columns added since are added to an existing history when it is opened, with
the defaults its old rows then read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
)
from cmm_twin.physics.compensation import COMPENSATION_NAMES
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

KEY_TAGS = ("machine_id", "feature", "material", "verdict")
"""The tags in the primary key of `cmm_measurement` (with time_ns); `unit` is a tag outside it."""
RECORD_FIELDS: dict[str, str] = {
    "measurement_id": "TEXT",
    "part_id": "TEXT",
    "cte_per_k": "REAL",
    "nominal_mm": "REAL",
    "scale_temp_c": "REAL",
    "flags": "INTEGER",
    "compensation": "TEXT NOT NULL DEFAULT 'gateway'",
    "source_format": "TEXT NOT NULL DEFAULT 'csv'",
    "source_file": "TEXT",
}
"""The record's other fields (not in the line protocol) and their columns; `flags` is stored as its
bit mask and answered as names."""
COLUMN_TYPES: dict[str, str] = {
    **{t: "TEXT NOT NULL" for t in KEY_TAGS},
    "unit": "TEXT NOT NULL DEFAULT 'mm'",
    **{f: "REAL" for f in FIELD_KEYS},
    **RECORD_FIELDS,
}
"""Every column of `cmm_measurement` after time_ns, with its type (and the default old rows read)."""
assert list(COLUMN_TYPES) == [*KEY_TAGS, *(t for t in TAG_KEYS if t not in KEY_TAGS), *FIELD_KEYS, *RECORD_FIELDS]
MEASUREMENT_FIELDS: dict[str, tuple[str, ...]] = {
    MEASUREMENT: (*FIELD_KEYS, *RECORD_FIELDS),
    HEALTH_MEASUREMENT: HEALTH_FIELD_KEYS,
}
MEASUREMENT_TAGS: dict[str, tuple[str, ...]] = {MEASUREMENT: TAG_KEYS, HEALTH_MEASUREMENT: ()}
MEASUREMENT_KEYS: dict[str, tuple[str, ...]] = {MEASUREMENT: KEY_TAGS, HEALTH_MEASUREMENT: ()}
"""The tags in each table's primary key (after time_ns)."""


def measurement_rows(batch: RecordBatch) -> Any:
    """The `cmm_measurement` rows of `batch`: time_ns, then the `COLUMN_TYPES` columns."""
    columns: list[list[Any]] = [
        batch.timestamp_ns.tolist(),
        batch.machine_id,
        batch.feature,
        batch.material,
        VERDICT_NAMES[batch.verdict].tolist(),
        batch.unit,
    ]
    columns.extend(_nullable(getattr(batch, name)) for name in FIELD_KEYS)
    columns += [batch.measurement_id, batch.part_id]
    columns.extend(_nullable(getattr(batch, name)) for name in ("cte_per_k", "nominal_mm", "scale_temp_c"))
    columns += [
        batch.flags.tolist(),
        COMPENSATION_NAMES[batch.compensation].tolist(),
        batch.source_format,
        [name or None for name in batch.source_file],  # "": spooled before the field existed
    ]
    return zip(*columns, strict=True)


def _nullable(column: Any) -> list[Any]:
    values: list[Any] = column.tolist()
    if not np.isfinite(column).all():
        values = [v if math.isfinite(v) else None for v in values]
    return values
