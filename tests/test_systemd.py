"""deploy/systemd: the gateway's unit checked by `systemd-analyze verify` (where it exists) and against
the gateway itself: its command line and example environment file parse with the gateway's own
option resolver, and the stop timeout, the state directory and the hardening are what docs/install.md says.

Not tested here: the unit running under a real systemd (no systemd as PID 1 in the test machine).
"""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cmm_twin.gateway.config import gateway_options, load_config
from cmm_twin.launcher.settings import STOP_TIMEOUT_S
from tests.gateway_harness import ROOT

UNIT = ROOT / "deploy" / "systemd" / "cmm-twin-gateway.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "cmm-twin-gateway.env.example"
INSTALL_PREFIX = "/opt/cmm-twin"
SECRETS = {"MES_TOKEN", "INFLUX_TOKEN", "OPCUA_USER", "OPCUA_PASSWORD", "GATEWAY_TOKEN"}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
}


def read_unit(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, strict=True, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(encoding="utf-8"))
    return {section: dict(parser[section]) for section in parser.sections()}


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and key.isupper() and key not in values, f"{path.name} line {number}: {raw!r}"
            values[key] = value
    return values


def verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of the unit with the install prefix moved into tmp_path, where a
    stand-in `cmm-twin` exists (verify checks that ExecStart's program is executable)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd; scripts/system-deps.sh installs it)")
    prefix = tmp_path / "opt" / "cmm-twin"
    (prefix / "bin").mkdir(parents=True)
    stand_in = prefix / "bin" / "cmm-twin"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(unit_text.replace(INSTALL_PREFIX, str(prefix)), encoding="utf-8")
    return subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120, check=False)


def test_systemd_analyze_verify_passes_without_a_warning(tmp_path: Path) -> None:
    result = verify(UNIT.read_text(encoding="utf-8"), tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_verify_reports_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: a typo in a hardening directive is reported (systemd would ignore it)."""
    text = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = verify(text, tmp_path)
    assert "ProtectSytem" in result.stderr


def test_the_unit_runs_the_installed_gateway_as_its_own_user_with_its_state_directory() -> None:
    service = read_unit(UNIT)["Service"]
    assert service["User"] == service["Group"] == "cmm-twin"
    state = Path("/var/lib") / service["StateDirectory"]
    assert service["WorkingDirectory"] == str(state)
    assert service["EnvironmentFile"] == "/etc/cmm-twin/gateway.env"
    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == [f"{INSTALL_PREFIX}/bin/cmm-twin", "gateway"]
    config = load_config(argv[2:], environ={})
    assert config.data_dir == state
    assert str(state) in service["ReadWritePaths"].split()
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error: restarting cannot fix it
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert "Environment" not in service  # secrets only through the EnvironmentFile


def test_the_stop_timeout_matches_the_other_supervisors() -> None:
    """SIGTERM, then the same grace as docker compose gives the gateway, longer than the launcher's."""
    service = read_unit(UNIT)["Service"]
    assert service["KillSignal"] == "SIGTERM"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grace = compose["services"]["gateway"]["stop_grace_period"]
    assert grace == f"{service['TimeoutStopSec']}s"
    assert int(service["TimeoutStopSec"]) >= STOP_TIMEOUT_S


def test_the_example_environment_names_only_gateway_options_and_empty_secrets() -> None:
    example = read_env_file(ENV_EXAMPLE)
    known = {option.env for option in gateway_options()}
    options = {key for key in example if key.startswith("CMM_")}
    assert options - known == set(), "not gateway options"
    assert set(example) - options == SECRETS
    assert {key: example[key] for key in SECRETS} == dict.fromkeys(SECRETS, "")
    # As the service sees it: the example's options resolve, the unit's flags win.
    service = read_unit(UNIT)["Service"]
    config = load_config(shlex.split(service["ExecStart"])[2:], environ=example)
    assert config.options["mes_url"] == example["CMM_MES_URL"]
    assert config.http == ("127.0.0.1", 8080)
    assert str(config.data_dir) == "/var/lib/cmm-twin"
