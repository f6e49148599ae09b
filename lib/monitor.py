"""Drift monitoring: what MonitorFlow computes, and finding its reports.

A window of the prediction log (lib.predlog) is compared with the reference TrainFlow stored
(`reference_features`: the test split through the same lib.features functions) with evidently
0.7: DataDriftPreset over the image features and predicted probabilities, EmbeddingsDrift over
the projected [CLS] embedding.

Every test is calibrated so that a window drawn from the training distribution raises a false
alarm with probability at most FALSE_ALARM_RATE, whatever the window's size:
- each column: the two-sample Cramér-von Mises test, drifted when its p-value is at most
  FALSE_ALARM_RATE / (number of tests) (Bonferroni). One drifted column is then evidence
  enough, so the dataset drifts when one column does (drift_share = 1 / columns).
- the embedding: whitened with the reference's covariance, the distance between the two means
  (EmbeddingsDrift's distance method, no bootstrap) against the distance that no-drift
  windows of this size exceed with probability FALSE_ALARM_RATE / (number of tests).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from metaflow import Flow, Run, namespace
from metaflow.exception import MetaflowNotFound

from lib.features import IMAGE_FEATURES, embedding_columns, probability_columns
from lib.predlog import PredictionLog

MONITOR_FLOW = "MonitorFlow"
DRIFT_TAG = "drift"
ALERT_WEBHOOK_URL = "ALERT_WEBHOOK_URL"
# At most one false alarm in a hundred in-distribution windows, all tests of a window together.
FALSE_ALARM_RATE = 0.01
COLUMN_METHOD = "cramer_von_mises"
EMBEDDING = "embedding"
EMBEDDING_METHOD = "euclidean distance between the means of the whitened embeddings"
INSUFFICIENT = "insufficient data"
# Rows of each side evidently's embedding picture (a t-SNE) is drawn from; see _run_report.
PICTURE_ROWS = 500

Window = tuple[float | None, float]  # (start, end) in unix seconds, start <= ts < end


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame  # TrainFlow's reference_features
    columns: list[str]  # tested one by one: image features and predicted probabilities
    embedding: list[str]  # tested together: the projected [CLS] embedding


def newest_report(model_run: str | None = None) -> tuple[str, str] | None:
    """(run pathspec, report HTML) of the newest successful MonitorFlow run that produced a
    report, for `model_run` if given; None when there is none."""
    for run in successful_runs(model_run):
        if run.data.report_html:
            return run.pathspec, run.data.report_html
    return None


def successful_runs(model_run: str | None = None) -> Iterator[Run]:
    """MonitorFlow's successful runs, newest first, for `model_run` if given."""
    namespace(None)
    try:
        runs = sorted(Flow(MONITOR_FLOW).runs(), key=lambda r: r.created_at, reverse=True)
    except MetaflowNotFound:
        return
    for run in runs:
        if run.successful and (model_run is None or run.data.model_run == model_run):
            yield run


def resolve_model_run(model_run: str = "") -> str:
    """The given training run, checked to exist, or the current champion."""
    from lib.registry import champion_pathspec

    namespace(None)
    return Run(model_run).pathspec if model_run else champion_pathspec("pass --model-run")


def choose_window(model_run: str, window_hours: float = 0.0) -> Window:
    """The last `window_hours`, or else every row since the window of the newest run that
    tested this model's traffic (all rows if none did). A run that found too little data
    tested nothing, so its rows wait for the next run rather than go unexamined."""
    end = time.time()
    if window_hours > 0:
        return end - window_hours * 3600, end
    for run in successful_runs(model_run):
        if run.data.drift["drift_detected"] is not None:
            return run.data.drift["window_end"], end
    return None, end


def read_window(log_path: str, model_run: str, window: Window) -> pd.DataFrame:
    """The model's rows logged in the window; none if the log does not exist (opening it
    would create it)."""
    if not Path(log_path).exists():
        return pd.DataFrame()
    return PredictionLog(log_path).read(model=model_run, since=window[0], until=window[1])


def load_reference(model_run: str) -> Reference:
    """The run's reference_features, with the columns tested one by one and together."""
    namespace(None)
    data = Run(model_run).data
    return Reference(
        frame=data.reference_features,
        columns=[*IMAGE_FEATURES, *probability_columns(data.dataset["attributes"])],
        embedding=embedding_columns(len(data.projection["components"])),
    )


def detect_drift(
    reference: Reference, current: pd.DataFrame, window: Window, min_rows: int = 100
) -> tuple[dict[str, Any], str | None]:
    """(drift summary, evidently's HTML report) for one window; no report, and
    drift_detected None, when either side has fewer than min_rows rows."""
    if min_rows < 2:
        raise ValueError(f"--min-rows must be at least 2, got {min_rows}")
    summary = {
        "n_reference": len(reference.frame),
        "n_current": len(current),
        "window_start": window[0],
        "window_end": window[1],
    }
    shortage = _shortage(summary["n_reference"], summary["n_current"], min_rows)
    if shortage:
        empty = {"share_of_drifted_columns": None, "columns": {}, "embedding": None}
        return {"drift_detected": None, **empty, **summary, "message": shortage}, None
    snapshot, thresholds = _run_report(reference, current)
    drift = {**_summarise(snapshot.dict(), reference, thresholds), **summary}
    drift["message"] = _verdict(drift)
    return drift, snapshot.get_html_str(as_iframe=False)


def _shortage(n_reference: int, n_current: int, min_rows: int) -> str | None:
    if n_current < min_rows:
        return (
            f"{INSUFFICIENT}: {n_current} rows logged for this model in the window, fewer "
            f"than min_rows={min_rows}; drift was not tested"
        )
    if n_reference < min_rows:
        return (
            f"{INSUFFICIENT}: the reference has {n_reference} rows, fewer than "
            f"min_rows={min_rows}; drift was not tested"
        )
    return None


def _run_report(reference: Reference, current: pd.DataFrame) -> tuple[Any, tuple[float, float]]:
    """Run evidently; return its snapshot and the (column, embedding) thresholds used."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift import embeddings_drift
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import DistanceDriftMethod
    from evidently.presets import DataDriftPreset

    # evidently draws the embedding picture with a t-SNE of up to 2,500 rows of each side: 37 of
    # the 53 s a 100,000-row window took. The picture needs far fewer; the test uses every row.
    embeddings_drift.SAMPLE_CONSTANT = PICTURE_ROWS

    columns, embedding = reference.columns, reference.embedding
    per_test = FALSE_ALARM_RATE / (len(columns) + 1)
    embedding_threshold = mean_distance_threshold(
        len(reference.frame), len(current), len(embedding), per_test
    )
    tested = [*columns, *embedding]
    frames = whiten(reference.frame[tested], current[tested], embedding)
    definition = DataDefinition(numerical_columns=tested, embeddings={EMBEDDING: embedding})
    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method=COLUMN_METHOD,
                threshold=per_test,
                drift_share=1 / len(columns),
            ),
            EmbeddingsDrift(
                embeddings_name=EMBEDDING,
                drift_method=DistanceDriftMethod(
                    dist="euclidean", threshold=embedding_threshold, bootstrap=False
                ),
            ),
        ],
        include_tests=True,
    )
    reference_set, current_set = (Dataset.from_pandas(f, definition) for f in frames)
    return report.run(current_set, reference_set), (per_test, embedding_threshold)


def whiten(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames with `columns` in the reference's whitened coordinates (zero mean, identity
    covariance), so a distance between means reads the same for every model."""
    values = reference[columns].to_numpy(np.float64)
    mean = values.mean(axis=0)
    covariance = np.cov(values, rowvar=False)
    # A collapsed direction (a constant component) must not make the covariance singular.
    covariance += np.eye(len(columns)) * (1e-9 * np.trace(covariance) + 1e-12)
    to_white = np.linalg.inv(np.linalg.cholesky(covariance)).T

    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        white = (frame[columns].to_numpy(np.float64) - mean) @ to_white
        return frame.drop(columns=columns).assign(**dict(zip(columns, white.T, strict=True)))

    return apply(reference), apply(current)


def mean_distance_threshold(
    n_reference: int, n_current: int, dim: int, false_alarm_rate: float
) -> float:
    """The distance between the means of two whitened samples from the same distribution
    exceeds this with probability false_alarm_rate: the mean difference is about
    N(0, (1/n + 1/m) I), so its squared length is (1/n + 1/m) times a chi-square(dim)."""
    from scipy.stats import chi2

    return math.sqrt(chi2.isf(false_alarm_rate, dim) * (1 / n_reference + 1 / n_current))


def _summarise(
    result: dict[str, Any], reference: Reference, thresholds: tuple[float, float]
) -> dict[str, Any]:
    """Scores from evidently's metrics, decisions from its tests (FAIL: drifted)."""
    values = {_metric_key(m["config"]): m["value"] for m in result["metrics"]}
    failed = {
        _metric_key(t["metric_config"]["params"]) for t in result["tests"] if t["status"] == "FAIL"
    }
    columns = {
        name: {
            "score": float(values[name]),
            "method": COLUMN_METHOD,
            "threshold": thresholds[0],
            "drifted": name in failed,
        }
        for name in reference.columns
    }
    score = float(values[EMBEDDING])
    embedding = {
        "score": score,
        "threshold": thresholds[1],
        "drifted": score > thresholds[1],
        "method": EMBEDDING_METHOD,
    }
    dataset_drift = "DriftedColumnsCount" in failed
    return {
        "drift_detected": dataset_drift or embedding["drifted"],
        "share_of_drifted_columns": float(values["DriftedColumnsCount"]["share"]),
        "columns": columns,
        "embedding": embedding,
    }


def _metric_key(config: dict[str, Any]) -> str:
    """A column name for a column's drift, the embedding's name, else the metric's type."""
    kind = config["type"].rsplit(":", 1)[-1]
    if kind == "ValueDrift":
        return config["column"]
    return config["embeddings_name"] if kind == "EmbeddingsDrift" else kind


def drifted_columns(drift: dict[str, Any]) -> list[str]:
    return [name for name, column in drift["columns"].items() if column["drifted"]]


def _verdict(drift: dict[str, Any]) -> str:
    columns, embedding = drifted_columns(drift), drift["embedding"]
    window = (drift["window_start"], drift["window_end"])
    span = f"{drift['n_current']} rows {describe_window(window)}"
    in_embedding = (
        f"embedding distance {embedding['score']:.3f} "
        f"{'>' if embedding['drifted'] else '<='} {embedding['threshold']:.3f}"
    )
    if not drift["drift_detected"]:
        return f"no drift in {span}: no column drifted; {in_embedding}"
    named = ", ".join(columns[:10]) + (", …" if len(columns) > 10 else "")
    return (
        f"drift in {span}: {len(columns)} of {len(drift['columns'])} columns drifted"
        f"{f' ({named})' if columns else ''}; {in_embedding}"
    )


def describe_window(window: Window) -> str:
    start = "the first row" if window[0] is None else _utc(window[0])
    return f"from {start} to {_utc(window[1])}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def raise_alarm(monitor_run: str, model_run: str, drift: dict[str, Any]) -> None:
    """Tag the run `drift`, and POST a JSON summary to ALERT_WEBHOOK_URL if it is set."""
    namespace(None)
    Run(monitor_run).add_tag(DRIFT_TAG)
    url = os.environ.get(ALERT_WEBHOOK_URL)
    if url:
        post_json(url, alert_summary(monitor_run, model_run, drift))


def alert_summary(monitor_run: str, model_run: str, drift: dict[str, Any]) -> dict[str, Any]:
    """The webhook's body; `text` makes it readable as-is by Slack-style incoming webhooks."""
    return {
        "text": f"facet: drift in traffic to {model_run} ({monitor_run}): {drift['message']}",
        "monitor_run": monitor_run,
        "model_run": model_run,
        "drifted_columns": drifted_columns(drift),
        **{key: value for key, value in drift.items() if key != "columns"},
    }


def post_json(url: str, payload: dict[str, Any], timeout: float = 10.0) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except OSError as error:
        # Name the host only: webhook URLs often carry a secret token in their path.
        host = urllib.parse.urlsplit(url).netloc
        raise RuntimeError(f"could not POST the drift alert to {host}: {error}") from None


def drift_card(model_run: str, drift: dict[str, Any], report_html: str | None) -> list:
    """The detect step's card: summary, per-column scores, and evidently's full report."""
    from metaflow.cards import Markdown, Table, VegaChart

    verdict = {True: "drift detected", False: "no drift", None: INSUFFICIENT}
    components = [
        Markdown(f"# Drift: {verdict[drift['drift_detected']]}\n\n{drift['message']}"),
        Table(_summary_rows(model_run, drift), headers=["", ""]),
    ]
    if report_html is None:
        return components
    scores = [
        [name, f"{c['score']:.2e}", f"{c['threshold']:.1e}", "drifted" if c["drifted"] else ""]
        for name, c in sorted(drift["columns"].items(), key=lambda item: item[1]["score"])
    ]
    return [
        *components,
        VegaChart(_score_chart(drift)),
        Table(scores, headers=["column", "p-value", "threshold", ""]),
        Markdown("## evidently's report"),
        Markdown(_iframe(report_html)),
    ]


def _summary_rows(model_run: str, drift: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["model", model_run],
        ["window", describe_window((drift["window_start"], drift["window_end"]))],
        ["rows (window / reference)", f"{drift['n_current']} / {drift['n_reference']}"],
    ]
    if drift["drift_detected"] is None:
        return rows
    embedding = drift["embedding"]
    return [
        *rows,
        ["drifted columns", f"{len(drifted_columns(drift))} of {len(drift['columns'])}"],
        [
            "embedding distance / threshold",
            f"{embedding['score']:.3f} / {embedding['threshold']:.3f}",
        ],
    ]


def _score_chart(drift: dict[str, Any]) -> dict[str, Any]:
    """-log10 of each column's p-value, against the threshold's: bars past the line drifted."""
    threshold = -math.log10(next(iter(drift["columns"].values()))["threshold"])
    values = [
        {"column": name, "score": -math.log10(max(c["score"], 1e-300)), "drifted": c["drifted"]}
        for name, c in drift["columns"].items()
    ]
    # symlog: a column far past the line (p = 1e-30) must not flatten all the others.
    y = {"type": "quantitative", "title": "-log10 p-value", "scale": {"type": "symlog"}}
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "per-column drift: -log10 p-value (drifted past the line)",
        "width": 700,
        "height": 220,
        "layer": [
            {
                "data": {"values": values},
                "mark": "bar",
                "encoding": {
                    "x": {"field": "column", "type": "nominal", "sort": None},
                    "y": {"field": "score", **y},
                    "color": {"field": "drifted", "type": "nominal"},
                },
            },
            {
                "data": {"values": [{"threshold": threshold}]},
                "mark": {"type": "rule", "color": "red"},
                "encoding": {"y": {"field": "threshold", **y}},
            },
        ],
    }


def _iframe(report_html: str) -> str:
    """The standalone report inside the card. One line: a blank line would end Markdown's
    HTML block."""
    source = html.escape(report_html).replace("\n", "&#10;")
    return f'<iframe srcdoc="{source}" style="width:100%;height:1400px;border:0"></iframe>'
