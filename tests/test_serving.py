"""The REST service, through Flask's test client, serving the module's smoke run."""

import contextlib
import io
import json
import os
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import PROBABILITY_ATOL, assert_same_probabilities, locked, wait_for
from PIL import Image, ImageFile

import lib.inference
import lib.monitor
from lib import synthetic
from lib.datasets import PreparedImages
from lib.export import export
from lib.inference import Predictor
from lib.predlog import PredictionLog
from lib.prepare import prepare
from lib.registry import CHAMPION
from serving import create_app
from serving.api import request_id_of

pytestmark = pytest.mark.flow


def make_app(tmp_path, **overrides):
    settings = {"PREDICTION_LOG": str(tmp_path / "predictions.db"), "MAX_BATCH": 4}
    app = create_app({**settings, **overrides})
    app.extensions["facet.model"].loaded.wait(60)
    return app


@pytest.fixture
def app(smoke_run, tmp_path):
    app = make_app(tmp_path, MODEL_RUN=smoke_run.pathspec, MAX_CONTENT_LENGTH=2 * 1024 * 1024)
    assert app.extensions["facet.model"].wait(0), app.extensions["facet.model"].error
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[bytes]:
    root = synthetic.generate(tmp_path_factory.mktemp("faces"), synthetic.make_spec(6, seed=11))
    return [p.read_bytes() for p in sorted((root / "img_align_celeba").iterdir())]


def encode(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def post_images(client, *images: bytes, field: str = "image"):
    files = [(io.BytesIO(data), f"face{i}.jpg") for i, data in enumerate(images)]
    return client.post("/predict", data={field: files}, content_type="multipart/form-data")


def log_rows(app) -> int:
    return len(PredictionLog(app.config["PREDICTION_LOG"]).read())


def test_predict_answers_every_image_in_order_and_logs_each(app, client, faces, smoke_run):
    response = post_images(client, faces[0], faces[1], faces[0])
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"] == smoke_run.pathspec
    assert response.headers["X-Request-ID"] == body["request_id"]
    first, second, again = body["predictions"]
    attributes = smoke_run.data.dataset["attributes"]
    assert list(first["attributes"]) == attributes
    # The same image at positions 0 and 2: equal to float32's batch-order noise, not bitwise.
    assert_same_probabilities(first["attributes"], again["attributes"])
    assert max(abs(first["attributes"][a] - second["attributes"][a]) for a in attributes) > 0.01
    thresholds = smoke_run.data.thresholds
    assert first["present"] == [a for a in attributes if first["attributes"][a] >= thresholds[a]]

    log = PredictionLog(app.config["PREDICTION_LOG"]).read()
    assert len(log) == 3
    assert set(log["request_id"]) == {body["request_id"]}
    assert list(log["image_index"]) == [0, 1, 2]
    assert np.allclose(
        log["prob_Eyeglasses"], [p["attributes"]["Eyeglasses"] for p in (first, second, again)]
    )
    assert {"brightness", "sharpness", "emb_0", "emb_7"} <= set(log.columns)


def test_raw_image_body_is_one_prediction(client, faces):
    response = client.post(
        "/predict", data=faces[2], headers={"Content-Type": "image/jpeg", "X-Request-ID": "abc-1"}
    )
    assert response.status_code == 200
    assert response.get_json()["request_id"] == "abc-1"
    assert len(response.get_json()["predictions"]) == 1


def test_serving_predicts_exactly_what_evaluation_computed(smoke_run, client, faces, tmp_path):
    """The JPEG through the service and the same JPEG through training's cache give the same
    probabilities: one decode, one preprocessing, one normalisation."""
    root = synthetic.generate(tmp_path / "same", synthetic.make_spec(6, seed=11))
    manifest = prepare("same", root, image_size=32)
    cached = PreparedImages(manifest["cache_dir"])[:]
    direct = Predictor.from_run(smoke_run.pathspec).predict(cached).probs
    served = post_images(client, *faces[:4]).get_json()["predictions"]
    attributes = smoke_run.data.dataset["attributes"]
    for row, prediction in zip(direct[:4], served, strict=True):
        served_row = [prediction["attributes"][a] for a in attributes]
        np.testing.assert_allclose(row, served_row, atol=PROBABILITY_ATOL, rtol=0)


def test_unusual_but_valid_images_are_converted_and_answered(client, faces):
    face = Image.open(io.BytesIO(faces[0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the viewer must turn it back
    sixteen_bit = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 256)
    images = [
        encode(face.convert("L")),
        encode(face.convert("RGBA")),
        encode(face.convert("CMYK"), "JPEG"),
        encode(sixteen_bit),
    ]
    response = post_images(client, *images)
    assert response.status_code == 200, response.get_json()
    rotated = encode(face.rotate(90, expand=True), "JPEG", exif=exif)
    assert client.post("/predict", data=rotated, content_type="image/jpeg").status_code == 200


def bomb() -> bytes:
    """A 30000x30000 PNG of a few KB: it must be refused from its header."""
    return encode(Image.new("1", (30000, 30000)), optimize=True)


@pytest.mark.parametrize(
    ("make_request", "status", "code"),
    [
        (
            lambda c, f: c.post("/predict", data={}, content_type="multipart/form-data"),
            400,
            "no_image",
        ),
        (lambda c, f: post_images(c, b""), 400, "empty_image"),
        (lambda c, f: post_images(c, b"hello, I am text"), 400, "invalid_image"),
        (lambda c, f: post_images(c, f[0][: len(f[0]) // 2]), 400, "invalid_image"),
        (lambda c, f: post_images(c, bomb()), 400, "image_too_large"),
        (lambda c, f: post_images(c, b"\xff" * (3 * 1024 * 1024)), 413, "request_entity_too_large"),
        (lambda c, f: post_images(c, *f[:5]), 400, "too_many_images"),
        (
            lambda c, f: c.post("/predict", data=f[0], content_type="application/json"),
            415,
            "unsupported_media_type",
        ),
        (lambda c, f: c.post("/predict", data=f[0]), 415, "unsupported_media_type"),
        (lambda c, f: post_images(c, f[0], field="file"), 400, "no_image"),
        (lambda c, f: c.post("/predict", data=b"", content_type="image/png"), 400, "empty_image"),
        (lambda c, f: c.get("/predict"), 405, "method_not_allowed"),
        (lambda c, f: c.get("/nope"), 404, "not_found"),
    ],
)
def test_bad_input_is_a_json_4xx_and_the_server_goes_on(
    app, client, faces, make_request, status, code
):
    response = make_request(client, faces)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    assert log_rows(app) == 0  # nothing predicted, nothing logged
    assert post_images(client, faces[0]).status_code == 200
    assert log_rows(app) == 1


def test_too_many_pixels_in_one_request_are_refused_before_any_is_decoded(
    app, client, faces, monkeypatch
):
    """Three 36-megapixel PNGs of a few KB each: under MAX_IMAGE_PIXELS one by one, over the
    default MAX_REQUEST_PIXELS together. Decoding them would take seconds and 300 MB."""
    big = encode(Image.new("1", (6000, 6000)), optimize=True)
    with monkeypatch.context() as decoding:
        decoding.setattr(ImageFile.ImageFile, "load", lambda image: pytest.fail("decoded"))
        response = post_images(client, big, big, big)
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["code"] == "too_many_pixels" and "108,000,000" in error["message"]
    assert log_rows(app) == 0
    assert post_images(client, faces[0]).status_code == 200


@pytest.mark.parametrize("given", ["abc-1", "a.b:c_D-9", "x" * 128])
def test_a_plain_request_id_is_kept(given):
    assert request_id_of(given) == given


@pytest.mark.parametrize("given", ["abc\n", "ab c", "héllo", "ab/c", "x" * 129, "", None])
def test_any_other_request_id_is_replaced(given):
    made = request_id_of(given)
    assert made != given and len(made) == 32 and made.isalnum()


def test_one_bad_image_names_itself(client, faces):
    response = post_images(client, faces[0], b"not an image")
    assert response.status_code == 400
    assert "image 2 ('face1.jpg')" in response.get_json()["error"]["message"]


def test_health_readiness_and_model_facts(client, smoke_run):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "model": smoke_run.pathspec}
    facts = strict_json(client.get("/model").data)
    assert facts["run"] == smoke_run.pathspec
    assert facts["dataset_fingerprint"] == smoke_run.data.dataset["fingerprint"]
    assert facts["metrics"]["mean_accuracy"] == smoke_run.data.metrics["mean_accuracy"]
    assert facts["thresholds"] == smoke_run.data.thresholds
    # An attribute without a positive test image has no ROC AUC: NaN in the run, null here.
    undefined = [
        a
        for a, m in smoke_run.data.metrics["per_attribute"].items()
        if m["roc_auc"] != m["roc_auc"]
    ]
    assert undefined, "the smoke run's test split has every attribute: pick one that lacks one"
    for attribute in undefined:
        assert facts["metrics"]["per_attribute"][attribute]["roc_auc"] is None


def strict_json(body: bytes):
    """Parsed as a browser parses it: NaN and Infinity are not JSON."""

    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(body, parse_constant=refuse)


def test_not_ready_until_a_model_loads_and_says_why(tmp_path):
    app = make_app(tmp_path, MODEL_RUN="TrainFlow/999999")
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "TrainFlow/999999" in response.get_json()["error"]["message"]
    assert client.post("/predict", data=b"x", content_type="image/png").status_code == 503


def sample(text: str, name: str) -> float:
    """The value of the metric `name` (with its labels, if any) in a /metrics exposition."""
    lines = [
        ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{")
    ]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_metrics_count_requests_images_and_the_model(client, faces, smoke_run):
    before = client.get("/metrics").get_data(as_text=True)
    post_images(client, faces[0], faces[1])
    client.post("/predict", data=b"x", content_type="text/plain")
    after = client.get("/metrics").get_data(as_text=True)
    ok = 'facet_requests_total{endpoint="/predict",status="200"}'
    refused = 'facet_requests_total{endpoint="/predict",status="415"}'
    assert sample(after, ok) == sample(before, ok) + 1
    assert sample(after, refused) == sample(before, refused) + 1
    for counted in (
        "facet_images_per_request_sum",
        "facet_log_rows_written_total",
        "facet_batch_size_sum",  # both images in one model call
    ):
        assert sample(after, counted) == sample(before, counted) + 2
    for counted in ("facet_batch_size_count", "facet_batch_queue_seconds_count"):
        assert sample(after, counted) == sample(before, counted) + 1
    assert f'facet_model_info{{model="{smoke_run.pathspec}",precision="fp32"}} 1.0' in after
    assert 'facet_request_duration_seconds_bucket{endpoint="/predict",le="+Inf"}' in after


def test_requests_that_wait_for_the_model_share_a_call_and_each_answers_its_own(
    app, faces, monkeypatch
):
    """The first request's model call is held until five more are queued behind it: they are
    computed in one call and each answer, and its logged rows, are its own image's."""
    compute = lib.inference.probabilities_and_embeddings
    entered, release = threading.Event(), threading.Event()

    def held(*args):
        entered.set()
        release.wait()
        return compute(*args)

    monkeypatch.setattr(lib.inference, "probabilities_and_embeddings", held)
    client, batcher = app.test_client(), app.extensions["facet.model"].batcher
    before = client.get("/metrics").get_data(as_text=True)
    with ThreadPoolExecutor(len(faces)) as pool:
        first = pool.submit(post_face, app, faces[0], "face-0")
        assert entered.wait(60)
        rest = [pool.submit(post_face, app, faces[i], f"face-{i}") for i in range(1, len(faces))]
        wait_for(lambda: batcher.images_waiting() == len(rest), 60, poll_s=0.01)
        release.set()
        answers = [first.result(), *(future.result() for future in rest)]

    served = app.extensions["facet.model"].predictor
    for face, answer in zip(faces, answers, strict=True):
        alone = served.predict(served.pixels(face)[np.newaxis]).probs[0]
        probabilities = list(answer["predictions"][0]["attributes"].values())
        np.testing.assert_allclose(probabilities, alone, atol=PROBABILITY_ATOL, rtol=0)
    log = PredictionLog(app.config["PREDICTION_LOG"]).read().set_index("request_id")
    for i, answer in enumerate(answers):
        logged = log.loc[f"face-{i}", "prob_Eyeglasses"]
        assert logged == pytest.approx(answer["predictions"][0]["attributes"]["Eyeglasses"])
    after = client.get("/metrics").get_data(as_text=True)
    for counted, more in (
        ("facet_batch_size_count", 2),  # the held call, then the other five together
        ("facet_batch_size_sum", len(faces)),
        ('facet_batch_size_bucket{le="4.0"}', 1),
        ("facet_batch_queue_seconds_count", len(faces)),
    ):
        assert sample(after, counted) == sample(before, counted) + more, counted


def post_face(app, face: bytes, request_id: str) -> dict:
    """POST one image from a client of this thread's own; the 200 answer's JSON."""
    headers = {"Content-Type": "image/jpeg", "X-Request-ID": request_id}
    response = app.test_client().post("/predict", data=face, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_champion_is_served_by_default(smoke_run, tmp_path, faces):
    smoke_run.add_tag(CHAMPION)
    try:
        app = make_app(tmp_path)
        assert app.test_client().get("/readyz").get_json()["model"] == smoke_run.pathspec
    finally:
        smoke_run.remove_tag(CHAMPION)


def test_without_a_champion_readiness_says_how_to_get_one(tmp_path):
    response = make_app(tmp_path).test_client().get("/readyz")
    assert response.status_code == 503
    message = response.get_json()["error"]["message"]
    assert "TrainMultiNodeFlow run is tagged champion" in message and "MODEL_RUN" in message


def test_an_exported_folder_serves_the_same_predictions(smoke_run, client, tmp_path, faces):
    folder = export(smoke_run.pathspec, tmp_path / "exported")
    exported = make_app(tmp_path / "other", MODEL_DIR=str(folder)).test_client()
    ours = post_images(client, faces[0]).get_json()
    theirs = post_images(exported, faces[0]).get_json()
    assert ours["predictions"] == theirs["predictions"]  # one image, one process: bitwise
    assert theirs["model"] == smoke_run.pathspec  # its log rows meet the run's reference
    assert json.loads((folder / "facet.json").read_text())["run"] == smoke_run.pathspec


def test_a_folder_that_is_not_an_export_is_named(tmp_path):
    app = make_app(tmp_path, MODEL_DIR=str(tmp_path))
    message = app.test_client().get("/readyz").get_json()["error"]["message"]
    assert str(tmp_path) in message and "facet.json" in message


def test_drift_report_is_404_until_monitoring_ran(client):
    response = client.get("/monitoring/drift")
    assert response.status_code == 404
    assert "monitor_flow.py" in response.get_json()["error"]["message"]


def test_drift_report_is_sandboxed_and_read_from_the_datastore_once(tmp_path, monkeypatch):
    pathspec = f"MonitorFlow/{uuid.uuid4().hex}"  # new to the process's cache of reports
    loaded = []

    class FinishedMonitorRun:
        def __init__(self, pathspec: str):
            self.pathspec = pathspec

        @property
        def data(self) -> SimpleNamespace:
            loaded.append(self.pathspec)  # each access unpickles from the datastore
            return SimpleNamespace(report_html="<html><script>drawCharts()</script></html>")

    monkeypatch.setattr(lib.monitor, "Run", FinishedMonitorRun)
    monkeypatch.setattr(
        lib.monitor, "successful_runs", lambda model_run: iter([FinishedMonitorRun(pathspec)])
    )
    client = make_app(tmp_path, MODEL_RUN="TrainFlow/999999").test_client()
    for _ in range(2):
        response = client.get("/monitoring/drift")
        assert response.status_code == 200 and "drawCharts" in response.get_data(as_text=True)
        assert response.headers["X-Monitor-Run"] == pathspec
        assert response.headers["Content-Security-Policy"] == "sandbox allow-scripts"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert loaded == [pathspec]


def refused_for_the_log(client, face: bytes, reason: str) -> None:
    """POST /predict is a 503 log_unavailable naming `reason`, counted in /metrics."""
    failures = f'facet_log_write_failures_total{{reason="{reason}"}}'
    before = sample(client.get("/metrics").get_data(as_text=True), failures)
    response = post_images(client, face)
    assert response.status_code == 503
    error = response.get_json()["error"]
    assert error["code"] == "log_unavailable"
    assert "not answered" in error["message"], error
    after = sample(client.get("/metrics").get_data(as_text=True), failures)
    assert after == before + 1


def test_a_locked_log_answers_503_and_the_next_request_is_served(smoke_run, tmp_path, faces):
    app = make_app(tmp_path, MODEL_RUN=smoke_run.pathspec, PREDICTION_LOG_TIMEOUT_S=0.2)
    client = app.test_client()
    with locked(app.config["PREDICTION_LOG"]):
        refused_for_the_log(client, faces[0], "locked")
    assert post_images(client, faces[1]).status_code == 200
    assert log_rows(app) == 1  # only the answered image


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI is root)")
def test_a_full_disk_answers_503_and_serving_recovers_when_space_returns(
    smoke_run, tmp_path, faces
):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    try:
        app = make_app(disk, MODEL_RUN=smoke_run.pathspec)
        client = app.test_client()
        assert post_images(client, faces[0]).status_code == 200
        filler = disk / "filler"
        with filler.open("wb") as file, contextlib.suppress(OSError):  # ENOSPC: the disk is full
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        refused_for_the_log(client, faces[1], "full")
        filler.unlink()
        assert post_images(client, faces[2]).status_code == 200
        assert log_rows(app) == 2  # the answered images, not the refused one
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
