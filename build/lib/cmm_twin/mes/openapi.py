"""The HTTP contract of the mock MES: its paths and limits, and the OpenAPI 3.1 document
(`GET /openapi.json`) that describes exactly what `server.py` answers, with the JSON Schema of a
result record as `fields.py` checks it. A test checks real answers against this document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from cmm_twin.mes.fields import (
    ENUM_FIELDS,
    FLAGS,
    FLOAT_MAX,
    ID_FIELDS,
    ID_PATTERN,
    LENGTH_FIELDS,
    LIMIT_FIELDS,
    MAX_BATCH_RECORDS,
    MAX_FILE_NAME_CHARS,
    MAX_LENGTH_MM,
    MAX_TEXT_CHARS,
    NON_NEGATIVE_FIELDS,
    NULLABLE_FIELDS,
    NUMBER_FIELDS,
    RECORD_FIELD,
    TEXT_FIELDS,
    TIMESTAMP_PATTERN,
    TOLERANCE_FIELDS,
    UUID_PATTERN,
)
from cmm_twin.mes.store import COMPARED_FIELDS, LEGACY_DEFAULTS, UNRECORDED_FIELDS
from cmm_twin.records import RESULT_FIELDS

if TYPE_CHECKING:
    from cmm_twin.mes.server import MesConfig

MEASUREMENTS_PATH: Final = "/api/v1/measurements"
STATS_PATH: Final = "/api/v1/stats"
HEALTH_PATH: Final = "/health"
OPENAPI_PATH: Final = "/openapi.json"
DEFAULT_PAGE_LIMIT: Final = 1000
MAX_PAGE_LIMIT: Final = 10_000
MAX_SEQ: Final = 2**63 - 1
RETRY_AFTER_S: Final = 1
JSON_TYPE: Final = "application/json"


def _closed_object(properties: dict[str, Any]) -> dict[str, Any]:
    """An object schema with only `properties`, all of them required."""
    return {
        "type": "object",
        "required": list(properties),
        "additionalProperties": False,
        "properties": properties,
    }


def _list_of_one_or_more(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """`{name: [item, ...]}` with at least one item."""
    return _closed_object({name: {"type": "array", "minItems": 1, "items": item}})


_COUNT: Final = {"type": "integer", "minimum": 0}
_INDEX: Final = {**_COUNT, "description": "position of the record in the batch (0 for a single object)"}


def _error_schema(example: str) -> dict[str, Any]:
    return _closed_object({"error": {"type": "string", "examples": [example]}})


def record_schema() -> dict[str, Any]:
    """JSON Schema of one result record as POSTed (README, 'The MES path')."""
    finite = {"minimum": -FLOAT_MAX, "maximum": FLOAT_MAX}
    number: dict[str, Any] = {"type": "number", **finite, "description": "finite (NaN and Infinity are rejected)"}
    properties: dict[str, Any] = {
        "measurement_id": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
        "timestamp": {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN},
    }
    for name in ID_FIELDS:
        properties[name] = {"type": "string", "pattern": ID_PATTERN}
    for name in TEXT_FIELDS:
        properties[name] = {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TEXT_CHARS,
            "description": "printable characters only",
        }
    length = {"minimum": -MAX_LENGTH_MM, "maximum": MAX_LENGTH_MM}
    angle = "; for unit deg (an angle) in degrees"
    for name in LENGTH_FIELDS:
        properties[name] = {"type": "number", **length, "description": "signed, mm" + angle}
    for name in TOLERANCE_FIELDS:
        properties[name] = {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "maximum": MAX_LENGTH_MM,
            "description": "symmetric tolerance +-t, mm"
            + angle
            + "; null for an asymmetric or one-sided specification",
        }
    for name in LIMIT_FIELDS:
        properties[name] = {
            "type": ["number", "null"],
            **length,
            "description": "limit relative to the nominal (signed), mm" + angle + "; null: no limit on that side",
        }
    for name in NON_NEGATIVE_FIELDS:
        properties[name] = {**number, "minimum": 0}
    for name in NUMBER_FIELDS:
        properties[name] = dict(number)
    for name in NULLABLE_FIELDS:
        properties[name] = {"type": ["number", "null"], **finite, "description": "finite, or null when not measured"}
    for name, values in ENUM_FIELDS.items():
        properties[name] = {"type": "string", "enum": list(values)}
    properties["verdict"]["description"] = "UNDEFINED: no limit at all, nothing to decide"
    properties["unit"]["description"] = "deg: an angle (its _mm fields are degrees, its _um fields millidegrees)"
    properties["compensation"]["description"] = (
        "who corrected the value to 20 degC: gateway, source (the CMM software), none (an angle)"
    )
    properties["flags"] = {"type": "array", "items": {"type": "string", "enum": list(FLAGS)}}
    properties["source_file"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_FILE_NAME_CHARS,
        "description": "the inbox file the record came from; printable characters only",
    }
    return _closed_object({name: properties[name] for name in RESULT_FIELDS})


def stored_record_schema() -> dict[str, Any]:
    """JSON Schema of a record as GET returns it: the record as stored plus its `seq` (a record
    stored before the record gained LEGACY_DEFAULTS' and UNRECORDED_FIELDS' fields lacks them)."""
    schema = record_schema()
    added = {*LEGACY_DEFAULTS, *UNRECORDED_FIELDS}
    schema["required"] = ["seq", *(name for name in schema["required"] if name not in added)]
    schema["properties"] = {
        "seq": {"type": "integer", "minimum": 1, "description": "arrival order"},
        **schema["properties"],
    }
    return schema


def openapi_document(config: MesConfig) -> dict[str, Any]:
    """OpenAPI 3.1 description of exactly what this server does."""

    def ref(name: str) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{name}"}

    def response(description: str, schema: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "content": {JSON_TYPE: {"schema": ref(schema)}}}
        if headers:
            out["headers"] = headers
        return out

    unauthorized = response(
        "MES_TOKEN is set and the request lacks `Authorization: Bearer <token>` (or the token is wrong)",
        "Error",
        {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
    )
    other = response("any other error: 404 unknown path, 405 wrong method (with `Allow`), 500 unexpected", "Error")
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    latency = f" Every /api/ request waits --latency-ms first (now {config.latency_ms:g} ms)."
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cmm-twin mock MES",
            "version": "1.0.0",
            "description": (
                "Receives, validates, de-duplicates (on measurement_id) and durably stores result records. "
                'Every error body is JSON `{"error": ...}` except 422 (`{"errors": [...]}`) and 409 '
                '(`{"conflicts": [...]}`).' + latency
            ),
        },
        "paths": {
            MEASUREMENTS_PATH: {
                "post": {
                    "operationId": "postMeasurements",
                    "summary": "store a batch of result records (all or nothing)",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "description": (
                            "A JSON array of records, or one record object, sent as `Content-Type: application/json` "
                            "(parameters such as charset are allowed). Strict JSON: UTF-8, no NaN/Infinity, "
                            "no duplicate keys."
                        ),
                        "content": {
                            JSON_TYPE: {
                                "schema": {
                                    "oneOf": [
                                        {"type": "array", "maxItems": MAX_BATCH_RECORDS, "items": ref("Record")},
                                        ref("Record"),
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": response(
                            "committed durably: `accepted` records stored, `duplicates` already stored (or repeated "
                            "in the batch) and not stored again",
                            "Accepted",
                        ),
                        "400": response("the body is not well-formed strict JSON (`malformed JSON: ...`)", "Error"),
                        "401": unauthorized,
                        "413": response(
                            f"body over --max-body-mb (now {config.max_body_bytes} bytes) or more than "
                            f"{MAX_BATCH_RECORDS} records: split the batch",
                            "Error",
                        ),
                        "409": response(
                            "re-measurement: some records have a stored measurement_id (or one earlier in the "
                            "batch) with other values; the first value received is the record. Each conflicting "
                            "record is listed with its first differing field and both values, both records are "
                            "kept in the conflicts table, and nothing of the batch was stored. An exact repeat is "
                            "a duplicate, not a conflict",
                            "Conflicts",
                        ),
                        "415": response(f"the request's Content-Type is not {JSON_TYPE}; nothing was stored", "Error"),
                        "422": response(
                            "some records are invalid: every invalid record is listed by its index in the batch; "
                            "nothing of the batch was stored",
                            "ValidationErrors",
                        ),
                        "503": response(
                            f"injected failure (--fail-rate, now {config.fail_rate:g}); nothing was stored, retry",
                            "Error",
                            {"Retry-After": {"schema": {"type": "string", "const": str(RETRY_AFTER_S)}}},
                        ),
                        "default": other,
                    },
                },
                "get": {
                    "operationId": "listMeasurements",
                    "summary": "stored records in arrival order",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "description": "only records with seq greater than this",
                            "schema": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "description": "at most this many records",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PAGE_LIMIT,
                                "default": DEFAULT_PAGE_LIMIT,
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "records with their seq (ascending)",
                            "content": {JSON_TYPE: {"schema": {"type": "array", "items": ref("StoredRecord")}}},
                        },
                        "400": response("after or limit is not a whole number in range", "Error"),
                        "401": unauthorized,
                        "default": other,
                    },
                },
            },
            STATS_PATH: {
                "get": {
                    "operationId": "getStats",
                    "summary": (
                        "stored records, and duplicate and conflicting records received since the database was created"
                    ),
                    "security": bearer,
                    "responses": {"200": response("counters", "Stats"), "401": unauthorized, "default": other},
                }
            },
            HEALTH_PATH: {
                "get": {
                    "operationId": "getHealth",
                    "summary": "liveness (no token needed)",
                    "security": [],
                    "responses": {"200": response("the server is up", "Health"), "default": other},
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "this document (no token needed)",
                    "security": [],
                    "responses": {
                        "200": {"description": "OpenAPI 3.1 document", "content": {JSON_TYPE: {"schema": {}}}},
                        "default": other,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "required only when the MES runs with MES_TOKEN set",
                }
            },
            "schemas": {
                "Record": record_schema(),
                "StoredRecord": stored_record_schema(),
                "Accepted": _closed_object({"accepted": _COUNT, "duplicates": _COUNT}),
                "ValidationErrors": _list_of_one_or_more(
                    "errors",
                    _closed_object(
                        {
                            "index": _INDEX,
                            "field": {
                                "type": "string",
                                "description": f"the field, or `{RECORD_FIELD}` for the record as a whole",
                            },
                            "message": {"type": "string"},
                        }
                    ),
                ),
                "Conflicts": _list_of_one_or_more(
                    "conflicts",
                    _closed_object(
                        {
                            "index": _INDEX,
                            "measurement_id": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
                            "field": {
                                "type": "string",
                                "enum": list(COMPARED_FIELDS),
                                "description": "the first field (in record order) whose values differ",
                            },
                            "stored": {"description": "the value of the record held (any JSON value)"},
                            "received": {"description": "the value of the record received"},
                        }
                    ),
                ),
                "Error": _error_schema("malformed JSON: Expecting value: line 1 column 1 (char 0)"),
                "Stats": _closed_object(
                    {
                        "count": _COUNT,
                        "duplicates": _COUNT,
                        "conflicts": {
                            **_COUNT,
                            "description": "records received with a stored measurement_id but other values",
                        },
                    }
                ),
                "Health": _closed_object({"status": {"type": "string", "const": "ok"}, "count": {"type": "integer"}}),
            },
        },
    }
