"""`PageFeed`: the live sink behind the page. It keeps, in memory and bounded, what the page shows.

- a ring of the newest `capacity` records, numbered with an increasing `id` (1, 2, ... since
  start; records the ring dropped keep their numbers, so a reader can tell it missed some). It
  holds the batches as they came (columns); a record becomes the dict the page draws
  (`RECORD_FIELDS`) only when a reader asks for it, so a burst of a million rows costs the
  feed nearly nothing while no page is open;
- verdict counts since start per machine (every record counts, also those the ring dropped):
  `write` counts what it takes and `superseded` what the LiveRunner drops in a burst, so the
  counts stay exact;
- the newest tolerance, limits, nominal and unit per feature;
- a wall-clock history of the buffer depth, the MES and historian states and each durable sink's
  own depth and state (one sample a second, the last ten minutes), fed by the gateway's health
  source (`write_health`).

It is fed by a LiveRunner like the OPC UA sink (non-durable: it never holds up a file or the
spool). `write` does a bounded amount of work without awaiting anything, so it never blocks the
pipeline; readers (the SSE stream) only copy from it.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web
from numpy.typing import NDArray

from cmm_twin.gateway.health import GatewayHealth
from cmm_twin.gateway.sinks.base import Delivered, Sink, WriteOutcome
from cmm_twin.gateway.sinks.page.rejects import RejectsReader
from cmm_twin.gateway.status import GatewayStatus
from cmm_twin.physics.thermal import VERDICT_NAMES
from cmm_twin.records import RecordBatch

if TYPE_CHECKING:
    from cmm_twin.gateway.sinks.page.auth import HttpAuth

PAGE_SINK_NAME = "page"
RING_CAPACITY = 3000
HEALTH_SAMPLES = 600
"""Ten minutes of buffer-depth samples at one a second."""
HEALTH_SAMPLE_S = 1.0
QUEUE_BATCHES = 4
"""Batches queued for the page's runner: it takes them at once, so this only rides out a commit
group of many small files published together; past it the queue coalesces to the newest record
per characteristic (its verdict counts still count the others, through `superseded`). Bounded
small, as a 1,000-row batch is a few hundred kB."""

_FLOATS = (
    "nominal_mm",
    "tolerance_mm",
    "lower_tol_mm",
    "upper_tol_mm",
    "measured_mm",
    "compensated_mm",
    "part_temp_c",
    "air_temp_c",
    "deviation_um",
    "uncertainty_um",
)
RECORD_FIELDS: tuple[str, ...] = ("id", "time", "t", "machine_id", "part_id", "feature", "unit", *_FLOATS, "verdict")
"""Keys of a page record: `time` is the measurement time (ISO 8601 UTC), `t` the same in Unix
milliseconds; NaN temperatures, tolerances and limits are sent as null (orjson writes NaN as
null). `unit` is `deg` for an angle (its `_mm` values are degrees, its `_um` ones millidegrees)."""


_KEPT_COLUMNS = ("timestamp", "timestamp_ns", "machine_id", "part_id", "feature", "unit", "verdict", *_FLOATS)


class PageFeed(Sink):
    """The live page's sink; see the module docstring."""

    name = PAGE_SINK_NAME
    durable = False
    columns = None
    health_interval_s = HEALTH_SAMPLE_S
    live_queue_batches = QUEUE_BATCHES

    def __init__(self, quarantine: Path, capacity: int = RING_CAPACITY, auth: HttpAuth | None = None) -> None:
        self.capacity = capacity
        self.auth = auth
        """The token the whole HTTP side requires (installed by `add_routes`), None: none."""
        self.status: GatewayStatus | None = None
        """The gateway's live figures (set by `add_routes`): each durable sink's buffer depth."""
        self._chunks: deque[tuple[int, RecordBatch]] = deque()
        """(id of the first record, records) per batch taken, oldest first."""
        self._held = 0
        """Records in `_chunks` (at least the ring's length: whole chunks are dropped)."""
        self.last_id = 0
        """The `id` of the newest record (0: none yet)."""
        self.boot = secrets.token_hex(4)
        """Tells this process's record ids from another's (part of the SSE event id)."""
        self.counts: dict[str, dict[str, int]] = {}
        """{machine_id: {"PASS": n, "FAIL": n, "UNCERTAIN": n, "UNDEFINED": n}} since start."""
        self.tolerances: dict[str, dict[str, float | str]] = {}
        """{feature: {"tolerance_mm": x, "lower_tol_mm": l, "upper_tol_mm": u, "nominal_mm": y,
        "unit": "mm"}} as last seen (NaN: no such tolerance or limit)."""
        self.health: deque[dict[str, Any]] = deque(maxlen=HEALTH_SAMPLES)
        self.rejects = RejectsReader(quarantine)

    async def open(self) -> None:
        """Nothing to connect."""

    async def write(self, batch: RecordBatch, prepared: object = None) -> WriteOutcome:
        """Count `batch` and take it into the ring (no await: never waits)."""
        self.count(batch)
        self.add(batch)
        return Delivered()

    def superseded(self, batch: RecordBatch) -> None:
        """Count records the runner coalesced away in a burst (the ring shows newer ones anyway)."""
        self.count(batch)

    async def write_health(self, samples: Sequence[GatewayHealth]) -> WriteOutcome:
        """Keep the newest sample in the buffer-depth history."""
        if samples:
            self.health.append(health_sample(samples[-1], self.status))
        return Delivered()

    def add_routes(self, app: web.Application) -> None:
        """Serve the page, its files, the SSE stream and the rejects list."""
        from cmm_twin.gateway.sinks.page.stream import add_page_routes  # noqa: PLC0415 (stream imports this module)

        add_page_routes(app, self)

    async def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------------ writing

    def add(self, batch: RecordBatch) -> None:
        """Keep the newest `capacity` records of `batch` in the ring (`count` counts them)."""
        n = len(batch)
        if not n:
            return
        skip = max(0, n - self.capacity)
        tail = batch.take(slice(skip, n)) if skip else batch
        # Only the columns the page draws are kept (ids, materials and the rest would be dead weight).
        tail = RecordBatch.with_blanks(len(tail), {name: getattr(tail, name) for name in _KEPT_COLUMNS})
        self._chunks.append((self.last_id + skip + 1, tail))
        self.last_id += n
        self._held += len(tail)
        while self._held - len(self._chunks[0][1]) >= self.capacity:  # the rest still fills the ring
            self._held -= len(self._chunks.popleft()[1])
        features, last = np.unique(np.asarray(tail.feature[::-1]), return_index=True)
        for feature, index in zip(features.tolist(), (len(tail) - 1 - last).tolist(), strict=True):
            self.tolerances[feature] = {
                "tolerance_mm": float(tail.tolerance_mm[index]),
                "lower_tol_mm": float(tail.lower_tol_mm[index]),
                "upper_tol_mm": float(tail.upper_tol_mm[index]),
                "nominal_mm": float(tail.nominal_mm[index]),
                "unit": tail.unit[index],
            }

    @property
    def ring(self) -> list[dict[str, Any]]:
        """The ring's records as page dicts, oldest first."""
        return self.records_after(0)[0]

    def count(self, batch: RecordBatch) -> None:
        """Add the verdicts of `batch` to the counts per machine (vectorised; called on publish)."""
        if not len(batch):
            return
        machines, inverse = np.unique(np.asarray(batch.machine_id), return_inverse=True)
        kinds = len(VERDICT_NAMES)
        table = np.bincount(inverse * kinds + batch.verdict, minlength=len(machines) * kinds).reshape(-1, kinds)
        names = VERDICT_NAMES.tolist()
        for machine, row in zip(machines.tolist(), table.tolist(), strict=True):
            counts = self.counts.setdefault(machine, dict.fromkeys(names, 0))
            for name, count in zip(names, row, strict=True):
                counts[name] += count

    # ------------------------------------------------------------------ reading

    @property
    def first_id(self) -> int:
        """The `id` of the oldest record in the ring (last_id + 1 when the ring is empty)."""
        return self.last_id - min(self._held, self.capacity) + 1

    def records_after(self, after_id: int, machine_id: str | None = None) -> tuple[list[dict[str, Any]], bool]:
        """The ring's records with `id > after_id` (of one machine if given), oldest first, and
        whether records after `after_id` were already dropped from the ring (a gap)."""
        first = self.first_id
        gap = after_id + 1 < first
        start_id = max(after_id + 1, first)
        out: list[dict[str, Any]] = []
        for chunk_first, chunk in self._chunks:
            chunk_last = chunk_first + len(chunk) - 1
            if chunk_last < start_id:
                continue
            offset = max(0, start_id - chunk_first)
            ids = np.arange(chunk_first + offset, chunk_last + 1)
            part = chunk.take(slice(offset, None)) if offset else chunk
            if machine_id is not None:
                keep = np.flatnonzero(np.asarray(part.machine_id) == machine_id)
                part, ids = part.take(keep), ids[keep]
            out += _page_records(part, ids)
        return out, gap

    def counts_copy(self) -> dict[str, dict[str, int]]:
        """The verdict counts per machine (a copy)."""
        return {machine: dict(counts) for machine, counts in self.counts.items()}


def _page_records(batch: RecordBatch, ids: NDArray[np.int64]) -> list[dict[str, Any]]:
    """`batch` as page dicts (`RECORD_FIELDS`) numbered `ids`."""
    if not len(batch):
        return []
    columns: list[Iterable[Any]] = [
        ids.tolist(),
        batch.timestamp,
        (batch.timestamp_ns // 1_000_000).tolist(),
        batch.machine_id,
        batch.part_id,
        batch.feature,
        batch.unit,
        *(getattr(batch, name).tolist() for name in _FLOATS),
        VERDICT_NAMES[batch.verdict].tolist(),
    ]
    return [dict(zip(RECORD_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]


def health_sample(sample: GatewayHealth, status: GatewayStatus | None = None) -> dict[str, Any]:
    """`{"t": epoch ms, "buffer_depth": n, "mes": state|null, "historian": state|null, "sinks":
    {name: {"depth": n, "state": state}}}`, `sinks` holding each durable sink (one with a buffer)."""
    durable = {} if status is None else {name: s for name, s in status.sinks.items() if s.durable}
    return {
        "t": sample.timestamp_ns // 1_000_000,
        "buffer_depth": sample.buffer_depth,
        "mes": sample.state_of("mes"),
        "historian": sample.state_of("historian"),
        "sinks": {name: {"depth": s.buffer_depth, "state": s.state} for name, s in durable.items()},
    }
