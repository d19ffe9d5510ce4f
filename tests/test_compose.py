"""The docker plant stack, checked statically (no Docker, no network): docker-compose.yml's mounts,
builds and provisioning paths exist, images are pinned by digest, every service has a health check,
log rotation and resource limits, ports come from variables with loopback defaults, command lines
parse with the programs' own parsers, the InfluxDB tokens are least privilege; the Dockerfile installs
the package. The rule checkers are also run on bad input, so the tests can fail.
(Secrets and credentials: test_stack_secrets.py; the dashboard: test_dashboard.py.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cmm_twin.gateway.config import load_config as load_gateway_config
from cmm_twin.gateway.sinks.historian.settings import HistorianSettings
from cmm_twin.gateway.sinks.opcua.nodesets import default_nodesets_dir
from cmm_twin.mes.cli import load_config as load_mes_config
from cmm_twin.simulator.cli import parse_settings
from tests.plant_stack import (
    DASHBOARD_FILE,
    DATASOURCE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENTRYPOINT,
    ONE_SHOT,
    PROVIDER_FILE,
    PUBLISHED_PORTS,
    ROOT,
    SERVICES,
    TOKEN_SCRIPT,
    TOKENS_VOLUME,
    compose_model,
    compose_services,
    env_example,
    environment,
    interpolate,
    load_yaml,
    provisioned_datasource,
    repo_path_of,
    service_mounts,
)


def test_the_stack_has_its_services() -> None:
    assert set(compose_services()) == SERVICES


def test_bind_mounts_and_builds_point_at_files_in_the_repo() -> None:
    compose = compose_model()
    declared = set(compose.get("volumes") or {})
    for name, service in compose_services().items():
        for mount in service_mounts(service):
            if mount.is_bind:
                assert mount.source.startswith("./"), f"{name}: bind mount {mount.source} outside the repo"
                assert (ROOT / mount.source).exists(), f"{name}: {mount.source} does not exist"
                assert mount.read_only, f"{name}: bind mount {mount.source} should be read-only"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing"
    assert {"influxdb-data", "influxdb-config", "grafana-data", "gateway-data"} <= declared


def test_the_gateway_and_the_simulator_share_the_inbox_volume() -> None:
    services = compose_services()
    gateway = {m.target: m.source for m in service_mounts(services["gateway"])}
    simulator = {m.target: m.source for m in service_mounts(services["simulator"])}
    assert gateway["/data"] == simulator["/data"]
    assert gateway["/data"] in (compose_model().get("volumes") or {}), "the gateway's data dir is a named volume"


def test_grafana_provisioning_resolves_to_files_in_the_repo() -> None:
    grafana = compose_services()["grafana"]
    provisioning = repo_path_of(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None
    assert provisioning.resolve() == (ROOT / "grafana" / "provisioning").resolve()
    assert (provisioning / "datasources" / DATASOURCE_FILE.name).is_file()
    assert (provisioning / "dashboards" / PROVIDER_FILE.name).is_file()
    providers = load_yaml(PROVIDER_FILE)["providers"]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        folder = repo_path_of(grafana, provider["options"]["path"])
        assert folder is not None, f"provider path {provider['options']['path']} is not mounted from the repo"
        assert (folder / DASHBOARD_FILE.name).is_file()
        assert folder.resolve() == DASHBOARD_FILE.parent.resolve()
    home = repo_path_of(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None
    assert home.resolve() == DASHBOARD_FILE.resolve()


def test_the_datasource_takes_its_settings_from_the_grafana_environment() -> None:
    source = provisioned_datasource()
    grafana_env = environment(compose_services()["grafana"])
    text = DATASOURCE_FILE.read_text(encoding="utf-8")
    referenced = set(re.findall(r"\$\{?([A-Za-z_]\w*)\}?", text)) - {"__file"}
    assert referenced, "the datasource file should take org and bucket from the environment"
    assert referenced <= set(grafana_env), f"not passed to grafana: {sorted(referenced - set(grafana_env))}"
    assert source["url"] == "http://influxdb:8086"
    for key in ("organization", "defaultBucket"):
        assert re.fullmatch(r"\$\{?[A-Z_][A-Z0-9_]*\}?", source["jsonData"][key]), key
    # The token: Grafana's read-only one, a file the init step made, in a read-only mount.
    assert source["secureJsonData"] == {"token": "$__file{/run/secrets/influx/grafana.token}"}
    mounts = {m.target: m for m in service_mounts(compose_services()["grafana"])}
    assert mounts["/run/secrets/influx"].source == TOKENS_VOLUME and mounts["/run/secrets/influx"].read_only


# A version tag (for reading) and the digest (what is pulled).
_PINNED_IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9./_-]*:(?!latest\b)[A-Za-z0-9_.-]*\d[A-Za-z0-9_.-]*@sha256:[0-9a-f]{64}")
_DIGEST = "@sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("influxdb:2.7.11" + _DIGEST, True),
        ("grafana/grafana:11.4.0" + _DIGEST, True),
        ("influxdb:2.7.11", False),
        ("grafana/grafana:11.4.0@sha256:abc", False),
        ("grafana/grafana", False),
        ("grafana/grafana:latest" + _DIGEST, False),
        ("influxdb:alpine", False),
    ],
)
def test_the_pin_rule(image: str, pinned: bool) -> None:
    assert bool(_PINNED_IMAGE_RE.fullmatch(image)) is pinned


def test_images_are_pinned() -> None:
    for name, service in compose_services().items():
        if "image" in service:
            assert _PINNED_IMAGE_RE.fullmatch(service["image"]), f"{name}: image {service['image']} is not pinned"
        else:
            assert "build" in service, f"{name}: neither image nor build"
    images = {name: s.get("image", "") for name, s in compose_services().items()}
    assert images["influxdb"].startswith("influxdb:2.7.")
    assert images["influxdb-init"] == images["influxdb"]  # its influx CLI matches the server
    assert images["grafana"].startswith("grafana/grafana:11.")
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    for base, _ in stages:
        assert _PINNED_IMAGE_RE.fullmatch(base), f"Dockerfile base {base} is not pinned"
    assert [stage for _, stage in stages] == ["nodesets", ""]  # the last stage is the image
    assert re.match(r"node:\d+\.\d+\.\d+-bookworm-slim@", stages[0][0]), stages[0]
    assert re.match(r"python:3\.11\.\d+-slim-bookworm@", stages[-1][0]), stages[-1]


def test_the_dockerfile_installs_the_package_and_runs_it_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    # The dependencies in a layer of their own, then the package (its console command on PATH).
    runs = re.findall(r"^RUN (.+)$", text, re.MULTILINE)
    deps = runs.index("pip install --no-cache-dir -r /tmp/src/requirements.txt")
    package = next(i for i, run in enumerate(runs) if run.startswith("pip install --no-cache-dir --no-deps /tmp/src "))
    assert deps < package and "cmm-twin --version" in runs[package]
    copied: list[str] = []
    for line in re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE):
        copied += [p.rstrip("/") for p in line.split()[:-1] if not p.startswith("--")]
    assert {"requirements.txt", "pyproject.toml", "README.md", "LICENSE", "cmm_twin"} <= set(copied)
    assert {"cmm_twin/launcher/nodesets.sh", "deploy/docker/entrypoint.sh"} <= set(copied)
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    for source in copied:
        if source == "/nodesets":  # from the node stage
            continue
        assert (ROOT / source).exists(), f"COPY {source}: missing"
        assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert {".env", ".git", ".venv", "data"} <= ignored
    # The nodesets land where the gateway looks by default (the image's Python has prefix /usr/local).
    where = default_nodesets_dir().relative_to(sys.prefix)
    assert re.search(rf"^COPY --from=nodesets /nodesets /usr/local/{re.escape(str(where))}$", text, re.MULTILINE)
    assert re.search(r"^RUN bash /tmp/nodesets\.sh /nodesets ", text, re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)$", text, re.MULTILINE)
    assert users, "no USER: the processes would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["cmm-twin-entrypoint"\]$', text, re.MULTILINE)


def test_every_service_has_a_health_check_restarts_and_waits_for_healthy_dependencies() -> None:
    services = compose_services()
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no" and "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"{name}: no healthcheck"
        assert not check.get("disable", False), name
        test = check["test"]
        assert isinstance(test, list), f"{name}: use the exec form of the health check"
        assert test[0] in {"CMD", "CMD-SHELL"}, name
        assert len(test) > 1, name
        assert service.get("restart") == "unless-stopped", name
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for dependency, rule in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule == {"condition": wanted}, f"{name} -> {dependency}"
    assert set(services["gateway"]["depends_on"]) == {"influxdb", "influxdb-init", "mes"}
    assert set(services["grafana"]["depends_on"]) == {"influxdb", "influxdb-init"}
    assert set(services["influxdb-init"]["depends_on"]) == {"influxdb"}
    assert services["influxdb"]["healthcheck"]["test"] == ["CMD", "influx", "ping"]
    for name, port in (("mes", 8000), ("gateway", 8080)):
        command = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/health" in command, name


_PORT_RE = re.compile(r"\$\{CMM_BIND:-127\.0\.0\.1\}:\$\{([A-Z_]+_PORT):-(\d+)\}:(\d+)")


def port_problems(service: Mapping[str, Any]) -> list[str]:
    """Published ports that are not `${CMM_BIND:-127.0.0.1}:${NAME_PORT:-N}:TARGET` strings."""
    return [
        f"{port!r}: expected ${{CMM_BIND:-127.0.0.1}}:${{NAME_PORT:-N}}:TARGET"
        for port in service.get("ports", [])
        if not (isinstance(port, str) and _PORT_RE.fullmatch(port))
    ]


def test_the_port_rule_rejects_a_fixed_or_unquoted_port() -> None:
    assert port_problems({"ports": ["${CMM_BIND:-127.0.0.1}:${MES_PORT:-8000}:8000"]}) == []
    assert port_problems({"ports": ["127.0.0.1:8000:8000"]})
    assert port_problems({"ports": ["${CMM_BIND:-0.0.0.0}:${MES_PORT:-8000}:8000"]})
    assert port_problems({"ports": ["${MES_PORT:-8000}:8000"]})
    assert port_problems({"ports": [{"target": 8000, "published": 8000}]})


def test_ports_come_from_variables_with_loopback_defaults() -> None:
    example = env_example()
    assert example["CMM_BIND"] == "127.0.0.1"
    for name, service in compose_services().items():
        assert port_problems(service) == [], name
        published = {_PORT_RE.fullmatch(port).groups() for port in service.get("ports", [])}  # type: ignore[union-attr]
        assert {(var, int(default), int(target)) for var, default, target in published} == PUBLISHED_PORTS[name]
        for var, default, target in published:
            # Without .env and with the example: this host only, the documented port.
            for env in ({}, example):
                assert interpolate(f"${{CMM_BIND:-127.0.0.1}}:${{{var}:-{default}}}", env) == f"127.0.0.1:{default}"
            assert example[var] == default, var
            assert int(target) > 0


def test_every_service_rotates_its_logs_and_has_resource_limits() -> None:
    for name, service in compose_services().items():
        logging = service.get("logging")
        assert isinstance(logging, dict), f"{name}: no logging"
        assert logging["driver"] == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 2, name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        memory, cpus = service.get("mem_limit", limits.get("memory")), service.get("cpus", limits.get("cpus"))
        assert isinstance(memory, str) and re.fullmatch(r"\d+[mg]", memory), f"{name}: no memory limit"
        assert cpus is not None and 0 < float(cpus) <= 2, f"{name}: no CPU limit"


def _commands_with_env() -> dict[str, list[str]]:
    """Each Python service's command, interpolated with .env.example (secrets filled in)."""
    env = {key: value or f"test-{key.lower()}" for key, value in env_example().items()}
    commands: dict[str, list[str]] = {}
    for name in ("mes", "gateway", "simulator"):
        command = compose_services()[name]["command"]
        assert "entrypoint" not in compose_services()[name], (
            f"{name}: keep the image's entry point (secrets from files)"
        )
        assert isinstance(command, list), f"{name}: use the exec form of command"
        commands[name] = [interpolate(str(part), env) for part in command]
    return commands


def test_the_command_lines_parse_with_the_programs_own_parsers() -> None:
    commands = _commands_with_env()
    example = env_example()
    mes = commands["mes"]
    assert mes[:2] == ["cmm-twin", "mes"]
    mes_config = load_mes_config(mes[2:], environ={})
    assert (mes_config.host, mes_config.port, str(mes_config.db)) == ("0.0.0.0", 8000, "/data/mes.sqlite")

    gateway = commands["gateway"]
    assert gateway[:2] == ["cmm-twin", "gateway"]
    env = {key: value or f"test-{key.lower()}" for key, value in env_example().items()}
    gateway_env = {key: interpolate(value, env) for key, value in environment(compose_services()["gateway"]).items()}
    config = load_gateway_config(gateway[2:], environ=gateway_env)
    assert str(config.data_dir) == "/data"
    assert config.options["mes_url"] == "http://mes:8000"
    assert config.http == ("0.0.0.0", 8080)
    assert config.options["opcua_endpoint"] == "opc.tcp://0.0.0.0:4840/cmm-twin/"
    historian = HistorianSettings.from_config(config)
    assert historian is not None and historian.influx is not None and historian.kind == "influx"
    assert historian.influx.url == "http://influxdb:8086"
    assert historian.influx.org == example["DOCKER_INFLUXDB_INIT_ORG"]
    assert historian.influx.bucket == example["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert config.once is False

    simulator = commands["simulator"]
    assert simulator[:2] == ["cmm-twin", "simulate"]
    settings = parse_settings(simulator[2:], {})
    assert str(settings.outdir) == str(config.inbox) == "/data/inbox"
    assert (settings.machines, settings.rate_hz, settings.speedup) == (3, 1.0, 60.0)


def test_the_gateway_gets_its_tokens_and_opcua_credentials_from_env() -> None:
    services = compose_services()
    gateway = environment(services["gateway"])
    env = {key: value or f"test-{key.lower()}" for key, value in env_example().items()}
    # The OPC UA endpoint is not loopback, so the gateway needs a user name and password.
    assert interpolate(gateway["OPCUA_USER"], env)
    assert interpolate(gateway["OPCUA_PASSWORD"], env)
    influx = environment(services["influxdb"])
    assert gateway["MES_TOKEN"] == environment(services["mes"])["MES_TOKEN"]
    assert gateway["GATEWAY_TOKEN"].startswith("${GATEWAY_TOKEN:?")  # its HTTP side is not loopback
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    grafana = environment(services["grafana"])
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_the_influxdb_tokens_are_least_privilege() -> None:
    """The admin token reaches only InfluxDB and the init step; the gateway gets a write-only token and
    Grafana a read-only one, made by the init step into a volume the two mount read-only."""
    services = compose_services()
    admin = environment(services["influxdb"])["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    holders = {name for name, s in services.items() for value in environment(s).values() if value == admin}
    assert holders == {"influxdb", "influxdb-init"}
    assert "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN" not in DATASOURCE_FILE.read_text(encoding="utf-8")
    init = services["influxdb-init"]
    assert environment(init)["INFLUX_TOKEN"] == admin
    assert init["entrypoint"] == ["bash", "/init/influx-tokens.sh"]
    assert repo_path_of(init, "/init/influx-tokens.sh") == ROOT / "deploy/docker/influx-tokens.sh"
    init_mounts = {m.target: m for m in service_mounts(init)}
    assert init_mounts["/tokens"].source == TOKENS_VOLUME and not init_mounts["/tokens"].read_only
    gateway = services["gateway"]
    assert "INFLUX_TOKEN" not in environment(gateway)
    assert environment(gateway)["INFLUX_TOKEN_FILE"] == "/run/secrets/influx/gateway.token"
    for name in ("gateway", "grafana"):
        mount = {m.target: m for m in service_mounts(services[name])}["/run/secrets/influx"]
        assert (mount.source, mount.read_only) == (TOKENS_VOLUME, True), name
    for name in set(services) - {"influxdb-init", "gateway", "grafana"}:
        assert TOKENS_VOLUME not in {m.source for m in service_mounts(services[name])}, name
    # The script makes exactly these: write-only for the gateway (the image's uid), read-only for Grafana.
    script = TOKEN_SCRIPT.read_text(encoding="utf-8")
    assert re.findall(r"^make (\w+) \"\$(\w+)\" (--\S+)$", script, re.MULTILINE) == [
        ("gateway", "gateway_uid", "--write-bucket"),
        ("grafana", "grafana_uid", "--read-bucket"),
    ]
    uid = re.search(r"^gateway_uid=(\d+)", script, re.MULTILINE)
    assert uid is not None
    assert re.search(rf"^USER {uid.group(1)}:", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert "--all-access" not in script and "--operator" not in script
    checked = subprocess.run(["bash", "-n", str(TOKEN_SCRIPT)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_the_image_entry_point_reads_a_secret_from_its_file(tmp_path: Path) -> None:
    token = tmp_path / "gateway.token"
    token.write_text("write-only-token")
    shown = 'echo "$INFLUX_TOKEN|${INFLUX_TOKEN_FILE-unset}|$MES_TOKEN"'
    result = _entrypoint(
        {"PATH": "/usr/bin:/bin", "INFLUX_TOKEN_FILE": str(token), "MES_TOKEN": "m"}, "sh", "-c", shown
    )
    assert (result.returncode, result.stdout) == (0, "write-only-token|unset|m\n"), result.stderr
    missing = _entrypoint({"PATH": "/usr/bin:/bin", "INFLUX_TOKEN_FILE": str(tmp_path / "nope")}, "true")
    assert missing.returncode == 2
    assert missing.stderr == f"entrypoint: INFLUX_TOKEN_FILE={tmp_path / 'nope'} is not a readable file\n"
