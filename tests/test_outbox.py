"""The outbox through a real gateway: compensated QIF and DFQ files for every input file, read
back by the gateway's own sources to the same values; buffered while the target directory is
missing, then written; the same content after a replay; a file's records spread over batches."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmm_twin.gateway.ingest.records import to_records
from cmm_twin.gateway.sinks.base import Delivered
from cmm_twin.gateway.sinks.outbox.settings import OutboxSettings
from cmm_twin.gateway.sinks.outbox.sink import OutboxSink
from cmm_twin.gateway.sources.csv import CsvSource
from cmm_twin.gateway.sources.inputs import InputSettings
from cmm_twin.gateway.sources.qdas import QdasSource
from cmm_twin.gateway.sources.qif import QifSource
from cmm_twin.gateway.sources.rows import IngestSettings
from cmm_twin.physics.thermal import PhysicsConfig
from cmm_twin.records import RecordBatch
from tests.gateway_harness import (
    HEADER,
    RecordingSink,
    csv_row,
    drop_file,
    gateway_config,
    running_gateway,
    wait_for,
)

FIXTURES = Path(__file__).parent / "fixtures"
BERLIN = InputSettings(timezone="Europe/Berlin")
# The outbox's files say "already at 20 degC": read back, they must not be corrected again.
READ_BACK = IngestSettings(inputs=InputSettings(timezone="Europe/Berlin", already_compensated=True))


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []


def _by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["measurement_id"]: r for r in records}


async def test_a_dfq_comes_out_as_compensated_qif_and_dfq(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    config = gateway_config(tmp_path / "data", inputs=BERLIN, outbox=outbox)
    recorder = RecordingSink()
    async with running_gateway(config, recorder):
        drop_file(config.inbox, "housing.dfq", (FIXTURES / "qdas" / "housing.dfq").read_bytes())
        await wait_for(lambda: _names(outbox) == ["housing.dfq", "housing.qif"], what="the outbox files")
    delivered = _by_id(recorder.records)
    assert delivered and {r["source_format"] for r in delivered.values()} == {"qdas"}

    dfq = QdasSource(READ_BACK).read(outbox / "housing.dfq")
    assert dfq is not None
    original = QdasSource(IngestSettings(inputs=BERLIN)).read(FIXTURES / "qdas" / "housing.dfq")
    assert original is not None
    assert dfq.rows.measurement_id == original.rows.measurement_id, "only the values changed"
    assert [(e.line, e.column) for e in dfq.errors] == [(e.line, e.column) for e in original.errors]
    for i, mid in enumerate(dfq.rows.measurement_id):
        record = delivered[mid]
        # written with the characteristic's decimals (or one more than the original had)
        assert dfq.rows.measured_mm[i] == pytest.approx(record["compensated_mm"], abs=6e-4)
    differing = [
        (a, b)
        for a, b in zip(
            (FIXTURES / "qdas" / "housing.dfq").read_bytes().split(b"\r\n"),
            (outbox / "housing.dfq").read_bytes().split(b"\r\n"),
            strict=True,
        )
        if a != b
    ]
    assert differing and all(a.startswith(b"K0001") or b"\x0f" in a for a, _ in differing), "values only"

    qif = QifSource(READ_BACK).read(outbox / "housing.qif")
    assert qif is not None
    # a value the gateway rejected is a measurement without value (NOT_ANALYZED) in the QIF
    assert qif.errors and all("status NOT_ANALYZED" in e.reason for e in qif.errors)
    by_key = {(r["part_id"], r["feature"]): r for r in delivered.values()}
    assert len(qif.rows) == len(by_key)
    for i in range(len(qif.rows)):
        record = by_key[(qif.rows.part_id[i], qif.rows.feature[i])]
        assert qif.rows.measured_mm[i] == pytest.approx(record["compensated_mm"], abs=1e-5)
        assert qif.rows.unit[i] == record["unit"]
        if "temperature_assumed" not in record["flags"]:
            assert qif.rows.part_temp_c[i] == pytest.approx(record["part_temp_c"])


async def test_a_missing_target_buffers_and_a_replay_rewrites_the_same_content(tmp_path: Path) -> None:
    """The outbox directory (a network share) is missing: records stay spooled, nothing is
    written; once it exists the files appear. A restart replays nothing new; dropping the same
    file again writes the same bytes. A file spread over many small batches is written once, whole."""
    outbox = tmp_path / "share"
    rows = "".join(
        csv_row(f"P{i // 7}", feature=f"f{i % 7}", measured_mm=f"{100.0118 + i * 1e-4:.4f}") for i in range(70)
    )

    config = gateway_config(tmp_path / "data", inputs=BERLIN, outbox=outbox, sink_batch_size=9)
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "run.csv", HEADER + rows)
        await wait_for(lambda: _names(config.archive) == ["run.csv"], what="the archive")
        await wait_for(lambda: gateway.status.sinks["outbox"].buffer_depth == 70, what="the outbox to buffer")
        assert not outbox.exists()
        outbox.mkdir()
        await wait_for(lambda: _names(outbox) == ["run.qif"], what="the outbox file once the share is back")
        await wait_for(lambda: gateway.status.buffer_depth == 0, what="the spool to drain")
    first = (outbox / "run.qif").read_bytes()
    qif = QifSource(READ_BACK).read(outbox / "run.qif")
    assert qif is not None and len(qif.rows) == 70, "every record of the file, from 8 batches"
    shutil.move(config.archive / "run.csv", tmp_path / "run.csv")
    (outbox / "run.qif").unlink()
    async with running_gateway(config) as gateway:
        drop_file(config.inbox, "run.csv", (tmp_path / "run.csv").read_bytes())
        await wait_for(lambda: _names(outbox) == ["run.qif"], what="the outbox file again")
    assert (outbox / "run.qif").read_bytes() == first


def _records(tmp_path: Path, name: str, parts: int, offset: float = 0.0) -> RecordBatch:
    """The result records of a CSV inbox file `name` of `parts` x 2 rows, as the gateway makes
    them, with the last one marked as its file's end."""
    path = tmp_path / name
    path.write_text(
        HEADER
        + "".join(
            csv_row(f"P{i}", feature=f, measured_mm=f"{100.0118 + offset + i * 1e-4:.4f}")
            for i in range(parts)
            for f in ("a", "b")
        )
    )
    chunk = CsvSource(IngestSettings()).read(path)
    assert chunk is not None
    records = to_records(chunk.rows, PhysicsConfig())
    records.file_rows[-1] = len(records)
    assert np.count_nonzero(records.file_rows) == 1
    return records


async def test_a_replayed_tail_keeps_the_file_whole_and_a_new_version_replaces_it(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    outbox.mkdir()
    sink = OutboxSink(OutboxSettings(outbox, ("qif",)), tmp_path / "outbox.sqlite", (tmp_path,), IngestSettings(), 2.0)
    await sink.open()
    try:
        records = _records(tmp_path, "run.csv", 5)
        head, tail = records.take(slice(0, 6)), records.take(slice(6, 10))
        assert isinstance(await sink.write(head), Delivered)
        assert _names(outbox) == [], "not complete yet: staged"
        await sink.write(tail)
        whole = (outbox / "run.qif").read_bytes()
        assert len(QifSource(READ_BACK).read(outbox / "run.qif").rows) == 10  # type: ignore[union-attr]
        await sink.write(tail)  # the tail replayed after a crash before its acknowledgement
        assert (outbox / "run.qif").read_bytes() == whole, "not rewritten from the tail alone"
        (outbox / "run.qif").unlink()
        await sink.write(records)  # the same file dropped again: written again, the same bytes
        assert (outbox / "run.qif").read_bytes() == whole
        await sink.write(_records(tmp_path, "run.csv", 3, offset=0.001))  # a new file under the old name
        newer = QifSource(READ_BACK).read(outbox / "run.qif")
        assert newer is not None and len(newer.rows) == 6
    finally:
        await sink.close()
