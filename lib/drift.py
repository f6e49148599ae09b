"""Drift statistics: one window of the prediction log against a model's reference, in evidently.

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

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

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


@dataclass(frozen=True)
class Thresholds:
    column: float  # a column drifts when its p-value is at most this
    embedding: float  # the embedding drifts when its mean distance is above this


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
    thresholds = calibrate(reference, len(current))
    snapshot = _run_report(reference, current, thresholds)
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


def calibrate(reference: Reference, n_current: int) -> Thresholds:
    """Each test's threshold: FALSE_ALARM_RATE shared by the columns and the embedding."""
    per_test = FALSE_ALARM_RATE / (len(reference.columns) + 1)
    embedding = mean_distance_threshold(
        len(reference.frame), n_current, len(reference.embedding), per_test
    )
    return Thresholds(column=per_test, embedding=embedding)


def mean_distance_threshold(
    n_reference: int, n_current: int, dim: int, false_alarm_rate: float
) -> float:
    """The distance between the means of two whitened samples from the same distribution
    exceeds this with probability false_alarm_rate: the mean difference is about
    N(0, (1/n + 1/m) I), so its squared length is (1/n + 1/m) times a chi-square(dim)."""
    from scipy.stats import chi2

    return math.sqrt(chi2.isf(false_alarm_rate, dim) * (1 / n_reference + 1 / n_current))


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


def _run_report(reference: Reference, current: pd.DataFrame, thresholds: Thresholds) -> Any:
    """Run evidently on the whitened frames; return its snapshot."""
    from evidently import DataDefinition, Dataset
    from evidently.legacy.metrics.data_drift import embeddings_drift

    # evidently draws the embedding picture with a t-SNE of up to 2,500 rows of each side: 37 of
    # the 53 s a 100,000-row window took. The picture needs far fewer; the test uses every row.
    embeddings_drift.SAMPLE_CONSTANT = PICTURE_ROWS

    tested = [*reference.columns, *reference.embedding]
    frames = whiten(reference.frame[tested], current[tested], reference.embedding)
    definition = DataDefinition(
        numerical_columns=tested, embeddings={EMBEDDING: reference.embedding}
    )
    reference_set, current_set = (Dataset.from_pandas(f, definition) for f in frames)
    return _report(reference.columns, thresholds).run(current_set, reference_set)


def _report(columns: list[str], thresholds: Thresholds) -> Any:
    """evidently's Report: a test per column, and one for the embedding."""
    from evidently import Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import DistanceDriftMethod
    from evidently.presets import DataDriftPreset

    by_column = DataDriftPreset(
        columns=columns,
        num_method=COLUMN_METHOD,
        threshold=thresholds.column,
        drift_share=1 / len(columns),
    )
    distance = DistanceDriftMethod(
        dist="euclidean", threshold=thresholds.embedding, bootstrap=False
    )
    embedding = EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=distance)
    return Report([by_column, embedding], include_tests=True)


def _summarise(
    result: dict[str, Any], reference: Reference, thresholds: Thresholds
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
            "threshold": thresholds.column,
            "drifted": name in failed,
        }
        for name in reference.columns
    }
    score = float(values[EMBEDDING])
    embedding = {
        "score": score,
        "threshold": thresholds.embedding,
        "drifted": score > thresholds.embedding,
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
