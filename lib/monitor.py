"""MonitorFlow's queries: which log and which window of it a run tests, the rows and the
reference it compares, the feedback and test scores its accuracy is measured with, and what
earlier runs left: their reports and the history of their verdicts. The log is a replica's
SQLite file or the sink every replica ships to (lib.sink); the statistics are in lib.drift and
lib.performance, the alerts in lib.alerts and the cards in lib.cards."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from metaflow import Run, namespace

from lib import sink
from lib.alerts import ACCURACY_FIELDS
from lib.drift import Reference, Window
from lib.features import IMAGE_FEATURES, embedding_columns, probability_columns
from lib.performance import Expected, measure
from lib.registry import newest_runs
from lib.settings import FlowSettings

MONITOR_FLOW = "MonitorFlow"
# The history: a model's newest runs (a week of hourly runs), and the most drifted columns
# (smallest p-values) it names for each.
HISTORY_RUNS = 168
TOP_COLUMNS = 5


def newest_report(model_run: str | None = None) -> tuple[str, str] | None:
    """(run pathspec, report HTML) of the newest successful MonitorFlow run that produced a
    report, for `model_run` if given; None when there is none."""
    for run in successful_runs(model_run):
        html = report_html(run.pathspec)
        if html:
            return run.pathspec, html
    return None


@functools.lru_cache(maxsize=4)
def report_html(pathspec: str) -> str | None:
    """A finished MonitorFlow run's report (None if it made none), unpickled from the
    datastore once per process: a finished run's artifacts never change."""
    namespace(None)
    return Run(pathspec).data.report_html


def successful_runs(model_run: str | None = None) -> Iterator[Run]:
    """MonitorFlow's successful runs, newest first, for `model_run` if given."""
    for run in newest_runs([MONITOR_FLOW]):
        if run.successful and (
            model_run is None or run_summary(run.pathspec)["model_run"] == model_run
        ):
            yield run


def history(model_run: str) -> list[dict[str, Any]]:
    """run_summary of the HISTORY_RUNS newest successful MonitorFlow runs that tested
    `model_run`, newest first."""
    runs = itertools.islice(successful_runs(model_run), HISTORY_RUNS)
    return [run_summary(run.pathspec) for run in runs]


def history_with(
    pathspec: str, model_run: str, drift: dict[str, Any], performance: dict[str, Any]
) -> list[dict[str, Any]]:
    """The history with a run that is not successful yet on top: MonitorFlow's end step adds
    its own."""
    newest = summarise_run(pathspec, model_run, drift, performance)
    return [newest, *history(model_run)[: HISTORY_RUNS - 1]]


@functools.lru_cache(maxsize=4096)
def run_summary(pathspec: str) -> dict[str, Any]:
    """A finished MonitorFlow run's summarise_run, read from the datastore once per process
    (its `model_run`, `drift` and `performance`, which runs made before it lack; never the
    report). Callers share the dict: read it only."""
    namespace(None)
    data = Run(pathspec).data
    return summarise_run(pathspec, data.model_run, data.drift, getattr(data, "performance", None))


def summarise_run(
    pathspec: str, model_run: str, drift: dict[str, Any], performance: dict[str, Any] | None
) -> dict[str, Any]:
    """One run of the history: its window, verdict (drift_detected: True, False, or None
    without enough rows), rows tested, its TOP_COLUMNS most drifted columns, most first, and
    its accuracy (performance's summary as the webhook gets it, lib.alerts.ACCURACY_FIELDS;
    None for a run made before runs measured it)."""
    ranked = sorted(drift["columns"].items(), key=lambda item: item[1]["score"])
    return {
        "pathspec": pathspec,
        "run_id": pathspec.rsplit("/", 1)[-1],
        "model_run": model_run,
        "window_start": drift["window_start"],
        "window_end": drift["window_end"],
        "drift_detected": drift["drift_detected"],
        "n_current": drift["n_current"],
        "top_columns": [
            {"column": name, **{k: c[k] for k in ("score", "threshold", "drifted")}}
            for name, c in ranked[:TOP_COLUMNS]
        ],
        "message": drift["message"],
        "performance": performance and {key: performance[key] for key in ACCURACY_FIELDS},
    }


def log_location(log: str = "") -> str:
    """Where MonitorFlow reads the rows: `log`, else the sink every replica ships to
    (PREDICTION_SINK) when there is one, else this machine's SQLite log (PREDICTION_LOG)."""
    settings = FlowSettings()
    return log or settings.PREDICTION_SINK or settings.PREDICTION_LOG


def choose_window(
    model_run: str, log: str, window_hours: float = 0.0, settle_minutes: float = 0.0
) -> Window:
    """The last `window_hours`, or else every row since the window of the newest run that
    tested this model's traffic (all rows if none did). A run that found too little data
    tested nothing, so its rows wait for the next run rather than go unexamined.

    A window of a sink ends `settle_minutes` before now: rows reach it up to a shipping
    interval (and an upload) after they were answered, and the next window starts where this
    one ends, so only a row later than that is never tested. A SQLite log's ends now."""
    end = time.time() - (settle_minutes * 60 if sink.is_sink(log) else 0.0)
    if window_hours > 0:
        return end - window_hours * 3600, end
    for run in successful_runs(model_run):
        summary = run_summary(run.pathspec)
        if summary["drift_detected"] is not None:
            return summary["window_end"], end
    return None, end


def read_window(log: str, model_run: str, window: Window) -> tuple[pd.DataFrame, list[str]]:
    """(rows, sources): the model's rows logged in the window, from a SQLite log, a Parquet
    folder or a gs:// prefix (lib.sink.read_window: a sink's hours outside the window are
    never listed or opened), and what was read: the log's path or the objects' keys."""
    return sink.read_window(log, model_run, *window)


def load_reference(model_run: str) -> Reference:
    """The run's reference_features, with the columns tested one by one and together."""
    namespace(None)
    data = Run(model_run).data
    return Reference(
        frame=data.reference_features,
        columns=[*IMAGE_FEATURES, *probability_columns(data.dataset["attributes"])],
        embedding=embedding_columns(len(data.projection["components"])),
    )


def measure_performance(
    log: str, model_run: str, window: Window, rows: pd.DataFrame, margin: float, min_rows: int
) -> dict[str, Any]:
    """lib.performance.measure of the window's rows, with their feedback and the run's test
    accuracy: MonitorFlow's `performance`."""
    feedback = read_feedback(log, model_run, window)
    return measure(rows, feedback, load_expected(model_run), margin, min_rows)


def read_feedback(log: str, model_run: str, window: Window) -> pd.DataFrame:
    """The labels sent back (POST /feedback) for the model's answers, as lib.sink.read_feedback
    gives them: only feedback received since the window started, since none can come before
    the answer it is about; feedback that arrives after this run is not counted for its
    window."""
    return sink.read_feedback(log, model_run, since=window[0])


def load_expected(model_run: str) -> Expected:
    """The run's thresholds and its test split's accuracy per attribute, in its attributes'
    order: what the traffic's estimated and realised accuracy are compared with."""
    namespace(None)
    data = Run(model_run).data
    attributes, metrics = data.dataset["attributes"], data.metrics
    return Expected(
        attributes=attributes,
        thresholds=np.array([data.thresholds[a] for a in attributes]),
        test_accuracy=np.array([metrics["per_attribute"][a]["accuracy"] for a in attributes]),
        n_test=metrics["n_images"],
    )
