"""The OpenAPI 3.1 description of the service, served at GET /openapi.json and rendered at /docs.

It is built from what the code itself uses: serving.errors.ERRORS (every error code and its
status), serving.auth (which endpoints need a bearer key) and OPERATIONS below, one entry per
route. tests/test_pages.py holds it to the code: its paths against app.url_map, its error codes
against real answers, and real answers against its schemas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from lib.calibration import METHODS
from serving.auth import METRICS, OPEN
from serving.errors import ERRORS, markdown_table

SCHEME = "bearer"
JSON = "application/json"
HTML = "text/html"


class Operation(NamedTuple):
    method: str
    path: str  # an OpenAPI template: /monitoring/runs/{run_id}/report
    operation_id: str
    summary: str
    ok: dict[str, Any]  # the 200 response
    errors: tuple[str, ...] = ()  # codes of ERRORS it answers with, besides unauthorized
    extra: dict[str, Any] | None = None  # parameters, requestBody


def ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def json_body(description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def html_page(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}, **extra}


def header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


REQUEST_ID = "X-Request-ID"
REQUEST_ID_MEANING = (
    "the request id: the caller's X-Request-ID when it is 1 to 128 ASCII letters, digits "
    "and ._:- (kept), else a fresh one"
)
RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "description": "a MonitorFlow run's id",
    "schema": {"type": "string"},
}
BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(ERRORS)},
                    "message": {"type": "string", "description": "what went wrong, for people"},
                },
            }
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"const": "ok"}},
    },
    "Ready": {
        "type": "object",
        "required": ["status", "model"],
        "properties": {"status": {"const": "ready"}, "model": {"type": "string"}},
    },
    "Probabilities": {
        "type": "object",
        "description": "each attribute's calibrated probability, in the model's order: the "
        "model's output through the run's calibration (see Model), so that 0.9 means present "
        "about nine times in ten; uncalibrated for a run made before runs stored one",
        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "Model": {
        "type": "object",
        "required": ["model", "precision", "image_size", "attributes", "run", "thresholds"],
        "properties": {
            "model": {"type": "string", "description": "the run served, e.g. TrainFlow/1234"},
            "precision": {"enum": ["fp32", "bf16", "int8"]},
            "image_size": {"type": "integer", "description": "input side in pixels"},
            "attributes": {"type": "array", "items": {"type": "string"}},
            "run": {"type": "string"},
            "dataset_fingerprint": {"type": "string"},
            "metrics": {"type": "object", "description": "the run's test metrics"},
            "thresholds": {
                **ref("Probabilities"),
                "description": "each attribute's tuned threshold: present at or above it",
            },
            "calibration": {
                "type": ["object", "null"],
                "description": "the map from the model's probabilities to the calibrated ones "
                "it answers with, fitted on the validation split (lib.calibration): per "
                "attribute, in the order of `attributes`, sigmoid(slope * logit(p) + "
                "intercept); `none` is the identity. null for a run made before runs stored "
                "one: its probabilities are answered as the model gives them",
                "required": ["method"],
                "properties": {
                    "method": {"enum": list(METHODS)},
                    "slope": {"type": "array", "items": {"type": "number"}},
                    "intercept": {"type": "array", "items": {"type": "number"}},
                },
            },
        },
    },
    "Predictions": {
        "type": "object",
        "required": ["model", "request_id", "replica", "predictions"],
        "properties": {
            "model": {"type": "string", "description": "the run that answered"},
            "request_id": {"type": "string"},
            "replica": {
                "type": "string",
                "description": "the replica that answered (REPLICA_ID): send feedback to it",
            },
            "predictions": {
                "type": "array",
                "description": "one per image, in the order sent",
                "items": {
                    "type": "object",
                    "required": ["attributes", "present"],
                    "properties": {
                        "attributes": ref("Probabilities"),
                        "present": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "the attributes at or above their thresholds",
                        },
                    },
                },
            },
        },
    },
    "Feedback": {
        "type": "object",
        "required": ["request_id", "image_index", "labels"],
        "additionalProperties": False,
        "properties": {
            "request_id": {"type": "string", "description": "the request_id of the answer"},
            "image_index": {
                "type": "integer",
                "minimum": 0,
                "description": "the image's place in that request, from 0",
            },
            "labels": {
                "type": "object",
                "minProperties": 1,
                "description": "true labels of some of the model's attributes: 1 present, "
                "0 absent (true and false are taken as 1 and 0); the newest label of an "
                "attribute for an image is the one that counts",
                "additionalProperties": {"enum": [0, 1, False, True]},
            },
        },
    },
    "StoredFeedback": {
        "type": "object",
        "required": ["model", "replica", "request_id", "image_index", "labels"],
        "properties": {
            "model": {"type": "string", "description": "the run that answered the request"},
            "replica": {"type": "string", "description": "the replica that answered it"},
            "request_id": {"type": "string"},
            "image_index": {"type": "integer", "minimum": 0},
            "labels": {"type": "object", "additionalProperties": {"enum": [0, 1]}},
        },
    },
    "History": {
        "type": "object",
        "required": ["model", "runs"],
        "properties": {
            "model": {"type": "string", "description": "the run served"},
            "runs": {
                "type": "array",
                "description": "its MonitorFlow runs, each a summary of its verdict",
                "items": {"type": "object"},
            },
        },
    },
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "get",
        "/",
        "try_it",
        "The try-it page: drop images, see each attribute's probability and threshold",
        html_page("an HTML page (its script calls GET /model and POST /predict)"),
    ),
    Operation("get", "/healthz", "healthz", "Liveness", json_body("alive", ref("Health"))),
    Operation(
        "get",
        "/readyz",
        "readyz",
        "Readiness: 200 once the model is loaded",
        json_body("ready", ref("Ready")),
        ("not_ready",),
    ),
    Operation(
        "get",
        "/model",
        "model",
        "The model served: run, precision, attributes, thresholds, test metrics",
        json_body("the model", ref("Model")),
        ("not_ready",),
    ),
    Operation(
        "get",
        METRICS,
        "metrics",
        "Prometheus metrics of every worker",
        {
            "description": "Prometheus text exposition",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
    ),
    Operation(
        "post",
        "/predict",
        "predict",
        "The 40 attributes' probabilities of each image, and those present",
        json_body(
            "one prediction per image",
            ref("Predictions"),
            headers={REQUEST_ID: header(REQUEST_ID_MEANING)},
        ),
        (
            "no_image",
            "empty_image",
            "invalid_image",
            "image_too_large",
            "too_many_images",
            "request_entity_too_large",
            "too_many_pixels",
            "unsupported_media_type",
            "not_ready",
            "log_unavailable",
        ),
        {
            "parameters": [
                {
                    "name": REQUEST_ID,
                    "in": "header",
                    "required": False,
                    **header("a request id to keep (ASCII letters, digits and ._:-)"),
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": {
                                    "type": "array",
                                    "items": BINARY,
                                    "description": "JPEG, PNG or WebP images, up to MAX_BATCH",
                                }
                            },
                        }
                    },
                    "image/*": {"schema": BINARY},
                },
            },
        },
    ),
    Operation(
        "post",
        "/feedback",
        "feedback",
        "True labels for an image this replica answered, for realised accuracy",
        json_body("what was stored", ref("StoredFeedback")),
        (
            "invalid_feedback",
            "unknown_attribute",
            "invalid_label",
            "unknown_prediction",
            "request_entity_too_large",
            "not_ready",
            "log_unavailable",
        ),
        {"requestBody": {"required": True, "content": {JSON: {"schema": ref("Feedback")}}}},
    ),
    Operation(
        "get",
        "/monitoring/drift",
        "drift_report",
        "The newest MonitorFlow drift report for the model (evidently HTML, sandboxed)",
        html_page(
            "the report",
            headers={"X-Monitor-Run": header("the MonitorFlow run that made it")},
        ),
        ("no_drift_report",),
    ),
    Operation(
        "get",
        "/monitoring",
        "monitoring",
        "The history of MonitorFlow runs for the served model, as charts",
        html_page("an HTML page"),
        ("not_ready",),
    ),
    Operation(
        "get",
        "/monitoring/history",
        "monitoring_history",
        "The history of MonitorFlow runs for the served model",
        json_body("the runs", ref("History")),
        ("not_ready",),
    ),
    Operation(
        "get",
        "/monitoring/runs/{run_id}/report",
        "run_report",
        "The evidently drift report of one MonitorFlow run",
        html_page("the report"),
        ("no_drift_report", "not_ready"),
        {"parameters": [RUN_ID]},
    ),
    Operation(
        "get",
        "/openapi.json",
        "openapi",
        "This description",
        json_body("OpenAPI 3.1", {"type": "object"}),
    ),
    Operation(
        "get",
        "/docs",
        "docs",
        "This description, rendered (Swagger UI)",
        html_page("an HTML page"),
    ),
)


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method] = operation_object(operation)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "facet",
            "version": "1",
            "summary": "40 CelebA attributes of a face image, from a Vision Transformer",
            "description": errors_table(),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "one of API_KEYS (METRICS_KEY for /metrics); asked for only "
                    "when keys are configured",
                }
            },
        },
    }


def operation_object(operation: Operation) -> dict[str, Any]:
    errors = (*operation.errors, "unauthorized") if needs_key(operation.path) else operation.errors
    return {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        **(operation.extra or {}),
        "responses": {"200": operation.ok, **error_responses(errors)},
        "security": security(operation.path),
    }


def needs_key(path: str) -> bool:
    return path not in OPEN


def security(path: str) -> list[dict[str, list]]:
    """Open paths need nothing; /metrics a key only when METRICS_KEY is set; the rest a key
    when API_KEYS is set."""
    if not needs_key(path):
        return [{}]
    return [{}, {SCHEME: []}] if path == METRICS else [{SCHEME: []}]


def error_responses(codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """One response per status, its schema's `code` limited to `codes` of that status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    return {
        str(status): json_body(
            "; ".join(f"{code}: {ERRORS[code].meaning}" for code in named),
            {
                "allOf": [
                    ref("Error"),
                    {"properties": {"error": {"properties": {"code": {"enum": named}}}}},
                ]
            },
        )
        for status, named in sorted(by_status.items())
    }


def errors_table() -> str:
    """Markdown: the error body, then every error code, its status and meaning."""
    body = 'Every error is JSON: `{"error": {"code": ..., "message": ...}}`.'
    return f"{body}\n\n{markdown_table()}"
