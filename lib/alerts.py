"""MonitorFlow's alerts: a tag on the run for each alarm (`drift`, `accuracy`), and one JSON
POST to a webhook that names them all."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from metaflow import Run, namespace

from lib.drift import drifted_columns
from lib.settings import FlowSettings

DRIFT_TAG = "drift"
ACCURACY_TAG = "accuracy"
# What the webhook is told of `performance`: its summary without the per-attribute table.
ACCURACY_FIELDS = (
    "estimated_mean_accuracy",
    "estimated_mean_accuracy_ci",
    "realised_mean_accuracy",
    "n_labelled",
    "test_mean_accuracy",
    "accuracy_margin",
    "alerts",
)


def alarms(drift: dict[str, Any], performance: dict[str, Any] | None = None) -> list[str]:
    """The tags a run earns: `drift` when it found drift, `accuracy` when its estimated
    accuracy fell past the margin or a realised drop was significant (performance's
    alerts)."""
    raised = [DRIFT_TAG] if drift["drift_detected"] else []
    return raised + ([ACCURACY_TAG] if performance and performance["alerts"] else [])


def raise_alarm(
    monitor_run: str,
    model_run: str,
    drift: dict[str, Any],
    performance: dict[str, Any] | None = None,
) -> None:
    """Nothing if no alarm is due (alarms); else tag the run with each alarm, then POST one
    JSON summary to ALERT_WEBHOOK_URL if it is set: the tags are there whatever becomes of
    the POST, whose failure is raised after them."""
    tags = alarms(drift, performance)
    if not tags:
        return
    namespace(None)
    run = Run(monitor_run)
    for tag in tags:
        run.add_tag(tag)
    url = FlowSettings().ALERT_WEBHOOK_URL
    if url:
        post_json(url, alert_summary(monitor_run, model_run, drift, performance))


def alert_summary(
    monitor_run: str,
    model_run: str,
    drift: dict[str, Any],
    performance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The webhook's body: the alarms, the drift fields without the per-column table and, with
    an accuracy alarm, `accuracy` (ACCURACY_FIELDS of performance, the significant drops by
    attribute). `text` makes it readable as-is by Slack-style incoming webhooks."""
    tags = alarms(drift, performance)
    reasons = [drift["message"]] if DRIFT_TAG in tags else []
    reasons += performance["alerts"] if ACCURACY_TAG in tags else []
    summary = {
        "text": f"facet: {' and '.join(tags)} in traffic to {model_run} ({monitor_run}): "
        + "; ".join(reasons),
        "alarms": tags,
        "monitor_run": monitor_run,
        "model_run": model_run,
        "drifted_columns": drifted_columns(drift),
        **{key: value for key, value in drift.items() if key != "columns"},
    }
    if ACCURACY_TAG in tags:
        drops = [name for name, a in performance["per_attribute"].items() if a["significant_drop"]]
        summary["accuracy"] = {
            **{key: performance[key] for key in ACCURACY_FIELDS},
            "significant_drops": drops,
        }
    return summary


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is here: the payload goes to the URL configured
    or nowhere."""

    def redirect_request(self, *args: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post_json(
    url: str,
    payload: dict[str, Any],
    timeout: float = 10.0,
    within: float = 60.0,
    backoff: float = 1.0,
) -> None:
    """POST `payload` as JSON to an http(s) URL, never following a redirect. A connection
    error, a timeout, 429 or 5xx is retried after `backoff` seconds, doubled at each retry,
    for `within` seconds in all; an attempt waits `timeout` at most, and never past that.
    Errors name the host only: webhook URLs often carry a secret token in their path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"ALERT_WEBHOOK_URL must be an http(s) URL with a host, not scheme {parts.scheme!r}"
        )
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    deadline, delay = time.monotonic() + within, backoff
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        try:
            with _OPENER.open(request, timeout=min(timeout, left)):
                return
        except OSError as error:
            failure = f"could not POST the alert to {parts.hostname}: {_reason(error)}"
            if not _transient(error) or time.monotonic() + delay > deadline:
                raise RuntimeError(failure) from None
        time.sleep(delay)
        delay *= 2


def _transient(error: OSError) -> bool:
    """Worth another try: no answer, or 429 / 5xx."""
    if isinstance(error, urllib.error.HTTPError):
        return error.code == 429 or error.code >= 500
    return True


def _reason(error: OSError) -> str:
    """What went wrong, without the URL (a redirect's target is left out too)."""
    if isinstance(error, urllib.error.HTTPError):
        redirect = " (redirects are not followed)" if 300 <= error.code < 400 else ""
        return f"HTTP {error.code}{redirect}"
    return str(getattr(error, "reason", error))
