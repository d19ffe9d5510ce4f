"""The docker plant stack and the Grafana dashboard, checked statically (no Docker, no network).

- Every Flux query of grafana/dashboards/cmm_dashboard.json uses only the historian names of
  the README's "The historian" (imported from the line-protocol module, never copied), and the dashboard
  has the panels, the datasource uid and the `machine_id` variable it promises.
- docker-compose.yml: mounts, builds and provisioning paths exist, images are pinned, every
  service has a health check, ports are on the host loopback, command lines parse with the
  programs' own parsers, every secret is a `${VAR}` from the untracked .env.
- No literal credential anywhere in the tree; .env is git-ignored.

The checkers return lists of problems, and each one is also run on bad input below, so the tests
can fail.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

import pytest
import yaml

from cmm_twin.gateway.config import load_config as load_gateway_config
from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
)
from cmm_twin.gateway.sinks.historian.settings import HistorianSettings
from cmm_twin.gateway.sinks.opcua.nodesets import default_nodesets_dir
from cmm_twin.mes.cli import load_config as load_mes_config
from cmm_twin.simulator.cli import parse_settings

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

# measurement -> (fields, tags): the contract, from the code that writes the points.
SCHEMA: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    MEASUREMENT: (frozenset(FIELD_KEYS), frozenset(TAG_KEYS)),
    HEALTH_MEASUREMENT: (frozenset(HEALTH_FIELD_KEYS), frozenset()),
}
BUILTIN_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop"})
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET")


@functools.cache
def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: expected a mapping at the top"
    return cast(dict[str, Any], data)


@functools.cache
def _dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")))


@functools.cache
def _env_example() -> dict[str, str]:
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


# --------------------------------------------------------------------------- Flux


_MEASUREMENT_RE = re.compile(r"""\br(?:\._measurement|\[\s*"_measurement"\s*\])\s*(?:==|!=)\s*"([^"]*)\"""")
_MEASUREMENT_ARG_RE = re.compile(r"""\bmeasurement\s*:\s*"([^"]*)\"""")
_FIELD_RE = re.compile(r"""\br(?:\._field|\[\s*"_field"\s*\])\s*(?:==|!=)\s*"([^"]*)\"""")
_FIELD_SET_RE = re.compile(
    r"""contains\(\s*value\s*:\s*r(?:\._field|\[\s*"_field"\s*\])\s*,\s*set\s*:\s*\[([^\]]*)\]"""
)
_FIELD_REGEX_RE = re.compile(r"""\br(?:\._field|\[\s*"_field"\s*\])\s*!?=~""")
_COLUMN_DOT_RE = re.compile(r"\br\.([A-Za-z_][A-Za-z0-9_]*)")
_COLUMN_INDEX_RE = re.compile(r"""\br\[\s*"([^"]*)"\s*\]""")
_TAG_ARG_RE = re.compile(r"""\btag\s*:\s*"([^"]*)\"""")
_COLUMN_LIST_RE = re.compile(r"""\b(?:columns|rowKey|columnKey)\s*:\s*\[([^\]]*)\]""")
_COLUMN_ARG_RE = re.compile(r"""\bcolumn\s*:\s*"([^"]*)\"""")
_STRING_RE = re.compile(r'"([^"]*)"')
_MACHINE_FILTER_RE = re.compile(
    r"""contains\(\s*value\s*:\s*r(?:\.machine_id|\[\s*"machine_id"\s*\])\s*,\s*set\s*:\s*\$\{machine_id:json\}\s*\)"""
)


def flux_measurements(query: str) -> set[str]:
    """Measurements a Flux query filters on (`r._measurement == "X"`, `measurement: "X"`)."""
    return set(_MEASUREMENT_RE.findall(query)) | set(_MEASUREMENT_ARG_RE.findall(query))


def flux_fields(query: str) -> set[str]:
    """Fields a Flux query selects (`r._field == "Y"`, `contains(value: r._field, set: [...])`)."""
    fields = set(_FIELD_RE.findall(query))
    for group in _FIELD_SET_RE.findall(query):
        fields |= set(_STRING_RE.findall(group))
    return fields


def flux_problems(query: str) -> list[str]:
    """Every name in a Flux query that is not in the historian contract (empty list: all good)."""
    query = re.sub(r"//[^\n]*", "", query)
    problems: list[str] = []
    measurements = flux_measurements(query)
    if not measurements:
        problems.append("names no measurement")
    unknown = measurements - SCHEMA.keys()
    problems += [f"unknown measurement {m!r}" for m in sorted(unknown)]
    known = measurements & SCHEMA.keys()
    fields = frozenset().union(*(SCHEMA[m][0] for m in known))
    tags = frozenset().union(*(SCHEMA[m][1] for m in known))
    problems += [
        f"field {f!r} is not a field of {sorted(known)}" for f in sorted(flux_fields(query)) if f not in fields
    ]
    if _FIELD_REGEX_RE.search(query):
        problems.append("a regular expression on _field cannot be checked: name the fields")
    # After a pivot, fields are columns too.
    columns_ok = BUILTIN_COLUMNS | tags | (fields if "pivot(" in query else frozenset())
    referenced: set[str] = set(_COLUMN_DOT_RE.findall(query)) | set(_COLUMN_INDEX_RE.findall(query))
    referenced |= set(_TAG_ARG_RE.findall(query)) | set(_COLUMN_ARG_RE.findall(query))
    for group in _COLUMN_LIST_RE.findall(query):
        referenced |= set(_STRING_RE.findall(group))
    problems += [
        f"column {c!r} is neither a tag of {sorted(known)} nor a Flux built-in column"
        for c in sorted(referenced)
        if c not in columns_ok
    ]
    return problems


@dataclass(frozen=True)
class FluxQuery:
    where: str
    query: str
    is_panel: bool


def _panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows (rows themselves excluded)."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") != "row":
            yield panel
        yield from _panels(panel)


def _variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], dashboard.get("templating", {}).get("list", []))


def _variable_query(variable: Mapping[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "")) if isinstance(query, dict) else str(query)


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[FluxQuery]:
    """Every Flux query: panel targets and query variables."""
    queries: list[FluxQuery] = []
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            where = f"panel {panel.get('title')!r} target {target.get('refId')}"
            queries.append(FluxQuery(where, str(target.get("query", "")), is_panel=True))
    for variable in _variables(dashboard):
        if variable.get("type") == "query":
            queries.append(FluxQuery(f"variable {variable['name']}", _variable_query(variable), is_panel=False))
    return queries


GOOD_QUERY = f"""from(bucket: "${{bucket}}")
  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)
  |> filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r["_field"] == "{FIELD_KEYS[0]}")
  |> filter(fn: (r) => contains(value: r.machine_id, set: ${{machine_id:json}}))
  |> group(columns: ["{TAG_KEYS[0]}", "_field"])"""


def test_the_flux_checker_accepts_a_query_that_keeps_the_contract() -> None:
    assert flux_problems(GOOD_QUERY) == []


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ('from(bucket: "b") |> filter(fn: (r) => r._field == "measured_mm")', "names no measurement"),
        ('filter(fn: (r) => r._measurement == "cmm_measurements")', "unknown measurement 'cmm_measurements'"),
        (
            f'filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r._field == "measured_length")',
            "field 'measured_length'",
        ),
        (
            f'filter(fn: (r) => r["_measurement"] == "{HEALTH_MEASUREMENT}" and r._field == "deviation_um")',
            "field 'deviation_um'",
        ),
        (
            f'filter(fn: (r) => r._measurement == "{MEASUREMENT}")'
            ' |> filter(fn: (r) => contains(value: r._field, set: ["measured_mm", "temp"]))',
            "field 'temp'",
        ),
        (f'filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r._field =~ /_mm$/)', "regular expression"),
        (f'filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r.machine == "CMM-01")', "column 'machine'"),
        (f'filter(fn: (r) => r._measurement == "{MEASUREMENT}" and r["host"] == "a")', "column 'host'"),
        (f'filter(fn: (r) => r._measurement == "{MEASUREMENT}") |> group(columns: ["part_id"])', "'part_id'"),
        (
            f'filter(fn: (r) => r._measurement == "{HEALTH_MEASUREMENT}") |> group(columns: ["machine_id"])',
            "'machine_id'",
        ),
        (
            f'schema.tagValues(bucket: "b", tag: "machine", predicate: (r) => r._measurement == "{MEASUREMENT}")',
            "'machine'",
        ),
    ],
)
def test_the_flux_checker_rejects_names_outside_the_contract(query: str, problem: str) -> None:
    problems = flux_problems(query)
    assert any(problem in p for p in problems), problems


def test_every_dashboard_query_uses_only_the_historian_names() -> None:
    queries = dashboard_queries(_dashboard())
    assert len([q for q in queries if q.is_panel]) >= 7
    problems = [f"{q.where}: {p}" for q in queries for p in flux_problems(q.query)]
    assert problems == []


def test_panel_queries_use_the_dashboard_time_range() -> None:
    for q in dashboard_queries(_dashboard()):
        if not q.is_panel:
            continue
        assert "range(start: v.timeRangeStart, stop: v.timeRangeStop)" in q.query, q.where
        for every in re.findall(r"aggregateWindow\(\s*every\s*:\s*([^,)]+)", q.query):
            assert every.strip() == "v.windowPeriod", q.where


def _panel_fields(panel: Mapping[str, Any]) -> set[str]:
    return set().union(*(flux_fields(str(t.get("query", ""))) for t in panel.get("targets", [])))


def _find_panel(dashboard: Mapping[str, Any], fields: set[str]) -> dict[str, Any]:
    found = [p for p in _panels(dashboard) if fields <= _panel_fields(p)]
    assert found, f"no panel shows {sorted(fields)}"
    return found[0]


def test_every_panel_subject_is_on_the_dashboard() -> None:
    dashboard = _dashboard()
    # (1) thermal correlation: lengths on the left axis, part temperature on the right.
    thermal = _find_panel(dashboard, {"part_temp_c", "measured_mm", "compensated_mm"})
    assert thermal["type"] == "timeseries"
    temp_refs = {t["refId"] for t in thermal["targets"] if flux_fields(t["query"]) == {"part_temp_c"}}
    assert temp_refs, "part_temp_c needs a target of its own for the right-axis override"
    right = {
        o["matcher"]["options"]
        for o in thermal["fieldConfig"]["overrides"]
        if o["matcher"]["id"] == "byFrameRefID"
        and {"id": "custom.axisPlacement", "value": "right"} in o["properties"]
        and {"id": "unit", "value": "celsius"} in o["properties"]
    }
    assert temp_refs <= right
    assert thermal["fieldConfig"]["defaults"]["unit"] == "lengthmm"
    # (2) correction and deviation, (4) uncertainty: time series.
    assert _find_panel(dashboard, {"correction_um", "deviation_um"})["type"] == "timeseries"
    assert _find_panel(dashboard, {"uncertainty_um"})["type"] == "timeseries"
    # (3) verdict counts: points counted per verdict tag.
    verdict = [
        p
        for p in _panels(dashboard)
        for t in p.get("targets", [])
        if re.search(r'group\(columns: \["verdict"\]\)\s*\|>\s*count\(\)', t["query"])
    ]
    assert verdict, "no panel counts points by the verdict tag"
    assert verdict[0]["type"] in {"bargauge", "stat", "barchart", "piechart"}
    # (5) buffer depth, (6) connectivity with 0/1 mappings, (7) files processed and rows rejected.
    _find_panel(dashboard, {"buffer_depth"})
    connectivity = _find_panel(dashboard, {"mes_connected", "historian_connected"})
    assert connectivity["type"] in {"state-timeline", "stat"}
    mapped = {
        key for m in connectivity["fieldConfig"]["defaults"]["mappings"] if m["type"] == "value" for key in m["options"]
    }
    assert {"0", "1"} <= mapped
    _find_panel(dashboard, {"files_processed", "rows_rejected"})


def test_the_panel_finder_fails_for_a_missing_subject() -> None:
    with pytest.raises(AssertionError, match="no panel shows"):
        _find_panel(_dashboard(), {"spindle_speed"})


def _provisioned_datasource() -> dict[str, Any]:
    sources = _load_yaml(DATASOURCE_FILE)["datasources"]
    assert len(sources) == 1
    return cast(dict[str, Any], sources[0])


def test_every_panel_and_query_variable_uses_the_provisioned_datasource() -> None:
    source = _provisioned_datasource()
    assert source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    expected = {"type": "influxdb", "uid": source["uid"]}
    dashboard = _dashboard()
    users = [(f"panel {p.get('title')!r}", p) for p in _panels(dashboard)]
    users += [
        (f"panel {p.get('title')!r} target {t.get('refId')}", t) for p in _panels(dashboard) for t in p["targets"]
    ]
    users += [(f"variable {v['name']}", v) for v in _variables(dashboard) if v.get("type") == "query"]
    for where, user in users:
        assert user.get("datasource") == expected, where


def test_the_machine_id_variable_filters_every_cmm_measurement_query() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in _variables(dashboard)}
    machine = variables["machine_id"]
    assert machine["type"] == "query"
    assert machine["multi"] is True
    assert machine["includeAll"] is True
    query = _variable_query(machine)
    assert "schema.tagValues(" in query
    assert re.search(r'\btag\s*:\s*"machine_id"', query)
    cmm_queries = [q for q in dashboard_queries(dashboard) if q.is_panel and MEASUREMENT in flux_measurements(q.query)]
    assert cmm_queries
    for q in cmm_queries:
        assert _MACHINE_FILTER_RE.search(q.query), f"{q.where} ignores the machine_id variable"
    health = [q for q in dashboard_queries(dashboard) if HEALTH_MEASUREMENT in flux_measurements(q.query)]
    assert health
    for q in health:
        assert "machine_id" not in q.query, f"{q.where}: {HEALTH_MEASUREMENT} has no tags"


def test_dashboard_variables_are_defined_and_the_bucket_matches_the_stack() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "cmm-twin"
    assert dashboard["title"] == "cmm-twin: thermal compensation"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None
    names = {v["name"] for v in _variables(dashboard)}
    text = json.dumps(dashboard)
    used = set(re.findall(r"\$\{([A-Za-z]\w*)(?::\w+)?\}", text)) | set(re.findall(r"\$([A-Za-z]\w*)", text))
    assert used <= names, f"undefined dashboard variables: {sorted(used - names)}"
    bucket = {v["name"]: v for v in _variables(dashboard)}["bucket"]
    assert bucket["query"] == _env_example()["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert "bucket" in dashboard["description"]
    for q in dashboard_queries(dashboard):
        assert re.search(r'bucket\s*:\s*"\$\{bucket\}"', q.query), f"{q.where} does not read the bucket variable"


# --------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)


def _services() -> dict[str, dict[str, Any]]:
    return cast(dict[str, dict[str, Any]], _compose()["services"])


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def _mounts(service: Mapping[str, Any]) -> list[Mount]:
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


def _repo_path_of(service: Mapping[str, Any], container_path: str) -> Path | None:
    """The repository path a container path is bind-mounted from (the deepest mount wins), if any."""
    path = PurePosixPath(container_path)
    covering = [
        m for m in _mounts(service) if path == PurePosixPath(m.target) or PurePosixPath(m.target) in path.parents
    ]
    if not covering:
        return None
    mount = max(covering, key=lambda m: len(PurePosixPath(m.target).parts))
    if not mount.is_bind:
        return None
    return ROOT / mount.source / path.relative_to(PurePosixPath(mount.target))


def test_the_stack_has_its_services() -> None:
    assert set(_services()) == SERVICES


def test_bind_mounts_and_builds_point_at_files_in_the_repo() -> None:
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    for name, service in _services().items():
        for mount in _mounts(service):
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
    services = _services()
    gateway = {m.target: m.source for m in _mounts(services["gateway"])}
    simulator = {m.target: m.source for m in _mounts(services["simulator"])}
    assert gateway["/data"] == simulator["/data"]
    assert gateway["/data"] in (_compose().get("volumes") or {}), "the gateway's data dir is a named volume"


def test_grafana_provisioning_resolves_to_files_in_the_repo() -> None:
    grafana = _services()["grafana"]
    provisioning = _repo_path_of(grafana, "/etc/grafana/provisioning")
    assert provisioning is not None
    assert provisioning.resolve() == (ROOT / "grafana" / "provisioning").resolve()
    assert (provisioning / "datasources" / DATASOURCE_FILE.name).is_file()
    assert (provisioning / "dashboards" / PROVIDER_FILE.name).is_file()
    providers = _load_yaml(PROVIDER_FILE)["providers"]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        folder = _repo_path_of(grafana, provider["options"]["path"])
        assert folder is not None, f"provider path {provider['options']['path']} is not mounted from the repo"
        assert (folder / DASHBOARD_FILE.name).is_file()
        assert folder.resolve() == DASHBOARD_FILE.parent.resolve()
    home = _repo_path_of(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None
    assert home.resolve() == DASHBOARD_FILE.resolve()


def test_the_datasource_takes_its_settings_from_the_grafana_environment() -> None:
    source = _provisioned_datasource()
    grafana_env = _environment(_services()["grafana"])
    text = DATASOURCE_FILE.read_text(encoding="utf-8")
    referenced = set(re.findall(r"\$\{?([A-Za-z_]\w*)\}?", text)) - {"__file"}
    assert referenced, "the datasource file should take org and bucket from the environment"
    assert referenced <= set(grafana_env), f"not passed to grafana: {sorted(referenced - set(grafana_env))}"
    assert source["url"] == "http://influxdb:8086"
    for key in ("organization", "defaultBucket"):
        assert re.fullmatch(r"\$\{?[A-Z_][A-Z0-9_]*\}?", source["jsonData"][key]), key
    # The token: Grafana's read-only one, a file the init step made, in a read-only mount.
    assert source["secureJsonData"] == {"token": "$__file{/run/secrets/influx/grafana.token}"}
    mounts = {m.target: m for m in _mounts(_services()["grafana"])}
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
    for name, service in _services().items():
        if "image" in service:
            assert _PINNED_IMAGE_RE.fullmatch(service["image"]), f"{name}: image {service['image']} is not pinned"
        else:
            assert "build" in service, f"{name}: neither image nor build"
    images = {name: s.get("image", "") for name, s in _services().items()}
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
    services = _services()
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
    example = _env_example()
    assert example["CMM_BIND"] == "127.0.0.1"
    for name, service in _services().items():
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
    for name, service in _services().items():
        logging = service.get("logging")
        assert isinstance(logging, dict), f"{name}: no logging"
        assert logging["driver"] == "json-file", name
        assert re.fullmatch(r"\d+[km]", logging["options"]["max-size"]), name
        assert int(logging["options"]["max-file"]) >= 2, name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        memory, cpus = service.get("mem_limit", limits.get("memory")), service.get("cpus", limits.get("cpus"))
        assert isinstance(memory, str) and re.fullmatch(r"\d+[mg]", memory), f"{name}: no memory limit"
        assert cpus is not None and 0 < float(cpus) <= 2, f"{name}: no CPU limit"


# ------------------------------------------------------------------ interpolation and secrets


_INTERPOLATION_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)((?::?[-?+])([^}]*))?\}")
_SECRET_REFERENCE_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def compose_variables(compose: Mapping[str, Any]) -> set[str]:
    """Every VAR of a `${VAR...}` in the compose model (`$${...}` is an escaped dollar)."""
    names: set[str] = set()
    for text in _strings(compose):
        names |= {m.group(1) for m in _INTERPOLATION_RE.finditer(text.replace("$$", ""))}
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

    return _INTERPOLATION_RE.sub(one, text)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _is_secret_key(key: str) -> bool:
    return any(word in key.upper() for word in SECRET_WORDS) and not key.endswith("_FILE")


def secret_environment_problems(compose: Mapping[str, Any]) -> list[str]:
    """Environment values of PASSWORD/TOKEN/SECRET keys that are not exactly a `${VAR}` reference, and
    `<SECRET>_FILE` values that are not a path under /run/secrets/ (the file holds the secret)."""
    problems: list[str] = []
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            names_a_file = key.endswith("_FILE") and _is_secret_key(key.removesuffix("_FILE"))
            if names_a_file:
                bad = not re.fullmatch(r"/run/secrets/[\w./-]+", value) or ".." in value
            else:
                bad = _is_secret_key(key) and not _SECRET_REFERENCE_RE.fullmatch(value)
            if bad:
                problems.append(f"{name}: {key}")
    return problems


def test_secret_environment_values_are_interpolated_from_env() -> None:
    compose = _compose()
    assert secret_environment_problems(compose) == []
    keys = {k for s in compose["services"].values() for k in _environment(s) if _is_secret_key(k)}
    assert {"DOCKER_INFLUXDB_INIT_PASSWORD", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN", "GF_SECURITY_ADMIN_PASSWORD"} <= keys
    assert {"OPCUA_PASSWORD", "MES_TOKEN", "GATEWAY_TOKEN"} <= keys
    # Each required value fails loudly when .env lacks it.
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if _is_secret_key(key):
                assert ":?" in value, f"{name}: {key} should use ${{VAR:?message}}"


def test_the_secret_rule_rejects_a_literal() -> None:
    compose = {"services": {"x": {"environment": {"MES_TOKEN": "abc", "A_PASSWORD": "${A:?x}"}}}}
    assert secret_environment_problems(compose) == ["x: MES_TOKEN"]
    listed = {"services": {"x": {"environment": ["GF_SECURITY_ADMIN_PASSWORD=admin"]}}}
    assert secret_environment_problems(listed) == ["x: GF_SECURITY_ADMIN_PASSWORD"]
    files = {"x": {"environment": {"INFLUX_TOKEN_FILE": "/run/secrets/a/t", "MES_TOKEN_FILE": "abcdef"}}}
    assert secret_environment_problems({"services": files}) == ["x: MES_TOKEN_FILE"]


def test_every_compose_variable_is_in_env_example_and_every_secret_there_is_empty() -> None:
    example = _env_example()
    used = compose_variables(_compose())
    assert used - set(example) == set(), "variables missing from .env.example"
    assert set(example) - used == set(), ".env.example lists variables docker-compose.yml does not use"
    for key, value in example.items():
        if _is_secret_key(key):
            assert value == "" or ("<" in value and ">" in value), f".env.example: {key} must be a placeholder"


def test_interpolation_fails_loudly_without_env() -> None:
    with pytest.raises(LookupError, match=r"MES_TOKEN: set MES_TOKEN in \.env"):
        interpolate("${MES_TOKEN:?set MES_TOKEN in .env}", {"MES_TOKEN": ""})
    assert interpolate("${A:-x}/${B}", {"B": "b"}) == "x/b"


def _commands_with_env() -> dict[str, list[str]]:
    """Each Python service's command, interpolated with .env.example (secrets filled in)."""
    env = {key: value or f"test-{key.lower()}" for key, value in _env_example().items()}
    commands: dict[str, list[str]] = {}
    for name in ("mes", "gateway", "simulator"):
        command = _services()[name]["command"]
        assert "entrypoint" not in _services()[name], f"{name}: keep the image's entry point (secrets from files)"
        assert isinstance(command, list), f"{name}: use the exec form of command"
        commands[name] = [interpolate(str(part), env) for part in command]
    return commands


def test_the_command_lines_parse_with_the_programs_own_parsers() -> None:
    commands = _commands_with_env()
    example = _env_example()
    mes = commands["mes"]
    assert mes[:2] == ["cmm-twin", "mes"]
    mes_config = load_mes_config(mes[2:], environ={})
    assert (mes_config.host, mes_config.port, str(mes_config.db)) == ("0.0.0.0", 8000, "/data/mes.sqlite")

    gateway = commands["gateway"]
    assert gateway[:2] == ["cmm-twin", "gateway"]
    env = {key: value or f"test-{key.lower()}" for key, value in _env_example().items()}
    gateway_env = {key: interpolate(value, env) for key, value in _environment(_services()["gateway"]).items()}
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
    services = _services()
    gateway = _environment(services["gateway"])
    env = {key: value or f"test-{key.lower()}" for key, value in _env_example().items()}
    # The OPC UA endpoint is not loopback, so the gateway needs a user name and password.
    assert interpolate(gateway["OPCUA_USER"], env)
    assert interpolate(gateway["OPCUA_PASSWORD"], env)
    influx = _environment(services["influxdb"])
    assert gateway["MES_TOKEN"] == _environment(services["mes"])["MES_TOKEN"]
    assert gateway["GATEWAY_TOKEN"].startswith("${GATEWAY_TOKEN:?")  # its HTTP side is not loopback
    assert influx["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    grafana = _environment(services["grafana"])
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_the_influxdb_tokens_are_least_privilege() -> None:
    """The admin token reaches only InfluxDB and the init step; the gateway gets a write-only token and
    Grafana a read-only one, made by the init step into a volume the two mount read-only."""
    services = _services()
    admin = _environment(services["influxdb"])["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    holders = {name for name, s in services.items() for value in _environment(s).values() if value == admin}
    assert holders == {"influxdb", "influxdb-init"}
    assert "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN" not in DATASOURCE_FILE.read_text(encoding="utf-8")
    init = services["influxdb-init"]
    assert _environment(init)["INFLUX_TOKEN"] == admin
    assert init["entrypoint"] == ["bash", "/init/influx-tokens.sh"]
    assert _repo_path_of(init, "/init/influx-tokens.sh") == ROOT / "deploy/docker/influx-tokens.sh"
    init_mounts = {m.target: m for m in _mounts(init)}
    assert init_mounts["/tokens"].source == TOKENS_VOLUME and not init_mounts["/tokens"].read_only
    gateway = services["gateway"]
    assert "INFLUX_TOKEN" not in _environment(gateway)
    assert _environment(gateway)["INFLUX_TOKEN_FILE"] == "/run/secrets/influx/gateway.token"
    for name in ("gateway", "grafana"):
        mount = {m.target: m for m in _mounts(services[name])}["/run/secrets/influx"]
        assert (mount.source, mount.read_only) == (TOKENS_VOLUME, True), name
    for name in set(services) - {"influxdb-init", "gateway", "grafana"}:
        assert TOKENS_VOLUME not in {m.source for m in _mounts(services[name])}, name
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


# --------------------------------------------------------------------------- the whole tree


_CREDENTIAL_RE = re.compile(
    r"""(?ix)
    (?P<key>[A-Za-z0-9_]*(?:password|passwd|token|secret)[A-Za-z0-9_]*)   # a key naming a secret
    ["']?\s*[:=]\s*                                                      # assigned
    (?P<quote>["']?)(?P<value>[A-Za-z0-9+/=_\-.~!@#%^&*]{16,})(?P=quote) # 16+ credential characters
    (?=\s|$|[,;)\]}])
    """
)


def credential_problems(path: str, text: str) -> list[str]:
    """Lines that assign what looks like a real credential to a PASSWORD/TOKEN/SECRET key."""
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        lowered = line.lower()
        if not any(word in lowered for word in ("password", "passwd", "token", "secret")):
            continue
        for match in _CREDENTIAL_RE.finditer(line):
            value = match.group("value")
            if re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
                continue  # the name of an environment variable, not its value
            if path.endswith(".py") and not match.group("quote"):
                continue  # Python: an expression (a name or attribute), not a literal
            if match.group("key").endswith("_FILE") and value.startswith("/"):
                continue  # VAR_FILE: the path of the file holding the secret
            problems.append(f"{path}:{number}: {match.group('key')}")
    return problems


def test_the_credential_scan_finds_literal_credentials() -> None:
    value = "a1B2" * 5
    assert credential_problems(".env.example", "MES_" + "TOKEN=" + value)
    assert credential_problems("x.yml", "      token: " + value)
    assert credential_problems("x.py", "PASS" + "WORD = '" + value + "'")
    assert credential_problems("x.md", 'export INFLUX_TOKEN="' + value + '"')
    assert credential_problems("x.py", "PASSWORD_ENV = 'DOCKER_INFLUXDB_INIT_PASSWORD'") == []
    assert credential_problems("x.py", "password = settings.password_value_here") == []
    assert credential_problems("x.env", "MES_TOKEN=<set-a-long-random-token>") == []
    assert credential_problems("x.env", "MES_TOKEN=") == []
    assert credential_problems("x.yml", "token: $DOCKER_INFLUXDB_INIT_ADMIN_TOKEN") == []
    assert credential_problems("x.yml", "INFLUX_TOKEN_FILE: /run/secrets/influx/gateway.token") == []
    assert credential_problems("x.yml", "INFLUX_TOKEN_FILE: " + value)


def _tree_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name]


def test_no_literal_credentials_in_the_tree() -> None:
    files = _tree_files()
    mine = {".env.example", "docker-compose.yml", "Dockerfile", ".dockerignore", "tests/test_compose.py"}
    mine |= {str(p.relative_to(ROOT)) for p in (DASHBOARD_FILE, DATASOURCE_FILE, PROVIDER_FILE)}
    assert mine <= set(files)
    problems: list[str] = []
    for name in files:
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()[:1_000_000]
        if b"\0" in data:
            continue  # binary
        problems += credential_problems(name, data.decode("utf-8", errors="replace"))
    assert problems == []


def test_env_is_git_ignored_and_kept_out_of_the_image() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, ".env is not git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".env"], cwd=ROOT, capture_output=True, check=False)
    assert tracked.returncode != 0, ".env is tracked"
    assert ".env" in {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
