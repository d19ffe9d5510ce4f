"""From an inbox file to result records: read, validate, compensate, spool, publish, archive.

Each chunk of a file is committed to the state database in one transaction together with the
file's progress (byte offset and line), so kill -9 at any moment and a restart neither skip nor
re-spool a row: the restart resumes after the last committed chunk (DESIGN.md sections 2 and 5).
A file moves to `archive/` (all rows valid) or `quarantine/` (with `<name>.errors.json`) only
after all its rows are committed; its progress is forgotten only after the move is on disk.

A last line without a line end may still be being written (by a writer that does not rename
into place): it is read only once the file has been stable for the settle time, or at once when
the line is complete; until then the rows before it are committed and the file is looked at
again later. A file that grew after it was moved out of the inbox goes back to the inbox under
`<stem>.tail-<offset>.csv`, its progress carried over, so the rows appended late are read too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cmm_twin.durable_io import fsync_directory, write_atomically
from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.ingest.csv_reader import (
    FileRejected,
    IngestSettings,
    ParsedChunk,
    concat_rows,
    read_chunks,
    read_small_files,
    reject_implausible,
    to_records,
)
from cmm_twin.gateway.ingest.inbox import FileObservations, InboxQueue, check_ready
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.runner import wait_or_stop
from cmm_twin.gateway.state import AsyncState, FileProgress, StoredRowError, errors_report, is_disk_full
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.logs import safe_name
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

RETRY_FAILED_FILE_S = 5.0
SPOOL_RECHECK_S = 0.5
GROUP_MAX_FILE_BYTES = 256 << 10
"""Files up to this size are read whole and committed in groups of up to `files_per_commit`
files and about this many bytes together (a few thousand rows)."""
DISK_RETRY_MIN_S = 0.5
DISK_RETRY_MAX_S = 5.0
"""Backoff of the intake while the disk is full."""
ERRORS_IN_LOG = 3
"""Row errors quoted in a file's warning line; the rest are in its sidecar report."""
REPORT_SUFFIX = ".errors.json"
_REPORT_NAME_EXTRA_BYTES = len(".") + len(REPORT_SUFFIX) + len(".tmp")
"""What a moved file's name grows by in the longest name written next to it: the temporary
name of its report (`write_atomically`)."""
DEFAULT_NAME_MAX_BYTES = 255
HELD_LINE_RECHECK_S = 0.25
"""How often a file whose last line waits (no line end, not yet stable) is looked at again: it
is finished as soon as the writer ends the line, or once the settle time has passed. Cheap: only
the part after the committed rows is read again."""


@dataclass(frozen=True)
class FileOutcome:
    """What became of one inbox file."""

    name: str
    rows_ok: int
    rows_rejected: int
    destination: Path | None
    file_error: str | None
    elapsed_ms: float
    first_errors: tuple[StoredRowError, ...] = ()
    quarantined: bool = False
    note: str | None = None
    """Why the file is stored under another name (its name is too long to keep)."""
    continued_as: Path | None = None
    """The inbox file the rest of this file is read from (it grew after it was moved out)."""


@dataclass
class _Job:
    """A file being read; lives on the state thread between chunk steps."""

    path: Path
    size: int
    mtime_ns: int
    started: float
    progress: FileProgress | None = None
    reader: Iterator[ParsedChunk] | None = None
    done: bool = False
    """Set when the file has left the queue's concern (finished or vanished)."""
    complete_at: int = -1
    """The size at which a last line without a line end may be read (the file was seen stable at
    this size for the settle time); -1: not yet stable, such a line is left for later."""
    settle_wait_s: float = 0.0
    """When to look again at a file whose last line is left for later (HELD_LINE_RECHECK_S at most)."""
    retry_in_s: float | None = None
    """Set when the file is not finished and should be looked at again in this many seconds."""
    continued_as: Path | None = None


_UNREAD = object()
"""Marks a file that read_small_files did not read (it is resumed with read_chunks)."""


class _GrewError(Exception):
    """A small file changed size while being read as part of a group."""


@dataclass(frozen=True)
class _Step:
    records: RecordBatch | None
    errors: list[StoredRowError]
    outcome: FileOutcome | None
    retry_in_s: float | None = None
    """Without an outcome: look at the file again in this many seconds (None: read on now)."""


class Pipeline:
    """Takes files from an InboxQueue and turns them into spooled and published records."""

    def __init__(
        self,
        config: GatewayConfig,
        state: AsyncState,
        status: GatewayStatus,
        metrics: GatewayMetrics,
        publish: Callable[[RecordBatch], None],
        spool_enabled: bool,
        spooled: asyncio.Event,
    ) -> None:
        self.config = config
        self.state = state
        self.status = status
        self.metrics = metrics
        self.publish = publish
        self.spool_enabled = spool_enabled
        self.spooled = spooled
        limits = config.physics.limits
        self.settings = IngestSettings(
            default_material=config.default_material,
            materials=config.materials,
            plausible_min_c=limits.plausible_min_c,
            plausible_max_c=limits.plausible_max_c,
            max_length_mm=limits.max_length_mm,
            chunk_rows=config.chunk_rows,
        )
        self._spool_checked = -1e9
        self._forget: set[str] = set()
        """Files moved out of the inbox whose progress is dropped with the next commit."""
        self.idle = asyncio.Event()
        """Set while no queued file is due (used by --once and by tests)."""
        self._seen = FileObservations()
        """How long each inbox file has kept its size and mtime as this process saw it: stability
        also when its mtime cannot be trusted (a clock ahead of ours)."""
        self._alone: set[Path] = set()
        self._disk_retry_s = 0.0
        self._disk_retry_at = 0.0
        """Backoff of the intake while the disk is full (see _guarded and the top of _run)."""
        self._refused: list[tuple[Path, str]] = []
        """Inbox entries refused unread (symbolic links), quarantined by `_run` with their reason."""
        """Files whose group failed: each is tried on its own, so one bad file holds up no other."""

    async def run(self, queue: InboxQueue, stop: asyncio.Event) -> None:
        """Process queued files, oldest first, until `stop`; a chunk in hand is finished first."""
        await self._drop_stale_progress()
        try:
            await self._run(queue, stop)
        finally:
            await self.flush_forgotten()

    async def _drop_stale_progress(self) -> None:
        """Forget progress of files that left the inbox while the gateway was down (after a crash
        between a file's move and the commit that drops its progress)."""
        known = await self.state.call(self.state.store.all_progress)
        stale = [p.name for p in known if not (self.config.inbox / p.name).is_file()]
        if stale:
            await self.state.call(self.state.store.forget_files, stale)

    async def _run(self, queue: InboxQueue, stop: asyncio.Event) -> None:
        """Note: `_forget` is shared with the state thread; only this task touches it, and never
        while one of its own state calls is in flight."""
        while not stop.is_set():
            if self.status.disk_full and time.monotonic() < self._disk_retry_at:
                await wait_or_stop(stop, min(SPOOL_RECHECK_S, self._disk_retry_at - time.monotonic()))
                continue  # intake paused: new files wait, safe, in the inbox
            if self.spool_enabled and await self._spool_full():
                await wait_or_stop(stop, SPOOL_RECHECK_S)
                continue
            path, wait_s = queue.next_ready()
            if path is None:
                await self.flush_forgotten()
                self.idle.set()
                queue.changed.clear()
                await wait_or_stop(stop, wait_s, queue.changed)
                continue
            self.idle.clear()
            first = self._ready_job(queue, path)
            if first is None:
                await self._quarantine_refused(queue)
                continue
            if first.size > GROUP_MAX_FILE_BYTES:
                await self._guarded(queue, [first], self.process_file(first, stop))
                continue
            group = [first]
            group_bytes = first.size
            alone = path in self._alone  # its group failed: it goes on its own
            for other in [] if alone else queue.due(exclude=path, limit=self.config.files_per_commit):
                if len(group) >= self.config.files_per_commit or group_bytes >= GROUP_MAX_FILE_BYTES:
                    break  # a group holds about as much as one chunk of a big file: memory stays bounded
                if other in self._alone:
                    continue
                job = self._ready_job(queue, other)
                if job is None:
                    continue
                if job.size > GROUP_MAX_FILE_BYTES:
                    break  # keeps arrival order: the big file goes after this group
                group.append(job)
                group_bytes += job.size
            await self._quarantine_refused(queue)
            await self._guarded(queue, group, self.process_group(group, queue))

    async def _spool_full(self) -> bool:
        """True while the spool is at --spool-limit-mb: new files then wait, safe, in the inbox.
        Says so once when intake stops and once when it resumes (below 90 % of the limit)."""
        now = time.monotonic()
        if now - self._spool_checked < SPOOL_RECHECK_S:
            return self.status.intake_paused
        self._spool_checked = now
        used = await self.state.call(self.state.store.spool_bytes)
        self.status.spool_bytes = used
        limit = self.config.spool_limit_mb * 1e6
        if not self.status.intake_paused and used >= limit:
            self.status.intake_paused = True
            log.warning(
                "spool full (%.1f MB >= --spool-limit-mb %g): new files wait in the inbox until the sinks catch up",
                used / 1e6,
                self.config.spool_limit_mb,
            )
        elif self.status.intake_paused and used < 0.9 * limit:
            self.status.intake_paused = False
            log.info("spool has room again (%.1f MB): taking new files", used / 1e6)
        return self.status.intake_paused

    def _ready_job(self, queue: InboxQueue, path: Path) -> _Job | None:
        """A job for `path` when it can be read now; otherwise queue it appropriately."""
        readiness = check_ready(path, self.config.settle_ms / 1000.0)
        if readiness.gone:
            queue.done(path)
            self._forget.add(path.name)
            self._left_inbox(path)
        elif readiness.refused is not None:
            queue.done(path)
            self._refused.append((path, readiness.refused))
        elif readiness.not_a_file:
            log.warning("%s is not a regular file: left in the inbox and ignored", safe_name(path))
            queue.ignore(path)
            self._left_inbox(path)
        elif not readiness.ready:
            queue.later(path, readiness.wait_s)
        else:
            stable_s = self._stable_for_s(path, readiness.size, readiness.mtime_ns)
            settle_s = self.config.settle_ms / 1000.0
            return _Job(
                path,
                readiness.size,
                readiness.mtime_ns,
                time.perf_counter(),
                complete_at=readiness.size if stable_s >= settle_s else -1,
                settle_wait_s=min(max(settle_s - stable_s, 0.0), HELD_LINE_RECHECK_S),
            )
        return None

    def _stable_for_s(self, path: Path, size: int, mtime_ns: int) -> float:
        """How long `path` has kept this size and mtime: by its mtime, or since this process first
        saw them (whichever is longer)."""
        seen_s = self._seen.unchanged_for_s(path, size, mtime_ns, time.monotonic())
        return max(seen_s, time.time() - mtime_ns / 1e9)

    def _left_inbox(self, path: Path) -> None:
        self._seen.forget(path)
        self._alone.discard(path)

    async def _guarded(self, queue: InboxQueue, jobs: list[_Job], work: Coroutine[Any, Any, object]) -> None:
        """Run `work`; an unexpected error (e.g. archive/ not writable) keeps the files in the
        inbox to be tried again later, and the gateway serving. A full disk (the commit rolled
        back, or the move or report not written) pauses the intake with backoff: reported once,
        no traceback, and the files are taken again once there is space."""
        try:
            await work
        except Exception as exc:
            if is_disk_full(exc):
                self.status.disk_full_begin("intake", str(exc))
                self._disk_retry_s = min(DISK_RETRY_MAX_S, max(DISK_RETRY_MIN_S, 2 * self._disk_retry_s))
                self._disk_retry_at = time.monotonic() + self._disk_retry_s
                for job in jobs:
                    queue.later(job.path, 0.0)
                return
            names = ", ".join(safe_name(j.path.name) for j in jobs)
            if len(jobs) > 1:  # one bad file never holds up the others: each is tried on its own
                log.warning("%s could not be processed together (%r): trying each file on its own", names, exc)
                for job in jobs:
                    self._alone.add(job.path)
                    queue.later(job.path, 0.0)
                return
            log.exception("%s could not be processed; left in the inbox and tried again", names)
            for job in jobs:
                queue.later(job.path, RETRY_FAILED_FILE_S)
            return
        if any(job.done for job in jobs):
            self._disk_retry_s = 0.0
            self.status.disk_full_end("intake")
        for job in jobs:
            if job.done:
                queue.done(job.path)
                self._left_inbox(job.path)
                if job.continued_as is not None:
                    queue.add([job.continued_as])
            elif job.retry_in_s is not None:
                queue.later(job.path, job.retry_in_s)

    async def process_file(self, job: _Job, stop: asyncio.Event | None = None) -> FileOutcome | None:
        """Read, commit and move one file chunk by chunk; None when it vanished, or when `stop`
        came mid-file (the committed part stays committed; a restart resumes after it)."""
        path = job.path
        while True:
            if stop is not None and stop.is_set() and job.progress is not None:
                log.info("stopping: %s left after line %d, resumed on restart", path.name, job.progress.line)
                return None
            try:
                step = await self.state.call(self._step, job)
            except FileNotFoundError:
                self._vanished(job)
                return None
            self._deliver(step)
            if step.outcome is not None:
                job.done = True
                job.continued_as = step.outcome.continued_as
                return step.outcome
            if step.retry_in_s is not None:
                job.retry_in_s = step.retry_in_s
                return None

    async def process_group(self, jobs: list[_Job], queue: InboxQueue) -> None:
        """Read, commit and move a group of small files with ONE commit and one directory fsync."""
        steps = await self.state.call(self._group, jobs)
        for job, step in zip(jobs, steps, strict=True):
            if step is None:
                self._vanished(job)
                continue
            self._deliver(step)
            if step.outcome is None:  # grew while being read (read again now), or left for later
                job.retry_in_s = 0.0 if step.retry_in_s is None else step.retry_in_s
                queue.later(job.path, job.retry_in_s)
            else:
                job.done = True
                job.continued_as = step.outcome.continued_as

    def _vanished(self, job: _Job) -> None:
        log.warning("%s vanished before it was read: nothing taken from it", safe_name(job.path.name))
        self._forget.add(job.path.name)
        job.done = True

    def _deliver(self, step: _Step) -> None:
        """Publish a step's records to the live sinks, wake the durable ones, count, log."""
        if step.records is not None and len(step.records):
            self.publish(step.records)
            if self.spool_enabled:
                self.status.spooled(len(step.records))
                self.spooled.set()
        self._count(step)
        outcome = step.outcome
        if outcome is not None:
            if outcome.continued_as is None:  # a continued file counts once, when its rest is done
                self.status.files_processed += 1
                self.metrics.files_processed.labels("quarantine" if outcome.quarantined else "archive").inc()
            self._log(outcome)

    def _count(self, step: _Step) -> None:
        if step.records is not None:
            self.status.rows_in += len(step.records)
            self.metrics.rows_in.inc(len(step.records))
        if step.errors:
            self.status.rows_rejected += len(step.errors)
            for error in step.errors:
                self.metrics.rows_rejected.labels(error.column or "row").inc()

    # -- on the state thread --------------------------------------------------------------
    def _start(self, job: _Job) -> FileProgress:
        """The committed progress of `job`'s file, or a fresh start."""
        progress = None if job.path.name in self._forget else self.state.store.progress_of(job.path.name)
        if progress is not None and progress.offset > job.size:
            log.warning("%s shrank since it was partly read: reading it again from the top", safe_name(job.path.name))
            progress = None
        if progress is None:
            progress = FileProgress(job.path.name, job.size, job.mtime_ns, 0, 1, 0, 0, False, None)
        return progress  # a name still in _forget is dropped before this file's first commit

    def _commit(
        self,
        progress: list[FileProgress],
        records: RecordBatch | None,
        errors: dict[str, list[StoredRowError]],
    ) -> None:
        """Commit chunks of one or more files; progress of files finished earlier is dropped in
        the same transaction."""
        forget, self._forget = self._forget, set()
        try:
            self.state.store.commit(progress, records if self.spool_enabled else None, errors, forget)
        except BaseException:
            self._forget |= forget  # rolled back: still to be dropped with a later commit
            raise

    def _read_error(self, job: _Job, exc: Exception) -> str:
        """The file-level reason for an exception raised while reading `job`."""
        if isinstance(exc, FileRejected):
            return exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
        if isinstance(exc, (OSError, CmmTwinError)):
            return f"cannot be read: {exc}"
        log.error("%s: unexpected error while reading", safe_name(job.path.name), exc_info=exc)
        line = job.progress.line if job.progress else 1
        return f"internal error while reading after line {line}: {exc!r}"

    def _group(self, jobs: list[_Job]) -> list[_Step | None]:
        """Read every file of `jobs` whole, commit them all at once, move them, fsync the
        directories once (state thread). None for a file that vanished; a step without outcome
        for a file that grew while being read (not committed), whose last line is left for later
        (the rows before it committed), or that could not be moved (all committed; the move is
        tried again on its own)."""
        results: list[_Step | None] = [None] * len(jobs)
        staged: list[tuple[int, _Job, RecordBatch | None, list[StoredRowError]]] = []
        for job in jobs:
            job.progress = self._start(job)
        fresh = [
            job for job in jobs if job.progress is not None and not job.progress.complete and not job.progress.offset
        ]
        read = read_small_files([job.path for job in fresh], self.settings, [job.complete_at for job in fresh])
        parsed = dict(zip(map(id, fresh), read, strict=True))
        evaluated = self._evaluate_together([c for c in parsed.values() if isinstance(c, ParsedChunk)])
        for i, job in enumerate(jobs):
            assert job.progress is not None
            if job.progress.complete:
                staged.append((i, job, None, []))
                continue
            try:
                chunk = parsed.get(id(job), _UNREAD)
                records, errors = self._read_whole(job, chunk, evaluated.get(id(chunk)))
            except FileNotFoundError:
                continue
            except _GrewError:
                results[i] = _Step(None, [], None)
                continue
            staged.append((i, job, records, errors))
        batches = [r for _, _, r, _ in staged if r is not None and len(r)]
        self._commit(
            [job.progress for _, job, _, _ in staged if job.progress is not None],
            RecordBatch.concat(batches) if batches else None,
            {job.path.name: errors for _, job, _, errors in staged if errors},
        )
        directories: set[Path] = set()
        for i, job, records, errors in staged:
            assert job.progress is not None
            if not job.progress.complete:  # its last line is left for later
                results[i] = _Step(records, errors, None, retry_in_s=job.settle_wait_s)
                continue
            try:
                outcome = self._finish(job, fsync=False)
            except OSError as exc:  # e.g. quarantine/ not writable: this file alone waits
                log.warning(
                    "%s: its rows are held, but it cannot be moved out of the inbox (%s); trying again in %g s",
                    safe_name(job.path.name),
                    exc,
                    RETRY_FAILED_FILE_S,
                )
                results[i] = _Step(records, errors, None, retry_in_s=RETRY_FAILED_FILE_S)
                continue
            if outcome.destination is not None:
                directories.update((outcome.destination.parent, job.path.parent))
            results[i] = _Step(records, errors, outcome)
        for directory in directories:
            fsync_directory(directory)
        return results

    def _evaluate_together(self, chunks: list[ParsedChunk]) -> dict[int, RecordBatch | Exception]:
        """Records of many small chunks from ONE physics call (split again per chunk, by id)."""
        if not chunks:
            return {}
        try:
            joint = to_records(concat_rows([c.rows for c in chunks]), self.config.physics)
        except CmmTwinError:  # one chunk the physics refuses: evaluate each alone to pin it down
            out: dict[int, RecordBatch | Exception] = {}
            for chunk in chunks:
                try:
                    out[id(chunk)] = to_records(chunk.rows, self.config.physics)
                except CmmTwinError as exc:
                    out[id(chunk)] = exc
            return out
        bounds = np.cumsum([0] + [len(c.rows) for c in chunks]).tolist()
        return {id(c): joint.take(slice(bounds[k], bounds[k + 1])) for k, c in enumerate(chunks)}

    def _plausible(self, chunk: ParsedChunk, records: RecordBatch) -> tuple[RecordBatch, list[StoredRowError]]:
        """`records` of `chunk` without rows whose results are implausible; the chunk's row errors
        with those rows' errors added, in line order."""
        records, implausible = reject_implausible(records, chunk.rows.line, self.config.physics.limits)
        row_errors = sorted([*chunk.errors, *implausible], key=lambda e: e.line) if implausible else chunk.errors
        return records, [StoredRowError(e.line, e.column, e.reason) for e in row_errors]

    def _holds_last_line(self, job: _Job, read_to: int) -> bool:
        """Whether the unread end of `job`'s file (after byte `read_to`) is a last line without a
        line end that is left for later (the file is not yet stable)."""
        return job.complete_at < 0 and read_to < job.size and not _ends_with_line_end(job.path, job.size)

    def _read_whole(
        self,
        job: _Job,
        parsed: ParsedChunk | Exception | object | None = None,
        evaluated: RecordBatch | Exception | None = None,
    ) -> tuple[RecordBatch | None, list[StoredRowError]]:
        """Take a small file in full (`parsed` by read_small_files, or read here when _UNREAD) and
        set its progress complete; a file-level error delivers nothing of it. A last line left for
        later (`_holds_last_line`) is not taken: the progress then ends before it, not complete.
        Raises _GrewError when the file changed size meanwhile."""
        assert job.progress is not None
        p = job.progress
        chunks: list[ParsedChunk] = []
        try:
            if parsed is _UNREAD:  # resuming after a crash mid-file: only what is not committed
                chunks = list(read_chunks(job.path, self.settings, p.offset, p.line, job.complete_at))
            elif isinstance(parsed, Exception):
                raise parsed
            elif isinstance(parsed, ParsedChunk):
                chunks = [parsed]
            if isinstance(evaluated, Exception):
                raise evaluated
            parts = [evaluated] if evaluated is not None else [to_records(c.rows, self.config.physics) for c in chunks]
        except FileNotFoundError:
            raise
        except Exception as exc:
            job.progress = replace(p, complete=True, file_error=self._read_error(job, exc))
            return None, []
        if job.path.stat().st_size != job.size:
            raise _GrewError(job.path.name)
        kept: list[RecordBatch] = []
        errors: list[StoredRowError] = []
        for chunk, part in zip(chunks, parts, strict=True):
            plausible, chunk_errors = self._plausible(chunk, part)
            kept.append(plausible)
            errors += chunk_errors
        records = RecordBatch.concat(kept) if len(kept) > 1 else (kept[0] if kept else None)
        rows_ok = len(records) if records is not None else 0
        read_to = chunks[-1].end_offset if chunks else p.offset
        line = chunks[-1].end_line if chunks else p.line
        held = self._holds_last_line(job, read_to)
        job.progress = replace(
            p,
            offset=read_to if held else job.size,
            line=line,
            rows_ok=p.rows_ok + rows_ok,
            rows_rejected=p.rows_rejected + len(errors),
            complete=not held,
        )
        return records, errors

    def _step(self, job: _Job) -> _Step:
        """Read, evaluate and commit the next chunk of `job`; finish the file after its last chunk
        (state thread: one hop from the event loop per chunk, one commit per chunk)."""
        if job.progress is None:
            job.progress = self._start(job)
            if job.progress.complete:  # committed before a crash, not yet moved
                return _Step(None, [], self._finish(job))
        p = job.progress
        if job.reader is None:
            job.reader = read_chunks(job.path, self.settings, p.offset, p.line, job.complete_at)
        try:
            chunk = next(job.reader)
        except StopIteration:
            grown = job.path.stat().st_size
            if grown > p.offset and grown != job.size:
                log.info(
                    "%s grew while being read (%d -> %d bytes): reading on", safe_name(job.path.name), job.size, grown
                )
                job.size = grown
                job.complete_at = -1  # it is being written: a last line without a line end waits
                job.reader = None
                return _Step(None, [], None)
            if self._holds_last_line(job, p.offset):
                return _Step(None, [], None, retry_in_s=job.settle_wait_s)
            job.progress = replace(p, complete=True)
            self._commit([job.progress], None, {})
            return _Step(None, [], self._finish(job))
        except FileNotFoundError:
            raise
        except Exception as exc:  # a bad file (or a bug) costs that file, never the gateway
            return self._reject_file(job, self._read_error(job, exc))
        try:
            records = to_records(chunk.rows, self.config.physics)
        except CmmTwinError as exc:  # the physics refused a row the reader let through
            return self._reject_file(job, f"lines {p.line + 1}..{chunk.end_line}: {exc}")
        records, errors = self._plausible(chunk, records)
        last = chunk.end_offset >= job.size and job.path.stat().st_size == job.size
        job.progress = replace(
            p,
            offset=chunk.end_offset,
            line=chunk.end_line,
            rows_ok=p.rows_ok + len(records),
            rows_rejected=p.rows_rejected + len(errors),
            complete=last,
        )
        self._commit([job.progress], records, {p.name: errors} if errors else {})
        return _Step(records, errors, self._finish(job) if last else None)

    def _reject_file(self, job: _Job, reason: str) -> _Step:
        """Mark the file done with a file-level error (rows committed before stay committed)."""
        assert job.progress is not None
        job.progress = replace(job.progress, complete=True, file_error=reason)
        self._commit([job.progress], None, {})
        return _Step(None, [], self._finish(job))

    def _finish(self, job: _Job, fsync: bool = True) -> FileOutcome:
        """Move the file to archive/ or quarantine/ (with its report) once it is all committed
        (state thread). Its progress is dropped with the next commit, after the move is on disk
        (`fsync=False`: the caller fsyncs the directories once for a whole group).

        A name too long to keep next to its report (the file system's name limit) is stored in
        quarantine/ under a shortened unique name, with a report naming the original."""
        store = self.state.store
        p = job.progress
        assert p is not None and p.complete
        errors = store.errors_of(p.name) if p.rows_rejected else []
        bad = bool(p.rows_rejected or p.file_error)
        target_dir = self.config.quarantine if bad else self.config.archive
        target_dir.mkdir(parents=True, exist_ok=True)
        target, shortened = _free_name(target_dir, p.name)
        note = None
        if shortened:
            if not bad:  # archive/ keeps no report: the original name would be lost there
                target_dir = self.config.quarantine
                target_dir.mkdir(parents=True, exist_ok=True)
                target, _ = _free_name(target_dir, p.name)
            note = (
                f"name too long to keep next to its report ({len(os.fsencode(p.name))} bytes; the file system "
                f"allows {_name_max_bytes(target_dir)} per name): stored as {target.name}"
            )
        destination: Path | None = target
        report = target.with_name(target.name + REPORT_SUFFIX) if bad or note else None
        try:
            if report is not None:
                write_atomically(report, _report_text(p, errors, note, target.name).encode())
            try:
                _move(job.path, target)
            except BaseException:
                if report is not None:
                    report.unlink(missing_ok=True)
                raise
            if fsync:
                fsync_directory(target_dir)
                fsync_directory(job.path.parent)
        except FileNotFoundError:
            log.warning("%s disappeared from the inbox before it could be moved", safe_name(p.name))
            destination = None
        self._forget.add(p.name)
        continued_as = self._continue_if_grown(job, target, report) if destination is not None else None
        return FileOutcome(
            p.name,
            p.rows_ok,
            p.rows_rejected,
            destination,
            p.file_error,
            _ms_since(job.started),
            tuple(errors[:ERRORS_IN_LOG]),
            quarantined=destination is not None and destination.parent == self.config.quarantine,
            note=note,
            continued_as=continued_as,
        )

    def _continue_if_grown(self, job: _Job, moved: Path, report: Path | None) -> Path | None:
        """If the file grew after it was read (a writer still appending, e.g. one the gateway
        cannot lease), move it back into the inbox as `<stem>.tail-<offset><suffix>` with its
        progress carried over, so the rows after the part already read are read as well; the
        new inbox name, or None when it did not grow.

        Why the whole file goes back rather than a copy of its tail: a writer that still holds
        it open keeps appending to this very inode, so rows written after any copy would be lost
        in archive/; back in the inbox they are read under the usual rules (a last line without
        a line end waits for the settle time). Under a new name, because the original may
        already be taken by a new file; the report of the part already read is withdrawn and
        written again, complete, when the file is finished."""
        p = job.progress
        assert p is not None
        if p.file_error is not None:
            return None  # rejected as a whole: nothing more is taken from it
        try:
            size = moved.stat().st_size
        except OSError:
            return None
        if size <= job.size:
            return None
        stem, suffix = os.path.splitext(p.name)
        inbox = job.path.parent
        again, _ = _free_name(inbox, f"{stem}.tail-{job.size}{suffix}")
        try:
            line = _count_lines(moved, job.size)
            errors = self.state.store.errors_of(p.name) if p.rows_rejected else []
            os.rename(moved, again)
            if report is not None:
                report.unlink(missing_ok=True)
            for directory in {inbox, self.config.archive, self.config.quarantine}:
                if directory.is_dir():  # every move so far is on disk before progress is dropped
                    fsync_directory(directory)
            # The file is back in the inbox before its progress names it: a crash in between reads
            # it again from the top (its rows are delivered again, the MES de-duplicates), never
            # loses its tail.
            progress = replace(p, name=again.name, offset=job.size, line=line, complete=False, file_error=None)
            self._commit([progress], None, {again.name: errors} if errors else {})
        except OSError as exc:
            log.warning(
                "%s grew after it was moved to %s (%d -> %d bytes), and its rest cannot be read (%s): see %s",
                safe_name(p.name),
                moved.parent.name,
                job.size,
                size,
                exc,
                safe_name(moved),
            )
            return None
        log.info(
            "%s grew after it was moved to %s/ (%d -> %d bytes): back in the inbox as %s to read the rest",
            safe_name(p.name),
            moved.parent.name,
            job.size,
            size,
            safe_name(again.name),
        )
        return again

    async def _quarantine_refused(self, queue: InboxQueue) -> None:
        """Quarantine the entries `_ready_job` refused (links: moved themselves, never followed).
        One that cannot be moved is ignored while it stays, so it is reported once."""
        refused, self._refused = self._refused, []
        for path, reason in refused:
            try:
                await self.quarantine_unread(path, reason)
            except OSError as exc:
                log.warning("%s refused (%s) but cannot be moved to quarantine/: %s", safe_name(path.name), reason, exc)
                queue.ignore(path)

    async def quarantine_unread(self, path: Path, reason: str) -> FileOutcome | None:
        """Move `path` to quarantine/ without reading it (a symbolic link is moved itself, never
        followed), with a report giving `reason`; counted and logged as a quarantined file. None
        when it is gone. The caller takes it off the queue (`InboxQueue.done`)."""
        outcome = await self.state.call(self._quarantine_unread, path, reason)
        if outcome is not None:
            self._deliver(_Step(None, [], outcome))
        self._left_inbox(path)
        return outcome

    def _quarantine_unread(self, path: Path, reason: str) -> FileOutcome | None:
        """See `quarantine_unread` (state thread)."""
        started = time.perf_counter()
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        progress = FileProgress(path.name, st.st_size, st.st_mtime_ns, 0, 1, 0, 0, True, reason)
        job = _Job(path, st.st_size, st.st_mtime_ns, started, progress)
        job.complete_at = st.st_size
        return self._finish(job)

    async def flush_forgotten(self) -> None:
        """Drop the progress of finished files now (at shutdown and when idle)."""
        if self._forget:
            forget, self._forget = self._forget, set()
            await self.state.call(self.state.store.forget_files, forget)

    def _log(self, outcome: FileOutcome) -> None:
        name = safe_name(outcome.name)
        if outcome.continued_as is not None:
            return  # said by _continue_if_grown; the file is logged when its rest is done
        where = outcome.destination.parent.name if outcome.destination else "nowhere"
        log.info(
            "%s: %d rows ok, %d rejected, %.1f ms -> %s",
            name,
            outcome.rows_ok,
            outcome.rows_rejected,
            outcome.elapsed_ms,
            where,
        )
        if outcome.note:
            log.warning("%s: %s in %s/, report %s", name, outcome.note, where, REPORT_SUFFIX)
        if outcome.file_error:
            log.warning("%s rejected as a whole: %s", name, outcome.file_error)
        elif outcome.rows_rejected:
            quoted = "; ".join(f"line {e.line} {e.column or 'row'}: {e.reason}" for e in outcome.first_errors)
            more = outcome.rows_rejected - len(outcome.first_errors)
            log.warning(
                "%s: %d rows rejected (%s%s), report %s%s",
                name,
                outcome.rows_rejected,
                quoted,
                f"; +{more} more" if more > 0 else "",
                safe_name(outcome.destination),
                REPORT_SUFFIX,
            )


def _name_max_bytes(directory: Path) -> int:
    """The longest file name `directory`'s file system allows, in bytes."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX_BYTES


def _free_name(directory: Path, name: str) -> tuple[Path, bool]:
    """A free name for `name` in `directory` (nothing there under it nor under its report's
    name): `name`, else `stem.N.csv`; each shortened to a unique name when it, its report or
    the report's temporary name would exceed the file system's name limit. True when shortened."""
    room = _name_max_bytes(directory) - _REPORT_NAME_EXTRA_BYTES
    stem, suffix = os.path.splitext(name)
    n = 0
    while True:
        candidate = name if n == 0 else f"{stem}.{n}{suffix}"
        shortened = len(os.fsencode(candidate)) > room
        if shortened:
            candidate = _shortened(candidate, room)
        target = directory / candidate
        if not target.exists() and not target.with_name(target.name + REPORT_SUFFIX).exists():
            return target, shortened
        n += 1


def _shortened(name: str, room_bytes: int) -> str:
    """`name` cut to at most `room_bytes` bytes: the start of its stem, `~`, 12 hex digits of a
    hash of the whole name (unique), and its suffix (e.g. `.csv`)."""
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:
        suffix = ""
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    keep = max(room_bytes - len(tag) - len(os.fsencode(suffix)), 0)
    start = os.fsencode(stem)[:keep].decode("utf-8", errors="ignore")  # never half a character
    return start + tag + suffix


def _report_text(progress: FileProgress, errors: list[StoredRowError], note: str | None, stored_as: str) -> str:
    """The report of a quarantined file; with `note` it also says under which name it is stored."""
    text = errors_report(progress.name, progress, errors, progress.file_error)
    if note is None:
        return text
    report = json.loads(text)
    report["stored_as"] = stored_as
    report["note"] = note
    return json.dumps(report, indent=2)


def _move(source: Path, target: Path) -> None:
    """Move an inbox file out (a seam for tests that change a file at this moment)."""
    os.replace(source, target)


def _ends_with_line_end(path: Path, size: int) -> bool:
    """Whether the byte before offset `size` of `path` is a line end."""
    if size <= 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _count_lines(path: Path, offset: int) -> int:
    """The number of line ends in the first `offset` bytes of `path`."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
