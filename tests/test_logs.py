"""Logs for operators (docs/logging.md): the summary line, per-file lines folded to DEBUG, the
rotated log file, journald's format and names escaped, with real gateway, MES and simulator
processes."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cmm_twin.launcher.supervisor import GATEWAY_READY_RE, SIMULATOR_READY_RE
from cmm_twin.logs import JournalFormatter, one_line, safe_name, syslog_priority
from tests.gateway_harness import HEADER, ROOT, GatewayProcess, MesProcess, csv_row, drop_file, free_port

PER_FILE_RE = re.compile(r"^\S+ \S+ (INFO|DEBUG): (.+): \d+ rows ok, \d+ rejected, [\d.]+ ms -> \w+ ", re.MULTILINE)
SUMMARY_RE = re.compile(
    r"INFO: last \d+ s: (\d+) files(?: \((\d+) quarantined\))?, (\d+) rows, (\d+) rejected"
    r"(?:, (\d+) per-file lines at DEBUG)?; (.*) \[cmm_twin\.gateway\.summary\]$",
    re.MULTILINE,
)
EVIL_NAME = "evil\n\x1b[31mred.csv"


def gateway_args(data_dir: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(data_dir),
        "--http",
        "127.0.0.1:0",
        "--opcua-endpoint",
        f"opc.tcp://127.0.0.1:{free_port()}/cmm-twin/",
        "--historian",
        "sqlite",
        "--settle-ms",
        "50",
        *extra,
    ]


def wait_processed(gateway: GatewayProcess, files: int) -> None:
    """Until /health counts `files` files and nothing is buffered (60 s deadline)."""
    deadline = time.monotonic() + 60
    while (h := gateway.get_json("/health"))["files_processed"] < files or h["buffer_depth"]:
        assert time.monotonic() < deadline, gateway.log_text()
        time.sleep(0.05)


def wait_log(gateway: GatewayProcess, done: Callable[[str], bool]) -> str:
    """The log once `done(text)` holds (60 s deadline)."""
    deadline = time.monotonic() + 60
    while not done(text := gateway.log_text()):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    return text


def test_one_summary_for_a_burst_with_the_per_file_lines_past_ten_folded(tmp_path: Path) -> None:
    """A burst of 15 files in one (long) interval: 10 per-file lines at INFO, then the summary
    at stop names all 15 files, the quarantined one, the rows, the rejected row, the 5 lines
    folded, and each sink with its state, deliveries and (durable sinks) buffer."""
    gateway = GatewayProcess(gateway_args(tmp_path, "--log-summary-s", "600"), tmp_path / "gateway.log")
    try:
        gateway.wait_ready()
        for i in range(14):
            drop_file(tmp_path / "inbox", f"f{i:02}.csv", HEADER + csv_row(f"P{i}") + csv_row(f"Q{i}"))
        drop_file(tmp_path / "inbox", "bad.csv", HEADER + csv_row("B1") + csv_row("B2", measured_mm="x"))
        wait_processed(gateway, 15)
        assert "[cmm_twin.gateway.summary]" not in gateway.log_text()  # the interval has not passed
    finally:
        assert gateway.stop() == 0
    text = gateway.log_text()
    per_file = PER_FILE_RE.findall(text)
    assert [level for level, _ in per_file] == ["INFO"] * 10
    summaries = SUMMARY_RE.findall(text)
    assert len(summaries) == 1, text
    files, quarantined, rows, rejected, folded, sinks = summaries[0]
    assert (files, quarantined, rows, rejected, folded) == ("15", "1", "29", "1", "5")
    assert "historian: connected, delivered 29, buffer 0" in sinks
    assert re.search(r"(^|; )opcua: connected, delivered \d+(;|$)", sinks), sinks
    assert "WARNING: bad.csv: 1 rows rejected" in text  # warnings are never folded
    assert "Traceback" not in text


def test_a_line_every_interval_folded_lines_at_debug_and_names_escaped(tmp_path: Path) -> None:
    """--log-summary-s 1 and --log-level DEBUG: a summary line every second even when idle; the
    summaries add up to every file, row and rejected row; every file has one per-file line (INFO
    for the first 10 of an interval, DEBUG after, as many DEBUG as the summaries say were
    folded); a file name with a newline and an ANSI escape, and a rejected value with an ANSI
    escape, stay escaped on one line."""
    args = gateway_args(tmp_path, "--log-summary-s", "1", "--log-level", "DEBUG")
    gateway = GatewayProcess(args, tmp_path / "gateway.log")
    names = [f"g{i:02}.csv" for i in range(24)] + [EVIL_NAME]
    try:
        gateway.wait_ready()
        for name in names:
            drop_file(tmp_path / "inbox", name, HEADER + csv_row(name[:3]))
        drop_file(tmp_path / "inbox", "red.csv", HEADER + csv_row("R1", material="\x1b[31mRED"))
        wait_processed(gateway, len(names) + 1)

        def settled(text: str) -> bool:
            totals = [sum(int(s[i] or 0) for s in SUMMARY_RE.findall(text)) for i in range(4)]
            idle = [s for s in SUMMARY_RE.findall(text) if s[:4] == ("0", "", "0", "0")]
            return totals == [len(names) + 1, 1, len(names), 1] and len(idle) >= 2

        text = wait_log(gateway, settled)
    finally:
        assert gateway.stop() == 0
    text = gateway.log_text()
    per_file = PER_FILE_RE.findall(text)
    assert sorted(name for _, name in per_file) == sorted([safe_name(n) for n in names] + ["red.csv"])
    summaries = SUMMARY_RE.findall(text)
    # A file is counted and its line logged in the same step: each interval folds what passes 10.
    assert [int(s[4] or 0) for s in summaries] == [max(0, int(s[0]) - 10) for s in summaries]
    assert [level for level, _ in per_file].count("DEBUG") == sum(int(s[4] or 0) for s in summaries)
    assert "'evil\\n\\x1b[31mred.csv'" in text
    assert "\\x1b[31mRED" in text
    assert "\x1b" not in text  # no raw escape anywhere
    assert not [line for line in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line)]


def test_log_file_is_rotated_and_stderr_keeps_logging(tmp_path: Path) -> None:
    """--log-file with a 1 kB limit and 2 kept (40 files log well over 3 kB): the file and exactly
    two rotated ones, none past the limit, all time-stamped; stderr has every line too.
    --log-summary-s 0: no summary and every per-file line at INFO."""
    log_file = tmp_path / "logs" / "gateway.log"
    log_file.parent.mkdir()
    args = gateway_args(
        tmp_path / "data",
        *("--log-file", str(log_file), "--log-file-max-mb", "0.001", "--log-file-keep", "2"),
        *("--log-summary-s", "0"),
    )
    gateway = GatewayProcess(args, tmp_path / "stderr.log")
    try:
        gateway.wait_ready()
        for i in range(40):
            drop_file(tmp_path / "data" / "inbox", f"r{i:02}.csv", HEADER + csv_row(f"P{i}"))
        wait_processed(gateway, 40)
    finally:
        assert gateway.stop() == 0
    stderr = gateway.log_text()
    assert [level for level, _ in PER_FILE_RE.findall(stderr)] == ["INFO"] * 40
    assert "[cmm_twin.gateway.summary]" not in stderr
    assert sorted(p.name for p in log_file.parent.iterdir()) == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    kept = [log_file.with_name(n).read_text() for n in ("gateway.log.2", "gateway.log.1", "gateway.log")]
    assert all(0 < len(t.encode()) <= 1000 for t in kept)
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for t in kept for line in t.splitlines())
    assert "gateway stopped: 40 files" in kept[-1]
    assert "".join(kept) in stderr.replace("\r", "")  # the file's lines, in order, are stderr's last ones


def test_mes_and_simulator_log_to_a_file_too(tmp_path: Path) -> None:
    """The mock MES and the simulator take --log-file as the gateway does."""
    mes = MesProcess(tmp_path / "mes.db", 0, tmp_path / "mes.stderr", "--log-file", str(tmp_path / "mes.log"))
    try:
        mes.wait_ready()
    finally:
        assert mes.stop() == 0
    assert "mock MES listening on http://127.0.0.1:" in (tmp_path / "mes.log").read_text()
    simulator = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cmm_simulator.py"),
            "--outdir",
            str(tmp_path / "inbox"),
            "--count",
            "2",
            "--rate",
            "0",
            "--log-file",
            str(tmp_path / "sim.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert simulator.returncode == 0, simulator.stderr
    sim_log = (tmp_path / "sim.log").read_text()
    assert "INFO: simulator done: 2 parts" in sim_log
    assert sim_log.splitlines()[-1] in simulator.stderr


@pytest.mark.parametrize("script", ["cmm_edge_gateway.py", "mock_mes.py", "cmm_simulator.py"])
@pytest.mark.parametrize("where", ["missing directory", "a directory"])
def test_unusable_log_file_is_one_line_and_exit_2(tmp_path: Path, script: str, where: str) -> None:
    target = tmp_path / "no-such-dir" / "x.log" if where == "missing directory" else tmp_path
    program = {"cmm_edge_gateway.py": "cmm_edge_gateway.py", "mock_mes.py": "mock_mes.py"}.get(script, "cmm_simulator")
    expected = {
        "missing directory": f"{program}: error: --log-file: cannot write {target}: no directory {target.parent}",
        "a directory": f"{program}: error: --log-file: {target} is a directory: give a file name in it",
    }[where]
    args = {
        "cmm_edge_gateway.py": ["--data-dir", str(tmp_path / "data"), "--http", "127.0.0.1:0"],
        "mock_mes.py": ["--db", str(tmp_path / "mes.db"), "--port", "0"],
        "cmm_simulator.py": ["--outdir", str(tmp_path / "inbox"), "--count", "1"],
    }[script]
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *args, "--log-file", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected + "\n")


def _journal_run(tmp_path: Path, argv: list[str], *, matching: bool, until: str) -> str:
    """Run a program with stderr into a file and JOURNAL_STREAM naming that file (as systemd
    names a service's stream) or, with `matching` False, another file (a child of the launcher);
    stop it with SIGTERM once its output contains `until`; returns the output."""
    out_path = tmp_path / "journal.txt"
    other = tmp_path / "other.txt"
    other.touch()
    with out_path.open("wb") as out:
        stat = os.fstat(out.fileno()) if matching else other.stat()
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=out, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while until not in out_path.read_text(errors="replace"):
                assert proc.poll() is None and time.monotonic() < deadline, out_path.read_text(errors="replace")
                time.sleep(0.05)
        finally:
            proc.terminate()
            assert proc.wait(60) == 0
    return out_path.read_text()


def test_under_journald_lines_carry_the_priority_and_no_time_stamp(tmp_path: Path) -> None:
    """stderr connected to the journal: `<6>INFO: ...`, `<4>WARNING: Network Lost! Buffering...`,
    no time stamp, and the launcher's readiness pattern still finds the ready line."""
    (tmp_path / "data" / "inbox").mkdir(parents=True)
    drop_file(tmp_path / "data" / "inbox", "a.csv", HEADER + csv_row("P1"))
    mes_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    argv = [str(ROOT / "cmm_edge_gateway.py"), *gateway_args(tmp_path / "data", "--mes-url", mes_url)]
    text = _journal_run(tmp_path, argv, matching=True, until="Network Lost! Buffering...")
    lines = text.splitlines()
    assert lines and all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL): ", line) for line in lines), text
    ready = next(line for line in lines if "gateway ready" in line)
    assert ready.startswith("<6>INFO: gateway ready: ")
    assert GATEWAY_READY_RE.search(ready)
    assert any(line.startswith("<4>WARNING: Network Lost! Buffering... (mes: ") for line in lines), text
    assert any(line.startswith("<6>INFO: a.csv: 1 rows ok") for line in lines), text


def test_journal_stream_of_another_file_keeps_time_stamps(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited but stderr elsewhere (the launcher's pipe): the usual format."""
    argv = [str(ROOT / "cmm_simulator.py"), "--outdir", str(tmp_path / "inbox"), "--rate", "50"]
    text = _journal_run(tmp_path, argv, matching=False, until="simulator started: ")
    started = next(line for line in text.splitlines() if SIMULATOR_READY_RE.search(line))
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO: simulator started: ", started)


def test_one_line_escapes_and_priorities() -> None:
    assert one_line("plain name.csv") == "plain name.csv"
    assert one_line("a\nb\r\x1b[2Jc\td\u2028") == "a\\nb\\r\\x1b[2Jc\\td\\u2028"
    assert safe_name("a\nb.csv") == "'a\\nb.csv'"
    assert [syslog_priority(lv) for lv in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "bad %s", ("n\x1bm",), sys.exc_info())
    lines = JournalFormatter().format(record).split("\n")
    assert lines[0] == "<3>ERROR: bad n\\x1bm [x]"
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"
