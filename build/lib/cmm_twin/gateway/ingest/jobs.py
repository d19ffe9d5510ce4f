"""What the pipeline's two sides (the event loop and the state thread) hand each other: a file
being read (`Job`), one step of it (`Step`) and what became of it (`FileOutcome`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cmm_twin.gateway.sources import ChunkedReading, ParsedChunk, Source
from cmm_twin.gateway.sources.base import collector_paused
from cmm_twin.gateway.state import FileProgress, StoredRowError
from cmm_twin.records import RecordBatch


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
class Job:
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
    source: Source | None = None
    """The source (format) that reads the file (None: moved unread)."""
    companions: tuple[Path, ...] = ()
    """The other files of its unit (`Source.companions`), moved out of the inbox with it."""


@dataclass(frozen=True)
class Step:
    """One hop of a file through the state thread: the records it committed, their row errors,
    and what became of the file when it is finished."""

    records: RecordBatch | None
    errors: list[StoredRowError]
    outcome: FileOutcome | None
    retry_in_s: float | None = None
    """Without an outcome: look at the file again in this many seconds (None: read on now)."""


def read_unit(source: Source | None, path: Path, offset: int, line: int, complete_at: int) -> Iterator[ParsedChunk]:
    """The chunks of `path` after byte `offset` (line `line`): chunk by chunk when the source
    offers it, else the whole unit at once (once it is complete; nothing when it waits for more)."""
    assert source is not None
    if isinstance(source, ChunkedReading):
        return source.read_chunks(path, offset, line, complete_at)
    return _whole(source, path, offset, complete_at)


def _whole(source: Source, path: Path, offset: int, complete_at: int) -> Iterator[ParsedChunk]:
    size = path.stat().st_size
    if offset or source.waits_for_more(path, 0, size, complete_at == size):
        return
    with collector_paused():
        chunk = source.read(path, complete_at)
    if chunk is not None:
        yield chunk
