"""Drift alerts: the `drift` tag on the MonitorFlow run, and a JSON POST to a webhook."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

from metaflow import Run, namespace

from lib.drift import drifted_columns
from lib.settings import FlowSettings

DRIFT_TAG = "drift"


def raise_alarm(monitor_run: str, model_run: str, drift: dict[str, Any]) -> None:
    """Tag the run `drift`, and POST a JSON summary to ALERT_WEBHOOK_URL if it is set."""
    namespace(None)
    Run(monitor_run).add_tag(DRIFT_TAG)
    url = FlowSettings().ALERT_WEBHOOK_URL
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
