"""Shop-floor hardening: the simulator's temp files, the MES's content type and re-measurement conflicts.

Real components on loopback: the simulator's own command line, the real mock MES (in-process and as
a process through the gateway harness), the real gateway and its embedded historian (SQLite).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmm_twin.simulator.cli import main as simulator_main
from cmm_twin.simulator.writer import temp_name

# ----------------------------------------------------------------------------- simulator temp files


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that runs for the whole test (stands for a simulator still writing)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait(timeout=60)


def ended_pid() -> int:
    """The pid of a process that has ended (stands for a simulator killed with SIGKILL)."""
    process = subprocess.Popen(["true"])
    process.wait(timeout=60)
    return process.pid


def test_simulator_start_removes_only_its_own_dead_temp_files(
    tmp_path: Path, live_process: subprocess.Popen[bytes]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    others = {
        ".x.csv.tmp": "another writer's rows, still being written\n",  # another writer's rename protocol
        ".CMM-01_00000099.csv.tmp": "timestamp,machine_id\n",  # the simulator's old name: not provably ours
        temp_name("CMM-02_20260105T060000000_00000001.csv", live_process.pid): "a live simulator's part\n",
        ".cmmsim-notapid-x.csv.tmp": "not the simulator's pattern\n",
    }
    for name, text in others.items():
        (inbox / name).write_text(text)
    dead = inbox / temp_name("CMM-01_20260105T060000000_00000007.csv", ended_pid())
    dead.write_text("timestamp,machine_id\n2024-")

    assert simulator_main(["--outdir", str(inbox), "--count", "2", "--rate", "0"]) == 0

    assert not dead.exists()
    for name, text in others.items():
        assert (inbox / name).read_text() == text, name
    assert len(list(inbox.glob("*.csv"))) == 2
