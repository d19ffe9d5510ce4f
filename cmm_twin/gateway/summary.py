"""The gateway's summary line: every `--log-summary-s` (60 s by default) one INFO line with what
happened since the last one and where each sink stands, e.g.

    last 60 s: 12 files (1 quarantined), 36 rows, 2 rejected; mes: connected, delivered 36, buffer 0; ...

It reads the figures the gateway already keeps (GatewayStatus, the quarantine counter of its
metrics) and remembers only the last line's totals. While it runs, the one line per inbox file
(logged with `extra=PER_FILE`) is shown at INFO for the first `FILE_LINES_PER_INTERVAL` files of
an interval and at DEBUG after that; the summary says how many were folded so. A line is logged
every interval even when nothing arrived, so a missing line means a stopped or hung gateway; the
task wakes once per interval and not otherwise (docs/logging.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from cmm_twin.gateway.metrics import GatewayMetrics
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.gateway.waits import wait_or_stop
from cmm_twin.logs import safe_name

log = logging.getLogger(__name__)

FILE_LINES_PER_INTERVAL = 10
"""Per-file lines shown at INFO per summary interval; the rest go to DEBUG."""
PER_FILE_LOGGER = "cmm_twin.gateway.ingest.pipeline"
"""The logger of the per-file line (the filter of a logger sees only its own records)."""


class FileLineFold(logging.Filter):
    """Lets through the first `budget` per-file records of an interval; later ones become DEBUG
    records (dropped unless DEBUG is on) and are counted."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget = budget
        self.shown = 0
        self.folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "per_file", False) or record.levelno > logging.INFO:
            return True
        if self.shown < self.budget:
            self.shown += 1
            return True
        self.folded += 1
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    def take(self) -> int:
        """Records folded since the last call; starts a new interval."""
        folded, self.folded, self.shown = self.folded, 0, 0
        return folded


@dataclass(frozen=True)
class Totals:
    """The gateway's running totals at one instant (the summary logs the difference of two)."""

    files: int
    quarantined: int
    rows: int
    rejected: int
    delivered: dict[str, int]

    @classmethod
    def of(cls, status: GatewayStatus, metrics: GatewayMetrics) -> Totals:
        """Read from the gateway's status and its metrics."""
        sample = metrics.registry.get_sample_value("cmm_files_processed_total", {"destination": "quarantine"})
        return cls(
            files=status.files_processed,
            quarantined=int(sample or 0),
            rows=status.rows_in,
            rejected=status.rows_rejected,
            delivered={name: sink.rows_out for name, sink in status.sinks.items()},
        )


def summary_line(status: GatewayStatus, before: Totals, now: Totals, elapsed_s: float, folded: int = 0) -> str:
    """The summary line of the interval from `before` to `now`."""
    files = now.files - before.files
    quarantined = now.quarantined - before.quarantined
    parts = [f"last {elapsed_s:.0f} s: {files} files" + (f" ({quarantined} quarantined)" if quarantined else "")]
    parts.append(f", {now.rows - before.rows} rows, {now.rejected - before.rejected} rejected")
    if folded:
        parts.append(f", {folded} per-file lines at DEBUG")
    if status.intake_paused:
        parts.append("; intake paused: spool full")
    if status.disk_full:
        parts.append("; intake paused: disk full")
    for name, sink in status.sinks.items():
        delivered = now.delivered.get(name, 0) - before.delivered.get(name, 0)
        text = f"; {safe_name(name)}: {sink.state}, delivered {delivered}"
        if sink.durable:
            text += f", buffer {sink.buffer_depth}"
            if sink.buffer_depth and sink.oldest_age_s:
                text += f" (oldest {sink.oldest_age_s:.0f} s)"
        parts.append(text)
    if not status.sinks:
        parts.append("; no sinks")
    return "".join(parts)


class Summary:
    """The summary task of one gateway (`run` in its TaskGroup)."""

    def __init__(self, status: GatewayStatus, metrics: GatewayMetrics, interval_s: float) -> None:
        """`interval_s` 0 (or less): no summary, and every per-file line stays at INFO."""
        self.status = status
        self.metrics = metrics
        self.interval_s = interval_s
        self.fold = FileLineFold(FILE_LINES_PER_INTERVAL)

    async def run(self, stop: asyncio.Event) -> None:
        """Log a line every interval until `stop`; then one more for the last, partial interval
        when anything happened in it."""
        if self.interval_s <= 0:
            return
        target = logging.getLogger(PER_FILE_LOGGER)
        target.addFilter(self.fold)
        try:
            before, since = Totals.of(self.status, self.metrics), time.monotonic()
            due = since + self.interval_s
            while not stop.is_set():
                await wait_or_stop(stop, due - time.monotonic())
                if stop.is_set():
                    break
                before, since = self._log(before, since, always=True)
                # The next line one interval later; after a stall, from now (never a burst of lines).
                due = max(due + self.interval_s, time.monotonic() + self.interval_s / 2)
            self._log(before, since, always=False)
        finally:
            target.removeFilter(self.fold)

    def _log(self, before: Totals, since: float, *, always: bool) -> tuple[Totals, float]:
        now, now_s = Totals.of(self.status, self.metrics), time.monotonic()
        folded = self.fold.take()
        if always or folded or now != before:
            log.info("%s", summary_line(self.status, before, now, now_s - since, folded))
        return now, now_s
