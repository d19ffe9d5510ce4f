"""The historian's names (DESIGN.md section 6) and InfluxDB line protocol built a batch at a time.

Names are fixed by the contract and the Grafana dashboard queries exactly these:
- `cmm_measurement`, tags `machine_id, feature, material, verdict`, fields `measured_mm,
  compensated_mm, part_temp_c, air_temp_c, correction_um, deviation_um, uncertainty_um`,
  timestamp = measurement time. The verdict is a tag (not a string field) so databases that keep
  only numeric fields (VictoriaMetrics) keep it too.
- `gateway_health`, fields `buffer_depth, mes_connected, historian_connected, files_processed,
  rows_rejected` (integers), timestamp = when the sample was taken.

Encoding works on whole columns (one `repr` per value via `map`, one formatted string per row),
several times faster than a `Point` object per row. A NaN field (an optional air temperature
that was not given) is left out of its line, as line protocol has no null.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

MEASUREMENT = "cmm_measurement"
TAG_KEYS: tuple[str, ...] = ("machine_id", "feature", "material", "verdict")
FIELD_KEYS: tuple[str, ...] = (
    "measured_mm",
    "compensated_mm",
    "part_temp_c",
    "air_temp_c",
    "correction_um",
    "deviation_um",
    "uncertainty_um",
)
HEALTH_MEASUREMENT = "gateway_health"
HEALTH_FIELD_KEYS: tuple[str, ...] = (
    "buffer_depth",
    "mes_connected",
    "historian_connected",
    "files_processed",
    "rows_rejected",
)


class Precision(enum.StrEnum):
    """Timestamp precision of the written lines (InfluxDB's `precision` parameter)."""

    NS = "ns"
    MS = "ms"

    def scale(self, timestamp_ns: NDArray[np.int64]) -> NDArray[np.int64]:
        """Timestamps in this precision (floor division, so ms never rounds into the future)."""
        return timestamp_ns if self is Precision.NS else timestamp_ns // 1_000_000


@dataclass(frozen=True)
class HealthSample:
    """One `gateway_health` point."""

    timestamp_ns: int
    buffer_depth: int
    mes_connected: bool
    historian_connected: bool
    files_processed: int
    rows_rejected: int

    def values(self) -> tuple[int, ...]:
        """The field values in HEALTH_FIELD_KEYS order, as integers."""
        return (
            self.buffer_depth,
            int(self.mes_connected),
            int(self.historian_connected),
            self.files_processed,
            self.rows_rejected,
        )


_TAG_ESCAPE = re.compile(r"([,= \\])")


def escape_tag(value: str) -> str:
    """A tag key or value escaped for line protocol (comma, equals sign, space, backslash)."""
    return _TAG_ESCAPE.sub(r"\\\1", value.replace("\n", " "))


def measurement_lines(batch: RecordBatch, precision: Precision = Precision.NS) -> list[str]:
    """One `cmm_measurement` line per record of `batch`, in order."""
    n = len(batch)
    if n == 0:
        return []
    verdicts = VERDICT_NAMES[batch.verdict].tolist()
    prefix_cache: dict[tuple[str, str, str, str], str] = {}
    prefixes: list[str] = []
    for key in zip(batch.machine_id, batch.feature, batch.material, verdicts, strict=True):
        prefix = prefix_cache.get(key)
        if prefix is None:
            tags = ",".join(f"{k}={escape_tag(v)}" for k, v in zip(TAG_KEYS, key, strict=True))
            prefix = prefix_cache[key] = f"{MEASUREMENT},{tags} "
        prefixes.append(prefix)
    columns: list[list[str]] = []
    for i, name in enumerate(FIELD_KEYS):
        values: NDArray[np.float64] = getattr(batch, name)
        sep = "" if i == 0 else ","
        texts = [f"{sep}{name}={r}" for r in map(repr, values.tolist())]
        for j in np.flatnonzero(~np.isfinite(values)).tolist():
            texts[j] = ""
        columns.append(texts)
    stamps = [f" {t}" for t in precision.scale(batch.timestamp_ns).tolist()]
    lines = ["".join(parts) for parts in zip(prefixes, *columns, stamps, strict=True)]
    for j in np.flatnonzero(~np.isfinite(batch.measured_mm)).tolist():
        cut = len(prefixes[j])  # no first field: drop the comma before the next one
        lines[j] = lines[j][:cut] + lines[j][cut:].removeprefix(",")
    return lines


def health_line(sample: HealthSample, precision: Precision = Precision.NS) -> str:
    """The `gateway_health` line of one sample (integer fields)."""
    fields = ",".join(f"{k}={v}i" for k, v in zip(HEALTH_FIELD_KEYS, sample.values(), strict=True))
    stamp = sample.timestamp_ns if precision is Precision.NS else sample.timestamp_ns // 1_000_000
    return f"{HEALTH_MEASUREMENT} {fields} {stamp}"
