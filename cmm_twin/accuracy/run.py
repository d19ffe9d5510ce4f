"""Orchestration of one accuracy run: per scenario, the simulator writes parts with truth, a real
gateway process (`cmm_edge_gateway.py --once`, embedded SQLite historian, MES off) reads them, and
the records in its store are joined with the truth and measured (docs/accuracy.md).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmm_twin.accuracy.goals import ScenarioFigures
from cmm_twin.accuracy.join import join, read_store, read_truth
from cmm_twin.accuracy.metrics import cell_figures, grouped_figures
from cmm_twin.errors import CmmTwinError, ConfigError
from cmm_twin.simulator.catalogue import CATALOGUE, part_type_index
from cmm_twin.simulator.cli import SimulatorSettings, parse_settings
from cmm_twin.simulator.cli import run as run_simulator
from cmm_twin.simulator.gateway_toml import gateway_toml
from cmm_twin.simulator.machines import DEFAULT_MPE, parse_mpe

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent
SCENARIOS = ("lab", "shop", "hot-parts")
START = "2026-01-05T06:00:00Z"
"""Time stamp of part 0: fixed, so a seed gives the same measurement ids in every run."""
RETENTION_DAYS = 36500
"""The store keeps the (fixed, past) time stamps: no purge during the run."""
GATEWAY_TIMEOUT_S = 3600.0


class AccuracyRunError(CmmTwinError):
    """A step of the run failed (the simulator or the gateway)."""


@dataclass(frozen=True)
class AccuracySettings:
    """Validated settings of an accuracy run."""

    features: int = 20_000
    """Features per scenario (at least; whole parts are written)."""
    scenarios: tuple[str, ...] = SCENARIOS
    seed: int = 1
    machines: int = 12
    mpe: str | None = None
    """Per-machine MPE (`A:K[,...]`, the simulator's --mpe); None: the simulator's default."""
    workdir: Path | None = None
    keep: bool = False
    json_path: Path | None = None
    check: bool = False
    log_level: str = "INFO"


def parts_for(features: int, machines: int) -> int:
    """The fewest parts whose features add up to at least `features` (part k's type from the catalogue)."""
    sizes = np.array([len(t.features) for t in CATALOGUE], dtype=np.int64)
    estimate = math.ceil(features / float(sizes.min())) + 1
    per_part = sizes[part_type_index(np.arange(estimate, dtype=np.int64), machines)]
    return int(np.searchsorted(np.cumsum(per_part), features) + 1)


def simulator_settings(settings: AccuracySettings, scenario: str, inbox: Path, truth: Path) -> SimulatorSettings:
    """The simulator's settings of one scenario, parsed by its own command line (environment ignored)."""
    argv = [
        "--outdir",
        str(inbox),
        "--truth-dir",
        str(truth),
        "--count",
        str(parts_for(settings.features, settings.machines)),
        "--rate",
        "0",
        "--seed",
        str(settings.seed),
        "--machines",
        str(settings.machines),
        "--scenario",
        scenario,
        "--start",
        START,
        *(["--mpe", settings.mpe] if settings.mpe else []),
    ]
    return parse_settings(argv, {})


def check_simulator_options(settings: AccuracySettings, workdir: Path) -> None:
    """Raise ConfigError (naming our flag) when the simulator refuses a value we pass on."""
    for scenario in settings.scenarios:
        try:
            simulator_settings(settings, scenario, workdir / "inbox", workdir / "truth")
        except ConfigError as exc:
            where = exc.key if exc.key in ("--mpe", "--machines", "--seed") else f"--scenarios {scenario}"
            raise ConfigError(where, exc.reason) from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config_text(settings: AccuracySettings) -> str:
    """The gateway's TOML: each machine's MPE, as the simulator draws its CMM errors within it,
    and the part catalogue."""
    return gateway_toml(settings.machines, parse_mpe(settings.mpe) if settings.mpe else DEFAULT_MPE)


def run_gateway(data_dir: Path, config: Path, log_path: Path) -> int:
    """The gateway (`python -m cmm_twin gateway`, installed or in a checkout) with `--once` on
    `data_dir` (sqlite historian, MES off, OPC UA on a free port); returns its exit code. Its
    environment has no CMM_* variable and its working directory no .env."""
    command = [
        sys.executable,
        "-m",
        "cmm_twin",
        "gateway",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
        "--http",
        "127.0.0.1:0",
        "--opcua-endpoint",
        f"opc.tcp://127.0.0.1:{_free_port()}/cmm-twin/",
        "--settle-ms",
        "50",
        "--historian",
        "sqlite",
        "--mes-url",
        "off",
        "--history-retention-days",
        str(RETENTION_DAYS),
        "--log-level",
        "WARNING",
        "--once",
    ]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CMM_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH", "")]))
    with log_path.open("wb") as log_file:
        try:
            done = subprocess.run(
                command,
                cwd=data_dir.parent,
                env=environ,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=GATEWAY_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise AccuracyRunError(
                f"gateway did not finish within {GATEWAY_TIMEOUT_S:.0f} s (log: {log_path})"
            ) from None
    return done.returncode


def run_scenario(settings: AccuracySettings, scenario: str, workdir: Path) -> ScenarioFigures:
    """Simulate, ingest and compare one scenario under `workdir/<scenario>/`."""
    started = time.monotonic()
    base = workdir / scenario
    data_dir, truth_dir = base / "data", base / "truth"
    sim = simulator_settings(settings, scenario, data_dir / "inbox", truth_dir)
    data_dir.joinpath("inbox").mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    summary = run_simulator(sim)
    log.info("%s: simulator wrote %d parts, %d features", scenario, summary.parts, summary.measurements)

    config = base / "gateway.toml"
    config.write_text(gateway_config_text(settings), encoding="utf-8")
    log_path = base / "gateway.log"
    code = run_gateway(data_dir, config, log_path)
    if code == 2:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise AccuracyRunError(f"{scenario}: the gateway refused to start: {tail[0]}")
    if code != 0:
        log.warning("%s: gateway --once exited %d (something was rejected; see %s)", scenario, code, log_path)

    joined = join(read_truth(truth_dir), read_store(data_dir / "state" / "history.sqlite"))
    features = joined.features
    elapsed_s = time.monotonic() - started
    log.info("%s: %d of %d truth rows joined in %.1f s", scenario, len(features), joined.truth_rows, elapsed_s)
    return ScenarioFigures(
        scenario=scenario,
        overall=cell_figures(features),
        by_material=grouped_figures(features, joined.material),
        by_kind=grouped_figures(features, joined.feature_kind),
        truth_rows=joined.truth_rows,
        missing=len(joined.missing_ids),
        extra_records=joined.extra_records,
        spec_mismatches=joined.spec_mismatches,
        parts=summary.parts,
        elapsed_s=elapsed_s,
        missing_examples=joined.missing_ids[:10],
    )
