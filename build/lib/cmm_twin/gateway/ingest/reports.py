"""Where a finished inbox file goes: free names in archive/ and quarantine/ (shortened when the
file system's name limit is near), the quarantine report, and the move itself."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cmm_twin.gateway.state import FileProgress, StoredRowError, errors_report

REPORT_SUFFIX = ".errors.json"
_REPORT_NAME_EXTRA_BYTES = len(".") + len(REPORT_SUFFIX) + len(".tmp")
"""What a moved file's name grows by in the longest name written next to it: the temporary
name of its report (`write_atomically`)."""
DEFAULT_NAME_MAX_BYTES = 255


def name_max_bytes(directory: Path) -> int:
    """The longest file name `directory`'s file system allows, in bytes."""
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX_BYTES


def free_name(directory: Path, name: str) -> tuple[Path, bool]:
    """A free name for `name` in `directory` (nothing there under it nor under its report's
    name): `name`, else `stem.N.csv`; each shortened to a unique name when it, its report or
    the report's temporary name would exceed the file system's name limit. True when shortened."""
    room = name_max_bytes(directory) - _REPORT_NAME_EXTRA_BYTES
    stem, suffix = os.path.splitext(name)
    n = 0
    while True:
        candidate = name if n == 0 else f"{stem}.{n}{suffix}"
        shortened = len(os.fsencode(candidate)) > room
        if shortened:
            candidate = shortened_name(candidate, room)
        target = directory / candidate
        if not target.exists() and not target.with_name(target.name + REPORT_SUFFIX).exists():
            return target, shortened
        n += 1


def shortened_name(name: str, room_bytes: int) -> str:
    """`name` cut to at most `room_bytes` bytes: the start of its stem, `~`, 12 hex digits of a
    hash of the whole name (unique), and its suffix (e.g. `.csv`)."""
    stem, suffix = os.path.splitext(name)
    if len(os.fsencode(suffix)) > 16:
        suffix = ""
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    keep = max(room_bytes - len(tag) - len(os.fsencode(suffix)), 0)
    start = os.fsencode(stem)[:keep].decode("utf-8", errors="ignore")  # never half a character
    return start + tag + suffix


def report_text(progress: FileProgress, errors: list[StoredRowError], note: str | None, stored_as: str) -> str:
    """The report of a quarantined file; with `note` it also says under which name it is stored."""
    text = errors_report(progress.name, progress, errors, progress.file_error)
    if note is None:
        return text
    report = json.loads(text)
    report["stored_as"] = stored_as
    report["note"] = note
    return json.dumps(report, indent=2)


def move(source: Path, target: Path) -> None:
    """Move an inbox file out (a seam for tests that change a file at this moment)."""
    os.replace(source, target)


def count_lines(path: Path, offset: int) -> int:
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
