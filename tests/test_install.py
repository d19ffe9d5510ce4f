"""cmm-twin as an installed package: the wheel built from this tree, installed into a fresh venv in a
temporary directory, runs its console command `cmm-twin` from a directory without the checkout.

No network: the wheel is built with the venv's own setuptools (`pip wheel --no-build-isolation`), and
the fresh venv gets the dependencies through a .pth file naming this venv's site-packages (installing
NumPy and asyncua from PyPI in a test would be slow and flaky). The cmm_twin package itself comes only
from the wheel: this venv must not have it installed, and the test checks where it is imported from.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cmm_twin import __version__
from tests.gateway_harness import ROOT, free_ports
from tests.test_launcher import STARTED_RE, alive

SOURCE_FILES = ("pyproject.toml", "requirements.txt", "README.md", "LICENSE")
RUN_FOR_S = 20.0
BUILD_HINT = "the offline build needs setuptools>=77 in this venv (requirements-dev.txt pins it)"


@dataclass(frozen=True)
class Installed:
    venv: Path
    wheel: Path

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "cmm-twin"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def clean_environment() -> dict[str, str]:
    """This environment without anything that would put the checkout or another venv on sys.path."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {name: value for name, value in os.environ.items() if name not in dropped and not name.startswith("CMM_")}


def build_wheel(tmp: Path) -> Path:
    """The wheel of a copy of this tree (a build in the tree would leave build/ behind)."""
    source = tmp / "src"
    source.mkdir()
    for name in SOURCE_FILES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "cmm_twin", source / "cmm_twin", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, f"{BUILD_HINT}:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    wheels = list(dist.glob("cmm_twin-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    # The fresh venv sees this venv's site-packages: cmm_twin must not be there, else it could
    # import that copy instead of the wheel's.
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed_here = [d.metadata["Name"] for d in importlib.metadata.distributions(path=ours)]
    assert "cmm-twin" not in installed_here, f"cmm-twin is installed in {ours}: pip uninstall cmm-twin"
    assert not [p for p in ours if (Path(p) / "cmm_twin").exists()], ours
    tmp = tmp_path_factory.mktemp("install")
    wheel = build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=300,
        env=clean_environment(),
    )
    (site_packages,) = (venv / "lib").glob("python3.*/site-packages")
    (site_packages / "zz-shared-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return Installed(venv, wheel)


def test_the_wheel_holds_every_file_of_the_package(installed: Installed) -> None:
    """Everything the programs read at run time: every tracked file under cmm_twin/ (code, the live
    page's html/js/css, the nodeset fetch script) is in the wheel, and the command is declared."""
    tracked = subprocess.run(
        ["git", "ls-files", "cmm_twin"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        declared = wheel.read(entry_points).decode()
    missing = sorted(set(tracked) - names)
    assert missing == []
    for name in ("index.html", "app.js", "style.css"):
        assert f"cmm_twin/gateway/sinks/page/{name}" in names
    assert "cmm_twin/launcher/nodesets.sh" in names
    assert "cmm-twin = cmm_twin.__main__:main" in declared
    assert not [n for n in names if n.startswith(("tests/", "bench/", "scripts/"))]


def run_installed(
    installed: Installed, cwd: Path, *args: str, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [installed.command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=clean_environment(),
        check=False,
    )


def test_the_installed_command_runs_outside_the_checkout(installed: Installed, tmp_path: Path) -> None:
    version = run_installed(installed, tmp_path, "--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"cmm-twin {__version__}"), version.stderr
    where = subprocess.run(
        [installed.python, "-c", "import cmm_twin; print(cmm_twin.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(),
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv), where
    helps = run_installed(installed, tmp_path, "--help")
    assert helps.returncode == 0
    for command in ("run", "gateway", "mes", "simulate", "nodesets"):
        assert f"    {command} " in helps.stdout, command
        result = run_installed(installed, tmp_path, command, "--help")
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith("usage: "), command
    bad = run_installed(installed, tmp_path, "gateway", "--data-dir", str(tmp_path / "d"), "--http", "nowhere")
    assert bad.returncode == 2 and "error: --http: " in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_cmm_twin_nodesets_without_npm_says_so_and_the_gateway_runs_without_them(
    installed: Installed, tmp_path: Path
) -> None:
    """The fetch ships in the package; without npm on PATH it names the cause and exits 0."""
    bash = shutil.which("bash")
    assert bash is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "dirname", "mktemp"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        [installed.command, "nodesets", str(tmp_path / "nodesets")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_environment(), "PATH": str(bin_dir)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "nodesets: npm not found" in result.stderr
    assert "without the Machinery model" in result.stderr
    assert not (tmp_path / "nodesets").exists()


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_until(proc: subprocess.Popen[bytes], out: Path, predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        text = out.read_text(errors="replace")
        assert proc.poll() is None, f"cmm-twin run exited {proc.returncode} waiting for {what}:\n{text[-6000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{text[-6000:]}"
        time.sleep(0.2)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cmm_twin_run_from_the_installed_package_delivers_and_stops_cleanly(
    installed: Installed, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """`cmm-twin run` in a directory without the checkout: the MES gets records within 20 s, and
    the stop signal stops all three children cleanly (exit code 0, none left)."""
    http_port, mes_port, opcua_port = free_ports(3)
    out = tmp_path / "run.out"
    command = [
        str(installed.command), "run",
        "--http-port", str(http_port), "--mes-port", str(mes_port), "--opcua-port", str(opcua_port),
        "--rate", "10",
    ]  # fmt: skip
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT, env=clean_environment())
    try:
        wait_until(proc, out, lambda: "cmm-twin is running" in out.read_text(errors="replace"), "start-up")
        started_at = time.monotonic()
        stats = f"http://127.0.0.1:{mes_port}/api/v1/stats"
        wait_until(proc, out, lambda: (get_json(stats) or {}).get("count", 0) > 0, "records at the MES")
        time.sleep(max(0.0, RUN_FOR_S - (time.monotonic() - started_at)))
        assert proc.poll() is None, out.read_text(errors="replace")[-6000:]
        proc.send_signal(stop_signal)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = out.read_text(errors="replace")
    assert code == 0, text[-6000:]
    assert "cmm-twin stopped cleanly" in text
    pids = [int(pid) for _, pid in STARTED_RE.findall(text)]
    assert len(pids) == 3 and [pid for pid in pids if alive(pid)] == []
    # The children ran from the installed package, in this directory (the default data dir).
    started = [line for line in text.splitlines() if STARTED_RE.search(line)]
    assert [line.split(" pid ", 1)[1].split(": ", 1)[1].split()[:3] for line in started] == [
        ["-m", "cmm_twin", "mes"],
        ["-m", "cmm_twin", "gateway"],
        ["-m", "cmm_twin", "simulate"],
    ], started
    with sqlite3.connect(tmp_path / "data" / "mes.sqlite") as db:
        (rows,) = db.execute("SELECT count(*) FROM measurements").fetchone()
    assert rows > 0
    assert "OPC UA nodesets not found" in text  # this venv has none: one warning, the gateway runs on
