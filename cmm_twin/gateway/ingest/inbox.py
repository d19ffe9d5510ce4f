"""The inbox: which files are waiting, and whether a file is complete enough to read.

Files are found two ways: a scan (at start-up, oldest first, and every few seconds as a safety net
against missed events) and events: Linux inotify on the event loop (`ingest.inotify`: a renamed file
is seen at once, and nothing polls while the inbox is quiet), elsewhere watchfiles (tuned
`debounce`/`step` so a renamed file is seen in about a millisecond). Only names a source claims
(`cmm_twin.gateway.sources`: `*.csv` today), never dot-files nor temporary files; others stay in the
inbox untouched. The queue knows a file by its name in the inbox, and the inbox by its absolute,
resolved path (fixed once, when the queue is made), so a scan and an event always name a file the
same way.

A writer that renames into place hands over a complete file. For a writer that does not, the
gateway asks the kernel whether anyone still has the file open for writing: a read lease
(fcntl F_SETLEASE, Linux) is refused with EAGAIN while a writer holds it open. Where leases are
not available (another file system, a file of another user, as in a container), a file is read
only once the gateway has seen its size and modification time unchanged for `settle_s` by its own
clock, and no process it can see in /proc has it open for writing. After reading, the pipeline
looks at the size again and reads on if the file grew, so rows appended late are not lost.

Symbolic links are never followed: a link in the inbox is refused (`Readiness.refused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import math
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch

from cmm_twin.gateway.ingest.inotify import DirectoryWatch
from cmm_twin.gateway.sources import Source, source_for
from cmm_twin.gateway.sources.registry import SOURCES
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.logs import safe_name

log = logging.getLogger(__name__)

RESCAN_INTERVAL_S = 5.0
WRITER_RECHECK_S = 0.02
PROC_WRITER_RECHECK_S = 0.25
"""How soon a settled file that some process still holds open for writing is looked at again."""
PROC_SCAN_MAX_AGE_S = 0.5
"""A /proc scan for open writers (about 10 µs per open file on the host) is reused this long, so
one scan serves a burst of files. It runs only for files that cannot be leased and have settled."""
OBSERVATIONS_MAX = 100_000
"""Files whose (size, mtime) the stability rule remembers; past it the oldest is forgotten (that
file then waits one more settle time: safe)."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


def is_inbox_name(name: str, sources: Sequence[type[Source]] = SOURCES) -> bool:
    """True for names the gateway takes: those one of `sources` claims."""
    return source_for(name, sources) is not None


@dataclass(frozen=True)
class Readiness:
    """Result of `check_ready`: ready now, gone, not a regular file, refused, or look again in `wait_s`."""

    ready: bool = False
    gone: bool = False
    not_a_file: bool = False
    wait_s: float = 0.0
    size: int = 0
    mtime_ns: int = 0
    refused: str | None = None
    """Why the file must never be read (a symbolic link); `not_a_file` is then True as well."""


def writer_has_it_open(path: Path) -> bool | None:
    """True when some process has `path` open for writing, False when none, None when unknown
    (no lease: another owner without CAP_LEASE, a file system without leases, no file handle)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
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


class FileObservations:
    """What the gateway itself saw of files it cannot lease: the last (size, mtime_ns) of each
    and since when (monotonic) it has been unchanged. Bounded (`OBSERVATIONS_MAX`)."""

    def __init__(self, max_files: int = OBSERVATIONS_MAX) -> None:
        self.max_files = max_files
        self._seen: OrderedDict[Path, tuple[int, int, float]] = OrderedDict()

    def unchanged_for_s(self, path: Path, size: int, mtime_ns: int, now: float) -> float:
        """Seconds `path` has shown this size and mtime (0.0 the first time, or after a change)."""
        seen = self._seen.get(path)
        if seen is not None and seen[:2] == (size, mtime_ns):
            return now - seen[2]
        self._seen[path] = (size, mtime_ns, now)
        self._seen.move_to_end(path)
        while len(self._seen) > self.max_files:
            self._seen.popitem(last=False)
        return 0.0

    def forget(self, path: Path) -> None:
        """Drop what was seen of `path` (read, gone, or being written)."""
        self._seen.pop(path, None)

    def __len__(self) -> int:
        return len(self._seen)


class ProcWriters:
    """Files (device, inode) that processes visible in /proc hold open for writing (O_WRONLY or
    O_RDWR in /proc/PID/fdinfo). Processes whose fd table is not readable (another user without
    privileges, another PID namespace) are not seen: the stability rule covers them."""

    def __init__(self, proc: Path = Path("/proc"), sources: Sequence[type[Source]] = SOURCES) -> None:
        self.proc = proc
        self.sources = sources
        self._scanned_at = -math.inf
        self._open: frozenset[tuple[int, int]] = frozenset()

    def holds_open(self, st: os.stat_result) -> bool:
        """True when a visible process has the file of `st` open for writing."""
        now = time.monotonic()
        if now - self._scanned_at > PROC_SCAN_MAX_AGE_S:
            self._open = self._scan()
            self._scanned_at = now
        return (st.st_dev, st.st_ino) in self._open

    def _scan(self) -> frozenset[tuple[int, int]]:
        found: set[tuple[int, int]] = set()
        try:
            pids = [e.name for e in os.scandir(self.proc) if e.name.isdigit()]
        except OSError:
            return frozenset()
        for pid in pids:
            fd_dir = f"{self.proc}/{pid}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:  # gone, or not ours to read
                continue
            for fd in fds:
                try:
                    if not is_inbox_name(os.path.basename(os.readlink(f"{fd_dir}/{fd}")), self.sources):
                        continue
                    target = os.stat(f"{fd_dir}/{fd}")
                    with open(f"{self.proc}/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                        flags = next((int(line.split()[1], 8) for line in info if line.startswith("flags:")), 0)
                except (OSError, ValueError, IndexError):
                    continue
                if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                    found.add((target.st_dev, target.st_ino))
        return frozenset(found)


class ReadinessChecker:
    """Decides whether inbox files can be read now; remembers what it saw of files it cannot
    lease (stability) and which files visible processes hold open for writing."""

    def __init__(self, sources: Sequence[type[Source]] = SOURCES) -> None:
        self.observed = FileObservations()
        self.proc_writers = ProcWriters(sources=sources)

    def check(self, path: Path, settle_s: float) -> Readiness:
        """See `check_ready`."""
        return check_ready(path, settle_s, self.observed, self.proc_writers)


def check_ready(
    path: Path,
    settle_s: float,
    observed: FileObservations | None = None,
    proc_writers: ProcWriters | None = None,
) -> Readiness:
    """Decide whether `path` can be read now (see the module docstring). Never follows a link.
    `observed` and `proc_writers` carry what was seen before (`ReadinessChecker`); without them
    a file that cannot be leased is seen for the first time."""
    observed = FileObservations() if observed is None else observed
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        observed.forget(path)
        return Readiness(gone=True)
    if stat.S_ISLNK(st.st_mode):
        observed.forget(path)
        return Readiness(not_a_file=True, refused=link_reason(path))
    if not stat.S_ISREG(st.st_mode):
        observed.forget(path)
        return Readiness(not_a_file=True)
    writing = writer_has_it_open(path)
    if writing:
        observed.forget(path)
        return Readiness(wait_s=WRITER_RECHECK_S)
    if writing is None:
        steady_s = observed.unchanged_for_s(path, st.st_size, st.st_mtime_ns, time.monotonic())
        if steady_s < settle_s:
            return Readiness(wait_s=settle_s - steady_s)
        if (ProcWriters() if proc_writers is None else proc_writers).holds_open(st):
            return Readiness(wait_s=PROC_WRITER_RECHECK_S)
        observed.forget(path)
    return Readiness(ready=True, size=st.st_size, mtime_ns=st.st_mtime_ns)


def link_reason(path: Path) -> str:
    """Why a symbolic link in the inbox is refused (names its target, escaped)."""
    try:
        target = safe_name(os.readlink(path))
    except OSError:
        target = "?"
    return f"a symbolic link (to {target}): links in the inbox are never followed"


def scan_inbox(inbox: Path, sources: Sequence[type[Source]] = SOURCES) -> list[Path]:
    """Entries waiting in the inbox with names `sources` claim (links too, never followed), oldest
    first (by modification time, then name)."""
    found: list[tuple[int, str, Path]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(inbox) as entries:
        for entry in entries:
            if is_inbox_name(entry.name, sources):
                with contextlib.suppress(FileNotFoundError):
                    found.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name, Path(entry.path)))
    return [p for _, _, p in sorted(found)]


class _Retrying:
    """Backoff (RETRY_MIN_S doubling to RETRY_MAX_S) and one log line per failure spell of a
    repeated intake step, instead of a traceback each time."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0
        self._last: str | None = None

    def failed(self, exc: Exception) -> float:
        """Log `exc` (once while it repeats); the seconds to wait before the next try."""
        delay_s = min(RETRY_MAX_S, RETRY_MIN_S * 2.0 ** min(self.failures, 16))
        self.failures += 1
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last:
            self._last = text
            log.warning(
                "%s failed (%s): retrying with backoff up to %g s; the gateway keeps serving",
                self.what,
                text,
                RETRY_MAX_S,
            )
        return delay_s

    def succeeded(self) -> None:
        """The step worked: say so if it had been failing, and reset the backoff."""
        if self.failures:
            log.info("%s works again after %d failed attempts", self.what, self.failures)
        self.failures = 0
        self._last = None


class InboxQueue:
    """Ordered set of inbox files to look at, fed by scans and watchfiles events.

    Files are known by name; paths handed out are `self.inbox / name` with `self.inbox` absolute
    and resolved. Only names one of `sources` claims are queued by scans and events. Symbolic
    links are queued like files: `readiness` answers `Readiness(refused=...)` for them, and the
    pipeline quarantines them unread."""

    def __init__(self, inbox: Path, sources: Sequence[type[Source]] = SOURCES) -> None:
        self.inbox = Path(inbox).resolve()
        self.sources = tuple(sources)
        self.readiness = ReadinessChecker(self.sources)
        """Whether a queued file can be read now (what it saw of files is kept across calls)."""
        self._pending: dict[str, None] = {}
        self._not_before: dict[str, float] = {}
        self._ignored: set[str] = set()
        self._scan_retry = _Retrying(f"scanning the inbox {safe_name(str(self.inbox))}")
        self._watch_retry = _Retrying(f"watching the inbox {safe_name(str(self.inbox))}")
        self._retry_s = RETRY_MIN_S
        self.changed = asyncio.Event()

    def add(self, paths: Iterable[Path]) -> None:
        """Queue `paths` (files of the inbox; already queued ones keep their place)."""
        added = False
        for path in paths:
            name = path.name
            if name in self._pending or name in self._ignored:
                continue
            self._pending[name] = None
            added = True
        if added:
            self.changed.set()

    def ignore(self, path: Path) -> None:
        """Stop looking at `path` (e.g. a directory named `x.csv`) until it disappears."""
        self._ignored.add(path.name)
        self.done(path)

    def done(self, path: Path) -> None:
        """Forget `path` (processed, or gone)."""
        self._pending.pop(path.name, None)
        self._not_before.pop(path.name, None)

    def later(self, path: Path, wait_s: float) -> None:
        """Look at `path` again in `wait_s`, letting other files go first meanwhile."""
        self._not_before[path.name] = time.monotonic() + wait_s

    def __len__(self) -> int:
        return len(self._pending)

    def next_ready(self) -> tuple[Path | None, float]:
        """The oldest queued file that is due, or (None, seconds until one is due)."""
        now = time.monotonic()
        soonest = RESCAN_INTERVAL_S
        for name in self._pending:
            due = self._not_before.get(name, 0.0)
            if due <= now:
                return self.inbox / name, 0.0
            soonest = min(soonest, due - now)
        return None, soonest

    def due(self, exclude: Path, limit: int) -> list[Path]:
        """Up to `limit` queued files that are due now, in order, without `exclude`."""
        now = time.monotonic()
        skip = exclude.name
        due = (n for n in self._pending if n != skip and self._not_before.get(n, 0.0) <= now)
        return [self.inbox / n for n in itertools.islice(due, limit)]

    def rescan(self) -> bool:
        """Queue whatever the inbox holds; forget ignored names that have gone. False when the
        inbox could not be read (logged once per spell; e.g. EMFILE, EACCES)."""
        try:
            present = scan_inbox(self.inbox, self.sources)
        except Exception as exc:  # an intake fault must never end the gateway
            self._retry_s = self._scan_retry.failed(exc)
            return False
        self._scan_retry.succeeded()
        self._ignored &= {p.name for p in present}
        self.add(present)
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Queue files as watchfiles reports them, and rescan every few seconds, until `stop`.
        A failing scan or watcher is retried with backoff; it never ends the gateway."""
        watcher = asyncio.create_task(self._watch_events(stop))
        try:
            delay_s = RESCAN_INTERVAL_S
            while not stop.is_set():
                await wait_or_stop(stop, delay_s)
                delay_s = RESCAN_INTERVAL_S if self.rescan() else self._retry_s
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_events(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                watch = DirectoryWatch(self.inbox)
            except OSError as exc:
                if exc.errno in (errno.ENOSYS, errno.EMFILE, errno.ENOSPC):  # no inotify here, or none left
                    log.info("inotify unavailable (%s): watching the inbox with watchfiles", exc.strerror or exc)
                    await self._watch_watchfiles(stop)
                    return
                await wait_or_stop(stop, self._watch_retry.failed(exc))  # e.g. the inbox is being recreated
                continue
            try:
                await self._watch_inotify(watch, stop)
            except Exception as exc:  # the periodic rescan still finds files meanwhile
                await wait_or_stop(stop, self._watch_retry.failed(exc))
            finally:
                watch.close()

    async def _watch_inotify(self, watch: DirectoryWatch, stop: asyncio.Event) -> None:
        """Queue the names inotify reports until `stop`; raises OSError when the inbox went."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(watch.fileno(), readable.set)
        try:
            self.rescan()  # what arrived before the watch existed
            while not stop.is_set():
                await wait_or_stop(stop, None, readable)
                readable.clear()
                names, overflow = watch.read()
                self._watch_retry.succeeded()
                if overflow:
                    self.rescan()
                wanted = {n for n in names if is_inbox_name(n, self.sources)}
                self.add(sorted((self.inbox / n for n in wanted), key=_mtime_or_zero))
        finally:
            loop.remove_reader(watch.fileno())

    async def _watch_watchfiles(self, stop: asyncio.Event) -> None:
        """Where inotify is unavailable: watchfiles, whose loop wakes every `step` ms even when idle."""

        def wanted(change: Change, path: str) -> bool:
            return change != Change.deleted and is_inbox_name(os.path.basename(path), self.sources)

        while not stop.is_set():
            try:
                # step=1 ms: yield as soon as the burst of events is over; debounce caps a busy burst.
                async for changes in awatch(
                    self.inbox, watch_filter=wanted, debounce=50, step=1, stop_event=stop, recursive=False
                ):
                    self._watch_retry.succeeded()
                    self.add(sorted((Path(p) for _, p in changes), key=_mtime_or_zero))
            except Exception as exc:  # the periodic rescan still finds files meanwhile
                await wait_or_stop(stop, self._watch_retry.failed(exc))
            else:
                await wait_or_stop(stop, RETRY_MIN_S)  # awatch ends only at `stop`; never spin


def _mtime_or_zero(path: Path) -> tuple[int, str]:
    try:
        return os.lstat(path).st_mtime_ns, path.name
    except OSError:
        return 0, path.name
