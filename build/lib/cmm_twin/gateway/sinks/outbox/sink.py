"""The outbox sink: compensated result files for quality software, one set per input file.

Durable, on the runner like the MES: a batch is `Delivered` once its records are either staged
(`staging.py`: their file is not complete yet) or written out with the rest of their file. Every
output is written atomically (temporary dot-name, fsync, rename, fsync of the directory), under
the same name with the same content each time (idempotent: replays rewrite identical files). A
target directory that is missing, read-only or full (a network share that is down) makes the
write `Retry`: the runner keeps the records in the spool and tries again with backoff, so nothing
is lost and the files appear once the share is back.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

from cmm_twin.durable_io import write_atomically
from cmm_twin.gateway.sinks.base import Delivered, Retry, Sink, SinkStartError, WriteOutcome
from cmm_twin.gateway.sinks.outbox.outputs import outputs
from cmm_twin.gateway.sinks.outbox.settings import OutboxSettings
from cmm_twin.gateway.sinks.outbox.staging import Staging
from cmm_twin.gateway.sources.rows import IngestSettings
from cmm_twin.logs import safe_name
from cmm_twin.records import RecordBatch
from cmm_twin.sqlite_worker import SqliteWorker

log = logging.getLogger(__name__)


class OutboxSink(Sink):
    """Writes `<stem>.qif` (and `<stem>.dfq` for Q-DAS) per input file into the outbox directory."""

    name = "outbox"
    durable = True

    def __init__(
        self,
        settings: OutboxSettings,
        staging_path: Path,
        originals: tuple[Path, ...],
        ingest: IngestSettings,
        coverage_factor: float,
    ) -> None:
        self.settings = settings
        self.staging_path = staging_path
        self.originals = originals
        """Where an input file may be when its outputs are written (inbox, archive, quarantine)."""
        self.ingest = ingest
        self.coverage_factor = coverage_factor
        self._staging: Staging | None = None
        self._worker: SqliteWorker | None = None
        self.files_written = 0

    async def open(self) -> None:
        """Open the staging database (the target directory is checked at each write)."""
        worker = SqliteWorker("outbox", self._close_staging)
        try:
            self._staging = await worker.call(Staging, self.staging_path)
        except Exception as exc:
            await worker.aclose()
            raise SinkStartError(f"outbox staging database {self.staging_path}: {exc}") from exc
        self._worker = worker

    def _close_staging(self) -> None:
        if self._staging is not None:
            self._staging.close()
            self._staging = None

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Stage or write out the batch's records (see the module docstring)."""
        assert self._worker is not None
        return await self._worker.call(self._write, batch)

    def _write(self, batch: RecordBatch) -> WriteOutcome:
        staging = self._staging
        assert staging is not None
        records = batch.to_dicts()
        by_file: dict[str, list[dict[str, Any]]] = {}
        complete: dict[str, tuple[str, int]] = {}
        for record, count in zip(records, batch.file_rows.tolist(), strict=True):
            by_file.setdefault(record["source_file"], []).append(record)
            if count:
                complete[record["source_file"]] = (record["measurement_id"], count)
        open_records = [r for name, rs in by_file.items() if name not in complete for r in rs]
        if open_records:
            staging.stage(open_records)
        for name, (last_id, count) in complete.items():
            file_records = _distinct([*staging.staged(name), *by_file[name]])
            if len(file_records) < count:
                if staging.already_written(name, last_id):  # the tail of a file written before, replayed
                    staging.finish(name, last_id)
                    continue
                log.warning(
                    "outbox: %s has %d records here of the %d it had: writing what is here",
                    safe_name(name),
                    len(file_records),
                    count,
                )
            try:
                files = outputs(file_records, self.settings.formats, self.coverage_factor, self.ingest, self.originals)
                self._store(files)
            except OSError as exc:
                staging.stage(by_file[name])  # the batch is acknowledged only once written; keep it staged too
                reason = _why(self.settings.directory, exc)
                return Retry(f"outbox: {safe_name(name)} cannot be written ({reason})")
            staging.finish(name, last_id)
            self.files_written += 1
            log.debug("outbox: wrote %s for %s", ", ".join(f.name for f in files), safe_name(name))
        return Delivered()

    def _store(self, files: list[Any]) -> None:
        directory = self.settings.directory
        if not directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(directory))
        for output in files:
            write_atomically(directory / output.name, output.data)

    async def close(self) -> None:
        """Close the staging database."""
        if self._worker is not None:
            await self._worker.aclose()
            self._worker = None

    def describe(self) -> str | None:
        """The start-up line's part for the outbox."""
        return f"outbox {self.settings.directory} ({', '.join(self.settings.formats)})"


def _distinct(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`records` without repeats of a measurement id (a record staged and then replayed), in order."""
    seen: set[str] = set()
    out = []
    for record in records:
        if record["measurement_id"] not in seen:
            seen.add(record["measurement_id"])
            out.append(record)
    return out


def _why(directory: Path, exc: OSError) -> str:
    """What a failed outbox write means, for the operator."""
    if exc.errno == errno.ENOENT:
        return f"{directory} does not exist (a share not mounted?)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{directory} is not writable"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left in {directory}"
    return str(exc)
