"""From an inbox file to result records: read, validate, compensate, spool, publish, archive.

Each chunk of a file is committed to the state database in one transaction together with the
file's progress (byte offset and line), so kill -9 at any moment and a restart neither skip nor
re-spool a row: the restart resumes after the last committed chunk (DESIGN.md sections 2 and 5).
A file moves to `archive/` (all rows valid) or `quarantine/` (with `<name>.errors.json`) only
after all its rows are committed; its progress is forgotten only after the move is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.ingest.csv_reader import (
    FileRejected,
    IngestSettings,
    ParsedChunk,
    concat_rows,
    read_chunks,
    read_small_files,
    to_records,
)
from cmm_twin.gateway.ingest.inbox import InboxQueue, check_ready
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.runner import wait_or_stop
from cmm_twin.gateway.state import AsyncState, FileProgress, StoredRowError, errors_report, is_disk_full
from cmm_twin.gateway.status import GatewayStatus
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


_UNREAD = object()
"""Marks a file that read_small_files did not read (it is resumed with read_chunks)."""


class _GrewError(Exception):
    """A small file changed size while being read as part of a group."""


@dataclass(frozen=True)
class _Step:
    records: RecordBatch | None
    errors: list[StoredRowError]
    outcome: FileOutcome | None


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
            chunk_rows=config.chunk_rows,
        )
        self._spool_checked = -1e9
        self._forget: set[str] = set()
        """Files moved out of the inbox whose progress is dropped with the next commit."""
        self.idle = asyncio.Event()
        """Set while no queued file is due (used by --once and by tests)."""

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
                continue
            if first.size > GROUP_MAX_FILE_BYTES:
                await self._guarded(queue, [first], self.process_file(first, stop))
                continue
            group = [first]
            group_bytes = first.size
            for other in queue.due(exclude=path, limit=self.config.files_per_commit):
                if len(group) >= self.config.files_per_commit or group_bytes >= GROUP_MAX_FILE_BYTES:
                    break  # a group holds about as much as one chunk of a big file: memory stays bounded
                job = self._ready_job(queue, other)
                if job is None:
                    continue
                if job.size > GROUP_MAX_FILE_BYTES:
                    break  # keeps arrival order: the big file goes after this group
                group.append(job)
                group_bytes += job.size
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
        elif readiness.not_a_file:
            log.warning("%s is not a regular file: left in the inbox and ignored", path)
            queue.ignore(path)
        elif not readiness.ready:
            queue.later(path, readiness.wait_s)
        else:
            return _Job(path, readiness.size, readiness.mtime_ns, time.perf_counter())
        return None

    _disk_retry_s: float = 0.0
    _disk_retry_at: float = 0.0
    """Backoff of the intake while the disk is full (see _guarded and the top of _run)."""

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
            names = ", ".join(j.path.name for j in jobs)
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
                return step.outcome

    async def process_group(self, jobs: list[_Job], queue: InboxQueue) -> None:
        """Read, commit and move a group of small files with ONE commit and one directory fsync."""
        steps = await self.state.call(self._group, jobs)
        for job, step in zip(jobs, steps, strict=True):
            if step is None:
                self._vanished(job)
            elif step.outcome is None:  # it grew while being read: read it again on its own
                queue.later(job.path, 0.0)
            else:
                job.done = True
                self._deliver(step)

    def _vanished(self, job: _Job) -> None:
        log.warning("%s vanished before it was read: nothing taken from it", job.path.name)
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
            self.status.files_processed += 1
            self.metrics.files_processed.labels(
                "quarantine" if outcome.rows_rejected or outcome.file_error else "archive"
            ).inc()
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
            log.warning("%s shrank since it was partly read: reading it again from the top", job.path.name)
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
        self.state.store.commit(progress, records if self.spool_enabled else None, errors, forget)

    def _read_error(self, job: _Job, exc: Exception) -> str:
        """The file-level reason for an exception raised while reading `job`."""
        if isinstance(exc, FileRejected):
            return exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
        if isinstance(exc, (OSError, CmmTwinError)):
            return f"cannot be read: {exc}"
        log.error("%s: unexpected error while reading", job.path.name, exc_info=exc)
        line = job.progress.line if job.progress else 1
        return f"internal error while reading after line {line}: {exc!r}"

    def _group(self, jobs: list[_Job]) -> list[_Step | None]:
        """Read every file of `jobs` whole, commit them all at once, move them, fsync the
        directories once (state thread). None for a file that vanished; a step without outcome
        for a file that grew while being read (not committed)."""
        results: list[_Step | None] = [None] * len(jobs)
        staged: list[tuple[int, _Job, RecordBatch | None, list[StoredRowError]]] = []
        for job in jobs:
            job.progress = self._start(job)
        fresh = [
            job for job in jobs if job.progress is not None and not job.progress.complete and not job.progress.offset
        ]
        parsed = dict(zip(map(id, fresh), read_small_files([job.path for job in fresh], self.settings), strict=True))
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
            outcome = self._finish(job, fsync=False)
            if outcome.destination is not None:
                directories.update((outcome.destination.parent, job.path.parent))
            results[i] = _Step(records, errors, outcome)
        for directory in directories:
            _fsync_dir(directory)
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

    def _read_whole(
        self,
        job: _Job,
        parsed: ParsedChunk | Exception | object | None = None,
        evaluated: RecordBatch | Exception | None = None,
    ) -> tuple[RecordBatch | None, list[StoredRowError]]:
        """Take a small file in full (`parsed` by read_small_files, or read here when _UNREAD) and
        set its progress complete; a file-level error delivers nothing of it. Raises _GrewError
        when the file changed size meanwhile."""
        assert job.progress is not None
        p = job.progress
        chunks: list[ParsedChunk] = []
        try:
            if parsed is _UNREAD:  # resuming after a crash mid-file: only what is not committed
                chunks = list(read_chunks(job.path, self.settings, p.offset, p.line))
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
        errors = [StoredRowError(e.line, e.column, e.reason) for chunk in chunks for e in chunk.errors]
        records = RecordBatch.concat(parts) if len(parts) > 1 else (parts[0] if parts else None)
        rows_ok = len(records) if records is not None else 0
        job.progress = replace(
            p, offset=job.size, rows_ok=p.rows_ok + rows_ok, rows_rejected=p.rows_rejected + len(errors), complete=True
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
            job.reader = read_chunks(job.path, self.settings, p.offset, p.line)
        try:
            chunk = next(job.reader)
        except StopIteration:
            grown = job.path.stat().st_size
            if grown > p.offset and p.offset > 0 and grown != job.size:
                log.info("%s grew while being read (%d -> %d bytes): reading on", job.path.name, job.size, grown)
                job.size = grown
                job.reader = None
                return _Step(None, [], None)
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
        errors = [StoredRowError(e.line, e.column, e.reason) for e in chunk.errors]
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
        (`fsync=False`: the caller fsyncs the directories once for a whole group)."""
        store = self.state.store
        p = job.progress
        assert p is not None and p.complete
        errors = store.errors_of(p.name) if p.rows_rejected else []
        bad = bool(p.rows_rejected or p.file_error)
        target_dir = self.config.quarantine if bad else self.config.archive
        target_dir.mkdir(parents=True, exist_ok=True)
        target = _free_name(target_dir, p.name)
        destination: Path | None = target
        try:
            if bad:
                report = target.with_name(target.name + ".errors.json")
                _write_durably(report, errors_report(p.name, p, errors, p.file_error))
            os.replace(job.path, target)
            if fsync:
                _fsync_dir(target_dir)
                _fsync_dir(job.path.parent)
        except FileNotFoundError:
            log.warning("%s disappeared from the inbox before it could be moved", p.name)
            destination = None
        self._forget.add(p.name)
        return FileOutcome(
            p.name,
            p.rows_ok,
            p.rows_rejected,
            destination,
            p.file_error,
            _ms_since(job.started),
            tuple(errors[:ERRORS_IN_LOG]),
        )

    async def flush_forgotten(self) -> None:
        """Drop the progress of finished files now (at shutdown and when idle)."""
        if self._forget:
            forget, self._forget = self._forget, set()
            await self.state.call(self.state.store.forget_files, forget)

    def _log(self, outcome: FileOutcome) -> None:
        where = outcome.destination.parent.name if outcome.destination else "nowhere"
        log.info(
            "%s: %d rows ok, %d rejected, %.1f ms -> %s",
            outcome.name,
            outcome.rows_ok,
            outcome.rows_rejected,
            outcome.elapsed_ms,
            where,
        )
        if outcome.file_error:
            log.warning("%s rejected as a whole: %s", outcome.name, outcome.file_error)
        elif outcome.rows_rejected:
            quoted = "; ".join(f"line {e.line} {e.column or 'row'}: {e.reason}" for e in outcome.first_errors)
            more = outcome.rows_rejected - len(outcome.first_errors)
            log.warning(
                "%s: %d rows rejected (%s%s), report %s.errors.json",
                outcome.name,
                outcome.rows_rejected,
                quoted,
                f"; +{more} more" if more > 0 else "",
                outcome.destination,
            )


def _free_name(directory: Path, name: str) -> Path:
    """`directory/name`, or `stem.N.csv` when a file of that name is already there."""
    target = directory / name
    stem, suffix = os.path.splitext(name)
    n = 1
    while target.exists() or target.with_name(target.name + ".errors.json").exists():
        target = directory / f"{stem}.{n}{suffix}"
        n += 1
    return target


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
