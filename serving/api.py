"""The REST endpoints. POST /predict reads every image's header, then decodes every image,
so one bad or oversized image fails the request before anything is decoded, predicted or
logged; a row per image is committed to the prediction log before the answer is sent, and a
log that cannot take it (disk full, locked) makes the answer a 503. The model call is the
worker's batcher's (serving.state): a request's images may be computed together with other
requests', and each request logs and answers its own rows. POST /feedback stores true
labels for an image this replica answered, in the same log, under the same 503."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from PIL import Image

from lib.inference import Predictor
from lib.predlog import LogUnavailable, UnknownPrediction
from lib.preprocess import ImageDecodeError, ImageTooLargeError, open_image
from serving import metrics
from serving.errors import ApiError
from serving.state import batcher, model_slot, prediction_log, predictor

blueprint = Blueprint("api", __name__)
FIELD = "image"
FEEDBACK_FIELDS = ("request_id", "image_index", "labels")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # matched whole: no newline, only ASCII
# evidently's report runs its chart scripts in a sandbox: an opaque origin that cannot read
# the service's responses or cookies.
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts",
    "X-Content-Type-Options": "nosniff",
}


@blueprint.get("/healthz")
def healthz():
    return {"status": "ok"}


@blueprint.get("/readyz")
def readyz():
    slot = model_slot()
    if slot.predictor is None:
        raise ApiError(503, "not_ready", slot.error or "the model is still loading")
    return {"status": "ready", "model": slot.predictor.name}


@blueprint.get("/model")
def model_info():
    served = predictor()
    return {
        "model": served.name,
        "precision": served.precision,
        "image_size": served.preprocessing.image_size,
        "attributes": served.attributes,
        **served.info,
    }


@blueprint.get("/metrics")
def prometheus_metrics() -> Response:
    return metrics.exposition()


@blueprint.post("/predict")
def predict():
    served = predictor()
    images = open_uploads(read_uploads())
    pixels = np.stack([decode(served, label, image) for label, image in images])
    prediction = batcher().predict(pixels)
    request_id = request_id_of(request.headers.get("X-Request-ID"))
    log_before_answering(request_id, served.name, served.log_rows(prediction))
    metrics.IMAGES.observe(len(images))
    present = served.present(prediction.probs)
    response = jsonify(
        {
            "model": served.name,
            "request_id": request_id,
            "replica": prediction_log().replica,
            "predictions": [
                {
                    "attributes": dict(zip(served.attributes, map(float, probs), strict=True)),
                    "present": names,
                }
                for probs, names in zip(prediction.probs, present, strict=True)
            ],
        }
    )
    response.headers["X-Request-ID"] = request_id
    return response


@blueprint.post("/feedback")
def feedback():
    """True labels for some attributes of one image this replica answered, stored in its log
    beside the prediction; answers what was stored."""
    served = predictor()
    request_id, image_index, labels = feedback_of(feedback_body(), served.attributes)
    try:
        with log_or_503("the feedback was not stored, retry later"):
            return prediction_log().add_feedback(request_id, image_index, labels)
    except UnknownPrediction as error:
        raise ApiError(404, "unknown_prediction", str(error)) from None


@blueprint.get("/monitoring/drift")
def drift_report():
    from lib.monitor import newest_report

    served = model_slot().predictor
    found = newest_report(served.name if served else None)
    if found is None:
        raise ApiError(
            404,
            "no_drift_report",
            "no MonitorFlow run has produced a drift report for this model yet: "
            "run python flows/monitor_flow.py run",
        )
    pathspec, html = found
    headers = {"X-Monitor-Run": pathspec, **REPORT_HEADERS}
    return Response(html, mimetype="text/html", headers=headers)


def log_before_answering(request_id: str, model: str, rows: list[dict[str, float]]) -> None:
    """Commit a row per image, or answer 503: no prediction is answered that is not logged."""
    with log_or_503("the prediction was not answered, retry later"):
        prediction_log().append(request_id, model, rows)
    metrics.LOG_ROWS_WRITTEN.inc(len(rows))


@contextmanager
def log_or_503(consequence: str) -> Iterator[None]:
    """The log failing in the block (LogUnavailable) answers 503 log_unavailable, counted by
    reason; `consequence`, what was not done, ends the message."""
    try:
        yield
    except LogUnavailable as error:
        metrics.LOG_WRITE_FAILURES.labels(error.reason).inc()
        raise ApiError(503, "log_unavailable", f"{error.message}; {consequence}") from None


def feedback_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 invalid_feedback saying what it is instead."""
    example = '{"request_id": "...", "image_index": 0, "labels": {"Smiling": 1}}'
    if not request.is_json:
        problem = f"content type {request.mimetype or 'missing'!r}"
    elif (body := request.get_json(silent=True)) is None:
        problem = "a body that is not JSON"
    elif not isinstance(body, dict):
        problem = f"JSON that is not an object ({shown(body)})"
    else:
        return body
    raise ApiError(
        400, "invalid_feedback", f"{problem}: send a JSON object (application/json) like {example}"
    )


def feedback_of(body: dict[str, Any], attributes: list[str]) -> tuple[str, int, dict[str, int]]:
    """The request id, image index and labels (attribute: 0 or 1) of a feedback body, or a 400
    that says what is wrong. JSON true and false are taken as 1 and 0."""
    if set(body) != set(FEEDBACK_FIELDS):
        missing = [name for name in FEEDBACK_FIELDS if name not in body]
        unknown = sorted(set(body) - set(FEEDBACK_FIELDS))
        raise invalid_feedback(
            f"fields {list(FEEDBACK_FIELDS)} are needed, and only they: "
            f"missing {missing}, unknown {unknown}"
        )
    request_id, image_index, labels = (body[name] for name in FEEDBACK_FIELDS)
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise invalid_feedback(
            f"request_id {shown(request_id)} is not one: send the request_id of the /predict answer"
        )
    if type(image_index) is not int or image_index < 0:
        raise invalid_feedback(
            f"image_index {shown(image_index)}: send the image's place in the request, from 0"
        )
    if not isinstance(labels, dict) or not labels:
        raise invalid_feedback(
            f"labels {shown(labels)}: send an object of one or more attributes' labels"
        )
    unknown = [name for name in labels if name not in attributes]
    if unknown:
        raise ApiError(
            400,
            "unknown_attribute",
            f"the model has no attribute {', '.join(map(repr, unknown))}; its attributes "
            f"(names are case-sensitive): {', '.join(attributes)}",
        )
    invalid = {name: value for name, value in labels.items() if value not in (0, 1)}
    if invalid:
        raise ApiError(
            400,
            "invalid_label",
            f"labels are 0 (absent) or 1 (present), or false or true: got {shown(invalid)}",
        )
    return request_id, image_index, {name: int(value) for name, value in labels.items()}


def invalid_feedback(problem: str) -> ApiError:
    return ApiError(400, "invalid_feedback", problem)


def shown(value: Any, limit: int = 80) -> str:
    """A value of the request as JSON, cut to `limit` characters, for a message."""
    text = json.dumps(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def read_uploads() -> list[tuple[str, bytes]]:
    """(label for messages, bytes) for each image of the request, in order."""
    limit = current_app.config["MAX_BATCH"]
    if request.mimetype == "multipart/form-data":
        files = request.files.getlist(FIELD)
        if not files:
            fields = sorted(set(request.files) | set(request.form))
            raise ApiError(
                400,
                "no_image",
                f"send images in the multipart field {FIELD!r}"
                + (f"; got fields {fields}" if fields else "; the form is empty"),
            )
        if len(files) > limit:
            raise ApiError(
                400, "too_many_images", f"{len(files)} images, more than the limit of {limit}"
            )
        return [(f"image {i + 1} ({f.filename!r})", f.read()) for i, f in enumerate(files)]
    if request.mimetype.startswith("image/"):
        return [("the request body", request.get_data())]
    raise ApiError(
        415,
        "unsupported_media_type",
        f"content type {request.mimetype or 'missing'!r}: send multipart/form-data with "
        f"field {FIELD!r}, or one image as the body with an image/* content type",
    )


def open_uploads(uploads: list[tuple[str, bytes]]) -> list[tuple[str, Image.Image]]:
    """Each upload with its header read and nothing decoded yet, refused when one image, or
    all of them together, hold too many pixels."""
    max_pixels = current_app.config["MAX_IMAGE_PIXELS"]
    images = [(label, open_upload(label, data, max_pixels)) for label, data in uploads]
    refuse_too_many_pixels([image for _, image in images])
    return images


def open_upload(label: str, data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ApiError(400, "empty_image", f"{label} is empty")
    with image_errors(label):
        return open_image(data, max_pixels)


def refuse_too_many_pixels(images: list[Image.Image]) -> None:
    limit = current_app.config["MAX_REQUEST_PIXELS"]
    total = sum(image.width * image.height for image in images)
    if total > limit:
        raise ApiError(
            413,
            "too_many_pixels",
            f"the images hold {total:,} pixels together, more than the limit of {limit:,}",
        )


def decode(served: Predictor, label: str, image: Image.Image) -> np.ndarray:
    with image_errors(label):
        return served.pixels(image)


@contextmanager
def image_errors(label: str) -> Iterator[None]:
    """lib.preprocess's errors as 400s that name the image."""
    try:
        yield
    except ImageTooLargeError as error:
        raise ApiError(400, "image_too_large", f"{label}: {error}") from None
    except ImageDecodeError as error:
        raise ApiError(400, "invalid_image", f"{label}: {error}") from None


def request_id_of(given: str | None) -> str:
    """The caller's X-Request-ID if it is a sane token, else a fresh one."""
    return given if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
