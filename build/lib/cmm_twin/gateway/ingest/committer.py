"""The state-thread side of the pipeline: reads a file (or a group of small files) through its
source, evaluates the rows, commits them with the file's progress, and moves the file out of the
inbox. Every method runs on the state thread (`AsyncState.call`), never on the event loop.

Each chunk of a file is committed to the state database in one transaction together with the
file's progress (byte offset and line), so kill -9 at any moment and a restart neither skip nor
re-spool a row (see docs/architecture.md, 'Delivery guarantees').
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from cmm_twin.durable_io import fsync_directory, write_atomically
from cmm_twin.errors import CmmTwinError
from cmm_twin.gateway.config import GatewayConfig
from cmm_twin.gateway.ingest import reports
from cmm_twin.gateway.ingest.jobs import FileOutcome, Job, Step, read_unit
from cmm_twin.gateway.ingest.records import reject_implausible, to_records
from cmm_twin.gateway.quality.monitor import QualityMonitor
from cmm_twin.gateway.sources import BatchReading, FileRejected, ParsedChunk
from cmm_twin.gateway.sources.rows import concat_rows
from cmm_twin.gateway.state import AsyncState, FileProgress, StoredRowError
from cmm_twin.logs import safe_name
from cmm_twin.records import RecordBatch

log = logging.getLogger(__name__)

RETRY_FAILED_FILE_S = 5.0
ERRORS_IN_LOG = 3
"""Row errors quoted in a file's warning line; the rest are in its sidecar report."""

_UNREAD = object()
"""Marks a file that `_read_fresh` did not read (it is resumed chunk by chunk)."""


class _GrewError(Exception):
    """A small file changed size while being read as part of a group."""


class FileCommitter:
    """Reads, commits and moves files on the state thread (see the module docstring)."""

    def __init__(
        self, config: GatewayConfig, state: AsyncState, spool_enabled: bool, quality: QualityMonitor | None = None
    ) -> None:
        self.config = config
        self.state = state
        self.spool_enabled = spool_enabled
        self.quality = quality
        """The capability monitor: sees every evaluated batch before its commit (`_plausible`)."""
        self.forget: set[str] = set()
        """Files moved out of the inbox whose progress is dropped with the next commit. Shared
        with the event loop: the pipeline touches it only while none of its state calls is in flight."""

    def _start(self, job: Job) -> FileProgress:
        """The committed progress of `job`'s file, or a fresh start."""
        progress = None if job.path.name in self.forget else self.state.store.progress_of(job.path.name)
        if progress is not None and progress.offset > job.size:
            log.warning("%s shrank since it was partly read: reading it again from the top", safe_name(job.path.name))
            progress = None
        if progress is None:
            progress = FileProgress(job.path.name, job.size, job.mtime_ns, 0, 1, 0, 0, False, None)
        return progress  # a name still in `forget` is dropped before this file's first commit

    def _commit(
        self,
        progress: list[FileProgress],
        records: RecordBatch | None,
        errors: dict[str, list[StoredRowError]],
    ) -> None:
        """Commit chunks of one or more files; progress of files finished earlier is dropped in
        the same transaction."""
        forget, self.forget = self.forget, set()
        try:
            self.state.store.commit(progress, records if self.spool_enabled else None, errors, forget)
        except BaseException:
            self.forget |= forget  # rolled back: still to be dropped with a later commit
            raise

    def _read_error(self, job: Job, exc: Exception) -> str:
        """The file-level reason for an exception raised while reading `job`."""
        if isinstance(exc, FileRejected):
            return exc.reason if exc.line is None else f"line {exc.line}: {exc.reason}"
        if isinstance(exc, (OSError, CmmTwinError)):
            return f"cannot be read: {exc}"
        log.error("%s: unexpected error while reading", safe_name(job.path.name), exc_info=exc)
        line = job.progress.line if job.progress else 1
        return f"internal error while reading after line {line}: {exc!r}"

    def group(self, jobs: list[Job]) -> list[Step | None]:
        """Read every file of `jobs` whole, commit them all at once, move them, fsync the
        directories once (state thread). None for a file that vanished; a step without outcome
        for a file that grew while being read (not committed), whose last line is left for later
        (the rows before it committed), or that could not be moved (all committed; the move is
        tried again on its own)."""
        results: list[Step | None] = [None] * len(jobs)
        staged: list[tuple[int, Job, RecordBatch | None, list[StoredRowError]]] = []
        committed_before: set[int] = set()
        for job in jobs:
            job.progress = self._start(job)
        fresh = [
            job for job in jobs if job.progress is not None and not job.progress.complete and not job.progress.offset
        ]
        read = _read_fresh(fresh)
        parsed = dict(zip(map(id, fresh), read, strict=True))
        evaluated = self._evaluate_together([c for c in parsed.values() if isinstance(c, ParsedChunk)])
        for i, job in enumerate(jobs):
            assert job.progress is not None
            if job.progress.complete:
                staged.append((i, job, None, []))
                committed_before.add(id(job))
                continue
            try:
                chunk = parsed.get(id(job), _UNREAD)
                records, errors = self._read_whole(job, chunk, evaluated.get(id(chunk)))
            except FileNotFoundError:
                continue
            except _GrewError:
                results[i] = Step(None, [], None)
                continue
            staged.append((i, job, records, errors))
        for _, job, records, _ in staged:
            if id(job) not in committed_before:
                self._mark_file_end(job, records)
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
                results[i] = Step(records, errors, None, retry_in_s=job.settle_wait_s)
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
                results[i] = Step(records, errors, None, retry_in_s=RETRY_FAILED_FILE_S)
                continue
            if outcome.destination is not None:
                directories.update((outcome.destination.parent, job.path.parent))
            results[i] = Step(records, errors, outcome)
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
        """`records` of `chunk` without rows whose results are implausible (seen by the capability
        monitor, which flags them `residual_thermal_slope` while their characteristic's alarm is
        on); the chunk's row errors with those rows' errors added, in line order."""
        records, implausible = reject_implausible(records, chunk.rows.line, self.config.physics.limits)
        if self.quality is not None:  # before the commit: it flags alarmed records in place (docs/capability.md)
            self.quality.observe(records)
        row_errors = sorted([*chunk.errors, *implausible], key=lambda e: e.line) if implausible else chunk.errors
        return records, [StoredRowError(e.line, e.column, e.reason, e.machine_id, e.feature) for e in row_errors]

    def _holds_last_line(self, job: Job, read_to: int) -> bool:
        """Whether the unread end of `job`'s file (after byte `read_to`) is left for later: its
        source says a writer may still be finishing it (CSV: a last line without a line end, the
        file not yet stable)."""
        assert job.source is not None
        return job.source.waits_for_more(job.path, read_to, job.size, job.complete_at >= 0)

    def _read_whole(
        self,
        job: Job,
        parsed: ParsedChunk | Exception | object | None = None,
        evaluated: RecordBatch | Exception | None = None,
    ) -> tuple[RecordBatch | None, list[StoredRowError]]:
        """Take a small file in full (`parsed` by its source with the group, or read here when
        _UNREAD) and set its progress complete; a file-level error delivers nothing of it. A last line left for
        later (`_holds_last_line`) is not taken: the progress then ends before it, not complete.
        Raises _GrewError when the file changed size meanwhile."""
        assert job.progress is not None
        p = job.progress
        chunks: list[ParsedChunk] = []
        try:
            if parsed is _UNREAD:  # resuming after a crash mid-file: only what is not committed
                chunks = list(read_unit(job.source, job.path, p.offset, p.line, job.complete_at))
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

    def step(self, job: Job) -> Step:
        """Read, evaluate and commit the next chunk of `job`; finish the file after its last chunk
        (state thread: one hop from the event loop per chunk, one commit per chunk)."""
        if job.progress is None:
            job.progress = self._start(job)
            if job.progress.complete:  # committed before a crash, not yet moved
                return Step(None, [], self._finish(job))
        p = job.progress
        if job.reader is None:
            job.reader = read_unit(job.source, job.path, p.offset, p.line, job.complete_at)
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
                return Step(None, [], None)
            if self._holds_last_line(job, p.offset):
                return Step(None, [], None, retry_in_s=job.settle_wait_s)
            job.progress = replace(p, complete=True)
            self._mark_file_end(job, None)
            self._commit([job.progress], None, {})
            return Step(None, [], self._finish(job))
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
        self._mark_file_end(job, records)
        self._commit([job.progress], records, {p.name: errors} if errors else {})
        return Step(records, errors, self._finish(job) if last else None)

    def _mark_file_end(self, job: Job, records: RecordBatch | None) -> None:
        """Mark the last record of a file whose reading this commit completes with the file's
        count of valid records (`file_rows`), so a sink writing one output per input file (the
        outbox) knows it has all of them. A file whose completing commit holds none of its records
        (a big CSV ending in rejected or blank lines) cannot be marked: said once, as its outbox
        file will be missing."""
        p = job.progress
        if p is None or not p.complete or p.file_error is not None:
            return
        if records is not None and len(records):
            records.file_rows[-1] = p.rows_ok
        elif p.rows_ok and self.config.options.get("outbox") is not None:
            log.warning(
                "%s: its last lines held no valid row, so the outbox cannot tell it is complete: no outbox file for it",
                safe_name(p.name),
            )

    def _reject_file(self, job: Job, reason: str) -> Step:
        """Mark the file done with a file-level error (rows committed before stay committed)."""
        assert job.progress is not None
        job.progress = replace(job.progress, complete=True, file_error=reason)
        self._commit([job.progress], None, {})
        return Step(None, [], self._finish(job))

    def _finish(self, job: Job, fsync: bool = True) -> FileOutcome:
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
        target, shortened = reports.free_name(target_dir, p.name)
        note = None
        if shortened:
            if not bad:  # archive/ keeps no report: the original name would be lost there
                target_dir = self.config.quarantine
                target_dir.mkdir(parents=True, exist_ok=True)
                target, _ = reports.free_name(target_dir, p.name)
            note = (
                f"name too long to keep next to its report ({len(os.fsencode(p.name))} bytes; the file system "
                f"allows {reports.name_max_bytes(target_dir)} per name): stored as {target.name}"
            )
        destination: Path | None = target
        report = target.with_name(target.name + reports.REPORT_SUFFIX) if bad or note else None
        try:
            if report is not None:
                write_atomically(report, reports.report_text(p, errors, note, target.name).encode())
            try:
                reports.move(job.path, target)
            except BaseException:
                if report is not None:
                    report.unlink(missing_ok=True)
                raise
            _move_companions(job, target_dir)
            if fsync:
                fsync_directory(target_dir)
                fsync_directory(job.path.parent)
        except FileNotFoundError:
            log.warning("%s disappeared from the inbox before it could be moved", safe_name(p.name))
            destination = None
        self.forget.add(p.name)
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

    def _continue_if_grown(self, job: Job, moved: Path, report: Path | None) -> Path | None:
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
        if p.file_error is not None or job.companions:
            return None  # rejected as a whole, or a unit of several files: nothing more is taken from it
        try:
            size = moved.stat().st_size
        except OSError:
            return None
        if size <= job.size:
            return None
        stem, suffix = os.path.splitext(p.name)
        inbox = job.path.parent
        again, _ = reports.free_name(inbox, f"{stem}.tail-{job.size}{suffix}")
        try:
            line = reports.count_lines(moved, job.size)
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

    def quarantine_unread(self, path: Path, reason: str) -> FileOutcome | None:
        """Move `path` to quarantine/ unread, with a report giving `reason`; None when it is gone."""
        started = time.perf_counter()
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        progress = FileProgress(path.name, st.st_size, st.st_mtime_ns, 0, 1, 0, 0, True, reason)
        job = Job(path, st.st_size, st.st_mtime_ns, started, progress)
        job.complete_at = st.st_size
        return self._finish(job)


def _read_fresh(jobs: Sequence[Job]) -> list[ParsedChunk | Exception | object | None]:
    """What reading each of `jobs` whole gives: files of a source that reads many at once are read
    together, the others are left `_UNREAD` (read on their own)."""
    out: list[ParsedChunk | Exception | object | None] = [_UNREAD] * len(jobs)
    by_source: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_source.setdefault(id(job.source), []).append(i)
    for members in by_source.values():
        source = jobs[members[0]].source
        if not isinstance(source, BatchReading):
            continue
        read = source.read_many([jobs[i].path for i in members], [jobs[i].complete_at for i in members])
        for i, result in zip(members, read, strict=True):
            out[i] = result
    return out


def _move_companions(job: Job, target_dir: Path) -> None:
    """Move the other files of `job`'s unit next to it (each under a free name; one gone is skipped)."""
    for companion in job.companions:
        try:
            reports.move(companion, reports.free_name(target_dir, companion.name)[0])
        except FileNotFoundError:
            log.warning("%s disappeared from the inbox before it could be moved", safe_name(companion.name))


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
