"""The monitoring dashboard's routes over stand-in MonitorFlow runs: which runs it lists for
the served model, what the page loads, and who may read it. test_monitor.py checks the same
routes over real runs."""

import re
import uuid
from types import SimpleNamespace

import pytest

import lib.monitor
from lib.alerts import ACCURACY_FIELDS
from lib.monitor import TOP_COLUMNS
from serving import create_app
from serving.api import REPORT_HEADERS

SERVED, OTHER = "TrainFlow/1", "TrainFlow/2"
KEY = "a-key-for-the-dashboard"


def drift(verdict: bool | None, rows: int, hour: int) -> dict:
    """A MonitorFlow `drift` artifact; column i has p-value 10^-i."""
    columns = {} if verdict is None else {f"prob_{i}": stand_in_column(i) for i in range(8)}
    return {
        "drift_detected": verdict,
        "n_current": rows,
        "window_start": None if hour == 0 else 1.7e9 + 3600 * (hour - 1),
        "window_end": 1.7e9 + 3600 * hour,
        "columns": columns,
        "message": "…",
    }


def performance(estimated: float, realised: float | None, labelled: int, alerts: int) -> dict:
    """A MonitorFlow `performance` artifact (lib.performance.measure): the summary and a
    per-attribute table, which the history leaves out."""
    return {
        "n_rows": 150,
        "estimated_mean_accuracy": estimated,
        "estimated_mean_accuracy_ci": [estimated - 0.02, estimated + 0.02],
        "realised_mean_accuracy": realised,
        "n_labelled": labelled,
        "test_mean_accuracy": 0.9,
        "accuracy_margin": 0.05,
        "alerts": [f"alert {i}" for i in range(alerts)],
        "per_attribute": {"Smiling": {"estimated_accuracy": estimated}},
        "message": "…",
    }


def stand_in_column(i: int) -> dict:
    return {"score": 10.0**-i, "threshold": 2e-4, "drifted": i > 3, "method": "cramer_von_mises"}


class FinishedMonitorRun:
    """A finished run in the datastore: its pathspec, whether it succeeded and its artifacts."""

    def __init__(
        self, model_run: str, drift: dict, successful: bool = True, performance: dict | None = None
    ):
        self.pathspec = f"MonitorFlow/{uuid.uuid4().hex}"  # new to the process's caches
        self.id = self.pathspec.rsplit("/", 1)[-1]
        self.successful = successful
        report = None if drift["drift_detected"] is None else f"<html>{self.id}</html>"
        self.data = SimpleNamespace(model_run=model_run, drift=drift, report_html=report)
        if performance is not None:  # a run made before runs measured accuracy has none
            self.data.performance = performance


@pytest.fixture
def runs(monkeypatch) -> list[FinishedMonitorRun]:
    """Newest first: three runs of the served model between a failed one and another model's;
    the newest with feedback and an accuracy alert, the next with none, the oldest made
    before runs measured accuracy."""
    runs = [
        FinishedMonitorRun(SERVED, drift(True, 150, 4), successful=False),
        FinishedMonitorRun(
            SERVED, drift(True, 150, 3), performance=performance(0.8123, 0.75, 40, alerts=1)
        ),
        FinishedMonitorRun(OTHER, drift(False, 300, 2)),
        FinishedMonitorRun(
            SERVED, drift(False, 200, 1), performance=performance(0.9051, None, 0, alerts=0)
        ),
        FinishedMonitorRun(SERVED, drift(None, 10, 0)),
    ]
    by_pathspec = {run.pathspec: run for run in runs}
    monkeypatch.setattr(lib.monitor, "newest_runs", lambda flows: runs)
    monkeypatch.setattr(lib.monitor, "Run", by_pathspec.__getitem__)
    return runs


def serving_client(tmp_path):
    """The service, pretending to have loaded SERVED (an empty MODEL_DIR loads nothing)."""
    app = create_app({"MODEL_DIR": str(tmp_path), "PREDICTION_LOG": str(tmp_path / "p.db")})
    app.extensions["facet.model"].predictor = SimpleNamespace(name=SERVED)
    return app.test_client()


@pytest.fixture
def client(tmp_path):
    return serving_client(tmp_path)


def test_history_lists_the_served_models_successful_runs_newest_first(client, runs):
    listed = client.get("/monitoring/history").get_json()
    assert listed["model"] == SERVED
    assert [run["pathspec"] for run in listed["runs"]] == [runs[i].pathspec for i in (1, 3, 4)]
    newest, middle, oldest = listed["runs"]
    assert (newest["drift_detected"], newest["n_current"], newest["run_id"]) == (
        True,
        150,
        runs[1].id,
    )
    assert (newest["window_start"], newest["window_end"]) == (1.7e9 + 7200, 1.7e9 + 10800)
    assert [c["column"] for c in newest["top_columns"]] == [f"prob_{i}" for i in (7, 6, 5, 4, 3)]
    assert len(newest["top_columns"]) == TOP_COLUMNS
    assert (oldest["drift_detected"], oldest["window_start"], oldest["top_columns"]) == (
        None,
        None,
        [],
    )
    for listed_run, run in ((newest, runs[1]), (middle, runs[3])):
        measured = run.data.performance
        assert listed_run["performance"] == {key: measured[key] for key in ACCURACY_FIELDS}
    assert oldest["performance"] is None


def test_a_runs_report_is_served_for_the_served_model_only(client, runs):
    report = client.get(f"/monitoring/runs/{runs[1].id}/report")
    assert report.status_code == 200 and report.get_data(as_text=True) == runs[1].data.report_html
    assert report.headers["X-Monitor-Run"] == runs[1].pathspec
    assert all(report.headers[k] == v for k, v in REPORT_HEADERS.items())
    refused = {
        "another model's": runs[2].id,
        "a failed run's": runs[0].id,
        "a run without a verdict's": runs[4].id,
        "an unknown run's": "123",
    }
    for case, run_id in refused.items():
        response = client.get(f"/monitoring/runs/{run_id}/report")
        assert response.status_code == 404, case
        assert response.get_json()["error"]["code"] == "no_drift_report", case


def test_the_page_draws_from_local_scripts_only(client, runs):
    response = client.get("/monitoring")
    page = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert 'id="chart-verdicts"' in page and 'id="chart-scores"' in page
    assert page.count('<tr class="run"') == 3 and runs[2].pathspec not in page
    assert page.count('/report">report</a>') == 2  # the run without a verdict has no report
    assert "<th>estimated / realised accuracy</th>" in page
    # Estimated / realised mean accuracy: with feedback and an alert, without feedback, and a
    # run made before runs measured accuracy.
    rows = re.findall(r'<tr class="run".*?</tr>', page, re.DOTALL)
    accuracy = [re.findall(r"<td>(.*?)</td>", row)[-2] for row in rows]
    assert accuracy == ["0.812 / 0.750 (40 labelled), 1 alert(s)", "0.905 / -", "-"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(asset.startswith("/") for asset in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy
    assert "default-src 'none'" in policy


def test_the_dashboard_needs_the_api_key(tmp_path, monkeypatch, runs):
    monkeypatch.setenv("API_KEYS", KEY)
    client = serving_client(tmp_path)
    for path in ("/monitoring", "/monitoring/history", f"/monitoring/runs/{runs[1].id}/report"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
