"""Parsing and validation of the data lines of an inbox CSV into ValidRows and RowErrors (the
contract: README, 'The CSV format (inbox)')."""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cmm_twin.gateway.sources.csv.distinct import check_distinct
from cmm_twin.gateway.sources.csv.header import UNIT_COLUMN, Headers
from cmm_twin.gateway.sources.csv.ids import IdColumns, check_id
from cmm_twin.gateway.sources.csv.lines import not_utf8, split_lines
from cmm_twin.gateway.sources.csv.numbers import Numbers
from cmm_twin.gateway.sources.csv.timestamps import Timestamps, check_timestamps
from cmm_twin.gateway.sources.ids import MeasurementIds
from cmm_twin.gateway.sources.rows import IngestSettings, RowError, ValidRows, empty_rows
from cmm_twin.physics.compensation import Compensation

LENGTH = "mm"
ANGLE = "deg"
UNITS: dict[str, str] = {"": LENGTH, LENGTH: LENGTH, ANGLE: ANGLE}
"""Spellings of the `unit` column (stripped, lower case) and the record unit each gives."""

Columns = dict[str, Any]
"""Columns of ValidRows by field name, while a chunk is validated."""


@dataclass
class CsvShared:
    """What the parsers of one CSV source share across files: converters and the caches they keep."""

    settings: IngestSettings
    headers: Headers = field(default_factory=Headers)
    timestamps: Timestamps = field(default_factory=Timestamps)
    id_columns: IdColumns = field(default_factory=IdColumns)
    measurement_ids: MeasurementIds = field(default_factory=MeasurementIds)
    numbers: Numbers = field(init=False)
    compensation: int = field(init=False)
    """Compensation code of every row: SOURCE when the inputs are already compensated."""

    def __post_init__(self) -> None:
        self.numbers = Numbers(self.settings)
        already = self.settings.inputs.already_compensated
        self.compensation = int(Compensation.SOURCE if already else Compensation.GATEWAY)


class ChunkParser:
    """Parses and validates chunks of one file; holds the header map and per-file caches."""

    def __init__(self, header: list[str], header_line: int, shared: CsvShared) -> None:
        self.field_count, self.index, self.first_column = shared.headers.layout(tuple(header), header_line)
        self._shared = shared
        settings = shared.settings
        self.materials = settings.materials
        self.default_material = settings.default_material.strip().upper()
        self.timestamp_cache: dict[str, tuple[tuple[str, int], str | None]] = {}
        self.id_cache: dict[str, tuple[str, str | None]] = {}
        self.material_cache: dict[str, tuple[str, str | None]] = {}

    def parse(self, data: bytes, line_count: int, first_line: int) -> tuple[ValidRows, list[RowError]]:
        """Valid rows and row errors of `data` (`line_count` lines, the first is line `first_line`)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise not_utf8(exc, data, first_line) from None
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text.endswith("\r"):
                text = text[:-1]
        if text.endswith("\n"):
            text = text[:-1]
        columns, errors, line_numbers = self._split_fields(text, line_count, first_line)
        if not len(line_numbers):
            return empty_rows(), errors
        bad: dict[int, RowError] = {}
        values = self._validate(columns, line_numbers, bad)
        if bad:
            _name_characteristics(bad, columns)
            keep = np.ones(len(line_numbers), dtype=bool)
            keep[list(bad)] = False
            values = select(values, keep)
            errors = sorted([*errors, *bad.values()], key=lambda e: e.line)
        ids = self._shared.measurement_ids(
            values["machine_id"], values["part_id"], values["feature"], values["timestamp"]
        )
        size = len(ids)
        compensation = np.full(size, self._shared.compensation, dtype=np.int8)
        unit: list[str] = values.pop("unit")
        if ANGLE in unit:
            compensation[np.array(unit) == ANGLE] = Compensation.NONE  # an angle: no thermal correction
        return (
            ValidRows(
                measurement_id=ids,
                **values,
                part_temp_u_k=np.full(size, np.nan),
                compensation=compensation,
                flags=np.zeros(size, dtype=np.int32),
                unit=unit,
                source_format=["csv"] * size,
                source_file=[""] * size,
            ),
            errors,
        )

    def _split_fields(
        self, text: str, line_count: int, first_line: int
    ) -> tuple[dict[str, list[str]], list[RowError], NDArray[np.int64]]:
        """Contract columns of the rows with the header's field count; errors of the others; line numbers.

        Without quotes (and stray CRs) a line is split at every comma, for the whole chunk at once;
        otherwise each line goes through the csv module (strict, one physical line per row).
        """
        n = self.field_count
        errors: list[RowError] = []
        if '"' not in text and "\r" not in text:
            # Split the whole chunk at commas, keeping each line break at the start of the next
            # line's first field: the chunk is well formed (n fields per line) exactly when there
            # are n * lines fields and every n-th field, from the n-th on, begins a line (which
            # also shows that the chunk has `line_count` lines). The line breaks are then taken
            # off the first column (the value checks strip anyway).
            flat = text.replace("\n", ",\n").split(",")
            if len(flat) == n * line_count and "".join(flat[n::n]).count("\n") == line_count - 1:
                numbers = np.arange(first_line, first_line + line_count, dtype=np.int64)
                columns = {name: flat[j::n] for name, j in self.index.items()}
                if self.first_column is not None:
                    columns[self.first_column] = "".join(columns[self.first_column]).split("\n")
                return columns, errors, numbers
            lines = split_lines(text, line_count)
            kept: list[int] = []
            for i, line in enumerate(lines):
                count = line.count(",")
                if count == n - 1:
                    kept.append(i)
                elif line.strip():  # blank lines are skipped
                    errors.append(RowError(first_line + i, None, f"expected {n} fields, got {count + 1}"))
            numbers = np.array(kept, dtype=np.int64) + first_line
            if not kept:
                return {}, errors, numbers
            flat = "\n".join([lines[i] for i in kept]).replace("\n", ",").split(",")
            return {name: flat[j::n] for name, j in self.index.items()}, errors, numbers
        rows, errors, numbers = self._split_csv(split_lines(text, line_count), first_line)
        if not rows:
            return {}, errors, numbers
        return {name: [row[j] for row in rows] for name, j in self.index.items()}, errors, numbers

    def _split_csv(
        self, lines: list[str], first_line: int
    ) -> tuple[list[list[str]], list[RowError], NDArray[np.int64]]:
        n = self.field_count
        try:
            parsed = list(csv.reader(lines, strict=True))
        except csv.Error:
            parsed = []
        # a CSV error, or a quoted field running over a line end: split line by line
        rows: list[list[str] | None] = list(parsed) if len(parsed) == len(lines) else list(map(split_line, lines))
        good: list[list[str]] = []
        numbers: list[int] = []
        errors: list[RowError] = []
        for i, row in enumerate(rows):
            if row is None:
                errors.append(RowError(first_line + i, None, "unreadable CSV (a quoted field cannot span lines)"))
            elif len(row) == n:
                good.append(row)
                numbers.append(first_line + i)
            elif row and not (len(row) == 1 and not row[0].strip()):  # blank lines are skipped
                errors.append(RowError(first_line + i, None, f"expected {n} fields, got {len(row)}"))
        return good, errors, np.array(numbers, dtype=np.int64)

    def _validate(self, columns: dict[str, list[str]], lines: NDArray[np.int64], bad: dict[int, RowError]) -> Columns:
        """Converted columns (all but the ids); the first error of each bad row, in contract order, into `bad`.

        Each column tries a fast path that only accepts a column without any error; the checks
        value by value (which find the errors) run when it does not.
        """
        size = len(lines)
        raw_stamps = columns["timestamp"]
        converted = self._shared.timestamps.fast(raw_stamps)
        if converted is not None:
            timestamp, timestamp_ns = converted
        else:
            stamps = check_distinct("timestamp", raw_stamps, check_timestamps, self.timestamp_cache, lines, bad)
            canonical = {raw: value[0] for raw, value in stamps.items()}
            unix_ns = {raw: value[1] for raw, value in stamps.items()}
            timestamp = list(map(canonical.__getitem__, raw_stamps))
            timestamp_ns = np.fromiter(map(unix_ns.__getitem__, raw_stamps), dtype=np.int64, count=size)
        machine_id = self._shared.id_columns.ids("machine_id", columns["machine_id"], self.id_cache, lines, bad)
        part_id = self._shared.id_columns.part_ids(columns["part_id"], lines, bad)
        feature = self._shared.id_columns.ids("feature", columns["feature"], self.id_cache, lines, bad)
        spellings = set(columns["material"]) if "material" in columns else set()
        checked = self._check_materials(list(spellings)) if len(spellings) == 1 else []
        if checked and checked[0][1] is None:  # one valid spelling in the whole chunk (the usual case)
            distinct = {checked[0][0]}
            material = [checked[0][0]] * size
        elif "material" in columns:
            keys = check_distinct(
                "material", columns["material"], self._check_materials, self.material_cache, lines, bad
            )
            distinct = set(keys.values())
            material = (
                [next(iter(distinct))] * size
                if len(distinct) == 1
                else list(map(keys.__getitem__, columns["material"]))
            )
        else:
            distinct = {self.default_material}
            material = [self.default_material] * size
        if len(distinct) == 1:
            only = self.materials[material[0]]
            cte = np.full(size, only.cte_per_k)
            cte_u = np.full(size, only.cte_u_per_k)
        else:
            by_key = {k: self.materials[k] for k in distinct}
            cte = np.array([by_key[k].cte_per_k for k in material], dtype=np.float64)
            cte_u = np.array([by_key[k].cte_u_per_k for k in material], dtype=np.float64)
        return {
            "line": lines,
            "timestamp": timestamp,
            "timestamp_ns": timestamp_ns,
            "machine_id": machine_id,
            "part_id": part_id,
            "feature": feature,
            "material": material,
            "cte_per_k": cte,
            "cte_u_per_k": cte_u,
            **self._shared.numbers.convert_all(columns, lines, bad),
            "unit": units(columns.get(UNIT_COLUMN), lines, bad),
        }

    def _check_materials(self, raws: list[str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for raw in raws:
            text = raw.strip()
            key = text.upper()
            if not text:
                out.append((self.default_material, None))
            elif key not in self.materials:
                out.append((self.default_material, f"unknown material {text!r}"))
            else:
                out.append((key, None))
        return out


def units(column: list[str] | None, lines: NDArray[np.int64], bad: dict[int, RowError]) -> list[str]:
    """The `unit` of each row: `mm` (also when empty or the column is absent) or `deg`,
    case-insensitive; another value is a row error naming `unit`."""
    if column is None:
        return [LENGTH] * len(lines)
    known = {raw: UNITS.get(raw.strip().lower()) for raw in set(column)}
    if None in known.values():
        for i, raw in enumerate(column):
            if known[raw] is None and i not in bad:
                bad[i] = RowError(int(lines[i]), UNIT_COLUMN, f"unknown unit {raw.strip()!r}: expected mm or deg")
    return [known[raw] or LENGTH for raw in column]


def _name_characteristics(bad: dict[int, RowError], columns: dict[str, list[str]]) -> None:
    """Give each error the machine and feature of its row, where both are valid ids."""
    machines, features = columns.get("machine_id"), columns.get("feature")
    if machines is None or features is None:
        return
    for i, error in bad.items():
        machine_id, feature = machines[i].strip(), features[i].strip()
        if check_id(machine_id)[1] is None and check_id(feature)[1] is None:
            bad[i] = dataclasses.replace(error, machine_id=machine_id, feature=feature)


def split_line(line: str) -> list[str] | None:
    try:
        return next(csv.reader([line], strict=True), [])
    except csv.Error:
        return None


def select(values: Columns, keep: NDArray[np.bool_]) -> Columns:
    """The rows where `keep` is true, of each column."""
    positions = np.flatnonzero(keep).tolist()
    out: Columns = {}
    for name, column in values.items():
        if isinstance(column, np.ndarray):
            out[name] = column[keep]
        else:
            out[name] = [column[i] for i in positions]
    return out
