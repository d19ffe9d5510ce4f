"""The historian's names (README, "The historian") and InfluxDB line protocol built a batch at a time.

Names are fixed by the contract and the Grafana dashboard queries exactly these:
- `cmm_measurement`, tags `machine_id, feature, material, verdict, unit`, fields `measured_mm,
  compensated_mm, part_temp_c, air_temp_c, correction_um, deviation_um, uncertainty_um,
  tolerance_mm, lower_tol_mm, upper_tol_mm`, timestamp = measurement time. The verdict and the unit
  are tags (not string fields) so databases that keep only numeric fields (VictoriaMetrics) keep
  them too. `unit` is `deg` for an angle (its `_mm` fields are then degrees, its `_um` fields
  thousandths of a degree); the tolerance and limits follow the record (limits signed, relative to
  the nominal).
- `gateway_health`, fields `buffer_depth, mes_connected, historian_connected, files_processed,
  rows_rejected` (integers), timestamp = when the sample was taken.

Encoding works on whole columns (numbers written by orjson in C, one `%` format per row), many
times faster than a `Point` object per row. A NaN field (an optional air temperature
that was not given, a tolerance or limit a specification does not have) is left out of its line,
as line protocol has no null.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

MEASUREMENT = "cmm_measurement"
TAG_KEYS: tuple[str, ...] = ("machine_id", "feature", "material", "verdict", "unit")
FIELD_KEYS: tuple[str, ...] = (
    "measured_mm",
    "compensated_mm",
    "part_temp_c",
    "air_temp_c",
    "correction_um",
    "deviation_um",
    "uncertainty_um",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
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


def measurement_body(batch: RecordBatch, precision: Precision = Precision.NS) -> bytes:
    """The `cmm_measurement` lines of `batch`, in order, joined by newlines (no trailing one).

    Numbers are written by orjson in C (shortest round-trip form, as `repr`, e.g. `1e-5`), a
    column at a time; each row is then one `%` format of its tag prefix. Rows with a missing
    (NaN) field take a slower path that leaves that field out.
    """
    n = len(batch)
    if n == 0:
        return b""
    verdicts = VERDICT_NAMES[batch.verdict].tolist()
    formats: dict[tuple[str, str, str, str, str], bytes] = {}
    row_formats: list[bytes] = []
    for key in zip(batch.machine_id, batch.feature, batch.material, verdicts, batch.unit, strict=True):
        row_format = formats.get(key)
        if row_format is None:
            tags = ",".join(f"{k}={escape_tag(v)}" for k, v in zip(TAG_KEYS, key, strict=True))
            row_format = formats[key] = f"{MEASUREMENT},{tags}".replace("%", "%%").encode() + _FIELDS_FORMAT
        row_formats.append(row_format)
    columns = [_numbers(getattr(batch, name)) for name in FIELD_KEYS]
    stamps = _numbers(precision.scale(batch.timestamp_ns))
    lines = [f % values for f, values in zip(row_formats, zip(*columns, stamps, strict=True), strict=True)]
    finite = np.isfinite(np.column_stack([getattr(batch, name) for name in FIELD_KEYS]))
    for j in np.flatnonzero(~finite.all(axis=1)).tolist():
        prefix = row_formats[j][: -len(_FIELDS_FORMAT)].replace(b"%%", b"%")
        fields = b",".join(
            b"%s=%s" % (k, c[j]) for k, c, ok in zip(_FIELD_NAMES, columns, finite[j], strict=True) if ok
        )
        lines[j] = b"%s %s %s" % (prefix, fields, stamps[j])
    return b"\n".join(lines)


def measurement_lines(batch: RecordBatch, precision: Precision = Precision.NS) -> list[str]:
    """One `cmm_measurement` line per record of `batch`, in order (see `measurement_body`)."""
    body = measurement_body(batch, precision)
    return body.decode().split("\n") if body else []


_FIELD_NAMES = [name.encode() for name in FIELD_KEYS]
_FIELDS_FORMAT = b" " + b",".join(b"%s=%%s" % name for name in _FIELD_NAMES) + b" %s"


def _numbers(values: NDArray[Any]) -> list[bytes]:
    """Each value as text (non-finite ones as `null`), written by orjson in one C call."""
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def health_line(sample: HealthSample, precision: Precision = Precision.NS) -> str:
    """The `gateway_health` line of one sample (integer fields)."""
    fields = ",".join(f"{k}={v}i" for k, v in zip(HEALTH_FIELD_KEYS, sample.values(), strict=True))
    stamp = sample.timestamp_ns if precision is Precision.NS else sample.timestamp_ns // 1_000_000
    return f"{HEALTH_MEASUREMENT} {fields} {stamp}"
