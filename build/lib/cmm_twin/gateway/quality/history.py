"""Rebuild the capability monitor at start-up from the embedded historian (`--historian sqlite`):
the newest `window` records of each machine and characteristic, oldest first, so capability and
alarms survive a restart. Without the embedded store (InfluxDB, or no historian) the monitor
starts empty.

Records spooled but not yet written to the store when the gateway stopped reach the store later
and are not in the rebuilt windows; every record that arrives after the start is.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.sinks.historian.lineprotocol import MEASUREMENT
from cmm_twin.gateway.sinks.historian.settings import HistorianSettings
from cmm_twin.physics.compensation import COMPENSATION_NAMES
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

if TYPE_CHECKING:
    from cmm_twin.gateway.config import GatewayConfig

log = logging.getLogger(__name__)

_COLUMNS = (
    "machine_id",
    "feature",
    "unit",
    "measurement_id",
    "part_id",
    "verdict",
    "time_ns",
    "uncertainty_um",
    "source_format",
    "measured_mm",
    "nominal_mm",
    "compensated_mm",
    "deviation_um",
    "part_temp_c",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "flags",
    "compensation",
)
_PAGE_ROWS = 5_000
_FLOATS: tuple[str, ...] = ("measured_mm", "nominal_mm", "compensated_mm", "deviation_um", "part_temp_c")
_FLOATS += ("tolerance_mm", "lower_tol_mm", "upper_tol_mm", "uncertainty_um")


def newest_records(path: Path, window: int) -> RecordBatch:
    """The newest `window` records of each (machine_id, feature) in the history at `path`, oldest
    first (the columns the monitor and the OPC UA characteristics read; the others blank). Empty
    when there is no store. Blocking: run it off the event loop."""
    if not path.is_file():
        return RecordBatch.empty()
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        present = {str(row[1]) for row in db.execute(f"PRAGMA table_info({MEASUREMENT})")}
        if not present:
            return RecordBatch.empty()
        db.execute("BEGIN")  # one snapshot for both reads
        rows = _newest_rows(db, present, window)
    finally:
        db.close()
    if not rows:
        return RecordBatch.empty()
    rows.reverse()  # oldest first
    columns = dict(zip(_COLUMNS, (list(c) for c in zip(*rows, strict=True)), strict=True))
    values: dict[str, object] = {name: [str(v or "") for v in columns[name]] for name in _COLUMNS[:5]}
    values["timestamp_ns"] = np.array(columns["time_ns"], dtype=np.int64)
    verdict_codes = {name: code for code, name in enumerate(VERDICT_NAMES.tolist())}
    values["verdict"] = np.array([verdict_codes.get(str(v), 0) for v in columns["verdict"]], dtype=np.int8)
    values["unit"] = [v or "mm" for v in columns["unit"]]
    values["source_format"] = [v or "csv" for v in columns["source_format"]]
    values["measurement_id"] = [v or f"history-{i}" for i, v in enumerate(columns["measurement_id"])]
    for name in _FLOATS:
        values[name] = np.array([np.nan if v is None else v for v in columns[name]], dtype=np.float64)
    nominal, compensated, deviation = values["nominal_mm"], values["compensated_mm"], values["deviation_um"]
    assert isinstance(nominal, np.ndarray) and isinstance(compensated, np.ndarray) and isinstance(deviation, np.ndarray)
    # A history older than the nominal column: the nominal follows from the compensated value and its deviation.
    values["nominal_mm"] = np.where(np.isfinite(nominal), nominal, compensated - deviation / 1000.0)
    values["flags"] = np.array([v or 0 for v in columns["flags"]], dtype=np.int32)
    codes = {name: code for code, name in enumerate(COMPENSATION_NAMES.tolist())}
    values["compensation"] = np.array([codes.get(v or "gateway", 0) for v in columns["compensation"]], dtype=np.int8)
    return RecordBatch.with_blanks(len(rows), values)


def _newest_rows(db: sqlite3.Connection, present: set[str], window: int) -> list[tuple[object, ...]]:
    """The rows of `newest_records`, newest first: the table is walked backwards along its key
    (time first: no sort) until every characteristic in it has `window` rows, so a start-up reads
    about `window` x characteristics rows, not the whole history (a sorted window-function query
    over a million points took 45 s)."""
    wanted = {tuple(row) for row in db.execute(f"SELECT DISTINCT machine_id, feature FROM {MEASUREMENT}")}
    select = ", ".join(name if name in present else "NULL" for name in _COLUMNS)
    cursor = db.execute(f"SELECT {select} FROM {MEASUREMENT} ORDER BY time_ns DESC")
    counts: dict[tuple[object, object], int] = {}
    rows: list[tuple[object, ...]] = []
    full = 0
    while full < len(wanted) and (page := cursor.fetchmany(_PAGE_ROWS)):
        for row in page:
            key = (row[0], row[1])
            count = counts.get(key, 0)
            if count < window:
                rows.append(row)
                counts[key] = count + 1
                full += count + 1 == window
    return rows


def rebuild(monitor: QualityMonitor, path: Path) -> int:
    """Fill `monitor` from the history at `path` (records keep the flags they were stored with);
    returns how many records were read. Blocking. From a store that cannot be read (the historian
    reports it) the monitor starts empty: capability is a view, it never stops the gateway."""
    try:
        records = newest_records(path, monitor.settings.window)
    except sqlite3.Error as exc:  # a corrupt store: the historian sink says so and what to do, once
        log.debug("capability: cannot read the history %s (%s): the windows start empty", path, exc)
        return 0
    monitor.observe(records, flag=False)
    if len(records):
        log.info(
            "capability: %d records of %d characteristics taken from the history",
            len(records),
            len(monitor.reports()),
        )
    return len(records)


def embedded_history_path(config: GatewayConfig) -> Path | None:
    """The embedded historian's store when `config` has one (`--historian sqlite`, not off), else None."""
    settings = HistorianSettings.from_config(config)
    if settings is None or settings.kind != "sqlite" or "historian" in config.sinks_off:
        return None
    return settings.history_path


def rebuild_from_config(monitor: QualityMonitor, config: GatewayConfig) -> int:
    """`rebuild` from the embedded historian when `config` has one (`--historian sqlite`, not off);
    otherwise the monitor starts empty (0). Blocking."""
    path = embedded_history_path(config)
    if path is None:
        log.info("capability: no embedded historian, the windows start empty")
        return 0
    return rebuild(monitor, path)
