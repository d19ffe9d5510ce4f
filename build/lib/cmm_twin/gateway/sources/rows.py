"""The common row model every source produces: validated rows as columns, row errors, and the
whole-file rejection; the validation settings all sources share.

A source turns the bytes of one unit (a file, or files that belong together) into `ParsedChunk`s:
`ValidRows` (columns, in file order) plus one `RowError` per rejected row; or it raises
`FileRejected` when nothing of the unit can be taken. The physics bridge
(`cmm_twin.gateway.ingest.records`) turns ValidRows into the `RecordBatch` every sink receives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from itertools import chain
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmm_twin.errors import CmmTwinError, ConfigError
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.physics.materials import MATERIALS, Material


@dataclass(frozen=True)
class RowError:
    """One rejected row: 1-based physical line, offending column (None: the row as a whole), reason;
    and the machine and feature it was for, when the row named them validly (live sinks mark that
    characteristic's value Bad)."""

    line: int
    column: str | None
    reason: str
    machine_id: str | None = field(default=None, compare=False)
    feature: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, object]:
        """JSON-ready dict for the quarantine report."""
        return {"line": self.line, "column": self.column, "reason": self.reason}


class FileRejected(CmmTwinError):  # noqa: N818 (the name is the gateway's interface)
    """The file cannot be read at all: nothing from it is delivered.

    Raised mid-file (after chunks were yielded) only when the file changed while being read; the
    caller must then treat the whole file as rejected.
    """

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class IngestSettings:
    """Validation settings; keep the plausible range equal to the physics' `ThermalLimits`."""

    default_material: str = "AL6061"
    materials: Mapping[str, Material] = field(default_factory=lambda: MATERIALS)
    plausible_min_c: float = -20.0
    plausible_max_c: float = 80.0
    max_length_mm: float = 10_000.0
    """Largest accepted nominal, tolerance and measured length (keep equal to the physics' limit)."""
    chunk_rows: int = 10_000
    """Physical lines (data rows and blank lines) per chunk."""
    inputs: InputSettings = field(default_factory=InputSettings)
    """What every source settles the same way (the `[inputs]` table)."""

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError("chunk_rows", f"must be >= 1, got {self.chunk_rows!r}")
        for name in ("plausible_min_c", "plausible_max_c", "max_length_mm"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(name, f"must be finite, got {getattr(self, name)!r}")
        if not self.max_length_mm > 0:
            raise ConfigError("max_length_mm", f"must be > 0, got {self.max_length_mm!r}")
        if not self.plausible_min_c < self.plausible_max_c:
            raise ConfigError("plausible_min_c", "must be below plausible_max_c")
        if self.default_material.strip().upper() not in self.materials:
            raise ConfigError("default_material", f"unknown material {self.default_material!r}")


@dataclass(frozen=True)
class ValidRows:
    """Valid rows of a chunk as columns, in file order (NaN: optional temperature not given)."""

    line: NDArray[np.int64]
    measurement_id: list[str]
    timestamp: list[str]
    """Canonical UTC form (`records.canonical_timestamp`)."""
    timestamp_ns: NDArray[np.int64]
    """Unix time in nanoseconds."""
    machine_id: list[str]
    part_id: list[str]
    feature: list[str]
    material: list[str]
    """Key of the materials table (upper-case)."""
    cte_per_k: NDArray[np.float64]
    cte_u_per_k: NDArray[np.float64]
    nominal_mm: NDArray[np.float64]
    tolerance_mm: NDArray[np.float64]
    """Symmetric tolerance +-; NaN for an asymmetric or one-sided specification."""
    measured_mm: NDArray[np.float64]
    part_temp_c: NDArray[np.float64]
    air_temp_c: NDArray[np.float64]
    scale_temp_c: NDArray[np.float64]
    lower_tol_mm: NDArray[np.float64]
    """Lower limit relative to the nominal, signed (-tol for a symmetric one); NaN: none."""
    upper_tol_mm: NDArray[np.float64]
    """Upper limit relative to the nominal, signed (+tol for a symmetric one); NaN: none."""
    part_temp_u_k: NDArray[np.float64]
    """Standard uncertainty of the part temperature, K; NaN: the configured thermometer's."""
    compensation: NDArray[np.int8]
    """Compensation codes (physics): GATEWAY, SOURCE (corrected by the CMM software), NONE (angles)."""
    flags: NDArray[np.int32]
    """Flags the source sets (physics `Flag`: TEMPERATURE_ASSUMED, TIMESTAMP_FROM_FILE)."""
    unit: list[str]
    """`mm`, or `deg` for an angle (its `_mm` values are then degrees)."""
    source_format: list[str]
    source_file: list[str]
    """Name of the inbox file the row was read from (the unit's leader)."""

    def __len__(self) -> int:
        return len(self.measurement_id)


@dataclass(frozen=True)
class ParsedChunk:
    """One chunk of a file: its valid rows, its row errors and where to resume after it."""

    rows: ValidRows
    errors: list[RowError]
    end_offset: int
    """Byte offset just after the last line of this chunk (pass as `start_offset` to resume)."""
    end_line: int
    """Physical line number of the last line of this chunk (pass as `start_line` to resume)."""


def with_source_file(chunk: ParsedChunk, name: str) -> ParsedChunk:
    """`chunk` with every row's `source_file` set to `name` (the inbox name of its unit's leader)."""
    return replace(chunk, rows=replace(chunk.rows, source_file=[name] * len(chunk.rows)))


def concat_rows(parts: list[ValidRows]) -> ValidRows:
    """The rows of `parts`, in order, as one ValidRows."""
    if not parts:
        return empty_rows()
    if len(parts) == 1:
        return parts[0]
    values: dict[str, object] = {}
    for f in fields(ValidRows):
        columns = [getattr(p, f.name) for p in parts]
        if isinstance(columns[0], np.ndarray):
            values[f.name] = np.concatenate(columns)
        else:
            values[f.name] = list(chain.from_iterable(columns))
    return ValidRows(**values)  # type: ignore[arg-type]


def join_chunks(chunks: list[ParsedChunk]) -> ParsedChunk | None:
    """The chunks of one file as one (None when there are none)."""
    if not chunks:
        return None
    return ParsedChunk(
        concat_rows([c.rows for c in chunks]),
        [e for c in chunks for e in c.errors],
        chunks[-1].end_offset,
        chunks[-1].end_line,
    )


def slice_rows(rows: ValidRows, start: int, stop: int, line_shift: int) -> ValidRows:
    """Rows `start:stop` of `rows`, their line numbers shifted by `line_shift`."""
    values: dict[str, Any] = {f.name: getattr(rows, f.name)[start:stop] for f in fields(rows)}
    values["line"] = values["line"] + line_shift
    return ValidRows(**values)


def empty_rows() -> ValidRows:
    """ValidRows without a row."""
    no_floats = np.empty(0, dtype=np.float64)
    return ValidRows(
        line=np.empty(0, dtype=np.int64),
        measurement_id=[],
        timestamp=[],
        timestamp_ns=np.empty(0, dtype=np.int64),
        machine_id=[],
        part_id=[],
        feature=[],
        material=[],
        cte_per_k=no_floats,
        cte_u_per_k=no_floats,
        nominal_mm=no_floats,
        tolerance_mm=no_floats,
        measured_mm=no_floats,
        part_temp_c=no_floats,
        air_temp_c=no_floats,
        scale_temp_c=no_floats,
        lower_tol_mm=no_floats,
        upper_tol_mm=no_floats,
        part_temp_u_k=no_floats,
        compensation=np.empty(0, dtype=np.int8),
        flags=np.empty(0, dtype=np.int32),
        unit=[],
        source_format=[],
        source_file=[],
    )
