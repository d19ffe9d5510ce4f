"""The rejected files for the live page: the newest `<name>.errors.json` reports in quarantine/.

A report (written atomically by the pipeline, see `state.errors_report`) is parsed once per
(name, mtime, size) and cached; the directory is listed again only when its mtime changes (a file
was quarantined or removed) or every `RESCAN_S` seconds, and never more than once per
`MIN_INTERVAL_S`, however many page clients ask. The listing and parsing run on a worker thread.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUFFIX = ".errors.json"
NEWEST = 20
"""Reports listed, newest first by modification time."""
REASONS = 5
"""Row errors quoted per report."""
MIN_INTERVAL_S = 1.0
RESCAN_S = 10.0


def _iso_ms(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_report(name: str, mtime_ns: int, text: str, reasons: int = REASONS) -> dict[str, Any]:
    """One entry of the rejects list from the report `name` (`<file>.errors.json`) and its text.

    Fields: `file` (the quarantined file's name), `time` (ISO, the report's mtime) and `t` (epoch
    ms), `rows_ok`, `rows_rejected`, `file_error` (null unless the file was rejected as a whole),
    `errors` (the first `reasons` row errors: `line`, `column` (null for the row as a whole),
    `reason`) and `errors_more` (rejected rows not quoted)."""
    entry: dict[str, Any] = {
        "file": name[: -len(SUFFIX)],
        "time": _iso_ms(mtime_ns),
        "t": mtime_ns // 1_000_000,
        "rows_ok": 0,
        "rows_rejected": 0,
        "file_error": None,
        "errors": [],
        "errors_more": 0,
    }
    try:
        report = json.loads(text)
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
        errors = report.get("errors") or []
        if not isinstance(errors, list):
            raise ValueError("'errors' is not a list")
        rows_rejected = int(report.get("rows_rejected") or 0)
        entry["rows_ok"] = int(report.get("rows_ok") or 0)
        entry["rows_rejected"] = rows_rejected
        file_error = report.get("file_error")
        entry["file_error"] = None if file_error is None else str(file_error)
        quoted = [
            {"line": e.get("line"), "column": e.get("column"), "reason": str(e.get("reason", ""))}
            for e in errors[:reasons]
            if isinstance(e, dict)
        ]
        entry["errors"] = quoted
        entry["errors_more"] = max(0, rows_rejected - len(quoted))
    except (ValueError, TypeError) as exc:
        entry["file_error"] = f"report unreadable: {exc}"
    return entry


class RejectsReader:
    """The newest reports of one quarantine directory; see the module docstring."""

    def __init__(self, directory: Path, newest: int = NEWEST, reasons: int = REASONS) -> None:
        self.directory = directory
        self.newest = newest
        self.reasons = reasons
        self.version = 0
        """Incremented whenever the list changes."""
        self._entries: list[dict[str, Any]] = []
        self._cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._dir_mtime_ns: int | None = None
        self._scanned = -float("inf")
        self._listed = -float("inf")
        self._lock = asyncio.Lock()

    async def current(self) -> tuple[int, list[dict[str, Any]]]:
        """(version, entries newest first), refreshed when due (see the module docstring)."""
        async with self._lock:
            now = time.monotonic()
            if now - self._scanned >= MIN_INTERVAL_S:
                try:
                    await asyncio.to_thread(self._refresh, now)
                except Exception:  # the page must never take the gateway down
                    log.exception("reading the quarantine reports failed")
                self._scanned = now
            return self.version, self._entries

    def _refresh(self, now: float) -> None:
        try:
            dir_mtime_ns = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            dir_mtime_ns = None
        if dir_mtime_ns == self._dir_mtime_ns and now - self._listed < RESCAN_S:
            return
        entries = self._scan()
        self._dir_mtime_ns = dir_mtime_ns
        self._listed = now
        if entries != self._entries:
            self._entries = entries
            self.version += 1

    def _scan(self) -> list[dict[str, Any]]:
        found: list[tuple[int, str, int]] = []
        try:
            with os.scandir(self.directory) as listing:
                for item in listing:
                    if item.name.startswith(".") or not item.name.endswith(SUFFIX):
                        continue
                    try:
                        st = item.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime_ns, item.name, st.st_size))
        except FileNotFoundError:
            return []
        entries: list[dict[str, Any]] = []
        cache: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        for mtime_ns, name, size in heapq.nlargest(self.newest, found):
            key = (mtime_ns, size)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == key:
                entry = cached[1]
            else:
                try:
                    text = (self.directory / name).read_text(encoding="utf-8", errors="replace")
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    text = ""
                    log.warning("cannot read quarantine report %s: %s", name, exc)
                entry = parse_report(name, mtime_ns, text, self.reasons)
            cache[name] = (key, entry)
            entries.append(entry)
        self._cache = cache
        return entries
