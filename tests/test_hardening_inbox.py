"""The inbox on a hostile shop floor: relative data dirs, writers the gateway cannot lease, symbolic
links, file-descriptor exhaustion, odd file names, and `--once`'s exit code.

Some tests run the gateway as another user (uid 65534, via `setpriv`) than the writer, as in a
container: the kernel then refuses the gateway a lease on the writer's files, for real. They need
root and are skipped otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cmm_twin.gateway.ingest import inbox as inbox_module
from cmm_twin.gateway.ingest.inbox import ProcWriters, check_ready
from tests.gateway_harness import (
    HEADER,
    ROOT,
    GatewayProcess,
    MesProcess,
    RecordingSink,
    csv_row,
    drop_file,
    free_port,
    gateway_config,
    run_simulator,
    running_gateway,
    truth_ids,
    wait_for,
)

OTHER_UID = 65534
AS_OTHER_USER = ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups"]


def wait_until(predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s` naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def gateway_args(data_dir: str, *extra: str) -> list[str]:
    return [
        "--data-dir", data_dir,
        "--http", "127.0.0.1:0",
        "--opcua-endpoint", f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--historian", "none",
        *extra,
    ]  # fmt: skip


def can_run_as_other_user() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


@contextlib.contextmanager
def other_users_dir() -> Iterator[Path]:
    """An empty directory owned by uid 65534, for a gateway run as that user (outside pytest's
    tmp_path, whose parent only root may enter)."""
    path = Path(tempfile.mkdtemp(prefix="cmm-twin-foreign-"))
    try:
        path.chmod(0o755)
        os.chown(path, OTHER_UID, OTHER_UID)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def foreign_dir() -> Iterator[Path]:
    """Working directory of a gateway run as another user than the test (skipped unless root)."""
    if not can_run_as_other_user():
        pytest.skip("needs root and setpriv to run the gateway as another user than the writer")
    with other_users_dir() as path:
        yield path


@pytest.fixture
def gateway_home(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """Working directory of a gateway process and the command it runs under: as uid 65534 when the
    tests run as root (the writers' files are then another user's, as in a container), else as
    this user in tmp_path."""
    if not can_run_as_other_user():
        yield tmp_path, []
        return
    with other_users_dir() as path:
        yield path, AS_OTHER_USER


@pytest.mark.chaos
def test_relative_data_dir_under_40_files_per_second_processes_each_file_once(
    tmp_path: Path, gateway_home: tuple[Path, list[str]]
) -> None:
    """`--data-dir data` (the default, relative) while the simulator writes 40 files/s: the
    periodic rescan and the watch events must name a file the same way, so each is taken once.
    As root, the gateway runs as another user than the simulator, as in the container: each file
    then waits the settle time in the queue, so every rescan finds queued files (the race is
    certain; as one user it is only likely)."""
    home, prefix = gateway_home
    mes = MesProcess(tmp_path / "mes.sqlite", free_port(), tmp_path / "mes.log")
    mes.wait_ready()
    args = gateway_args("data", "--mes-url", mes.url, "--settle-ms", "300")
    gateway = GatewayProcess(args, tmp_path / "gateway.log", cwd=home, prefix=prefix)
    files = 400
    inbox = home / "data" / "inbox"
    try:
        gateway.wait_ready()
        simulator = run_simulator(inbox, tmp_path / "truth", "--count", str(files), "--rate", "40")
        assert simulator.wait(120) == 0

        def delivered() -> bool:
            health = gateway.get_json("/health")
            inbox_empty = not any(inbox.glob("*.csv"))
            return bool(inbox_empty and health["files_processed"] >= files and health["buffer_depth"] == 0)

        wait_until(delivered, "every file delivered")
        time.sleep(inbox_module.RESCAN_INTERVAL_S + 1)  # one more periodic rescan brings nothing back
        health = gateway.get_json("/health")
        assert health["files_processed"] == files
        expected = truth_ids(tmp_path / "truth")
        stored = [r["measurement_id"] for r in mes.all_records()]
        assert not [i for i, n in Counter(stored).items() if n > 1]
        assert sorted(stored) == sorted(expected)
        assert health["rows_in"] == len(expected)
        assert mes.get_json("/api/v1/stats")["duplicates"] == 0
        assert len(list((home / "data" / "archive").glob("*.csv"))) == files
    finally:
        assert gateway.stop() == 0
        mes.stop()
    log = gateway.log_text()
    assert "disappeared from the inbox" not in log
    assert "-> nowhere" not in log
    assert "Traceback" not in log


APPENDER = """
import sys, time
path, rows = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write(sys.argv[3])
for k in range(rows):
    time.sleep(1.0)
    with open(path, "a") as f:  # a logger-style writer: opens, appends one row, closes
        f.write(sys.argv[4].replace("PART", f"P{k}"))
"""


@pytest.mark.chaos
def test_writer_the_gateway_cannot_lease_is_not_read_while_it_grows(foreign_dir: Path, tmp_path: Path) -> None:
    """A writer of another user appends one row a second without renaming: the gateway (default
    --settle-ms 2000) must wait until the file stops changing, then take every row."""
    gateway = GatewayProcess(gateway_args("data"), tmp_path / "gateway.log", cwd=foreign_dir, prefix=AS_OTHER_USER)
    rows = 6
    inbox = foreign_dir / "data" / "inbox"
    try:
        gateway.wait_ready()
        path = inbox / "growing.csv"
        writer = subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(rows), HEADER, csv_row("PART")])
        try:
            wait_until(path.exists, "the writer to start")
            while writer.poll() is None:  # while it grows, the file stays in the inbox, untouched
                assert path.exists(), "the gateway took the file while its writer was still appending"
                assert gateway.get_json("/health")["files_processed"] == 0
                time.sleep(0.1)
        finally:
            writer.kill()
        assert writer.wait() == 0
        wait_until(lambda: gateway.get_json("/health")["files_processed"] == 1, "the file to be taken")
        health = gateway.get_json("/health")
        assert health["rows_in"] == rows
        assert health["rows_rejected"] == 0
        archived = (foreign_dir / "data" / "archive" / "growing.csv").read_text()
        assert archived == HEADER + "".join(csv_row(f"P{k}") for k in range(rows))
        assert not list((foreign_dir / "data" / "quarantine").iterdir())
        assert not path.exists()
    finally:
        assert gateway.stop() == 0
    assert "growing.csv: 6 rows ok, 0 rejected" in gateway.log_text()


def test_stability_rule_waits_for_the_settle_time_and_for_open_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a lease: ready only after the gateway saw size and mtime unchanged for the settle
    time, and not while a process it can see in /proc holds the file open for writing."""
    monkeypatch.setattr(inbox_module, "writer_has_it_open", lambda path: None)  # as for another user's file
    observed = inbox_module.FileObservations()
    path = tmp_path / "x.csv"
    path.write_text(HEADER)
    first = check_ready(path, 0.3, observed, ProcWriters())
    assert not first.ready and first.wait_s == pytest.approx(0.3, abs=0.05)
    time.sleep(0.15)
    with path.open("a") as f:
        f.write(csv_row("P1"))
    assert not check_ready(path, 0.3, observed, ProcWriters()).ready  # changed: the settle time starts again
    time.sleep(0.35)
    with path.open("a") as writer:  # unchanged for the settle time, but a writer holds it open
        assert check_ready(path, 0.3, observed, ProcWriters()).wait_s == inbox_module.PROC_WRITER_RECHECK_S
    ready = check_ready(path, 0.3, observed, ProcWriters())
    assert ready.ready and ready.size == len(HEADER + csv_row("P1"))
    assert len(observed) == 0
    assert writer.closed


def test_proc_writers_sees_write_modes_only(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text(HEADER)
    st = os.stat(path)
    with path.open("r"):
        assert not ProcWriters().holds_open(st)
    with path.open("r+"):
        assert ProcWriters().holds_open(st)
    with path.open("a"):
        assert ProcWriters().holds_open(st)


async def test_symbolic_links_are_refused_once_and_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "RESCAN_INTERVAL_S", 0.1)
    secret = tmp_path / "secret.csv"
    secret.write_text(HEADER + csv_row("SECRET"))
    sink = RecordingSink()
    config = gateway_config(tmp_path / "data")
    config.inbox.mkdir(parents=True)
    (config.inbox / "shadow.csv").symlink_to(secret)
    (config.inbox / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    (config.inbox / "evil\nWARNING: forged.csv").symlink_to(secret)
    caplog.set_level(logging.INFO)
    async with running_gateway(config, sink):
        (config.inbox / "late.csv").symlink_to(secret)
        drop_file(config.inbox, "real.csv", HEADER + csv_row("REAL"))
        await wait_for((config.archive / "real.csv").exists, 60)
        await wait_for(lambda: len(sink.records) == 1, 60, "delivery")
        await asyncio.sleep(1.0)  # ten rescans: none may report or read a link again
    assert [r["part_id"] for r in sink.records] == ["REAL"]
    for name in ("shadow.csv", "dangling.csv", "evil\nWARNING: forged.csv", "late.csv"):
        assert not (config.inbox / name).is_symlink()
        moved = config.quarantine / name
        assert moved.is_symlink()  # the link itself was moved, never followed
        report = json.loads((config.quarantine / f"{name}.errors.json").read_text())
        assert report["file"] == name
        assert report["file_error"].startswith("a symbolic link (to ")
        assert report["file_error"].endswith("links in the inbox are never followed")
    assert secret.read_text() == HEADER + csv_row("SECRET")
    messages = [r.getMessage() for r in caplog.records]
    refused = [m for m in messages if "rejected as a whole: a symbolic link" in m]
    assert len(refused) == 4, refused
    assert sum(m.startswith("dangling.csv rejected as a whole") for m in refused) == 1
    assert any(m.startswith("'evil\\nWARNING: forged.csv' rejected as a whole") for m in refused)
    assert not [m for m in messages if "\n" in m]


def test_check_ready_refuses_a_link_with_a_reason(tmp_path: Path) -> None:
    link = tmp_path / "l.csv"
    link.symlink_to("/etc/passwd")
    readiness = check_ready(link, 0.0)
    assert readiness.refused == "a symbolic link (to /etc/passwd): links in the inbox are never followed"
    assert readiness.not_a_file and not readiness.ready


@contextlib.contextmanager
def file_descriptors_exhausted() -> Iterator[Callable[[], None]]:
    """Use up this process's open-file limit for real (lowered to what is open plus 64, so a
    bounded number of files does it), and give everything back on exit. Yields `refill`, which
    takes again any descriptor another thread has freed meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 64, hard))
    held: list[int] = []

    def refill() -> None:
        with contextlib.suppress(OSError):
            for _ in range(in_use + 64):
                held.append(os.open(os.devnull, os.O_RDONLY))

    try:
        refill()
        with pytest.raises(OSError) as exc_info:
            os.open(os.devnull, os.O_RDONLY)
        assert exc_info.value.errno == 24  # EMFILE
        yield refill
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_inbox_scan_survives_fd_exhaustion_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox_module, "RESCAN_INTERVAL_S", 0.1)
    monkeypatch.setattr(inbox_module, "RETRY_MIN_S", 0.05)
    sink = RecordingSink()
    config = gateway_config(tmp_path)
    caplog.set_level(logging.INFO)
    async with running_gateway(config, sink) as gateway:
        drop_file(config.inbox, "before.csv", HEADER + csv_row("BEFORE"))
        await wait_for((config.archive / "before.csv").exists, 60)
        with file_descriptors_exhausted() as refill:
            # Until the rescan has met EMFILE; a descriptor freed by another thread is taken again.
            deadline = time.monotonic() + 60
            while "scanning the inbox" not in caplog.text:
                assert time.monotonic() < deadline, "the rescan never met the exhausted limit"
                refill()
                await asyncio.sleep(0.01)
        assert gateway.pipeline is not None
        drop_file(config.inbox, "after.csv", HEADER + csv_row("AFTER"))
        await wait_for((config.archive / "after.csv").exists, 60)
        await wait_for(lambda: len(sink.records) == 2, 60, "delivery")
        await wait_for(lambda: "works again" in caplog.text, 60, "the rescan to work again")
    assert [r["part_id"] for r in sink.records] == ["BEFORE", "AFTER"]
    inbox_records = [r for r in caplog.records if r.name == inbox_module.__name__]
    failed = [r.getMessage() for r in inbox_records if "failed (" in r.getMessage()]
    assert len(failed) == 1, failed
    assert "Too many open files" in failed[0]
    assert "the gateway keeps serving" in failed[0]
    assert not [r for r in inbox_records if r.exc_info]
    assert any("works again" in r.getMessage() for r in inbox_records)


def test_once_exits_1_when_a_row_was_rejected(tmp_path: Path) -> None:
    inbox = tmp_path / "data" / "inbox"
    drop_file(inbox, "good.csv", HEADER + csv_row("P1"))
    drop_file(inbox, "bad.csv", HEADER + csv_row("P2") + csv_row("P3", measured_mm="-1"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), *gateway_args(str(tmp_path / "data")), "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "data" / "quarantine" / "bad.csv").exists()
    assert (tmp_path / "data" / "archive" / "good.csv").exists()
    assert "--once: 1 files quarantined, 1 rows rejected, 0 records dead-lettered: exit 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_once_exits_1_when_a_link_was_refused(tmp_path: Path) -> None:
    inbox = tmp_path / "data" / "inbox"
    drop_file(inbox, "good.csv", HEADER + csv_row("P1"))
    (tmp_path / "elsewhere.csv").write_text(HEADER + csv_row("P2"))
    (inbox / "link.csv").symlink_to(tmp_path / "elsewhere.csv")
    done = subprocess.run(
        [sys.executable, str(ROOT / "cmm_edge_gateway.py"), *gateway_args(str(tmp_path / "data")), "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "data" / "archive" / "good.csv").exists()
    assert (tmp_path / "data" / "quarantine" / "link.csv").is_symlink()
    assert "1 files quarantined, 0 rows rejected, 0 records dead-lettered: exit 1" in done.stderr
