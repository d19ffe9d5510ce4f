"""The inbox: which files are waiting, and whether a file is complete enough to read.

Files are found two ways: a scan (at start-up, oldest first, and every few seconds as a safety net
against missed events) and watchfiles events (tuned `debounce`/`step` so a renamed file is seen in
about a millisecond). Only `*.csv`, never dot-files (DESIGN.md section 2).

A writer that renames into place hands over a complete file. For a writer that does not, the
gateway asks the kernel whether anyone still has the file open for writing: a read lease
(fcntl F_SETLEASE, Linux) is refused with EAGAIN while a writer holds it open. Where leases are
not available (another file system, another owner), it falls back to waiting until the file has
been quiet for `settle_s`. After reading, the pipeline looks at the size again and reads on if the
file grew, so rows appended late are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

from cmm_twin.gateway.runner import wait_or_stop

log = logging.getLogger(__name__)

RESCAN_INTERVAL_S = 5.0
WRITER_RECHECK_S = 0.02


def is_inbox_name(name: str) -> bool:
    """True for names the gateway takes: `*.csv`, not a dot-file."""
    return name.endswith(".csv") and not name.startswith(".")


@dataclass(frozen=True)
class Readiness:
    """Result of `check_ready`: ready now, gone, not a regular file, or look again in `wait_s`."""

    ready: bool = False
    gone: bool = False
    not_a_file: bool = False
    wait_s: float = 0.0
    size: int = 0
    mtime_ns: int = 0


def writer_has_it_open(path: Path) -> bool | None:
    """True when some process has `path` open for writing, False when none, None when unknown."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno in (errno.EAGAIN, errno.EBUSY) else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def check_ready(path: Path, settle_s: float) -> Readiness:
    """Decide whether `path` can be read now (see the module docstring)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return Readiness(gone=True)
    if not stat.S_ISREG(st.st_mode):
        return Readiness(not_a_file=True)
    writing = writer_has_it_open(path)
    if writing:
        return Readiness(wait_s=WRITER_RECHECK_S)
    if writing is None:
        age_s = time.time() - st.st_mtime_ns / 1e9
        if age_s < settle_s:
            return Readiness(wait_s=settle_s - age_s)
    return Readiness(ready=True, size=st.st_size, mtime_ns=st.st_mtime_ns)


def scan_inbox(inbox: Path) -> list[Path]:
    """Files waiting in the inbox, oldest first (by modification time, then name)."""
    found: list[tuple[int, str, Path]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(inbox) as entries:
        for entry in entries:
            if is_inbox_name(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    found.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
    return [p for _, _, p in sorted(found)]


class InboxQueue:
    """Ordered set of inbox files to look at, fed by scans and watchfiles events."""

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self._pending: dict[Path, None] = {}
        self._not_before: dict[Path, float] = {}
        self._ignored: set[Path] = set()
        self.changed = asyncio.Event()

    def add(self, paths: Iterable[Path]) -> None:
        """Queue `paths` (already queued ones keep their place)."""
        added = False
        for path in paths:
            if path not in self._pending and path not in self._ignored:
                self._pending[path] = None
                added = True
        if added:
            self.changed.set()

    def ignore(self, path: Path) -> None:
        """Stop looking at `path` (e.g. a directory named `x.csv`) until it disappears."""
        self._ignored.add(path)
        self.done(path)

    def done(self, path: Path) -> None:
        """Forget `path` (processed, or gone)."""
        self._pending.pop(path, None)
        self._not_before.pop(path, None)

    def later(self, path: Path, wait_s: float) -> None:
        """Look at `path` again in `wait_s`, letting other files go first meanwhile."""
        self._not_before[path] = time.monotonic() + wait_s

    def __len__(self) -> int:
        return len(self._pending)

    def next_ready(self) -> tuple[Path | None, float]:
        """The oldest queued file that is due, or (None, seconds until one is due)."""
        now = time.monotonic()
        soonest = RESCAN_INTERVAL_S
        for path in self._pending:
            due = self._not_before.get(path, 0.0)
            if due <= now:
                return path, 0.0
            soonest = min(soonest, due - now)
        return None, soonest

    def due(self, exclude: Path, limit: int) -> list[Path]:
        """Up to `limit` queued files that are due now, in order, without `exclude`."""
        now = time.monotonic()
        due = (p for p in self._pending if p != exclude and self._not_before.get(p, 0.0) <= now)
        return list(itertools.islice(due, limit))

    def rescan(self) -> None:
        """Queue whatever the inbox holds; forget ignored paths that have gone."""
        present = scan_inbox(self.inbox)
        self._ignored &= set(present)
        self.add(present)

    async def watch(self, stop: asyncio.Event) -> None:
        """Queue files as watchfiles reports them, and rescan every few seconds, until `stop`."""
        watcher = asyncio.create_task(self._watch_events(stop))
        try:
            while not stop.is_set():
                await wait_or_stop(stop, RESCAN_INTERVAL_S)
                self.rescan()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_events(self, stop: asyncio.Event) -> None:
        def wanted(change: Change, path: str) -> bool:
            return change != Change.deleted and is_inbox_name(os.path.basename(path))

        # step=1 ms: yield as soon as the burst of events is over; debounce caps a busy burst.
        async for changes in awatch(
            self.inbox, watch_filter=wanted, debounce=50, step=1, stop_event=stop, recursive=False
        ):
            self.add(sorted((Path(p) for _, p in changes), key=_mtime_or_zero))


def _mtime_or_zero(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except OSError:
        return 0, path.name
