"""From an inbox file to result records: read, validate, compensate, spool, publish, archive.

The event-loop side: takes due files from the `InboxQueue`, groups small ones, hands them to the
`FileCommitter` on the state thread (one hop per chunk or group), then publishes the records, counts
and logs. Which files a format claims and how they are read is the sources' concern
(`cmm_twin.gateway.sources`); the commit protocol and the moves are the committer's.

A file moves to `archive/` (all rows valid) or `quarantine/` (with `<name>.errors.json`) only
after all its rows are committed; its progress is forgotten only after the move is on disk (see
docs/architecture.md, 'Delivery guarantees'). A restart resumes after the last committed chunk.

A unit the source says is unfinished (CSV: a last line without a line end) is read only once the
file has been stable for the settle time, or at once when it is finished; until then the rows
before it are committed and the file is looked at again later. A file that grew after it was
moved out of the inbox goes back to the inbox under `<stem>.tail-<offset><suffix>`, its progress
carried over, so the rows appended late are read too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.ingest import reports
from cmm_twin.gateway.ingest.committer import RETRY_FAILED_FILE_S, FileCommitter
from cmm_twin.gateway.ingest.inbox import FileObservations, InboxQueue
from cmm_twin.gateway.ingest.jobs import FileOutcome, Job, Step
from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.sources import IngestSettings, Source, source_for
from cmm_twin.gateway.state import AsyncState, is_disk_full
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.logs import safe_name
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

__all__ = ["FileOutcome", "Pipeline"]

SPOOL_RECHECK_S = 0.5
GROUP_MAX_FILE_BYTES = 256 << 10
"""Files up to this size are read whole and committed in groups of up to `files_per_commit`
files and about this many bytes together (a few thousand rows)."""
DISK_RETRY_MIN_S = 0.5
DISK_RETRY_MAX_S = 5.0
"""Backoff of the intake while the disk is full."""
COMPANION_RECHECK_S = 1.0
"""How often a unit that lacks a file (or whose companion is not yet ready) is looked at again."""
UNFINISHED_RECHECK_S = 1.0
"""How often a stable file its source still calls unfinished (a Calypso chr without END) is
looked at again."""
HELD_LINE_RECHECK_S = 0.25
"""How often a file whose last unit waits (e.g. a last line without line end, not yet stable) is
looked at again: it is finished as soon as the writer finishes it, or once the settle time has
passed. Cheap: only the part after the committed rows is read again."""


def ingest_settings(config: GatewayConfig) -> IngestSettings:
    """The sources' settings from the gateway's configuration."""
    limits = config.physics.limits
    return IngestSettings(
        default_material=config.default_material,
        materials=config.materials,
        plausible_min_c=limits.plausible_min_c,
        plausible_max_c=limits.plausible_max_c,
        max_length_mm=limits.max_length_mm,
        chunk_rows=config.chunk_rows,
        inputs=config.inputs,
    )


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
        quality: QualityMonitor | None = None,
        on_rejected: Callable[[list[tuple[str, str]]], None] | None = None,
    ) -> None:
        self.config = config
        self.on_rejected = on_rejected
        """Told the (machine_id, feature) of rejected rows (the live sinks mark them Bad)."""
        self.state = state
        self.status = status
        self.metrics = metrics
        self.publish = publish
        self.spool_enabled = spool_enabled
        self.spooled = spooled
        self.settings = ingest_settings(config)
        self._spool_checked = -1e9
        self.committer = FileCommitter(config, state, spool_enabled, quality)
        """Reads, commits and moves files: its methods run on the state thread only."""
        self._sources: dict[type[Source], Source] = {}
        self.idle = asyncio.Event()
        """Set while no queued file is due (used by --once and by tests)."""
        self._seen = FileObservations()
        """How long each inbox file has kept its size and mtime as this process saw it: stability
        also when its mtime cannot be trusted (a clock ahead of ours)."""
        self._alone: set[Path] = set()
        """Files whose group failed: each is tried on its own, so one bad file holds up no other."""
        self._lacking_since: dict[str, float] = {}
        """When each inbox file was first seen lacking a file of its unit (monotonic)."""
        self._disk_retry_s = 0.0
        self._disk_retry_at = 0.0
        """Backoff of the intake while the disk is full (see _guarded and the top of _run)."""
        self.unfinished: set[str] = set()
        """Inbox files stable but unfinished: by their source's rule (a chr without END), or a
        unit still lacking a companion (a lone .dfd). Left there, looked at again now and then;
        --once does not wait for them."""
        self._refused: list[tuple[Path, str]] = []
        """Inbox entries refused unread (symbolic links, incomplete units), quarantined by `_run`
        with their reason."""

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
        """Note: `committer.forget` is shared with the state thread; only this task touches it, and
        never while one of its own state calls is in flight."""
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

    def _ready_job(self, queue: InboxQueue, path: Path) -> Job | None:
        """A job for `path` when it can be read now; otherwise queue it appropriately."""
        readiness = queue.readiness.check(path, self.config.settle_ms / 1000.0)
        if readiness.gone:
            queue.done(path)
            self.committer.forget.add(path.name)
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
            source = self._source_of(queue, path)
            if source is None:
                queue.ignore(path)  # no source claims it (any more): left in the inbox
                return None
            companions = self._unit_complete(queue, source, path)
            if companions is None:
                return None
            stable_s = self._stable_for_s(path, readiness.size, readiness.mtime_ns)
            settle_s = self.config.settle_ms / 1000.0
            return Job(
                path,
                readiness.size,
                readiness.mtime_ns,
                time.perf_counter(),
                complete_at=readiness.size if stable_s >= settle_s else -1,
                settle_wait_s=min(settle_s - stable_s, HELD_LINE_RECHECK_S)
                if stable_s < settle_s
                else UNFINISHED_RECHECK_S,
                source=source,
                companions=companions,
            )
        return None

    def _unit_complete(self, queue: InboxQueue, source: Source, path: Path) -> tuple[Path, ...] | None:
        """The companions of the unit `path` leads when they are all there and ready; otherwise
        None, with `path` queued appropriately: a companion is taken along by its leader (off the
        queue while the leader is there), a unit still lacking a file is looked at again, and
        quarantined unread once it has lacked it for the source's `companion_wait_s`."""
        leader = source.leader(path.name)
        missing = [leader] if leader != path.name else list(source.companions(path.name))
        missing = [name for name in missing if not (path.parent / name).is_file()]
        if leader != path.name and not missing:
            queue.done(path)  # its leader takes it along
            return None
        if missing:
            now = time.monotonic()
            lacking_s = now - self._lacking_since.setdefault(path.name, now)
            if lacking_s < source.companion_wait_s:
                queue.later(path, min(source.companion_wait_s - lacking_s, COMPANION_RECHECK_S))
                self.unfinished.add(path.name)  # --once leaves a lone half in the inbox
            else:
                self.unfinished.discard(path.name)
                queue.done(path)
                reason = f"{', '.join(missing)} did not come with it within {source.companion_wait_s:g} s"
                self._refused.append((path, f"incomplete {source.name} unit: {reason}"))
            return None
        companions = tuple(path.parent / name for name in source.companions(path.name))
        present = (path.parent / name for name in source.optional_companions(path.name))
        companions += tuple(p for p in present if p.is_file())
        for companion in companions:
            readiness = queue.readiness.check(companion, self.config.settle_ms / 1000.0)
            if not readiness.ready:
                queue.later(path, readiness.wait_s or COMPANION_RECHECK_S)
                return None
        self._lacking_since.pop(path.name, None)
        self.unfinished.discard(path.name)
        return companions

    def _source_of(self, queue: InboxQueue, path: Path) -> Source | None:
        """The source that reads `path` (the first of the queue's sources that claims its name)."""
        kind = source_for(path.name, queue.sources)
        if kind is None:
            return None
        source = self._sources.get(kind)
        if source is None:
            source = self._sources[kind] = kind(self.settings)
        return source

    def _stable_for_s(self, path: Path, size: int, mtime_ns: int) -> float:
        """How long `path` has kept this size and mtime: by its mtime, or since this process first
        saw them (whichever is longer)."""
        seen_s = self._seen.unchanged_for_s(path, size, mtime_ns, time.monotonic())
        return max(seen_s, time.time() - mtime_ns / 1e9)

    def _left_inbox(self, path: Path) -> None:
        self.unfinished.discard(path.name)
        self._seen.forget(path)
        self._alone.discard(path)
        self._lacking_since.pop(path.name, None)

    async def _guarded(self, queue: InboxQueue, jobs: list[Job], work: Coroutine[Any, Any, object]) -> None:
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
            if not job.done and job.complete_at >= 0 and job.retry_in_s == UNFINISHED_RECHECK_S:
                self.unfinished.add(job.path.name)
            else:
                self.unfinished.discard(job.path.name)

    async def process_file(self, job: Job, stop: asyncio.Event | None = None) -> FileOutcome | None:
        """Read, commit and move one file chunk by chunk; None when it vanished, or when `stop`
        came mid-file (the committed part stays committed; a restart resumes after it)."""
        path = job.path
        while True:
            if stop is not None and stop.is_set() and job.progress is not None:
                log.info("stopping: %s left after line %d, resumed on restart", path.name, job.progress.line)
                return None
            try:
                step = await self.state.call(self.committer.step, job)
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

    async def process_group(self, jobs: list[Job], queue: InboxQueue) -> None:
        """Read, commit and move a group of small files with ONE commit and one directory fsync."""
        steps = await self.state.call(self.committer.group, jobs)
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

    def _vanished(self, job: Job) -> None:
        log.warning("%s vanished before it was read: nothing taken from it", safe_name(job.path.name))
        self.committer.forget.add(job.path.name)
        job.done = True

    def _deliver(self, step: Step) -> None:
        """Publish a step's records to the live sinks, wake the durable ones, count, log."""
        if step.records is not None and len(step.records):
            self.publish(step.records)
            if self.spool_enabled:
                self.status.spooled(len(step.records))
                self.spooled.set()
        if step.errors and self.on_rejected is not None:
            self._tell_rejected(step)
        self._count(step)
        outcome = step.outcome
        if outcome is not None:
            if outcome.continued_as is None:  # a continued file counts once, when its rest is done
                self.status.files_processed += 1
                self.metrics.files_processed.labels("quarantine" if outcome.quarantined else "archive").inc()
            self._log(outcome)

    def _tell_rejected(self, step: Step) -> None:
        """The characteristics of `step`'s rejected rows, except those it also has a record of
        (that record is the newest news of the characteristic)."""
        assert self.on_rejected is not None
        named = {(e.machine_id, e.feature) for e in step.errors}
        measured = set(zip(step.records.machine_id, step.records.feature, strict=True)) if step.records else set()
        keys = [(m, f) for m, f in named if m and f and (m, f) not in measured]
        if keys:
            self.on_rejected(sorted(keys))

    def _count(self, step: Step) -> None:
        if step.records is not None:
            self.status.rows_in += len(step.records)
            self.metrics.rows_in.inc(len(step.records))
        if step.errors:
            self.status.rows_rejected += len(step.errors)
            for error in step.errors:
                self.metrics.rows_rejected.labels(error.column or "row").inc()

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
        outcome = await self.state.call(self.committer.quarantine_unread, path, reason)
        if outcome is not None:
            self._deliver(Step(None, [], outcome))
        self._left_inbox(path)
        return outcome

    async def flush_forgotten(self) -> None:
        """Drop the progress of finished files now (at shutdown and when idle)."""
        if self.committer.forget:
            forget, self.committer.forget = self.committer.forget, set()
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
            log.warning("%s: %s in %s/, report %s", name, outcome.note, where, reports.REPORT_SUFFIX)
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
                reports.REPORT_SUFFIX,
            )
