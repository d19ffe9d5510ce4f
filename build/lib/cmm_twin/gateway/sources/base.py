"""The source (file format) interface: how the gateway takes measurement files of one format.

The inbox and the pipeline know formats only through this interface and the registry
(`cmm_twin.gateway.sources.registry.SOURCES`); a new format is one new module (or package)
with a `Source` subclass, plus one line in the registry. See docs/architecture.md, 'Sources'.

Contract of a source:

- Names it claims: `patterns`, shell patterns matched case-insensitively against a file's
  name (`*.csv`; next `*.dfq`, `*.dfd` + `*.dfx`, `*_chr.txt` + `*_hdr.txt`, `*.qif`). Dot-files
  and temporary files (`*.tmp`, `*.part`, `*~`) are never claimed, whatever the patterns say.
  A name no source claims is left in the inbox, untouched.
- Units: the files that belong together form one unit, named by the file that leads it
  (`leader`: for a `.dfd` + `.dfx` pair, the `.dfd` of the same stem; by default a file leads
  its own unit, alone). `companions` names the other files of the unit a leader needs (none by
  default). The pipeline hands only leaders to the source, once every companion is there and
  ready; the companions leave the inbox with their leader (to archive/ or quarantine/). A unit
  that still lacks a file after `companion_wait_s` (a lone half) is quarantined unread, with
  the reason. `optional_companions` are taken along when present, never waited for.
- Completeness: the inbox hands a file over once it is stable (no writer holds it open, or its
  size and mtime unchanged for the settle time). `waits_for_more` then says whether the bytes
  after those already read are an unfinished unit a writer may still be writing, left for
  later (CSV: a last line without a line end, until the file is stable; Calypso: no last line
  `END`; a whole-document format: anything until the file is stable).
- Reading: `read` turns the bytes of a unit into one `ParsedChunk` (`ValidRows` + `RowError`s;
  None when it holds neither), or raises `FileRejected` (nothing of the unit is taken) or
  OSError. Rows are validated against the `IngestSettings` (ranges, materials) the source is
  made with, and carry the common row model of `cmm_twin.gateway.sources.rows`.
- Optional capabilities, used by the pipeline when a source offers them (`isinstance` against
  the protocols below), otherwise it reads a unit whole with `read`:
  `ChunkedReading.read_chunks` reads a big file in bounded chunks, each with the byte offset
  and line to resume from after a restart (the pipeline commits chunk by chunk);
  `BatchReading.read_many` reads many small files in one pass (the same result, file by file,
  as `read` of each).
"""

from __future__ import annotations

import fnmatch
import gc
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from cmm_twin.gateway.sources.rows import IngestSettings, ParsedChunk

TEMPORARY_SUFFIXES = (".tmp", ".part", "~")
"""Names ending so are a writer's temporary files: never claimed."""


def ends_with_line_end(path: Path, size: int) -> bool:
    """Whether the byte before offset `size` of `path` is a line end."""
    if size <= 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a unit is read: parsing a document makes hundreds
    of thousands of new container objects, and the full collections they trigger, each walking
    them all again, took about half the time of a QIF parse. Reference counting still frees
    everything; the collector runs again afterwards (unless something else had paused it)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def ends_with(path: Path, size: int, end: bytes) -> bool:
    """Whether the first `size` bytes of `path` end with `end` (trailing white space aside,
    unless `end` is white space itself, like a line end)."""
    tail_bytes = min(size, len(end) + 4096)
    with open(path, "rb") as f:
        f.seek(size - tail_bytes)
        tail = f.read(tail_bytes)
    return (tail.rstrip(b" \t\r\n") if end.strip() else tail).endswith(end)


class Source(ABC):
    """One file format of the inbox (see the module docstring for the contract)."""

    name: ClassVar[str]
    """Short name of the format (logs, docs)."""
    patterns: ClassVar[tuple[str, ...]]
    """Shell patterns of the names claimed, matched case-insensitively."""

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings

    @property
    def companion_wait_s(self) -> float:
        """How long a unit may lack a companion before it is quarantined (`[inputs] companion_wait_s`)."""
        return self.settings.inputs.companion_wait_s

    @classmethod
    def claims(cls, name: str) -> bool:
        """Whether files named `name` are of this format."""
        lower = name.lower()
        if lower.startswith(".") or lower.endswith(TEMPORARY_SUFFIXES):
            return False
        return any(fnmatch.fnmatchcase(lower, pattern.lower()) for pattern in cls.patterns)

    @classmethod
    def leader(cls, name: str) -> str:
        """The name of the file that leads the unit of the file `name` (by default `name`)."""
        return name

    @classmethod
    def companions(cls, name: str) -> tuple[str, ...]:
        """Names of the other files the unit led by `name` needs (by default none)."""
        return ()

    @classmethod
    def optional_companions(cls, name: str) -> tuple[str, ...]:
        """Names of files the unit led by `name` takes along when they are there (read with it,
        moved with it) but does not wait for (a Calypso `_hdr.txt`; by default none)."""
        return ()

    document_end: ClassVar[bytes | None] = None
    """For a whole-document format: the bytes its files end with once written in full (after
    trailing white space: a closing tag, a line end). A file that ends so, and that no writer
    holds open, is read at once; one that does not waits until it is stable. None: every file
    waits until it is stable."""

    def waits_for_more(self, path: Path, read_to: int, size: int, stable: bool) -> bool:
        """Whether the bytes of `path` after `read_to` (of `size`) are left for later: an
        unfinished unit a writer may still be writing. `stable`: the file has kept this size for
        the settle time. By default: anything unread until the file is stable, unless the file
        already ends with `document_end`."""
        if stable or read_to >= size:
            return False
        return self.document_end is None or not ends_with(path, size, self.document_end)

    @abstractmethod
    def read(self, path: Path, complete_at: int | None = None) -> ParsedChunk | None:
        """The rows and row errors of the unit `path` leads, read whole (None: neither); the
        chunk's `end_offset` is the size of `path` read, its `end_line` its last line.
        `complete_at`: the size the file was seen stable at (-1: not stable; None: read to its
        end). Raises FileRejected or OSError."""


@runtime_checkable
class ChunkedReading(Protocol):
    """A source that reads big files in resumable chunks."""

    def read_chunks(
        self, path: Path, start_offset: int = 0, start_line: int = 1, complete_at: int | None = None
    ) -> Iterator[ParsedChunk]:
        """Chunks of `path` from `start_offset` (the `end_offset` of the last committed chunk, and
        `start_line` its `end_line`); see `Source.read` for `complete_at` and the errors."""
        ...


@runtime_checkable
class BatchReading(Protocol):
    """A source that reads many small files in one pass."""

    def read_many(
        self, paths: Sequence[Path], complete_at: Sequence[int | None] | None = None
    ) -> list[ParsedChunk | Exception | None]:
        """For each of `paths`, what `Source.read` would give: a ParsedChunk, None, or the
        exception it would raise."""
        ...
