"""Atomic output of the simulator: one inbox file per part (README, "The CSV format (inbox)"; or
the files of one part in another format, `formats`), optional truth.

Every file is written under a dot-name of its own ending in `.tmp` (`.cmmsim-<pid>-<name>.tmp`),
which no source of the gateway claims, flushed and fsynced, renamed into place with `os.replace`
and the directory fsynced. A reader therefore sees a file whole or not at all, even if the
simulator is killed with SIGKILL. The files of one part in a format of two files (Calypso's
`_hdr.txt`, then `_chr.txt`) are both written first, then renamed in that order, the one that
completes the unit last.
The temp file such a kill leaves behind is removed at the next start (`remove_stale_temp_files`):
only temp files of this writer's prefix whose process is gone. Temp files of other writers, and
of a simulator still running, are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cmm_twin.durable_io import fsync_directory
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.records import measurement_id
from cmm_twin.simulator.formats import ANGLE_DECIMALS, FORMATS, LENGTH_DECIMALS, encode, part_report, read_back_moment
from cmm_twin.simulator.shop import PartBatch

log = logging.getLogger(__name__)

CSV_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "machine_id",
    "part_id",
    "feature",
    "material",
    "nominal_mm",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "measured_mm",
    "part_temp_c",
    "air_temp_c",
    "unit",
)
"""Columns of an inbox file, in the order written (the simulated CMM has no scale thermometer). A
symmetric zone gives `tolerance_mm`, another its limits; values of a `deg` row are in degrees."""

TRUTH_COLUMNS: tuple[str, ...] = (
    "measurement_id",
    "machine_id",
    "part_id",
    "part_number",
    "feature",
    "feature_kind",
    "material",
    "unit",
    "timestamp",
    "nominal",
    "lower_tol",
    "upper_tol",
    "true_value",
    "true_length_20c_mm",
    "conforming",
    "true_part_temp_c",
    "true_surface_temp_c",
    "true_air_temp_c",
    "true_cte_per_k",
    "cte_lot",
    "cmm_error_um",
    "probe_error_um",
    "part_sensor_offset_k",
    "air_sensor_offset_k",
    "cmm_mpe_a_um",
    "cmm_mpe_k_mm_per_um",
)
"""Columns of a truth file (`truth_file_name`, in the truth directory); docs/simulator.md, "Truth"."""

TEMP_PREFIX = ".cmmsim-"
TEMP_SUFFIX = ".tmp"
TEMP_GLOB = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"
"""Pattern of the simulator's temp files; matches neither `*.csv` nor a non-dot name."""
_TEMP_NAME = re.compile(rf"{re.escape(TEMP_PREFIX)}([0-9]{{1,10}})-.+{re.escape(TEMP_SUFFIX)}", re.DOTALL)


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, e.g. `2024-05-01T08:00:00.250Z` (truncates to ms)."""
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset")
    utc = moment.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def part_timestamp(start: datetime, part_index: int, wall_step_s: float) -> datetime:
    """Time stamp of part `part_index`: start + part_index * wall_step_s (rounded to the microsecond)."""
    return start + timedelta(microseconds=round(part_index * wall_step_s * 1e6))


def part_file_stem(machine_id: str, part_index: int, moment: datetime) -> str:
    """Stem of the file(s) of a part, e.g. `CMM-01_20260105T060000123_00000042`.

    The part's time (to the millisecond, UTC) is in the name so that a second run, whose part
    numbers start at 0 again, never replaces a file of an earlier run still waiting in the inbox.
    """
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"{machine_id}_{stamp}_{part_index:08d}"


def part_file_name(machine_id: str, part_index: int, moment: datetime) -> str:
    """File name of a part in CSV, e.g. `CMM-01_20260105T060000123_00000042.csv`."""
    return part_file_stem(machine_id, part_index, moment) + ".csv"


def truth_file_name(stem: str, fmt: str) -> str:
    """Name of the truth file of a part: the inbox file's name for CSV (`<stem>.csv`), else
    `<stem>.<format>.csv` (so runs in several formats can share a truth directory)."""
    return f"{stem}.csv" if fmt == "csv" else f"{stem}.{fmt}.csv"


def temp_name(name: str, pid: int | None = None) -> str:
    """The temp name under which the simulator of process `pid` (default: this one) writes `name`."""
    return f"{TEMP_PREFIX}{os.getpid() if pid is None else pid}-{name}{TEMP_SUFFIX}"


def atomic_write_text(directory: Path, name: str, text: str) -> Path:
    """Write `text` (UTF-8) to `directory/name` atomically: temp dot-file, fsync, rename, fsync dir."""
    return atomic_write_bytes(directory, name, text.encode("utf-8"))


def atomic_write_bytes(directory: Path, name: str, data: bytes) -> Path:
    """Write `data` to `directory/name` atomically: temp dot-file, fsync, rename, fsync dir."""
    return atomic_write_files(directory, [(name, data)])[-1]


def atomic_write_files(directory: Path, files: Sequence[tuple[str, bytes]]) -> list[Path]:
    """Write the files `(name, data)` into `directory` atomically, each under a temp dot-name
    (written and fsynced all first), then renamed in the order given, then the directory fsynced:
    the renames of files that belong together follow each other closely (a kill between them
    leaves a unit's first files without the last one only in that short window)."""
    finals = [directory / name for name, _ in files]
    temps = [directory / temp_name(name) for name, _ in files]
    try:
        for temp, (_, data) in zip(temps, files, strict=True):
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # no directory fsync where directories cannot be opened (Windows)
        fsync_directory(directory)
    return finals


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user counts: it cannot be signalled, but lives)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete the simulator's temp files (`.cmmsim-<pid>-*.tmp`) in `directory` left by a killed run.

    Only files of that prefix whose process is gone are removed: a live simulator's temp file
    (this process's too) and every other file, e.g. another writer's `.x.csv.tmp`, stay. A file
    left by a killed run whose pid is now taken by a live process stays too (harmless: no reader
    takes it); it goes at a later start.
    """
    removed: list[Path] = []
    for path in sorted(directory.glob(TEMP_GLOB)):
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or not path.is_file() or process_alive(int(match.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class PartFileWriter:
    """Writes each part as one inbox CSV file in `outdir` (or the files of `fmt`, see `formats`)
    and, optionally, its truth file in `truth_dir`.

    Part k is stamped `start + k * wall_step_s`. The truth file is written before the inbox file,
    so every inbox file that exists has its truth. `timezone`: the IANA zone local times are
    written in (Q-DAS, Calypso); None: the host's, as the gateway's default.
    """

    def __init__(
        self,
        outdir: Path,
        machine_ids: Sequence[str],
        start: datetime,
        wall_step_s: float,
        *,
        truth_dir: Path | None = None,
        fmt: str = "csv",
        timezone: str | None = None,
    ) -> None:
        if start.tzinfo is None:
            raise ValueError("start needs a UTC offset")
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        self.fmt = fmt
        self.inputs = InputSettings(timezone=timezone)
        """The zone of local times and the gateway's rule reading them."""
        self.outdir = outdir
        self.truth_dir = truth_dir
        self.machine_ids = tuple(machine_ids)
        self.start = start
        self.wall_step_s = wall_step_s

    def prepare(self) -> int:
        """Create the directories and remove stale temp files; returns how many were removed."""
        count = 0
        for directory in (self.outdir, self.truth_dir):
            if directory is None:
                continue
            directory.mkdir(parents=True, exist_ok=True)
            for path in remove_stale_temp_files(directory):
                log.info("removed stale temp file %s", path)
                count += 1
        return count

    def write_part(self, part: PartBatch) -> Path:
        """Write the rows of one part (a batch of its features); returns the path of the inbox file
        that leads its unit (the one written last)."""
        if len(part) == 0:
            raise ValueError("a part needs at least one row")
        part_index = int(part.part_index[0])
        if not (part.part_index == part_index).all():
            raise ValueError("write_part takes the rows of exactly one part")
        machine = self.machine_ids[int(part.machine_index[0])]
        part_id = str(part.part_id[0])
        moment = part_timestamp(self.start, part_index, self.wall_step_s)
        stem = part_file_stem(machine, part_index, moment)
        features = [str(f) for f in part.feature.tolist()]
        if self.fmt == "csv":
            timestamp = format_timestamp(moment)
            read_back = datetime.fromisoformat(timestamp)  # the instant a reader of the CSV derives
        else:
            read_back = read_back_moment(self.fmt, moment, self.inputs)
            timestamp = format_timestamp(read_back)

        if self.truth_dir is not None:
            ids = [measurement_id(machine, part_id, feature, read_back) for feature in features]
            text = truth_text(part, ids, machine, timestamp)
            atomic_write_text(self.truth_dir, truth_file_name(stem, self.fmt), text)

        if self.fmt != "csv":
            report = part_report(self.fmt, part, machine, moment)
            return atomic_write_files(self.outdir, encode(self.fmt, report, self.inputs, stem))[-1]
        return atomic_write_text(self.outdir, stem + ".csv", csv_text(part, machine, timestamp))


def _limit(value: float, places: int) -> str:
    """A limit with `places` decimals; empty for an open side (NaN)."""
    return "" if math.isnan(value) else f"{value:.{places}f}"


def csv_text(part: PartBatch, machine: str, timestamp: str) -> str:
    """The inbox CSV of one part (`CSV_COLUMNS`): a symmetric zone as `tolerance_mm`, another as
    `lower_tol_mm` / `upper_tol_mm` (empty: an open side)."""
    lines = [",".join(CSV_COLUMNS)]
    tolerance = part.tolerance.tolist()
    columns = zip(
        part.feature.tolist(),
        part.material.tolist(),
        part.nominal.tolist(),
        tolerance,
        part.lower_tol.tolist(),
        part.upper_tol.tolist(),
        part.measured.tolist(),
        part.unit.tolist(),
        strict=True,
    )
    part_id, part_c, air_c = str(part.part_id[0]), float(part.part_temp_c[0]), float(part.air_temp_c[0])
    for feature, material, nominal, tol, lower, upper, measured, unit in columns:
        zone = f"{tol:.4f},," if not math.isnan(tol) else f",{_limit(lower, 4)},{_limit(upper, 4)}"
        places = ANGLE_DECIMALS if unit == "deg" else LENGTH_DECIMALS
        lines.append(
            f"{timestamp},{machine},{part_id},{feature},{material},{nominal:.4f},{zone},{measured:.{places}f},"
            f"{part_c:.3f},{air_c:.3f},{unit}"
        )
    return "\n".join(lines) + "\n"


def truth_text(part: PartBatch, ids: Sequence[str], machine: str, timestamp: str) -> str:
    """The truth file of one part (`TRUTH_COLUMNS`; docs/simulator.md, "Truth")."""
    lines = [",".join(TRUTH_COLUMNS)]
    part_id = str(part.part_id[0])
    columns = zip(
        ids,
        part.part_number.tolist(),
        part.feature.tolist(),
        part.feature_kind.tolist(),
        part.material.tolist(),
        part.unit.tolist(),
        part.nominal.tolist(),
        part.lower_tol.tolist(),
        part.upper_tol.tolist(),
        part.true_value.tolist(),
        part.conforming.tolist(),
        part.true_part_temp_c.tolist(),
        part.true_surface_temp_c.tolist(),
        part.true_air_temp_c.tolist(),
        part.true_cte_per_k.tolist(),
        part.cte_lot.tolist(),
        part.cmm_error_um.tolist(),
        part.probe_error_um.tolist(),
        part.part_sensor_offset_k.tolist(),
        part.air_sensor_offset_k.tolist(),
        part.cmm_mpe_a_um.tolist(),
        part.cmm_mpe_k_mm_per_um.tolist(),
        strict=True,
    )
    for (
        measurement,
        number,
        feature,
        kind,
        material,
        unit,
        nominal,
        lower,
        upper,
        true,
        conforming,
        mean_c,
        surface_c,
        air_c,
        cte,
        lot,
        cmm_um,
        probe_um,
        part_offset,
        air_offset,
        mpe_a,
        mpe_k,
    ) in columns:
        length = f"{true:.6f}" if unit == "mm" else ""
        lines.append(
            f"{measurement},{machine},{part_id},{number},{feature},{kind},{material},{unit},{timestamp},"
            f"{nominal:.4f},{_limit(lower, 4)},{_limit(upper, 4)},{true:.6f},{length},{int(conforming)},"
            f"{mean_c:.4f},{surface_c:.4f},{air_c:.4f},{cte:.6e},{number}/L{lot:05d},{cmm_um:.4f},{probe_um:.4f},"
            f"{part_offset:.4f},{air_offset:.4f},{mpe_a:g},{mpe_k:g}"
        )
    return "\n".join(lines) + "\n"
