"""Recovery of a gateway whose state database was reset or damaged:

    python -m cmm_twin.gateway.recover --data-dir DIR

The gateway refuses to start when `state/gateway.sqlite` no longer holds the spool that
`state/spool-marker.json` records (truncated, its WAL deleted, replaced) or cannot be read at all,
because spooled records the sinks had not acknowledged may be gone. This command (run while the
gateway is stopped) puts back into `inbox/` every file of `archive/` and `quarantine/` moved there
since the last moment every durable sink had acknowledged everything (from the marker; the whole
archive when that moment is unknown or with `--all`), sets a corrupt database aside, and removes
the marker, so the next start re-reads those files. Records the MES already holds are counted
there as duplicates and stored once (it de-duplicates on measurement_id); the embedded historian
replaces a point with itself. Re-sending too much is harmless; nothing is left out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cmm_twin.durable_io import fsync_directory
from cmm_twin.gateway.spool import MARKER_NAME, SpoolMarker, SpoolResetError
from cmm_twin.gateway.state import StateStore
from cmm_twin.sqlite_worker import StateUnavailableError

log = logging.getLogger(__name__)

PROG = "python -m cmm_twin.gateway.recover"
CLOCK_MARGIN_S = 60.0
"""Files archived up to this long before the last all-acknowledged moment are re-ingested too:
a file's ctime and the marker's wall-clock time come from different clocks' readings."""
STATE_DB = "gateway.sqlite"


@dataclass(frozen=True)
class Recovery:
    """What `recover` did."""

    moved: list[Path]
    since_ns: int | None
    """Files moved (archived or quarantined) at or after this time were put back; None: all."""
    set_aside: Path | None
    """Where an unreadable state database was moved, if it was."""


def recover(data_dir: Path, everything: bool = False) -> Recovery:
    """Put back into the inbox the files whose records may not have been acknowledged (see the
    module docstring); returns what was done. The gateway must not be running."""
    state_dir = data_dir / "state"
    inbox = data_dir / "inbox"
    marker_path = state_dir / MARKER_NAME
    try:
        marker = SpoolMarker.read(marker_path)
    except ValueError as exc:
        log.warning("%s: re-ingesting the whole archive", exc)
        marker = None
    since_ns = None
    if marker is not None and marker.all_acked_ns is not None and not everything:
        since_ns = marker.all_acked_ns - int(CLOCK_MARGIN_S * 1e9)
    set_aside = _check_database(state_dir / STATE_DB)
    inbox.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    for folder in (data_dir / "archive", data_dir / "quarantine"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_ctime_ns):
            if path.name.startswith(".") or path.name.endswith(".errors.json") or not path.is_file():
                continue
            if since_ns is not None and path.stat().st_ctime_ns < since_ns:
                continue
            target = _free_name(inbox, path.name)
            os.replace(path, target)
            report = path.with_name(path.name + ".errors.json")
            if report.exists():  # written again when the file is processed again
                report.unlink()
            moved.append(target)
        fsync_directory(folder)
    fsync_directory(inbox)
    marker_path.unlink(missing_ok=True)
    if state_dir.is_dir():
        fsync_directory(state_dir)
    return Recovery(moved, since_ns, set_aside)


def _check_database(path: Path) -> Path | None:
    """Open the state database as the gateway would; set it aside when it cannot be read at all.
    A reset but readable database is kept (whatever it still spools is delivered as well)."""
    if not path.exists():
        return None
    try:
        StateStore(path, check_marker=True).close()
    except SpoolResetError:
        return None
    except StateUnavailableError as exc:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.unreadable-{stamp}")
        log.warning("%s; moved to %s", exc, aside)
        for suffix in ("-wal", "-shm", ""):
            part = Path(f"{path}{suffix}")
            if part.exists():
                os.replace(part, Path(f"{aside}{suffix}"))
        return aside
    return None


def _free_name(directory: Path, name: str) -> Path:
    target = directory / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists():
        target = directory / f"{stem}.recovered-{n}{suffix}"
        n += 1
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: recover the data directory; exit 2 with one line when it cannot be read."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CMM_DATA_DIR", "data")),
        help="the gateway's data directory (env CMM_DATA_DIR; default: data)",
    )
    parser.add_argument(
        "--all", action="store_true", help="put back every archived and quarantined file, whatever the marker says"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"{PROG}: error: --data-dir {data_dir}: no such directory", file=sys.stderr)
        return 2
    try:
        done = recover(data_dir, everything=args.all)
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    since = (
        "every archived file"
        if done.since_ns is None
        else "files archived since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done.since_ns / 1e9))
    )
    print(
        f"recovered {data_dir}: {len(done.moved)} files put back into {data_dir / 'inbox'} ({since}); "
        "start the gateway to deliver them (the MES stores records it already holds once)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
