"""Shared reading of the plant stack's files for tests/test_compose.py, test_dashboard.py and
test_stack_secrets.py: docker-compose.yml, .env.example, the Grafana provisioning, compose's
`${VAR}` interpolation."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DASHBOARD_FILE = ROOT / "grafana" / "dashboards" / "cmm_dashboard.json"
DATASOURCE_FILE = ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
PROVIDER_FILE = ROOT / "grafana" / "provisioning" / "dashboards" / "cmm.yml"

SERVICES = {"influxdb", "influxdb-init", "grafana", "mes", "gateway", "simulator"}
ONE_SHOT = {"influxdb-init"}
"""Services that run once: `restart: "no"`, and what depends on them waits for their success."""
# service -> (host port variable, default, container port), each published on ${CMM_BIND:-127.0.0.1}.
PUBLISHED_PORTS: dict[str, set[tuple[str, int, int]]] = {
    "influxdb": {("INFLUXDB_PORT", 8086, 8086)},
    "influxdb-init": set(),
    "grafana": {("GRAFANA_PORT", 3000, 3000)},
    "mes": {("MES_PORT", 8000, 8000)},
    "gateway": {("GATEWAY_HTTP_PORT", 8080, 8080), ("GATEWAY_OPCUA_PORT", 4840, 4840)},
    "simulator": set(),
}
TOKENS_VOLUME = "influx-tokens"
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
TOKEN_SCRIPT = ROOT / "deploy" / "docker" / "influx-tokens.sh"

SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


@functools.cache
def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: expected a mapping at the top"
    return cast(dict[str, Any], data)


@functools.cache
def dashboard_model() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")))


@functools.cache
def env_example() -> dict[str, str]:
    """KEY=VALUE lines of .env.example (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f".env.example line {number}: expected KEY=VALUE"
        assert key not in values, f".env.example: {key} given twice"
        values[key] = value.strip()
    return values


def compose_model() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def compose_services() -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], compose_model()["services"])


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def service_mounts(service: Mapping[str, Any]) -> list[Mount]:
    mounts: list[Mount] = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            assert len(parts) in (2, 3), f"unexpected volume syntax {entry!r}"
            mode = parts[2] if len(parts) == 3 else "rw"
            mounts.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
        else:
            mounts.append(Mount(str(entry["source"]), str(entry["target"]), bool(entry.get("read_only", False))))
    return mounts


def repo_path_of(service: Mapping[str, Any], container_path: str) -> Path | None:
    """The repository path a container path is bind-mounted from (the deepest mount wins), if any."""
    path = PurePosixPath(container_path)
    covering = [
        m for m in service_mounts(service) if path == PurePosixPath(m.target) or PurePosixPath(m.target) in path.parents
    ]
    if not covering:
        return None
    mount = max(covering, key=lambda m: len(PurePosixPath(m.target).parts))
    if not mount.is_bind:
        return None
    return ROOT / mount.source / path.relative_to(PurePosixPath(mount.target))


def provisioned_datasource() -> dict[str, Any]:
    sources = load_yaml(DATASOURCE_FILE)["datasources"]
    assert len(sources) == 1
    return cast(dict[str, Any], sources[0])


# ------------------------------------------------------------------ interpolation and secrets


INTERPOLATION_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?+])([^}]*))?\}")
SECRET_REFERENCE_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def compose_variables(compose: Mapping[str, Any]) -> set[str]:
    """Every VAR of a `${VAR...}` in the compose model (`$${...}` is an escaped dollar)."""
    names: set[str] = set()
    for text in strings(compose):
        names |= {m.group(1) for m in INTERPOLATION_RE.finditer(text.replace("$$", ""))}
        assert not re.search(r"(?<!\$)\$[A-Za-z_]", text.replace("$$", "")), f"write ${{VAR}}, not $VAR: {text!r}"
    return names


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:?msg}`, `${VAR:-default}` substitution (enough for this file)."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        empty = value is None or (operator.startswith(":") and value == "")
        if operator.lstrip(":").startswith("?") and empty:
            raise LookupError(f"{name}: {argument}")
        if operator.lstrip(":").startswith("-") and empty:
            return argument
        return value or ""

    return INTERPOLATION_RE.sub(one, text)


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def is_secret_key(key: str) -> bool:
    return any(word in key.upper() for word in SECRET_WORDS) and not key.endswith("_FILE")
