"""MonitorFlow's queries: which window of the log a run tests, the rows and the reference it
compares, and the reports earlier runs left. The statistics are in lib.drift, the alert in
lib.alerts and the card in lib.cards."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from metaflow import Run, namespace

from lib.drift import Reference, Window
from lib.features import IMAGE_FEATURES, embedding_columns, probability_columns
from lib.predlog import PredictionLog
from lib.registry import newest_runs

MONITOR_FLOW = "MonitorFlow"


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
        if run.successful and (model_run is None or run.data.model_run == model_run):
            yield run


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
