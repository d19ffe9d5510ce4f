"""The chunked, column-wise spool: pages across chunk boundaries, column subsets, dead-letter
look-ups, purging whole chunks, and the migration of a spool written by an earlier version."""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from cmm_twin.gateway.spool import ADDED_COLUMNS
from cmm_twin.gateway.state import SPOOL_CHUNK_ROWS, StateStore
from cmm_twin.records import RecordBatch
from tests.test_opcua_sink import make_batch


def batch(n: int, offset: int = 0) -> RecordBatch:
    base = time.time_ns()
    return make_batch([(f"CMM-0{i % 3 + 1}", base + i * 1000, 100.0 + (offset + i) * 1e-4, "PASS") for i in range(n)])


def same(a: RecordBatch, b: RecordBatch) -> bool:
    for f in fields(RecordBatch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
        elif list(x) != list(y):
            return False
    return True


def as_before_added_columns(records: RecordBatch) -> RecordBatch:
    """`records` as a spool from before ADDED_COLUMNS gives them back: those columns blank, the
    limits those of the symmetric tolerance."""
    kept = {f.name: getattr(records, f.name) for f in fields(RecordBatch) if f.name not in ADDED_COLUMNS}
    tolerance = records.tolerance_mm
    return RecordBatch.with_blanks(len(records), {**kept, "lower_tol_mm": -tolerance, "upper_tol_mm": tolerance})


def test_pages_cross_chunks_in_order_and_respect_the_limit(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.register_sinks(["a"])
    records = batch(2 * SPOOL_CHUNK_ROWS + 500)
    store.commit([], records, {})
    store.commit([], batch(10, 9999), {})
    page = store.read_after(900, 700)
    assert page is not None
    assert page.seqs.tolist() == list(range(901, 1601))
    assert same(page.records, records.take(slice(900, 1600)))
    rest = store.read_after(2495, 100)
    assert rest is not None and rest.seqs.tolist() == list(range(2496, 2511))
    assert store.read_after(2510, 100) is None
    assert store.pending("a") == (2510, int(records.timestamp_ns[0]))


def test_a_column_subset_leaves_the_others_blank(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    records = batch(5)
    store.commit([], records, {})
    page = store.read_after(0, 10, ("timestamp_ns", "machine_id", "measured_mm"))
    assert page is not None
    assert page.records.machine_id == records.machine_id
    assert np.array_equal(page.records.measured_mm, records.measured_mm)
    assert page.records.measurement_id == [""] * 5
    assert all(math.isnan(v) for v in page.records.compensated_mm.tolist())


def test_dead_letters_read_the_full_records_by_seq(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    records = batch(1500)
    store.commit([], records, {})
    found = store.read_seqs([1400, 3, 1001])
    assert same(found, records.take([2, 1000, 1399]))


def test_purge_drops_only_whole_acknowledged_chunks(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.sqlite")
    store.register_sinks(["a", "b"])
    store.commit([], batch(2500), {})
    store.ack("a", 2500)
    store.ack("b", 1500)
    assert store.purge() == 1000, "chunk 1..1000 only: 1001..2000 still holds unacknowledged records"
    assert store.pending("b")[0] == 1000
    page = store.read_after(1500, 5000)
    assert page is not None and page.seqs.tolist() == list(range(1501, 2501))
    store.ack("b", 2500)
    store.purge()
    store.commit([], batch(1), {})
    assert store.read_after(2500, 10) is not None, "numbering continues after the spool emptied"


def test_a_row_spool_of_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    names = [f.name for f in fields(RecordBatch) if f.name not in ADDED_COLUMNS]
    text = {"measurement_id", "timestamp", "machine_id", "part_id", "feature", "material"}
    ints = {"timestamp_ns", "verdict", "flags"}
    db = sqlite3.connect(path)
    columns = ", ".join(f"{n} {'TEXT' if n in text else 'INTEGER' if n in ints else 'REAL'}" for n in names)
    db.executescript(
        f"CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, {columns});"
        "CREATE TABLE cursors (sink TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL);"
    )
    records = batch(30)
    rows = []
    for i in range(30):
        row = []
        for n in names:
            value = getattr(records, n)[i]
            value = value.item() if isinstance(value, np.generic) else value
            row.append(None if isinstance(value, float) and math.isnan(value) else value)
        rows.append(row)
    db.executemany(f"INSERT INTO spool ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", rows)
    db.execute("DELETE FROM spool WHERE seq <= 10")  # acknowledged and purged by the old version
    db.execute("INSERT INTO cursors VALUES ('mes', 12)")
    db.commit()
    db.close()

    store = StateStore(path)
    store.register_sinks(["mes"])
    page = store.read_after(store.acked_seq("mes"), 100)
    assert page is not None
    assert page.seqs.tolist() == list(range(13, 31))
    assert same(page.records, as_before_added_columns(records).take(slice(12, 30)))
    assert store.pending("mes") == (18, int(records.timestamp_ns[12]))
    store.commit([], batch(2), {})
    assert store.read_after(30, 10) is not None
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "spool" not in tables


def test_a_chunk_spool_without_the_added_columns_is_extended(tmp_path: Path) -> None:
    """A state database of the version before the real CMM formats: its spool_chunks table lacks
    the added record columns. They are added at start; its chunks read with them blank (limits
    from the symmetric tolerance), new chunks with them stored."""
    path = tmp_path / "gateway.sqlite"
    store = StateStore(path)
    records = batch(30)
    store.commit([], records, {})
    store.close()
    db = sqlite3.connect(path)
    old = [f.name for f in fields(RecordBatch) if f.name not in ADDED_COLUMNS]
    db.executescript(
        f"CREATE TABLE old AS SELECT last_seq, first_seq, {', '.join(old)} FROM spool_chunks;"
        "DROP TABLE spool_chunks; ALTER TABLE old RENAME TO spool_chunks;"
    )
    db.close()
    store = StateStore(path)
    page = store.read_after(0, 100)
    assert page is not None and page.seqs.tolist() == list(range(1, 31))
    assert same(page.records, as_before_added_columns(records))
    assert page.records.unit == ["mm"] * 30 and page.records.source_format == ["csv"] * 30
    store.commit([], records, {})
    again = store.read_after(30, 100)
    assert again is not None and same(again.records, records)
