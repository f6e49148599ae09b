"""Drift monitoring: finding MonitorFlow's reports."""

from __future__ import annotations

from metaflow import Flow, namespace
from metaflow.exception import MetaflowNotFound

MONITOR_FLOW = "MonitorFlow"


def newest_report(model_run: str | None = None) -> tuple[str, str] | None:
    """(run pathspec, report HTML) of the newest successful MonitorFlow run that produced a
    report, for `model_run` if given; None when there is none."""
    namespace(None)
    try:
        runs = sorted(Flow(MONITOR_FLOW).runs(), key=lambda r: r.created_at, reverse=True)
    except MetaflowNotFound:
        return None
    for run in runs:
        if not run.successful:
            continue
        data = run.data
        if model_run is not None and data.model_run != model_run:
            continue
        if data.report_html:
            return run.pathspec, data.report_html
    return None
