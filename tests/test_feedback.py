"""POST /feedback: true labels for an answered image, validated (each error code), stored beside
the prediction in the replica's log, taken after the prediction's rows were shipped, shipped
to the sink and read back as the newest label of each attribute (lib.sink.read_feedback)."""

import io

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from helpers import locked
from PIL import Image

from lib.predlog import PredictionLog
from lib.shipper import ship
from lib.sink import IMAGE, Sink, read_feedback, read_window
from serving import create_app
from serving.api import feedback_body, feedback_of
from serving.errors import ERRORS, ApiError

ATTRIBUTES = ["Bald", "Eyeglasses", "Smiling"]
KEY = "feedback-test-key-0123456789"


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        ({"request_id": "r1", "image_index": 0}, "invalid_feedback", "missing ['labels']"),
        (
            {"request_id": "r1", "image_index": 0, "labels": {"Bald": 1}, "label": {}},
            "invalid_feedback",
            "unknown ['label']",
        ),
        ({"request_id": 7, "image_index": 0, "labels": {"Bald": 1}}, "invalid_feedback", "7"),
        ({"request_id": "a b", "image_index": 0, "labels": {"Bald": 1}}, "invalid_feedback", "a b"),
        ({"request_id": "r1", "image_index": -1, "labels": {"Bald": 1}}, "invalid_feedback", "-1"),
        (
            {"request_id": "r1", "image_index": True, "labels": {"Bald": 1}},
            "invalid_feedback",
            "true",
        ),
        (
            {"request_id": "r1", "image_index": 0.0, "labels": {"Bald": 1}},
            "invalid_feedback",
            "0.0",
        ),
        ({"request_id": "r1", "image_index": 0, "labels": {}}, "invalid_feedback", "{}"),
        ({"request_id": "r1", "image_index": 0, "labels": [1]}, "invalid_feedback", "[1]"),
        (
            {"request_id": "r1", "image_index": 0, "labels": {"smiling": 1, "Glasses": 0}},
            "unknown_attribute",
            "no attribute 'smiling', 'Glasses'; its attributes (names are case-sensitive): "
            "Bald, Eyeglasses, Smiling",
        ),
        (
            {"request_id": "r1", "image_index": 0, "labels": {"Bald": -1, "Smiling": "1"}},
            "invalid_label",
            'got {"Bald": -1, "Smiling": "1"}',
        ),
        ({"request_id": "r1", "image_index": 0, "labels": {"Bald": 0.5}}, "invalid_label", "0.5"),
        ({"request_id": "r1", "image_index": 0, "labels": {"Bald": None}}, "invalid_label", "null"),
    ],
)
def test_a_feedback_body_that_is_wrong_says_what(body, code, says):
    with pytest.raises(ApiError) as refused:
        feedback_of(body, ATTRIBUTES)
    assert refused.value.code == code and refused.value.status == 400
    assert says in refused.value.message


def test_labels_are_0_or_1_and_true_or_false():
    body = {"request_id": "r1", "image_index": 2, "labels": {"Bald": True, "Smiling": 0}}
    assert feedback_of(body, ATTRIBUTES) == ("r1", 2, {"Bald": 1, "Smiling": 0})
    body["labels"] = {"Eyeglasses": False, "Bald": 1.0}
    labels = feedback_of(body, ATTRIBUTES)[2]
    assert labels == {"Eyeglasses": 0, "Bald": 1} and all(type(v) is int for v in labels.values())


@pytest.mark.parametrize(
    ("data", "content_type", "says"),
    [
        ('{"request_id": "r1"}', "text/plain", "content type 'text/plain'"),
        ("{'request_id': 'r1'}", "application/json", "a body that is not JSON"),
        ('[{"request_id": "r1"}]', "application/json", 'not an object ([{"request_id": "r1"}])'),
    ],
)
def test_a_body_that_is_not_a_json_object_is_invalid_feedback(data, content_type, says):
    context = Flask(__name__).test_request_context(
        "/feedback", method="POST", data=data, content_type=content_type
    )
    with context, pytest.raises(ApiError) as refused:
        feedback_body()
    assert refused.value.code == "invalid_feedback" and says in refused.value.message


# Through the service, serving the module's smoke run.


def make_app(tmp_path, smoke_run, replica: str = "pod-a", **overrides):
    app = create_app(
        {
            "PREDICTION_LOG": str(tmp_path / f"{replica}.db"),
            "MODEL_RUN": smoke_run.pathspec,
            "REPLICA_ID": replica,
            "PREDICTION_LOG_TIMEOUT_S": 0.2,
            **overrides,
        }
    )
    assert app.extensions["facet.model"].wait(60), app.extensions["facet.model"].error
    return app


@pytest.fixture
def app(smoke_run, tmp_path):
    return make_app(tmp_path, smoke_run)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(client, images: int, request_id: str, **kwargs) -> dict:
    files = [(io.BytesIO(png(i)), f"face{i}.png") for i in range(images)]
    response = client.post(
        "/predict",
        data={"image": files},
        content_type="multipart/form-data",
        headers={"X-Request-ID": request_id, **kwargs.pop("headers", {})},
        **kwargs,
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def send(client, request_id: str, image_index: int, labels: dict, **kwargs):
    body = {"request_id": request_id, "image_index": image_index, "labels": labels}
    return client.post("/feedback", json=body, **kwargs)


@pytest.mark.flow
def test_feedback_is_stored_beside_the_prediction_and_the_newest_label_wins(
    app, smoke_run, tmp_path
):
    """Feedback on both images of a request, Smiling sent twice for the first; the rows and the
    first feedback are shipped (and leave the log), then more feedback on the second image is
    still taken; the sink holds the newest label of each attribute, joined to the rows."""
    client, model = app.test_client(), smoke_run.pathspec
    answer = predict(client, 2, "feedback-1")
    assert answer["replica"] == "pod-a" and answer["request_id"] == "feedback-1"

    stored = send(client, "feedback-1", 0, {"Smiling": 1, "Eyeglasses": 0})
    assert stored.status_code == 200
    assert stored.get_json() == {
        "model": model,
        "replica": "pod-a",
        "request_id": "feedback-1",
        "image_index": 0,
        "labels": {"Smiling": 1, "Eyeglasses": 0},
    }
    assert send(client, "feedback-1", 0, {"Smiling": False}).status_code == 200
    assert send(client, "feedback-1", 1, {"Bald": True}).status_code == 200
    newest = pd.DataFrame(
        {
            "replica": "pod-a",
            "request_id": "feedback-1",
            "image_index": [0, 1],
            "label_Bald": [np.nan, 1.0],
            "label_Eyeglasses": [0.0, np.nan],
            "label_Smiling": [0.0, np.nan],
        }
    )
    in_log = read_feedback(app.config["PREDICTION_LOG"], model)
    assert list(in_log.columns) == ["ts", *newest.columns]
    pd.testing.assert_frame_equal(in_log.drop(columns="ts"), newest)

    log, sink = PredictionLog(app.config["PREDICTION_LOG"]), Sink(tmp_path / "sink")
    assert ship(log, sink) == 2 + 3
    assert log.unshipped_rows() == 0 and log.read(table="feedback").empty
    assert send(client, "feedback-1", 1, {"Smiling": 1}).status_code == 200
    assert ship(log, sink) == 1

    labels = read_feedback(sink.location, model)
    newest.loc[1, "label_Smiling"] = 1.0
    pd.testing.assert_frame_equal(labels.drop(columns="ts"), newest)
    rows, _ = read_window(sink.location, model, None, labels["ts"].max() + 1)
    joined = rows.merge(labels, on=IMAGE, suffixes=("", "_feedback"))
    assert joined["image_index"].tolist() == [0, 1] and set(joined["replica"]) == {"pod-a"}


@pytest.mark.flow
def test_every_feedback_error_through_the_service(app, smoke_run, tmp_path, monkeypatch):
    client = app.test_client()
    predict(client, 2, "answered")
    refused = {
        "invalid_feedback": client.post("/feedback", data="labels", content_type="text/plain"),
        "unknown_attribute": send(client, "answered", 0, {"Glasses": 1}),
        "invalid_label": send(client, "answered", 0, {"Eyeglasses": -1}),
        "unknown_prediction": send(client, "never-answered", 0, {"Eyeglasses": 1}),
    }
    for code, response in refused.items():
        assert response.get_json()["error"]["code"] == code, response.get_json()
        assert response.status_code == ERRORS[code].status
    assert "Eyeglasses" in refused["unknown_attribute"].get_json()["error"]["message"]
    beyond = send(client, "answered", 2, {"Eyeglasses": 1})
    assert beyond.status_code == 404 and "had 2 image(s)" in beyond.get_json()["error"]["message"]

    # Another replica (its own log) knows nothing of this one's requests.
    other = make_app(tmp_path, smoke_run, replica="pod-b").test_client()
    elsewhere = send(other, "answered", 0, {"Eyeglasses": 1})
    assert elsewhere.status_code == 404
    assert "replica 'pod-b'" in elsewhere.get_json()["error"]["message"]

    with locked(app.config["PREDICTION_LOG"]):
        unlogged = send(client, "answered", 0, {"Eyeglasses": 1})
    assert unlogged.status_code == 503
    error = unlogged.get_json()["error"]
    assert error["code"] == "log_unavailable" and "the feedback was not stored" in error["message"]
    assert read_feedback(app.config["PREDICTION_LOG"], smoke_run.pathspec).empty

    monkeypatch.setenv("API_KEYS", KEY)
    keyed = make_app(tmp_path, smoke_run, replica="pod-k").test_client()
    bearer = {"Authorization": f"Bearer {KEY}"}
    predict(keyed, 1, "keyed", headers=bearer)
    assert send(keyed, "keyed", 0, {"Eyeglasses": 1}).status_code == 401
    assert send(keyed, "keyed", 0, {"Eyeglasses": 1}, headers=bearer).status_code == 200
