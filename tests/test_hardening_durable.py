"""Durability of the gateway's own state: a full disk, a reset spool, a corrupt database and a
read-only data directory. Real gateway processes, the real mock MES, real file systems (a small
tmpfs when running as root)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cmm_twin.gateway.state import MARKER_NAME, SpoolMarker, SpoolResetError, StateStore
from cmm_twin.records import INT_COLUMNS, RECORD_COLUMNS, TEXT_COLUMNS, RecordBatch
from tests.gateway_harness import HEADER, ROOT, GatewayProcess, MesProcess, csv_row, drop_file, free_port

DEADLINE_S = 60.0


def fast_backoff(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text("[sinks]\nbackoff_min_s = 0.2\nbackoff_max_s = 1.0\n")
    return path


def gateway_args(tmp_path: Path, data_dir: Path, mes_url: str, *extra: str) -> list[str]:
    return [
        "--data-dir", str(data_dir),
        "--http", "127.0.0.1:0",
        "--mes-url", mes_url,
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--settle-ms", "50",
        "--config", str(fast_backoff(tmp_path)),
        *extra,
    ]  # fmt: skip


def run_gateway(args: list[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def run_recover(data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cmm_twin.gateway.recover", "--data-dir", str(data)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_until(predicate: object, what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def health(gateway: GatewayProcess) -> dict[str, object]:
    """/health of a gateway that must still be running."""
    assert gateway.proc.poll() is None, f"the gateway exited with {gateway.proc.returncode}:\n{gateway.log_text()}"
    document: dict[str, object] = gateway.get_json("/health")
    return document


def file_rows(file_index: int, rows: int) -> str:
    return HEADER + "".join(
        csv_row(f"F{file_index:03d}-{i:04d}", timestamp=f"2026-01-05T06:{i // 60:02d}:{i % 60:02d}Z")
        for i in range(rows)
    )


@contextlib.contextmanager
def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted under tmp_path (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full or read-only file system)")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write `path` until the file system is full."""
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with path.open("ab", buffering=0) as f, contextlib.suppress(OSError):  # the last partial block
        while True:
            f.write(b"\0" * 512)


@pytest.mark.chaos
def test_full_disk_pauses_intake_and_resumes_losing_nothing(tmp_path: Path) -> None:
    with tmpfs(tmp_path, "6m") as fs:
        data = fs / "data"
        inbox = data / "inbox"
        mes = MesProcess(tmp_path / "mes.sqlite", free_port(), tmp_path / "mes.log")
        mes.wait_ready()
        gateway = GatewayProcess(gateway_args(tmp_path, data, mes.url), tmp_path / "gateway.log")
        try:
            gateway.wait_ready()
            drop_file(inbox, "warmup.csv", file_rows(0, 10))
            wait_until(
                lambda: (
                    gateway.get_json("/health")["files_processed"] == 1
                    and gateway.get_json("/health")["buffer_depth"] == 0
                ),
                "the warm-up file delivered",
            )
            reserve = fs / "reserve"
            reserve.write_bytes(b"\0" * (768 << 10))
            fill(fs / "filler")
            reserve.unlink()  # room for the files only: written under dot names, renamed once full
            files, rows = 30, 40
            staged = []
            for i in range(1, files + 1):
                tmp = inbox / f".batch-{i:03d}.csv.tmp"
                tmp.write_text(file_rows(i, rows))
                staged.append(tmp)
            fill(fs / "filler2")
            for tmp in staged:
                tmp.rename(inbox / tmp.name[1:-4])

            wait_until(lambda: health(gateway).get("disk_full") is True, "/health to report disk_full")
            assert health(gateway)["intake_paused"] is True
            assert "cmm_disk_full 1.0" in gateway.get_text("/metrics")
            time.sleep(2.0)  # several retries while full: the gateway stays up
            assert gateway.proc.poll() is None, gateway.log_text()
            assert (inbox / "batch-030.csv").exists() or any(inbox.glob("batch-*.csv")), "files wait in the inbox"

            (fs / "filler").unlink()
            (fs / "filler2").unlink()
            wait_until(
                lambda: (
                    (h := gateway.get_json("/health"))["files_processed"] == files + 1
                    and h["buffer_depth"] == 0
                    and h["disk_full"] is False
                ),
                "every file delivered once space returned",
            )
            assert gateway.proc.poll() is None
            stats = mes.get_json("/api/v1/stats")
            assert stats == {"count": files * rows + 10, "duplicates": 0, "conflicts": 0}
            assert "cmm_disk_full 0.0" in gateway.get_text("/metrics")
            assert gateway.stop() == 0
        finally:
            gateway.stop()
            mes.stop()
        text = gateway.log_text()
        assert "Traceback" not in text, text
        warnings = text.count("disk full: ")
        assert 1 <= warnings <= 3, text  # once per episode, not once per retry
        assert "disk has room again" in text


@pytest.mark.chaos
def test_full_disk_at_the_acknowledgement_keeps_the_gateway_up(tmp_path: Path) -> None:
    """The issue's case: records spooled while the MES is down, the disk fills, the MES returns:
    the delivery succeeds but its acknowledgement cannot be written. The gateway stays up, says
    disk_full, and acknowledges once space returns (nothing sent twice)."""
    with tmpfs(tmp_path, "6m") as fs:
        data = fs / "data"
        mes_port = free_port()
        gateway = GatewayProcess(gateway_args(tmp_path, data, f"http://127.0.0.1:{mes_port}"), tmp_path / "gateway.log")
        mes: MesProcess | None = None
        try:
            gateway.wait_ready()
            for i in range(10):
                drop_file(data / "inbox", f"part-{i}.csv", file_rows(i, 40))
            wait_until(
                lambda: (
                    (h := gateway.get_json("/health"))["files_processed"] == 10
                    and h["sinks"]["mes"]["buffer_depth"] == 400
                ),
                "400 records spooled while the MES is down",
            )
            fill(fs / "filler")
            mes = MesProcess(tmp_path / "mes.sqlite", mes_port, tmp_path / "mes.log")
            mes.wait_ready()
            wait_until(lambda: health(gateway).get("disk_full") is True, "/health to report disk_full")
            # The runner may hold an earlier page than all 400 (it read the spool while files were
            # still arriving): what counts is that a delivery went through and was not acknowledged.
            wait_until(lambda: mes.get_json("/api/v1/stats")["count"] > 0, "the MES to hold delivered records")
            time.sleep(2.0)  # acknowledgement retried while full: the gateway stays up
            assert gateway.proc.poll() is None, gateway.log_text()
            assert gateway.get_json("/health")["sinks"]["mes"]["buffer_depth"] == 400  # cursor not advanced

            (fs / "filler").unlink()
            wait_until(
                lambda: (h := gateway.get_json("/health"))["buffer_depth"] == 0 and h["disk_full"] is False,
                "the acknowledgement written once space returned",
            )
            assert mes.get_json("/api/v1/stats") == {"count": 400, "duplicates": 0, "conflicts": 0}
            assert gateway.stop() == 0
        finally:
            gateway.stop()
            if mes is not None:
                mes.stop()
        text = gateway.log_text()
        assert "Traceback" not in text, text
        assert 1 <= text.count("disk full: ") <= 3, text
        assert "disk has room again" in text


@pytest.mark.chaos
@pytest.mark.parametrize("reset", ["truncated", "wal_deleted"])
def test_reset_spool_is_refused_and_recovered(tmp_path: Path, reset: str) -> None:
    data = tmp_path / "data"
    inbox = data / "inbox"
    mes_port = free_port()
    mes_url = f"http://127.0.0.1:{mes_port}"  # down for now
    args = gateway_args(tmp_path, data, mes_url, "--historian", "none")
    gateway = GatewayProcess(args, tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        for i in range(8):
            drop_file(inbox, f"part-{i}.csv", file_rows(i, 50))
        wait_until(
            lambda: (h := gateway.get_json("/health"))["files_processed"] == 8 and h["buffer_depth"] == 400,
            "400 records spooled while the MES is down",
        )
    finally:
        if reset == "wal_deleted":
            gateway.stop(signal.SIGKILL)  # the WAL still holds the last transactions
        else:
            gateway.stop()
    db = data / "state" / "gateway.sqlite"
    if reset == "wal_deleted":
        wal = Path(f"{db}-wal")
        assert wal.stat().st_size > 0
        wal.unlink()
    else:
        db.write_bytes(b"")
    assert len(list((data / "archive").glob("*.csv"))) == 8

    mes = MesProcess(tmp_path / "mes.sqlite", mes_port, tmp_path / "mes.log")
    mes.wait_ready()
    try:
        refused = run_gateway([*args, "--once"])
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "Traceback" not in refused.stderr
        assert str(db) in lines[0] and "spool" in lines[0]
        command = f"python -m cmm_twin.gateway.recover --data-dir {data}"
        assert command in lines[0]
        assert mes.get_json("/api/v1/stats")["count"] == 0

        recovered = run_recover(data)
        assert recovered.returncode == 0, recovered.stderr
        assert "8 files put back" in recovered.stdout
        assert len(list(inbox.glob("*.csv"))) == 8

        delivered = run_gateway([*args, "--once"])
        assert delivered.returncode == 0, delivered.stderr
        stats = mes.get_json("/api/v1/stats")
        assert stats["count"] == 400, stats  # stored once each; re-sent ones count as duplicates
        assert len({r["measurement_id"] for r in mes.all_records()}) == 400
    finally:
        mes.stop()


def make_state(data: Path) -> list[str]:
    """Run the gateway (no MES, the embedded historian) once so that its databases exist;
    returns its arguments."""
    args = [
        "--data-dir", str(data),
        "--http", "127.0.0.1:0",
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--historian", "sqlite",
    ]  # fmt: skip
    drop_file(data / "inbox", "a.csv", file_rows(0, 5))
    done = run_gateway([*args, "--once"])
    assert done.returncode == 0, done.stderr
    return args


@pytest.mark.chaos
@pytest.mark.parametrize(
    ("name", "advice"), [("gateway.sqlite", "cmm_twin.gateway.recover"), ("history.sqlite", "move it aside")]
)
def test_corrupt_database_is_one_line_and_exit_2(tmp_path: Path, name: str, advice: str) -> None:
    data = tmp_path / "data"
    args = make_state(data)
    path = data / "state" / name
    path.write_bytes(os.urandom(64 << 10))  # garbage over the whole database
    done = run_gateway([*args, "--once"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and advice in lines[0]
    assert "Traceback" not in done.stderr
    if name == "gateway.sqlite":  # the advice works: the database is set aside, the file re-read
        recovered = run_recover(data)
        assert recovered.returncode == 0, recovered.stderr
        assert list((data / "state").glob("gateway.sqlite.unreadable-*"))
        assert (data / "inbox" / "a.csv").exists()
        again = run_gateway([*args, "--once"])
        assert again.returncode == 0, again.stderr
        assert (data / "archive" / "a.csv").exists()


@pytest.mark.chaos
def test_read_only_data_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with tmpfs(tmp_path, "16m") as fs:
        data = fs / "data"
        args = make_state(data)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True, check=False)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only: {remount.stderr.strip()}")
        done = run_gateway([*args, "--once"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(data) in lines[0] and "Read-only file system" in lines[0] and "write access" in lines[0]
    assert "Traceback" not in done.stderr


def records(n: int) -> RecordBatch:
    values: dict[str, object] = {
        c: ["x"] * n if c in TEXT_COLUMNS else np.ones(n, dtype=INT_COLUMNS.get(c, np.float64)) for c in RECORD_COLUMNS
    }
    return RecordBatch(**values)  # type: ignore[arg-type]


def test_marker_follows_the_spool_and_detects_lost_transactions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gateway.sqlite"
    store = StateStore(path)
    store.register_sinks(["mes"])
    store.commit([], records(300), {})
    marker = SpoolMarker.read(path.parent / MARKER_NAME)
    assert marker is not None and marker.high_seq == 300 and marker.acked == {"mes": 0}
    before_ack = marker.all_acked_ns
    store.ack("mes", 300)
    marker = SpoolMarker.read(path.parent / MARKER_NAME)
    assert marker is not None and marker.all_acked_ns is not None
    assert before_ack is None or marker.all_acked_ns > before_ack
    store.close()
    StateStore(path).close()  # the same database: accepted

    # The database loses its last transactions (as when its WAL is deleted): refused.
    stale = SpoolMarker.read(path.parent / MARKER_NAME)
    assert stale is not None
    stale.high_seq = 1300
    stale.create(path.parent / MARKER_NAME)
    with pytest.raises(SpoolResetError, match="holds records up to seq 300 only"):
        StateStore(path)
    # Another database under the same name: refused.
    stale.high_seq, stale.db_id = 300, "someone-else"
    stale.create(path.parent / MARKER_NAME)
    with pytest.raises(SpoolResetError, match="its id differs"):
        StateStore(path)


def test_marker_that_cannot_be_read_is_written_anew_for_an_intact_database(tmp_path: Path) -> None:
    path = tmp_path / "state" / "gateway.sqlite"
    StateStore(path).close()
    (path.parent / MARKER_NAME).write_bytes(b"\0" * 100)  # a torn marker
    StateStore(path).close()
    assert SpoolMarker.read(path.parent / MARKER_NAME) is not None
    (path.parent / MARKER_NAME).write_bytes(b"\0" * 100)
    path.write_bytes(b"")  # and a reset database: refused
    with pytest.raises(SpoolResetError, match="cannot be read"):
        StateStore(path)
