"""MonitorFlow end to end: synthetic faces sent through the service fill the prediction log,
then the flow runs as a user runs it, against a model that learned the drawn attributes."""

import io
import json
import re
import shutil
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pandas as pd
import pytest
from helpers import run_monitor
from metaflow import Run
from metaflow.cards import get_cards
from test_flow import card_text

from lib import celeba, synthetic
from lib.alerts import ACCURACY_FIELDS, ACCURACY_TAG, DRIFT_TAG
from lib.drift import INSUFFICIENT, drifted_columns
from lib.inference import Predictor
from lib.monitor import TOP_COLUMNS, history, load_expected
from lib.performance import estimate
from lib.sink import Sink, write_segment
from serving import create_app
from serving.api import REPORT_HEADERS

pytestmark = pytest.mark.flow

WINDOW = 200
LABELLED = 300  # faces labelled through POST /feedback
HOUR = 3600
# (generator overrides, the column that must drift); faces drawn from new seeds.
SCENARIOS = {
    "in-distribution": ({}, None),
    "brightness": ({"shifts": {"brightness": 0.3}}, "brightness"),
    "blur": ({"shifts": {"blur": 3}}, "sharpness"),
    "eyeglasses": ({"prevalence": {"Eyeglasses": 0.4}}, "prob_Eyeglasses"),
}


@pytest.fixture
def model_run(learned_home, isolated) -> str:
    """The session's short run that learned the drawn attributes (prob_Eyeglasses responds to
    glasses), copied into this test's datastore: one test's MonitorFlow runs never move the
    window of another's."""
    home, pathspec = learned_home
    shutil.copytree(home / "datastore", isolated / "datastore", dirs_exist_ok=True)
    return pathspec


@pytest.fixture
def service(model_run, tmp_path):
    app = create_app({"MODEL_RUN": model_run, "PREDICTION_LOG": str(tmp_path / "predictions.db")})
    assert app.extensions["facet.model"].wait(60), app.extensions["facet.model"].error
    return app


def send_faces(app, folder, n: int, seed: int, **overrides) -> list[dict]:
    """Generate n faces and POST them to /predict, MAX_BATCH images a request; returns the
    answers."""
    root = synthetic.generate(folder, synthetic.make_spec(n, seed=seed, **overrides))
    images = sorted((root / "img_align_celeba").iterdir())
    client, batch, answers = app.test_client(), app.config["MAX_BATCH"], []
    for i in range(0, n, batch):
        files = [(io.BytesIO(path.read_bytes()), path.name) for path in images[i : i + batch]]
        response = client.post("/predict", data={"image": files})
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json())
    return answers


@pytest.fixture
def webhook(monkeypatch):
    """ALERT_WEBHOOK_URL pointing at a local server; yields the JSON bodies it received."""
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_window_drifts_when_the_faces_change_and_only_then(
    scenario, model_run, service, webhook, tmp_path
):
    overrides, responsible = SCENARIOS[scenario]
    send_faces(service, tmp_path / "faces", WINDOW, seed=7, **overrides)
    run = run_monitor(model_run=model_run, log=service.config["PREDICTION_LOG"])

    drift = run.data.drift
    assert drift["n_current"] == WINDOW
    assert drift["drift_detected"] is (responsible is not None), drift["message"]
    assert (DRIFT_TAG in run.tags) is drift["drift_detected"]
    if responsible is None:
        assert drifted_columns(drift) == [] and not drift["embedding"]["drifted"]
        assert webhook == []
    else:
        assert responsible in drifted_columns(drift), drift["message"]
        [alert] = webhook
        assert (alert["monitor_run"], alert["model_run"]) == (run.pathspec, model_run)
        assert responsible in alert["drifted_columns"] and alert["drift_detected"] is True

    assert run.data.report_html.lstrip().startswith("<")
    content = card_text(get_cards(run["detect"].task)[0].get())
    assert "per-column drift" in content and "iframe" in content
    response = service.test_client().get("/monitoring/drift")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["X-Monitor-Run"] == run.pathspec


def test_each_run_tests_the_rows_logged_since_the_last_verdict(
    model_run, service, tmp_path, monkeypatch
):
    nowhere = tmp_path / "nowhere.db"
    missing_run = run_monitor(model_run=model_run, log=str(nowhere))
    missing = missing_run.data.drift
    assert missing["drift_detected"] is None and INSUFFICIENT in missing["message"]
    assert not nowhere.exists()

    # From here the defaults: serving's log (PREDICTION_LOG) and the champion.
    monkeypatch.setenv("PREDICTION_LOG", service.config["PREDICTION_LOG"])
    send_faces(service, tmp_path / "a", 10, seed=21)
    few = run_monitor(min_rows=20)
    assert few.data.model_run == model_run and few.data.report_html is None
    drift = few.data.drift
    assert (drift["drift_detected"], drift["n_current"]) == (None, 10)
    assert INSUFFICIENT in drift["message"]

    send_faces(service, tmp_path / "b", 20, seed=22)
    first_run = run_monitor(min_rows=20)  # the 10 rows left untested come along
    first = first_run.data.drift
    assert (first["drift_detected"], first["n_current"], first["window_start"]) == (False, 30, None)

    send_faces(service, tmp_path / "c", 25, seed=23)
    second_run = run_monitor(min_rows=20)
    second = second_run.data.drift
    assert (second["n_current"], second["window_start"]) == (25, first["window_end"])
    last = run_monitor(min_rows=20, window_hours=1.0)
    assert last.data.drift["n_current"] == 55

    newest_first = [last, second_run, first_run, few, missing_run]
    assert_history_lists(model_run, newest_first)
    # The end step's card: the runs so far, its own included though it was not finished yet.
    content = card_text(get_cards(last["end"].task)[0].get())
    assert "verdict and rows tested per window" in content and "most drifted columns" in content
    assert all(run.pathspec in content for run in newest_first)
    assert_dashboard_serves(service.test_client(), model_run, newest_first)


def test_a_run_estimates_accuracy_and_measures_it_where_feedback_labelled(
    model_run, service, webhook, tmp_path
):
    """300 faces through the service and the generator's labels sent back (POST /feedback),
    joined by file name: the run stores `performance`, the estimate from the logged
    probabilities and the realised accuracy, which equals evaluating the same faces offline
    (Predictor on the JPEG files, the run's thresholds); in distribution, no alarm. Wrong
    Eyeglasses labels sent again for the same faces (the newest wins) are a significant drop:
    the next run is tagged `accuracy` and the webhook told."""
    faces = tmp_path / "faces"
    answers = send_faces(service, faces, LABELLED, seed=31)
    images = [(a["request_id"], i, p) for a in answers for i, p in enumerate(a["predictions"])]
    attributes = list(images[0][2]["attributes"])
    files = sorted((faces / "img_align_celeba").iterdir())  # the order send_faces posted them
    labels = labels_by_file(faces / celeba.ATTRIBUTE_FILE, [f.name for f in files], attributes)
    given = [dict(zip(attributes, map(int, row), strict=True)) for row in labels]
    send_feedback(service, images, given)

    run = run_monitor(model_run=model_run, log=service.config["PREDICTION_LOG"])
    performance = run.data.performance
    assert (performance["n_rows"], performance["n_labelled"]) == (LABELLED, LABELLED)
    probs = np.array([[p["attributes"][a] for a in attributes] for _, _, p in images])
    estimated = estimate(probs, load_expected(model_run).thresholds)
    offline = offline_accuracy(model_run, files, labels)
    for i, name in enumerate(attributes):
        measured = performance["per_attribute"][name]
        assert measured["estimated_accuracy"] == pytest.approx(estimated["accuracy"][i])
        assert measured["n_labelled"] == LABELLED
        assert measured["realised_accuracy"] == pytest.approx(offline[i])
    assert performance["realised_mean_accuracy"] == pytest.approx(offline.mean())
    assert performance["estimated_mean_accuracy"] == pytest.approx(estimated["mean_accuracy"])
    assert performance["alerts"] == [] and run.data.drift["drift_detected"] is False
    assert ACCURACY_TAG not in run.tags and webhook == []
    content = card_text(get_cards(run["detect"].task)[0].get())
    assert "accuracy per attribute" in content and "realised mean accuracy" in content

    wrong = [{"Eyeglasses": int("Eyeglasses" not in p["present"])} for _, _, p in images]
    send_feedback(service, images, wrong)
    again = run_monitor(model_run=model_run, log=service.config["PREDICTION_LOG"], window_hours=1.0)
    measured = again.data.performance["per_attribute"]
    assert measured["Eyeglasses"]["realised_accuracy"] == 0.0
    assert measured["Eyeglasses"]["significant_drop"] is True
    assert measured["Smiling"]["realised_accuracy"] == pytest.approx(
        offline[attributes.index("Smiling")]
    )
    assert ACCURACY_TAG in again.tags and DRIFT_TAG not in again.tags
    [alert] = webhook
    assert alert["alarms"] == [ACCURACY_TAG] and alert["monitor_run"] == again.pathspec
    assert alert["accuracy"]["significant_drops"] == ["Eyeglasses"]
    assert_history_lists(model_run, [again, run])
    page = service.test_client().get("/monitoring").get_data(as_text=True)
    for monitored, alerts in ((run, ""), (again, ", 1 alert(s)")):
        means = monitored.data.performance
        cell = f"{means['estimated_mean_accuracy']:.3f} / {means['realised_mean_accuracy']:.3f}"
        assert f"<td>{cell} ({LABELLED} labelled){alerts}</td>" in page


def labels_by_file(path, names: list[str], attributes: list[str]) -> np.ndarray:
    """The generator's 0/1 labels of `names`, in that order and the attributes' order, joined
    by file name."""
    file_attributes, file_names, truth = celeba.read_attribute_file(path)
    rows = dict(zip(file_names, truth, strict=True))
    columns = [file_attributes.index(name) for name in attributes]
    return np.array([rows[name][columns] for name in names]) > 0


def offline_accuracy(model_run: str, files: list, labels: np.ndarray) -> np.ndarray:
    """Per attribute, the share of the faces the run's model gets right offline: Predictor on
    the JPEG files, present at the run's thresholds."""
    predictor = Predictor.from_run(model_run)
    pixels = np.stack([predictor.pixels(path.read_bytes()) for path in files])
    present = predictor.predict(pixels).probs >= predictor.thresholds
    return (present == labels).mean(axis=0)


def send_feedback(app, images: list[tuple], labels: list[dict[str, int]]) -> None:
    """POST /feedback for each (request id, image index, prediction) with its labels."""
    client = app.test_client()
    for (request_id, index, _), given in zip(images, labels, strict=True):
        body = {"request_id": request_id, "image_index": index, "labels": given}
        response = client.post("/feedback", json=body)
        assert response.status_code in (200, 201), response.get_json()


def assert_history_lists(model_run: str, newest_first: list) -> None:
    """history() names each run with its window, verdict, rows, most drifted columns and
    accuracy."""
    runs = history(model_run)
    assert [run["pathspec"] for run in runs] == [run.pathspec for run in newest_first]
    for listed, run in zip(runs, newest_first, strict=True):
        drift = run.data.drift
        keys = ["window_start", "window_end", "drift_detected", "n_current"]
        assert [listed[k] for k in keys] == [drift[k] for k in keys]
        scores = sorted(column["score"] for column in drift["columns"].values())
        assert [c["score"] for c in listed["top_columns"]] == scores[:TOP_COLUMNS]
        assert all(
            drift["columns"][c["column"]]["score"] == c["score"] for c in listed["top_columns"]
        )
        performance = run.data.performance
        assert listed["performance"] == {key: performance[key] for key in ACCURACY_FIELDS}


def assert_dashboard_serves(client, model_run: str, newest_first: list) -> None:
    """/monitoring lists the served model's runs, /monitoring/history the same as JSON, and
    each run with a verdict links to its report."""
    assert client.get("/monitoring/history").get_json() == {
        "model": model_run,
        "runs": history(model_run),
    }
    page = client.get("/monitoring").get_data(as_text=True)
    assert page.count('<tr class="run"') == len(newest_first)
    for run in newest_first:
        report = client.get(f"/monitoring/runs/{run.id}/report")
        if run.data.report_html is None:
            assert report.status_code == 404
            assert report.get_json()["error"]["code"] == "no_drift_report"
            assert f"/monitoring/runs/{run.id}/report" not in page
        else:
            assert report.status_code == 200 and report.mimetype == "text/html"
            assert report.get_data(as_text=True) == run.data.report_html
            assert report.headers["X-Monitor-Run"] == run.pathspec
            assert all(report.headers[k] == v for k, v in REPORT_HEADERS.items())
            assert f"/monitoring/runs/{run.id}/report" in page


@pytest.mark.emulator
def test_a_run_over_a_gs_sink_opens_only_the_objects_of_its_window(model_run, gcs):
    """30 days of hourly partitions, a replica's backlog in one segment and a second replica
    in some hours: a 3-hour window lists and reads only the hours it overlaps."""
    now, sink = time.time(), Sink("gs://facet/predictions")
    hours = np.arange(now // HOUR - 30 * 24 + 1, now // HOUR + 1) * HOUR
    ts = np.concatenate(
        [start + np.array([0.1, 0.5, 0.9]) * min(HOUR, now - start) for start in hours]
    )
    values = Run(model_run).data.reference_features
    keys = write_segment(sink, sink_rows(ts, values, model_run, "pod-a"), "a" * 32, 1, len(ts))
    assert len(keys) == 30 * 24
    second = ts[(ts // HOUR % 5 == 0) | (ts > now - 2 * HOUR)]  # some hours, the newest too
    keys += write_segment(sink, sink_rows(second, values, model_run, "pod-b"), "b" * 32, 1, 9)

    run = run_monitor(
        model_run=model_run, log="gs://facet/predictions", window_hours=3.0, settle_minutes=0.0
    )
    since, until = run.data.window
    overlapping = [key for key in keys if since - HOUR < hour_of(key) < until]
    assert len(overlapping) >= 5  # 3 hours and a part, the newest with pod-b's rows too
    assert run.data.log_objects == sorted(overlapping)
    timestamps = np.concatenate([ts, second])
    assert run.data.drift["n_current"] == ((since <= timestamps) & (timestamps < until)).sum()


def sink_rows(ts, values, model_run: str, replica: str) -> pd.DataFrame:
    """A shipped segment's frame: one row per ts, drift values from the model's reference."""
    drawn = values.sample(len(ts), replace=True, random_state=0).reset_index(drop=True)
    meta = pd.DataFrame(
        {"ts": ts, "replica": replica, "model": model_run, "image_index": 0}
    ).assign(request_id=[f"{replica}-{i}" for i in range(len(ts))])
    return pd.concat([meta, drawn], axis=1)


def hour_of(key: str) -> float:
    """The first second of the hour partition a key is in, read from its name."""
    hour = re.search(r"/hour=([^/]+)/", key).group(1)
    return datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()
