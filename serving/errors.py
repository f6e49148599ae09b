"""Every error is JSON: {"error": {"code": ..., "message": ...}}. A request's own content
never produces a 500: decoding and validation raise ApiError with a 4xx status.

ERRORS is every code the service answers with, its status and what it means: ApiError and
error_response take only its pairs of status and code, and /openapi.json documents it.
`python -m serving.errors docs/serving.md` writes it as that page's table."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NamedTuple

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ErrorCode(NamedTuple):
    status: int
    meaning: str


ERRORS: dict[str, ErrorCode] = {
    "no_image": ErrorCode(400, "no `image` field, or a wrong field name (the message lists them)"),
    "empty_image": ErrorCode(400, "an empty file or body"),
    "invalid_image": ErrorCode(400, "not a JPEG, PNG or WebP image, or a truncated or damaged one"),
    "image_too_large": ErrorCode(400, "more than MAX_IMAGE_PIXELS pixels in an image's header"),
    "too_many_images": ErrorCode(400, "more images than MAX_BATCH"),
    "invalid_feedback": ErrorCode(
        400, "a feedback body that is not a JSON object of request_id, image_index and labels"
    ),
    "unknown_attribute": ErrorCode(
        400, "feedback labels an attribute the model does not have (the message lists them)"
    ),
    "invalid_label": ErrorCode(400, "a feedback label other than 0 or 1 (or false or true)"),
    "bad_request": ErrorCode(400, "a request Werkzeug could not parse"),
    "unauthorized": ErrorCode(401, "no bearer key, or a wrong one, where keys are configured"),
    "not_found": ErrorCode(404, "no such endpoint"),
    "no_drift_report": ErrorCode(404, "no drift report yet for the model, or none by that run"),
    "unknown_prediction": ErrorCode(
        404, "feedback for a request this replica's log does not hold, or an image it had not"
    ),
    "method_not_allowed": ErrorCode(405, "the endpoint does not answer this HTTP method"),
    "request_entity_too_large": ErrorCode(413, "a body over MAX_UPLOAD_MB"),
    "too_many_pixels": ErrorCode(413, "more than MAX_REQUEST_PIXELS pixels in all the images"),
    "unsupported_media_type": ErrorCode(415, "a content type other than multipart or image/*"),
    "requested_range_not_satisfiable": ErrorCode(416, "a Range header beyond a static file"),
    "internal_error": ErrorCode(500, "the server failed; its log says why"),
    "not_ready": ErrorCode(503, "the model is not loaded yet (the message says why)"),
    "log_unavailable": ErrorCode(
        503,
        "the prediction log cannot take the rows or the feedback (disk full, locked): nothing "
        "was answered or stored",
    ),
}


class ApiError(Exception):
    """An error answered as `status` and `code`: a pair of ERRORS, or a ValueError here."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = registered(status, code), code, message


def registered(status: int, code: str) -> int:
    """`status`, when ERRORS registers `code` with it; no other code or status is answered."""
    if code not in ERRORS or ERRORS[code].status != status:
        raise ValueError(f"{status} {code} is not an error of serving.errors.ERRORS")
    return status


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = registered(status, code)
    return response


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        return error_response(error.status, error.code, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        """Werkzeug's own errors (404, 405, 413, ...), under their names in ERRORS."""
        code = (error.name or "error").lower().replace(" ", "_")
        known = ERRORS.get(code)
        if known is None or known.status != error.code:
            return unexpected(error)
        return error_response(known.status, code, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "the server failed; see its log")


def markdown_table() -> str:
    """ERRORS as a Markdown table, for docs/serving.md."""
    rows = [f"| `{code}` | {error.status} | {error.meaning} |" for code, error in ERRORS.items()]
    return "\n".join(["| code | status | meaning |", "|---|---|---|", *rows])


if __name__ == "__main__":
    from lib.config import write_table

    write_table(Path(sys.argv[1]), "error-table", markdown_table())
