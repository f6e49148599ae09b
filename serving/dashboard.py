"""The monitoring dashboard: the served model's MonitorFlow runs over time.

GET /monitoring                         the page: charts and a table of runs (HTML)
GET /monitoring/history                 the same history as JSON (lib.monitor.history)
GET /monitoring/runs/<run id>/report    one run's evidently report (HTML)

The page draws lib.cards.history_charts, the charts of MonitorFlow's end card, with Vega-Lite
from serving/static/vendor: nothing is loaded from elsewhere. Its Content-Security-Policy lets
only the service's own scripts run, and Vega evaluates its expressions with vega-interpreter
instead of generating code, so no 'unsafe-eval' either. The specs travel inside the page (a
JSON data block, which is never executed), so a browser that sends an API key for the page
needs nothing else but the scripts.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from lib.cards import HISTORY_HEADERS, history_charts, history_row
from lib.monitor import MONITOR_FLOW, history, report_html
from serving.api import REPORT_HEADERS
from serving.errors import ApiError
from serving.state import predictor

blueprint = Blueprint("dashboard", __name__, url_prefix="/monitoring")
PAGE_HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
}


@blueprint.get("")
def page() -> Response:
    model = predictor().name
    runs = history(model)
    html = render_template(
        "monitoring.html",
        model=model,
        headers=HISTORY_HEADERS,
        runs=[(run, history_row(run)) for run in runs],
        charts=history_charts(runs),
    )
    return Response(html, mimetype="text/html", headers=PAGE_HEADERS)


@blueprint.get("/history")
def history_json() -> dict:
    model = predictor().name
    return {"model": model, "runs": history(model)}


@blueprint.get("/runs/<run_id>/report")
def run_report(run_id: str) -> Response:
    """Only a run listed in the served model's history: any other id, whatever it holds,
    never reaches the datastore."""
    model = predictor().name
    pathspec = f"{MONITOR_FLOW}/{run_id}"
    listed = any(run["pathspec"] == pathspec for run in history(model))
    html = report_html(pathspec) if listed else None
    if html is None:
        raise ApiError(
            404,
            "no_drift_report",
            f"{pathspec} is not a successful MonitorFlow run with a drift report for {model}; "
            "GET /monitoring/history lists them",
        )
    headers = {"X-Monitor-Run": pathspec, **REPORT_HEADERS}
    return Response(html, mimetype="text/html", headers=headers)
