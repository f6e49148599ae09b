"""Drift alerts: the `drift` tag on the MonitorFlow run, and a JSON POST to a webhook."""

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


def raise_alarm(monitor_run: str, model_run: str, drift: dict[str, Any]) -> None:
    """Tag the run `drift`, then POST a JSON summary to ALERT_WEBHOOK_URL if it is set: the
    tag is there whatever becomes of the POST, whose failure is raised after it."""
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
            failure = f"could not POST the drift alert to {parts.hostname}: {_reason(error)}"
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
