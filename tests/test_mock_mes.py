"""The mock MES on real sockets: in-process (aiohttp TestServer), in a thread for the fuzz test, and as a
real process for kill -9 durability and the one-line exit 2. Responses are checked against the
server's own OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmm_twin.errors import ConfigError
from cmm_twin.mes import store as store_module
from cmm_twin.mes import validation
from cmm_twin.mes.cli import load_config
from cmm_twin.mes.openapi import openapi_document
from cmm_twin.mes.server import CONFIG, MEASUREMENTS_PATH, STORE, MesConfig, create_app
from cmm_twin.mes.validation import (
    MalformedBodyError,
    batch_is_valid,
    ensure_unique_keys,
    is_valid_record,
    parse_body,
    record_problems,
    record_texts,
)
from cmm_twin.physics.thermal import FLAG_NAMES
from cmm_twin.records import RESULT_FIELDS, canonical_timestamp, measurement_id

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"mock MES listening on (http://[^\s:]+:(\d+))")
START = datetime(2026, 1, 5, 6, 0, tzinfo=UTC)
Client = TestClient[web.Request, web.Application]


def make_record(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """A complete, valid result record (the i-th part of machine CMM-01); `overrides` replace fields."""
    moment = START + timedelta(seconds=i)
    record: dict[str, Any] = {
        "measurement_id": measurement_id("CMM-01", f"P{i:06d}", "length_x", moment),
        "timestamp": canonical_timestamp(moment),
        "machine_id": "CMM-01",
        "part_id": f"P{i:06d}",
        "feature": "length_x",
        "material": "AL6061",
        "cte_per_k": 2.36e-05,
        "nominal_mm": 100.0,
        "tolerance_mm": 0.01,
        "lower_tol_mm": -0.01,
        "upper_tol_mm": 0.01,
        "measured_mm": 100.0118,
        "part_temp_c": 25.0,
        "air_temp_c": 24.0,
        "scale_temp_c": None,
        "compensated_mm": 100.00000,
        "correction_um": -11.8,
        "deviation_um": 0.0,
        "uncertainty_um": 2.84,
        "verdict": "PASS",
        "flags": ["part_not_soaked"],
        "unit": "mm",
        "compensation": "gateway",
        "source_format": "csv",
        "source_file": "cmm01_batch.csv",
    }
    record.update(overrides)
    return record


PARSERS = ["stdlib", *(["orjson"] if validation.fast_loads is not None else [])]


@contextlib.contextmanager
def using_parser(name: str) -> Iterator[None]:
    """Parse bodies with orjson (when installed) or with the stdlib json module meanwhile."""
    saved = validation.fast_loads
    validation.fast_loads = saved if name == "orjson" else None
    try:
        yield
    finally:
        validation.fast_loads = saved


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once per available JSON parser."""
    with using_parser(request.param):
        yield request.param


def mes_config(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> MesConfig:
    """Configuration through the real command-line parser (no token unless `environ` has MES_TOKEN)."""
    return load_config(["--db", str(tmp_path / "mes.db"), *args], {} if environ is None else environ)


@contextlib.asynccontextmanager
async def running(config: MesConfig) -> AsyncIterator[Client]:
    """The real application on a loopback port, with a client."""
    async with TestClient(TestServer(create_app(config))) as client:
        yield client


JSON_HEADERS = {"Content-Type": "application/json"}


async def post(client: Client, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST `body` (bytes as is, anything else as JSON) as application/json (unless `headers` say
    otherwise); returns status and parsed JSON answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(MEASUREMENTS_PATH, data=data, headers={**JSON_HEADERS, **(headers or {})}) as response:
        return response.status, await response.json(content_type=None)


async def get_json(client: Client, path: str) -> tuple[int, Any]:
    async with client.get(path) as response:
        return response.status, await response.json(content_type=None)


# --- a minimal JSON Schema checker (jsonschema is not installed): the keywords the document uses ---


def schema_errors(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "$") -> list[str]:
    """Why `value` does not match `schema` (empty when it does); fails loudly on an unknown keyword."""
    known = {
        *("$ref", "type", "enum", "const", "properties", "required", "additionalProperties", "items"),
        *("minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum", "maximum"),
        *("exclusiveMinimum", "oneOf", "description", "examples", "default"),
    }
    assert set(schema) <= known, f"checker does not know {set(schema) - known}"
    if "$ref" in schema:
        target: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return schema_errors(value, target, doc, path)
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not schema_errors(value, s, doc, path)]
        return [] if len(matching) == 1 else [f"{path}: matches {len(matching)} of oneOf"]
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is_type(value, name) for name in names):
            return [f"{path}: {value!r:.60} is not {types}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in enum")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} != {schema['const']!r}")
    if isinstance(value, str):
        errors += _string_errors(value, schema, path)
    if _is_type(value, "number"):
        errors += _number_errors(value, schema, path)
    if isinstance(value, list):
        errors += _array_errors(value, schema, doc, path)
    if isinstance(value, dict):
        errors += _object_errors(value, schema, doc, path)
    return errors


def _string_errors(value: str, schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
        errors.append(f"{path}: length {len(value)}")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if schema.get("format") == "date-time":
        try:
            assert datetime.fromisoformat(value).tzinfo is not None
        except (ValueError, AssertionError):
            errors.append(f"{path}: not a date-time with offset")
    return errors


def _number_errors(value: float, schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
        errors.append(f"{path}: {value} out of range")
    if "exclusiveMinimum" in schema and not value > schema["exclusiveMinimum"]:
        errors.append(f"{path}: {value} <= {schema['exclusiveMinimum']}")
    return errors


def _array_errors(value: list[Any], schema: dict[str, Any], doc: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
        errors.append(f"{path}: {len(value)} items")
    for i, item in enumerate(value):
        errors += schema_errors(item, schema.get("items", {}), doc, f"{path}[{i}]")
    return errors


def _object_errors(value: dict[str, Any], schema: dict[str, Any], doc: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}: missing {name}" for name in schema.get("required", []) if name not in value]
    properties = schema.get("properties", {})
    for name, item in value.items():
        if name in properties:
            errors += schema_errors(item, properties[name], doc, f"{path}.{name}")
        elif schema.get("additionalProperties", True) is False:
            errors.append(f"{path}: unexpected {name}")
    return errors


def _is_type(value: Any, name: str) -> bool:
    if name == "number":
        return type(value) is int or (type(value) is float and math.isfinite(value))
    return {
        "integer": type(value) is int,
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "null": value is None,
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[name]


def response_schema(doc: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    """The schema the document declares for that answer (falling back on `default`)."""
    responses = doc["paths"][path][method]["responses"]
    declared = responses.get(str(status), responses.get("default"))
    assert declared is not None, f"{method.upper()} {path} -> {status} is not documented"
    schema: dict[str, Any] = declared["content"]["application/json"]["schema"]
    return schema


# --- in-process tests ---


async def test_batch_is_stored_once_and_duplicates_are_counted(
    parser: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="cmm_twin.mes")
    batch = [make_record(i) for i in range(3)]
    async with running(mes_config(tmp_path)) as client:
        assert await post(client, batch) == (200, {"accepted": 3, "duplicates": 0})
        assert await post(client, batch) == (200, {"accepted": 0, "duplicates": 3})
        # a repeat inside one batch is a duplicate too, and the new record is stored
        assert await post(client, [make_record(3), make_record(3), batch[0]]) == (200, {"accepted": 1, "duplicates": 2})
        assert await get_json(client, "/api/v1/stats") == (200, {"count": 4, "duplicates": 5, "conflicts": 0})
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 4})
        status, stored = await get_json(client, MEASUREMENTS_PATH)
    assert status == 200
    assert stored == [{"seq": i + 1, **make_record(i)} for i in range(4)]
    assert "batch: accepted=3 duplicates=0 records=3 ms=" in caplog.text
    assert "batch: accepted=0 duplicates=3 records=3 ms=" in caplog.text


async def test_rows_written_by_another_connection_count_as_stored(tmp_path: Path) -> None:
    config = mes_config(tmp_path)
    async with running(config) as client:
        assert await post(client, [make_record(1)]) == (200, {"accepted": 1, "duplicates": 0})
        with contextlib.closing(sqlite3.connect(config.db)) as other, other:
            other.execute(
                "INSERT INTO measurements (measurement_id, record) VALUES (?, ?)",
                (make_record(2)["measurement_id"], json.dumps(make_record(2))),
            )
        assert await post(client, [make_record(2), make_record(3)]) == (200, {"accepted": 1, "duplicates": 1})
        assert await get_json(client, "/api/v1/stats") == (200, {"count": 3, "duplicates": 1, "conflicts": 0})


ADDED_FIELDS = ("lower_tol_mm", "upper_tol_mm", "unit", "compensation", "source_format", "source_file")


def legacy_record(i: int, **overrides: Any) -> dict[str, Any]:
    """`make_record(i)` as an MES stored it before the record gained ADDED_FIELDS."""
    return {k: v for k, v in make_record(i, **overrides).items() if k not in ADDED_FIELDS}


async def test_a_record_stored_before_the_new_fields_is_a_duplicate_of_its_replay(tmp_path: Path) -> None:
    config = mes_config(tmp_path)
    async with running(config) as client:
        assert (await get_json(client, "/api/v1/stats"))[0] == 200  # the store exists
        with contextlib.closing(sqlite3.connect(config.db)) as other, other:
            other.executemany(
                "INSERT INTO measurements (measurement_id, record) VALUES (?, ?)",
                [(make_record(i)["measurement_id"], json.dumps(legacy_record(i))) for i in range(6)],
            )
        # the same measurements sent again by an upgraded gateway (its spool replayed): every new
        # field holds what the old record meant (limits -tol/+tol, mm, gateway, csv); the file
        # name was not recorded before, so any is the same measurement
        replay = [make_record(0), make_record(1, source_file="replayed_from_spool.csv"), make_record(2, nominal_mm=100)]
        assert await post(client, replay) == (200, {"accepted": 0, "duplicates": 3})
        # a new field that contradicts the old record is a conflict, as any other changed value
        for i, name, value, stored in (
            (3, "upper_tol_mm", 0.02, 0.01),
            (4, "unit", "deg", "mm"),
            (5, "compensation", "source", "gateway"),
        ):
            status, answer = await post(client, [make_record(i, **{name: value})])
            assert (status, answer["conflicts"][0]["field"]) == (409, name)
            assert (answer["conflicts"][0]["stored"], answer["conflicts"][0]["received"]) == (stored, value)
        status, answer = await post(client, [make_record(3, source_format="qdas")])
        assert (status, answer["conflicts"][0]["field"]) == (409, "source_format")
        assert await get_json(client, "/api/v1/stats") == (200, {"count": 6, "duplicates": 3, "conflicts": 4})
        status, stored = await get_json(client, MEASUREMENTS_PATH)
    assert stored[0] == {"seq": 1, **legacy_record(0)}  # returned as it was stored, as the document says
    doc = openapi_document(config)
    assert schema_errors(stored, response_schema(doc, MEASUREMENTS_PATH, "get", 200), doc) == []


@pytest.mark.parametrize(
    ("stored", "received", "difference"),
    [
        (legacy_record(1), make_record(1), None),
        (make_record(1), legacy_record(1), None),  # either side may be the old one
        (legacy_record(1), make_record(1, source_file="other.csv"), None),
        (make_record(1), make_record(1, source_file="other.csv"), "source_file"),  # both have it: compared
        (legacy_record(1), make_record(1, lower_tol_mm=-0.02), "lower_tol_mm"),
        (legacy_record(1), make_record(1, tolerance_mm=None), "tolerance_mm"),
        (legacy_record(1), make_record(1, source_format="qif"), "source_format"),
        (make_record(1, verdict="UNDEFINED"), make_record(1), "verdict"),
    ],
)
def test_first_difference_reads_missing_new_fields_as_their_old_meaning(
    stored: dict[str, Any], received: dict[str, Any], difference: str | None
) -> None:
    assert store_module.first_difference(stored, received) == difference


async def test_single_object_body_and_empty_array(parser: str, tmp_path: Path) -> None:
    async with running(mes_config(tmp_path)) as client:
        assert await post(client, make_record(7)) == (200, {"accepted": 1, "duplicates": 0})
        assert await post(client, []) == (200, {"accepted": 0, "duplicates": 0})
        assert await post(client, b"  [ ]  ") == (200, {"accepted": 0, "duplicates": 0})
        # parameters of the JSON type are fine
        body = json.dumps([make_record(8)]).encode()
        status, answer = await post(client, body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert (status, answer) == (200, {"accepted": 1, "duplicates": 0})
        _, stored = await get_json(client, MEASUREMENTS_PATH)
    assert [r["part_id"] for r in stored] == ["P000007", "P000008"]


INVALID_CASES: list[tuple[str, Any, str]] = [
    ("nominal_mm", True, "must be a number, got boolean"),
    ("nominal_mm", 10_000.5, "must be within +-10000"),
    ("measured_mm", -10_001, "must be within +-10000"),
    ("compensated_mm", 1e308, "must be within +-10000"),
    ("tolerance_mm", -0.01, "must be > 0"),
    ("tolerance_mm", 0, "must be > 0"),
    ("tolerance_mm", 10_001.0, "<= 10000"),
    ("tolerance_mm", "0.01", "must be a number, got string"),
    ("lower_tol_mm", -10_000.01, "must be within +-10000"),
    ("lower_tol_mm", False, "must be a number, got boolean"),
    ("upper_tol_mm", "none", "must be a number, got string"),
    ("upper_tol_mm", 10**400, "must be a finite number"),
    ("measured_mm", "100.0", "must be a number, got string"),
    ("compensated_mm", None, "must be a number, got null"),
    ("uncertainty_um", -1.0, "must be >= 0"),
    ("part_temp_c", 10**400, "must be a finite number"),
    ("air_temp_c", "24", "must be a number, got string"),
    ("measurement_id", "7C9E6679-7425-40DE-944B-E07FC1F90AE7", "lowercase canonical UUID"),
    ("measurement_id", "7c9e66797425-40de-944b-e07fc1f90ae7xxxx", "lowercase canonical UUID"),
    ("timestamp", "2026-01-05T06:00:00", "ISO 8601 date-time with offset"),
    ("timestamp", "2026-02-30T06:00:00Z", "not a valid date-time"),
    ("timestamp", 1767592800, "must be a string, got number"),
    ("machine_id", "CMM 01", "must match"),
    ("machine_id", "x" * 65, "must match"),
    ("feature", "", "must match"),
    ("part_id", "", "must be 1..64 characters"),
    ("part_id", "P" * 65, "must be 1..64 characters"),
    ("part_id", "P\n1", "must be printable"),
    ("material", ["AL6061"], "must be a string, got array"),
    ("verdict", "OK", "must be one of PASS, FAIL, UNCERTAIN"),
    ("verdict", "pass", "must be one of PASS, FAIL, UNCERTAIN, UNDEFINED"),
    ("unit", "um", "must be one of mm, deg"),
    ("unit", None, "must be a string, got null"),
    ("compensation", "GATEWAY", "must be one of gateway, source, none"),
    ("source_format", "dmis", "must be one of csv, qdas, calypso, qif"),
    ("source_format", ["csv"], "must be a string, got array"),
    ("source_file", "", "must be 1..255 characters"),
    ("source_file", "f" * 256, "must be 1..255 characters"),
    ("source_file", "a\tb.csv", "must be printable"),
    ("source_file", 7, "must be a string, got number"),
    ("flags", "part_not_soaked", "must be an array of strings"),
    ("flags", ["hot"], "[0] must be one of"),
    ("flags", [1], "[0] must be one of"),
]


@pytest.mark.parametrize(("field", "value", "message"), INVALID_CASES)
def test_each_invalid_value_is_named(field: str, value: Any, message: str) -> None:
    record = make_record(1, **{field: value})
    problems = record_problems(record)
    assert [f for f, _ in problems] == [field]
    assert message in problems[0][1]
    assert not is_valid_record(record)
    assert not batch_is_valid([make_record(2), record])


def test_valid_variants_are_accepted() -> None:
    for overrides in (
        {"air_temp_c": None, "scale_temp_c": 20.5},
        {"nominal_mm": 100, "part_temp_c": -5, "deviation_um": -3},  # JSON integers are numbers
        {"timestamp": "2026-01-05T07:00:00.123456789+01:00", "flags": [*FLAG_NAMES.values()]},
        {"part_id": "Ü-42 (rework)", "material": "al6061", "verdict": "UNCERTAIN", "flags": []},
        # signed lengths (a coordinate, a form deviation's nominal 0), up to the 10 m limit
        {"nominal_mm": 0.0, "measured_mm": -12.5, "compensated_mm": -10_000, "deviation_um": -2.5},
        {"nominal_mm": 10_000.0, "measured_mm": 0, "compensated_mm": 10_000},
        # an asymmetric and a one-sided zone: no symmetric tolerance
        {"tolerance_mm": None, "lower_tol_mm": -0.02, "upper_tol_mm": 0.05},
        {"tolerance_mm": None, "lower_tol_mm": None, "upper_tol_mm": 0.005, "flags": ["temperature_assumed"]},
        {"tolerance_mm": 10_000, "lower_tol_mm": -10_000, "upper_tol_mm": 10_000},
        # an angle without any limit, from a Q-DAS file, compensated by nobody
        {"tolerance_mm": None, "lower_tol_mm": None, "upper_tol_mm": None, "verdict": "UNDEFINED", "unit": "deg"},
        {"compensation": "none", "source_format": "qdas", "source_file": "line 3: part 7.dfq"},
        {
            "compensation": "source",
            "source_format": "calypso",
            "source_file": "x" * 255,
            "flags": ["timestamp_from_file"],
        },
        {"source_format": "qif", "source_file": "Ü:1.QIF"},
    ):
        record = make_record(1, **overrides)
        assert record_problems(record) == []
        assert is_valid_record(record)
        assert batch_is_valid([record, make_record(2)])


async def test_invalid_batch_lists_every_invalid_record_and_stores_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="cmm_twin.mes")
    missing = make_record(2)
    del missing["verdict"]
    batch: list[Any] = [
        make_record(0),
        make_record(1, nominal_mm=True),
        missing,
        make_record(3, extra_field=1),
        "not an object",
        make_record(5),
        make_record(6, flags=["hot"], part_id=""),
    ]
    async with running(mes_config(tmp_path)) as client:
        status, answer = await post(client, batch)
        assert status == 422
        assert await get_json(client, "/api/v1/stats") == (200, {"count": 0, "duplicates": 0, "conflicts": 0})
        # the same holds for one invalid object
        assert (await post(client, make_record(9, verdict="OK")))[0] == 422
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})
    errors = answer["errors"]
    assert {(e["index"], e["field"]) for e in errors} == {
        (1, "nominal_mm"),
        (2, "verdict"),
        (3, "extra_field"),
        (4, "(record)"),
        (6, "part_id"),
        (6, "flags"),
    }
    assert all(set(e) == {"index", "field", "message"} and e["message"] for e in errors)
    assert "batch rejected: 5 of 7 records invalid, nothing stored" in caplog.text


async def test_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_TOKEN", "s3cret-Token")
    config = load_config(["--db", str(tmp_path / "mes.db")])
    assert config.token == "s3cret-Token"
    batch = [make_record(1)]
    async with running(config) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-Token"}):
            async with client.post(MEASUREMENTS_PATH, json=batch, headers=headers) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert set(await response.json()) == {"error"}
            async with client.get("/api/v1/stats", headers=headers) as response:
                assert response.status == 401
        good = {"Authorization": "Bearer s3cret-Token"}
        assert await post(client, batch, headers=good) == (200, {"accepted": 1, "duplicates": 0})
        assert await post(client, batch, headers={"Authorization": "bearer s3cret-Token"}) == (
            200,
            {"accepted": 0, "duplicates": 1},
        )
        async with client.get(MEASUREMENTS_PATH, headers=good) as response:
            assert response.status == 200
        # health and the document need no token
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 1})
        assert (await get_json(client, "/openapi.json"))[0] == 200


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"{",
        b"[1,]",
        b"[1 2]",
        b"[NaN]",
        b"[1, -Infinity]",
        b'{"a": Infinity}',
        b"\xff\xfe[]",
        b'[{"part_id": "a", "part_id": "b"}]',
        b"[] []",
        b"[" * 100_000,
        b"1" * 5000,
    ],
)
async def test_malformed_json_is_400(parser: str, tmp_path: Path, body: bytes) -> None:
    async with running(mes_config(tmp_path)) as client:
        status, answer = await post(client, body)
        assert status == 400
        assert set(answer) == {"error"}
        assert answer["error"].startswith("malformed JSON: ")


@pytest.mark.parametrize("depth", [900, 990, 1100, 100_000])
async def test_deeply_nested_values_are_rejected_not_500(parser: str, tmp_path: Path, depth: int) -> None:
    text = json.dumps([make_record(1, flags="FLAGS"), make_record(2)])
    nested = text.replace('"FLAGS"', "[" * depth + "]" * depth).encode()
    async with running(mes_config(tmp_path)) as client:
        status, answer = await post(client, nested)
        assert status in (400, 422), answer
        assert status == 400 or answer["errors"][0]["message"].endswith("got array")
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})


def with_repeated_key(record: dict[str, Any], name: str, value: Any, first: bool = True) -> str:
    """The JSON text of `record` with `name` given a second time (before or after the real pair)."""
    pairs = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in record.items()]
    extra = f"{json.dumps(name)}: {json.dumps(value)}"
    return "{" + ", ".join([extra, *pairs] if first else [*pairs, extra]) + "}"


@pytest.mark.parametrize(
    "text",
    [
        with_repeated_key(make_record(1), "verdict", "FAIL"),  # both values valid: the last one would win
        with_repeated_key(make_record(1), "verdict", "nonsense"),  # the first would be invalid
        with_repeated_key(make_record(1), "part_id", "a:b"),
        with_repeated_key(make_record(1), "flags", [], first=False),
        with_repeated_key(make_record(1, part_id="\u00dc:1"), "air_temp_c", None),  # \u escapes in the text
        with_repeated_key(make_record(1, unknown=1), "unknown", 2),  # an invalid record with a repeat
        with_repeated_key(make_record(1, source_file="a:b.dfq"), "source_file", "c:d.dfq"),  # colons in both
        with_repeated_key(make_record(1, source_file="a.qif"), "unit", "deg"),
    ],
)
async def test_repeated_keys_are_malformed_json(parser: str, tmp_path: Path, text: str) -> None:
    body = f"[{json.dumps(make_record(0))}, {text}]".encode()
    async with running(mes_config(tmp_path)) as client:
        status, answer = await post(client, body)
        assert (status, answer["error"].startswith("malformed JSON: duplicate key")) == (400, True)
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})
        # without the repeat, colons in strings and \u escapes are fine
        for record in (
            make_record(2, part_id="a:b:c", material="x:"),
            make_record(3, part_id="\u00dc\\u:"),
            make_record(4, source_file="12:00:00 part:7.dfq"),
        ):
            assert (await post(client, [record]))[0] == 200
            assert (await post(client, json.dumps(record, ensure_ascii=False).encode()))[0] == 200


def test_colons_in_source_file_keep_the_fast_repeated_key_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def second_parse(*args: Any) -> Any:
        raise AssertionError("parsed a second time")

    body = parse_body(json.dumps([make_record(1, source_file="12:00:00 part:7.dfq", part_id="a:b")]).encode())
    monkeypatch.setattr(validation, "_decode", second_parse)
    ensure_unique_keys(body, records_valid=True)  # the colons add up: no second parse
    repeated = parse_body(with_repeated_key(make_record(1, source_file="a:b.dfq"), "source_file", "c.dfq").encode())
    with pytest.raises(AssertionError, match="parsed a second time"):
        ensure_unique_keys(repeated, records_valid=True)


async def test_body_over_the_limit_is_413_json(tmp_path: Path) -> None:
    async with running(mes_config(tmp_path, "--max-body-mb", "0.01")) as client:
        big = json.dumps([make_record(i) for i in range(40)]).encode()  # ~26 kB > 10 kB
        status, answer = await post(client, big)
        assert status == 413
        assert "larger than 10485 bytes" in answer["error"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: aiohttp's own limit
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        async with client.post(MEASUREMENTS_PATH, data=chunks(), headers=JSON_HEADERS) as response:
            assert response.status == 413
            assert set(await response.json()) == {"error"}
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})
    async with running(mes_config(tmp_path)) as client:  # default 16 MB
        status, answer = await post(client, b"[" + b" " * (16 * 1024 * 1024) + b"]")
        assert status == 413


async def test_unknown_path_and_wrong_method_are_json(tmp_path: Path) -> None:
    async with running(mes_config(tmp_path)) as client:
        assert await get_json(client, "/nope") == (404, {"error": "no such path: /nope"})
        async with client.delete(MEASUREMENTS_PATH) as response:
            assert response.status == 405
            assert "POST" in response.headers["Allow"]
            assert "not allowed" in (await response.json())["error"]
        async with client.post("/health") as response:
            assert response.status == 405
            assert set(await response.json()) == {"error"}


async def test_paging_in_arrival_order(tmp_path: Path) -> None:
    async with running(mes_config(tmp_path)) as client:
        for start in (20, 0, 10):  # arrival order differs from the records' own order
            assert (await post(client, [make_record(i) for i in range(start, start + 10)]))[0] == 200
        _, first = await get_json(client, f"{MEASUREMENTS_PATH}?limit=12")
        _, rest = await get_json(client, f"{MEASUREMENTS_PATH}?after=12&limit=10000")
        _, none = await get_json(client, f"{MEASUREMENTS_PATH}?after=30")
        _, default = await get_json(client, MEASUREMENTS_PATH)
        for query in ("after=-1", "after=x", "limit=0", "limit=10001", "limit=1.5", "after=%201", "limit="):
            status, answer = await get_json(client, f"{MEASUREMENTS_PATH}?{query}")
            assert status == 400, query
            assert set(answer) == {"error"}
    assert [r["seq"] for r in first] == list(range(1, 13))
    assert [r["seq"] for r in rest] == list(range(13, 31))
    assert none == []
    assert default == first + rest
    expected_order = [*range(20, 30), *range(0, 10), *range(10, 20)]
    assert [r["part_id"] for r in default] == [f"P{i:06d}" for i in expected_order]


async def test_fail_rate_one_answers_503_and_stores_nothing(tmp_path: Path) -> None:
    async with running(mes_config(tmp_path, "--fail-rate", "1")) as client:
        for _ in range(5):
            async with client.post(MEASUREMENTS_PATH, json=[make_record(1)]) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "1"
                assert await response.json() == {"error": "injected failure"}
        assert await get_json(client, "/api/v1/stats") == (200, {"count": 0, "duplicates": 0, "conflicts": 0})
        assert (await get_json(client, MEASUREMENTS_PATH))[0] == 200  # only POST fails


async def fault_pattern(db_dir: Path, seed: str) -> list[int]:
    """Statuses of 40 POSTs to a fresh MES (database in `db_dir`) with --fail-rate 0.5 and `seed`."""
    async with running(mes_config(db_dir, "--fail-rate", "0.5", "--seed", seed)) as client:
        return [(await post(client, [make_record(i)]))[0] for i in range(40)]


async def test_fail_rate_is_reproducible_with_a_seed(tmp_path: Path) -> None:
    first = await fault_pattern(tmp_path / "a", "7")
    assert first == await fault_pattern(tmp_path / "b", "7")
    assert set(first) == {200, 503}
    assert first != await fault_pattern(tmp_path / "c", "8")


async def test_latency_delays_api_requests_only(tmp_path: Path) -> None:
    async with running(mes_config(tmp_path, "--latency-ms", "150")) as client:
        started = time.perf_counter()
        assert (await get_json(client, "/api/v1/stats"))[0] == 200
        assert time.perf_counter() - started >= 0.15  # never earlier than the latency
    # /health is not delayed: it answers while an /api/ request still waits out a long latency
    async with running(mes_config(tmp_path, "--latency-ms", "600000")) as client:
        waiting = asyncio.create_task(get_json(client, "/api/v1/stats"))
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})
        assert not waiting.done()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


async def test_health_answers_while_a_batch_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = store_module.MeasurementStore._insert
    committing, release = threading.Event(), threading.Event()

    def slow_insert(self: store_module.MeasurementStore, rows: Any) -> Any:
        committing.set()
        assert release.wait(60)  # a disk stalled until the test releases it, in the store's thread
        return real_insert(self, rows)

    monkeypatch.setattr(store_module.MeasurementStore, "_insert", slow_insert)
    async with running(mes_config(tmp_path)) as client:
        posting = asyncio.create_task(post(client, [make_record(1)]))
        assert await asyncio.to_thread(committing.wait, 60)
        assert await get_json(client, "/health") == (200, {"status": "ok", "count": 0})
        assert not posting.done()
        release.set()
        assert await posting == (200, {"accepted": 1, "duplicates": 0})


async def test_unexpected_error_is_logged_and_500_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: store_module.MeasurementStore, rows: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_module.MeasurementStore, "insert", broken)
    async with running(mes_config(tmp_path)) as client:
        status, answer = await post(client, [make_record(1)])
        assert (status, set(answer)) == (500, {"error"})
        assert "disk on fire" not in answer["error"]
        assert (await get_json(client, "/health"))[0] == 200
    assert "unexpected error answering POST /api/v1/measurements" in caplog.text
    assert "RuntimeError: disk on fire" in caplog.text


async def test_openapi_document_matches_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MES_TOKEN", "tok")
    config = load_config(["--db", str(tmp_path / "mes.db"), "--max-body-mb", "0.01"])
    app = create_app(config)
    async with TestClient(TestServer(app)) as client:
        doc = await (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.")
        routes = {
            (r.resource.canonical, r.method.lower())
            for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None
        }
        documented = {(p, m) for p, item in doc["paths"].items() for m in item}
        assert routes == documented
        assert doc["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": "required only when the MES runs with MES_TOKEN set",
        }
        record = doc["components"]["schemas"]["Record"]
        assert record["required"] == list(RESULT_FIELDS)
        assert list(record["properties"]) == list(RESULT_FIELDS)
        body_schema = doc["paths"][MEASUREMENTS_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema_errors([make_record(1), make_record(2)], body_schema, doc) == []
        assert schema_errors(make_record(1, air_temp_c=None), body_schema, doc) == []
        for field, value, message in INVALID_CASES:
            if "printable" not in message:  # "printable" is prose in the schema
                assert schema_errors(make_record(1, **{field: value}), record, doc), (field, value)

        auth = {"Authorization": "Bearer tok"}
        seen: set[tuple[str, str, int]] = set()

        async def check(method: str, path: str, response: aiohttp.ClientResponse) -> None:
            assert response.content_type == "application/json"
            schema = response_schema(doc, path, method, response.status)
            assert schema_errors(await response.json(), schema, doc) == [], (method, path, response.status)
            seen.add((method, path, response.status))

        small = json.dumps([make_record(i) for i in range(3)]).encode()
        for data, headers in (
            (small, auth),
            (small, auth),
            (small, {}),
            (small, {**auth, "Content-Type": "text/plain"}),
            (json.dumps([make_record(1, measured_mm=100.02)]).encode(), auth),
            (b"[NaN]", auth),
            (json.dumps([make_record(1, verdict="X"), 5]).encode(), auth),
            (json.dumps([make_record(i) for i in range(40)]).encode(), auth),
        ):
            async with client.post(MEASUREMENTS_PATH, data=data, headers={**JSON_HEADERS, **headers}) as response:
                await check("post", MEASUREMENTS_PATH, response)
        for path in (MEASUREMENTS_PATH, f"{MEASUREMENTS_PATH}?after=1&limit=1", f"{MEASUREMENTS_PATH}?limit=0"):
            async with client.get(path, headers=auth) as response:
                await check("get", MEASUREMENTS_PATH, response)
        for path in ("/api/v1/stats", "/health"):
            async with client.get(path, headers=auth) as response:
                await check("get", path, response)
        async with client.put(MEASUREMENTS_PATH, headers=auth) as response:
            await check("post", MEASUREMENTS_PATH, response)  # 405: the `default` answer
        async with client.get("/health/x") as response:
            await check("get", "/health", response)  # 404: the `default` answer
    config_503 = load_config(["--db", str(tmp_path / "other.db"), "--fail-rate", "1"])
    async with (
        running(config_503) as client,
        client.post(MEASUREMENTS_PATH, data=small, headers={**JSON_HEADERS, **auth}) as response,
    ):
        assert (
            response.headers["Retry-After"]
            == doc["paths"][MEASUREMENTS_PATH]["post"]["responses"]["503"]["headers"]["Retry-After"]["schema"]["const"]
        )
        await check("post", MEASUREMENTS_PATH, response)
    assert {s for m, p, s in seen if m == "post"} == {200, 400, 401, 405, 409, 413, 415, 422, 503}


# --- robustness: fast paths agree with the per-field checks, and a fuzzed server never stores garbage ---

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
NEAR_VALID: st.SearchStrategy[Any] = st.sampled_from(
    [
        *(0, 1, -1, 0.5, 1e308, "PASS", "FAIL", "part_not_soaked", "CMM-01", "", "2026-01-05T06:00:00Z", None, []),
        *(10_000, -10_000.0, 10_000.5, "UNDEFINED", "deg", "source", "none", "qif", "a.csv", "x" * 256),
    ]
)


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[str, Any]:
    """A valid record with up to three fields changed, dropped or added."""
    record = make_record(draw(st.integers(0, 10**6)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        name = draw(st.sampled_from(RESULT_FIELDS))
        if action == "set":
            record[name] = draw(NEAR_VALID | JSON_VALUES)
        elif action == "drop":
            record.pop(name, None)
        else:
            record[draw(st.text(max_size=10))] = draw(JSON_VALUES)
    return record


BATCH_ITEMS = mutated_records() | JSON_VALUES


@settings(max_examples=300, deadline=None)
@given(st.lists(BATCH_ITEMS, max_size=6))
def test_fast_paths_agree_with_the_field_checks(batch: list[Any]) -> None:
    valid = [not record_problems(item) for item in batch]
    assert [is_valid_record(item) for item in batch] == valid
    assert batch_is_valid(batch) == all(valid)


PRINTABLE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=64).filter(
    str.isprintable
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(PRINTABLE_TEXT, st.sampled_from(["}, {", "},{", "} ,  {", "x", "\\"])), max_size=5),
    st.sampled_from([None, 0, 2]),
    st.sampled_from([(",", ":"), (", ", ": "), (" ,  ", " : ")]),
)
def test_record_texts_are_exactly_the_records_sent(
    parts: list[tuple[str, str]], indent: int | None, separators: tuple[str, str]
) -> None:
    records = [make_record(i, part_id=(p + s)[:64], material=(s + p)[-64:]) for i, (p, s) in enumerate(parts)]
    for name in PARSERS:
        with using_parser(name):
            check_record_texts(records, indent, separators, parts)


def check_record_texts(
    records: list[dict[str, Any]], indent: int | None, separators: tuple[str, str], parts: list[tuple[str, str]]
) -> None:
    for body in (records, *records[:1]):
        parsed = parse_body(f" {json.dumps(body, indent=indent, separators=separators)}\n".encode())
        assert parsed.records == (body if isinstance(body, list) else [body])
        assert batch_is_valid(parsed.records)
        assert [json.loads(text) for text in record_texts(parsed)] == parsed.records
        ensure_unique_keys(parsed, records_valid=True)
    if records:
        repeated = with_repeated_key(records[-1], "part_id", records[0]["part_id"], first=len(parts) % 2 == 0)
        parsed = parse_body(repeated.encode())
        assert batch_is_valid(parsed.records)
        with pytest.raises(MalformedBodyError, match="duplicate key"):
            ensure_unique_keys(parsed, records_valid=True)


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook that fails on a repeated key."""
    assert len({k for k, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


class ThreadedMes:
    """The real application served from a thread (hypothesis drives it with a blocking client)."""

    def __init__(self, config: MesConfig) -> None:
        self.config = config
        self.port = 0
        self.app = create_app(config)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ThreadedMes:
        self._thread.start()
        assert self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """One request on a fresh connection; status and parsed JSON answer."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read(), object_pairs_hook=no_repeated_keys)
        finally:
            connection.close()


def test_fuzzed_bodies_never_fail_the_server_nor_store_garbage(parser: str, tmp_path: Path) -> None:
    config = mes_config(tmp_path, "--max-body-mb", "0.002")  # ~2 kB: large random bodies get 413
    bodies = st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=2100, max_size=4000),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),  # NaN/Infinity tokens included
        st.lists(BATCH_ITEMS, max_size=4).map(lambda v: json.dumps(v).encode()),
        mutated_records().map(lambda v: json.dumps(v).encode()),
        st.builds(
            lambda r, name, value: with_repeated_key(r, name, value).encode(),
            mutated_records(),
            st.sampled_from(RESULT_FIELDS),
            NEAR_VALID | JSON_VALUES,
        ),
    )
    outcomes: Counter[str] = Counter()
    with ThreadedMes(config) as mes:
        stored_seq = 0

        @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(bodies)
        def fuzz(body: bytes) -> None:
            nonlocal stored_seq
            _, before = mes.request("GET", "/api/v1/stats")
            status, answer = mes.request("POST", MEASUREMENTS_PATH, body)
            assert status in (200, 400, 409, 413, 422), (status, answer, body[:200])
            outcomes[f"{status} stored" if status == 200 and answer["accepted"] else str(status)] += 1
            _, after = mes.request("GET", "/api/v1/stats")
            if status != 200:
                conflicts = after.pop("conflicts") - before.pop("conflicts")
                assert after == before
                assert conflicts == 0 or (status == 409 and 0 < conflicts <= len(answer["conflicts"]))
                return
            assert after["count"] == before["count"] + answer["accepted"]
            _, new = mes.request("GET", f"{MEASUREMENTS_PATH}?after={stored_seq}")
            assert len(new) == answer["accepted"]
            for record in new:
                stored_seq = record.pop("seq")
                assert record_problems(record) == []

        fuzz()
    assert set(outcomes) >= {"200 stored", "400", "413", "422"}, outcomes


# --- the real process ---


def start_mes(tmp_path: Path, *args: str, name: str = "mes") -> tuple[subprocess.Popen[bytes], str]:
    """Start `mock_mes.py --port 0 ...`; returns the process and its base URL (from its log line)."""
    env = {k: v for k, v in os.environ.items() if k != "MES_TOKEN" and not k.startswith("CMM_")}
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "mock_mes.py"), "--port", "0", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = LISTENING.search(log_path.read_text())
        if found is not None:
            return process, found.group(1)
        assert process.poll() is None, log_path.read_text()
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"mock MES did not start: {log_path.read_text()}")


@contextlib.contextmanager
def killed_on_exit(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)


async def test_acknowledged_batch_survives_kill_9(tmp_path: Path) -> None:
    batch = [make_record(i) for i in range(500)]
    db = tmp_path / "state" / "mes.db"
    process, url = start_mes(tmp_path, "--db", str(db))
    with killed_on_exit(process):
        async with aiohttp.ClientSession() as session, session.post(url + MEASUREMENTS_PATH, json=batch) as response:
            assert response.status == 200
            assert await response.json() == {"accepted": 500, "duplicates": 0}
        process.kill()  # SIGKILL right after the acknowledgement
        assert process.wait(60) == -9
    process, url = start_mes(tmp_path, "--db", str(db), "--log-level", "WARNING", name="restarted")
    with killed_on_exit(process):
        async with aiohttp.ClientSession() as session:
            async with session.get(url + MEASUREMENTS_PATH) as response:
                stored = await response.json()
            async with session.post(url + MEASUREMENTS_PATH, json=batch[:10]) as response:
                assert await response.json() == {"accepted": 0, "duplicates": 10}
            async with session.get(url + "/api/v1/stats") as response:
                assert await response.json() == {"count": 500, "duplicates": 10, "conflicts": 0}
        process.terminate()
        assert process.wait(60) == 0
    assert stored == [{"seq": i + 1, **record} for i, record in enumerate(batch)]
    log = (tmp_path / "mes.log").read_text()
    assert f"(db {db}, no token required" in log
    assert "batch: accepted=500 duplicates=0 records=500 ms=" in log
    assert "batch:" not in (tmp_path / "restarted.log").read_text()  # WARNING: only the start-up line


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--port", "99999"], {}, "--port"),
        ([], {"CMM_MES_FAIL_RATE": "often"}, "CMM_MES_FAIL_RATE"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    base_env = {k: v for k, v in os.environ.items() if k != "MES_TOKEN" and not k.startswith("CMM_")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "mock_mes.py"), "--db", str(tmp_path / "mes.db"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**base_env, **env},
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mock_mes.py: error: ")
    assert named in lines[0]


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--fail-rate", "1.5"], {}, "--fail-rate"),
        (["--fail-rate", "nan"], {}, "--fail-rate"),
        (["--latency-ms", "-1"], {}, "--latency-ms"),
        (["--max-body-mb", "0"], {}, "--max-body-mb"),
        (["--host", "example.com"], {}, "--host"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"CMM_MES_SEED": "1.5"}, "CMM_MES_SEED"),
        ([], {"CMM_MES_PORT": "-1"}, "CMM_MES_PORT"),
        (["--db", ""], {}, "--db"),
    ],
)
def test_bad_values_name_the_flag_or_variable(args: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(["--db", "x.db", *args], env)
    assert caught.value.key == named


def test_default_db_and_env_configuration(tmp_path: Path) -> None:
    bare = load_config([], {})  # `python mock_mes.py`: where the bare gateway delivers
    assert (bare.host, bare.port, bare.db) == ("127.0.0.1", 8000, Path("data/mes.sqlite"))
    config = load_config(
        [],
        {
            "CMM_MES_DB": "x.db",
            "CMM_MES_PORT": "0",
            "CMM_MES_FAIL_RATE": "0.25",
            "CMM_MES_LATENCY_MS": "5",
            "MES_TOKEN": "",
        },
    )
    assert (config.db, config.port, config.fail_rate, config.latency_ms, config.token) == (
        Path("x.db"),
        0,
        0.25,
        5.0,
        None,  # an empty token counts as unset
    )
    assert load_config(["--port", "1234"], {"CMM_MES_DB": "x.db", "CMM_MES_PORT": "99"}).port == 1234  # the flag wins
    assert create_app(config)[CONFIG] is config
    assert create_app(config)[STORE].path == Path("x.db")


async def test_known_machines_rejects_records_of_unknown_machines(tmp_path: Path) -> None:
    config = mes_config(tmp_path, "--known-machines", "CMM-01, CMM-02")
    async with running(config) as client:
        batch = [make_record(0), make_record(1, machine_id="CMM-09"), make_record(2, machine_id="CMM-02")]
        status, answer = await post(client, batch)
        assert status == 422
        assert answer == {
            "errors": [
                {"index": 1, "field": "machine_id", "message": "unknown machine 'CMM-09' (not in --known-machines)"}
            ]
        }
        status, answer = await post(client, [batch[0], batch[2]])
        assert (status, answer) == (200, {"accepted": 2, "duplicates": 0})
