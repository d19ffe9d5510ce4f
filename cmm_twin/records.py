"""The result record every sink receives (DESIGN.md section 3) and the measurement id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

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
)
"""Field names of a result record, in the order the MES payload and the docs list them."""

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
