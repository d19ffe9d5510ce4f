"""The Grafana dashboard, checked statically: every Flux query of grafana/dashboards/cmm_dashboard.json
uses only the historian names of the README's "The historian" (imported from the line-protocol module,
never copied), and the dashboard has the panels, the datasource uid and the `machine_id` variable it
promises. The checkers return lists of problems, and each one is also run on bad input, so the tests
can fail.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest

from cmm_twin.gateway.sinks.historian.lineprotocol import (
    FIELD_KEYS,
    HEALTH_FIELD_KEYS,
    HEALTH_MEASUREMENT,
    MEASUREMENT,
    TAG_KEYS,
)
from tests.plant_stack import (
    dashboard_model,
    env_example,
    provisioned_datasource,
)

# measurement -> (fields, tags): the contract, from the code that writes the points.
SCHEMA: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    MEASUREMENT: (frozenset(FIELD_KEYS), frozenset(TAG_KEYS)),
    HEALTH_MEASUREMENT: (frozenset(HEALTH_FIELD_KEYS), frozenset()),
}
BUILTIN_COLUMNS = frozenset({"_time", "_value", "_field", "_measurement", "_start", "_stop"})


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
    queries = dashboard_queries(dashboard_model())
    assert len([q for q in queries if q.is_panel]) >= 7
    problems = [f"{q.where}: {p}" for q in queries for p in flux_problems(q.query)]
    assert problems == []


def test_panel_queries_use_the_dashboard_time_range() -> None:
    for q in dashboard_queries(dashboard_model()):
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
    dashboard = dashboard_model()
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
        _find_panel(dashboard_model(), {"spindle_speed"})


def test_every_panel_and_query_variable_uses_the_provisioned_datasource() -> None:
    source = provisioned_datasource()
    assert source["type"] == "influxdb"
    assert source["jsonData"]["version"] == "Flux"
    expected = {"type": "influxdb", "uid": source["uid"]}
    dashboard = dashboard_model()
    users = [(f"panel {p.get('title')!r}", p) for p in _panels(dashboard)]
    users += [
        (f"panel {p.get('title')!r} target {t.get('refId')}", t) for p in _panels(dashboard) for t in p["targets"]
    ]
    users += [(f"variable {v['name']}", v) for v in _variables(dashboard) if v.get("type") == "query"]
    for where, user in users:
        assert user.get("datasource") == expected, where


def test_the_machine_id_variable_filters_every_cmm_measurement_query() -> None:
    dashboard = dashboard_model()
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
    dashboard = dashboard_model()
    assert dashboard["uid"] == "cmm-twin"
    assert dashboard["title"] == "cmm-twin: thermal compensation"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None
    names = {v["name"] for v in _variables(dashboard)}
    text = json.dumps(dashboard)
    used = set(re.findall(r"\$\{([A-Za-z]\w*)(?::\w+)?\}", text)) | set(re.findall(r"\$([A-Za-z]\w*)", text))
    assert used <= names, f"undefined dashboard variables: {sorted(used - names)}"
    bucket = {v["name"]: v for v in _variables(dashboard)}["bucket"]
    assert bucket["query"] == env_example()["DOCKER_INFLUXDB_INIT_BUCKET"]
    assert "bucket" in dashboard["description"]
    for q in dashboard_queries(dashboard):
        assert re.search(r'bucket\s*:\s*"\$\{bucket\}"', q.query), f"{q.where} does not read the bucket variable"
