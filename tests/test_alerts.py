"""The alert webhook against a local HTTP server: only http(s), no redirects, transient
failures retried within a bounded time, the host named in errors and never the path, the
MonitorFlow run tagged with each alarm whatever becomes of the POST, and one POST naming the
drift and accuracy alarms."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

import lib.alerts
from lib.alerts import ACCURACY_TAG, DRIFT_TAG, post_json, raise_alarm

SECRET = "/services/T000/secret-token"


class Hook(HTTPServer):
    """Answers each POST with the next status of `statuses` (204 once they run out) and
    keeps the JSON bodies received."""

    def __init__(self, statuses=(), location="http://127.0.0.1:9/elsewhere"):
        self.statuses, self.location, self.received = list(statuses), location, []
        super().__init__(("127.0.0.1", 0), _Answer)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}{SECRET}"


class _Answer(BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.received.append(
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        )
        status = self.server.statuses.pop(0) if self.server.statuses else 204
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", self.server.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    servers = []

    def start(*args, **kwargs) -> Hook:
        servers.append(Hook(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://h/"])
def test_only_http_urls_are_posted_to(url):
    scheme = url.split(":")[0]
    with pytest.raises(ValueError, match=f"http\\(s\\) URL.*'{scheme}'"):
        post_json(url, {"text": "drift"})


def test_transient_failures_are_retried_with_backoff(hook):
    server = hook(statuses=[503, 429, 500])
    post_json(server.url, {"text": "drift"}, within=5, backoff=0.05)
    assert server.received == [{"text": "drift"}] * 4


def test_retries_stop_within_the_time_given_naming_the_host_only(hook):
    server = hook(statuses=[503] * 100)
    started = time.monotonic()
    with pytest.raises(RuntimeError) as failure:
        post_json(server.url, {"text": "drift"}, timeout=1, within=1.0, backoff=0.1)
    assert time.monotonic() - started < 2.0
    assert 2 <= len(server.received) <= 5  # 0.1 + 0.2 + 0.4 s of backoff fit in 1 s
    assert "could not POST the alert to 127.0.0.1: HTTP 503" in str(failure.value)
    assert "secret" not in str(failure.value) and "services" not in str(failure.value)


def test_a_client_error_is_not_retried(hook):
    server = hook(statuses=[404])
    with pytest.raises(RuntimeError, match=r"127\.0\.0\.1: HTTP 404"):
        post_json(server.url, {"text": "drift"}, within=5, backoff=0.05)
    assert len(server.received) == 1


def test_redirects_are_not_followed(hook):
    target = hook()
    server = hook(statuses=[307], location=target.url)
    with pytest.raises(RuntimeError, match="HTTP 307 \\(redirects are not followed\\)") as failure:
        post_json(server.url, {"text": "drift"}, within=5, backoff=0.05)
    assert target.received == [] and len(server.received) == 1
    assert "secret" not in str(failure.value)


def test_an_unreachable_host_is_named_without_the_path():
    with pytest.raises(RuntimeError, match=r"to 127\.0\.0\.1: ") as failure:
        post_json(f"http://127.0.0.1:9{SECRET}", {"text": "drift"}, within=0.3, backoff=0.1)
    assert "secret" not in str(failure.value)


@pytest.fixture
def tags(monkeypatch) -> list[str]:
    """The tags raise_alarm adds to the run MonitorFlow/1, recorded instead of stored."""
    added = []

    class FakeRun:
        def __init__(self, pathspec):
            assert pathspec == "MonitorFlow/1"

        def add_tag(self, tag):
            added.append(tag)

    monkeypatch.setattr(lib.alerts, "Run", FakeRun)
    return added


@pytest.mark.parametrize("webhook", ["file:///tmp/x", "refused"])
def test_the_run_is_tagged_whatever_becomes_of_the_post(webhook, tags, monkeypatch):
    url = webhook if webhook != "refused" else f"http://127.0.0.1:9{SECRET}"
    monkeypatch.setenv("ALERT_WEBHOOK_URL", url)
    monkeypatch.setattr(lib.alerts, "post_json", lambda *a: post_json(*a, within=0.2))
    drift = {"message": "drift in brightness", "columns": {}, "drift_detected": True}
    with pytest.raises((ValueError, RuntimeError)):
        raise_alarm("MonitorFlow/1", "TrainFlow/1", drift)
    assert tags == [DRIFT_TAG]


NO_DRIFT = {"message": "no drift in 200 rows", "columns": {}, "drift_detected": False}
DRIFT = {**NO_DRIFT, "message": "drift in 200 rows", "drift_detected": True}


def performance(alerts: list[str], drops: tuple[str, ...] = ()) -> dict:
    """A `performance` summary (lib.performance.measure) with these alerts and drops."""
    return {
        "estimated_mean_accuracy": 0.80,
        "estimated_mean_accuracy_ci": [0.78, 0.82],
        "realised_mean_accuracy": 0.70,
        "n_labelled": 120,
        "test_mean_accuracy": 0.88,
        "accuracy_margin": 0.05,
        "alerts": alerts,
        "per_attribute": {
            name: {"significant_drop": name in drops} for name in ("Eyeglasses", "Smiling")
        },
    }


@pytest.mark.parametrize(
    ("drift", "alerts", "expected"),
    [
        (NO_DRIFT, [], []),
        (DRIFT, [], [DRIFT_TAG]),
        (NO_DRIFT, ["realised accuracy of Smiling ..."], [ACCURACY_TAG]),
        (DRIFT, ["estimated mean accuracy ...", "realised ..."], [DRIFT_TAG, ACCURACY_TAG]),
    ],
)
def test_each_alarm_tags_the_run_and_one_post_names_them_all(
    drift, alerts, expected, tags, hook, monkeypatch
):
    server = hook()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", server.url)
    raise_alarm("MonitorFlow/1", "TrainFlow/1", drift, performance(alerts, ("Smiling",)))
    assert tags == expected
    if not tags:
        assert server.received == []
        return
    [body] = server.received
    assert body["alarms"] == tags and body["drift_detected"] is drift["drift_detected"]
    assert body["text"].startswith(f"facet: {' and '.join(tags)} in traffic to TrainFlow/1")
    assert all(reason in body["text"] for reason in alerts)
    assert (drift["message"] in body["text"]) is drift["drift_detected"]
    if ACCURACY_TAG in tags:
        accuracy = body["accuracy"]
        assert accuracy["significant_drops"] == ["Smiling"] and accuracy["alerts"] == alerts
        assert (accuracy["estimated_mean_accuracy"], accuracy["test_mean_accuracy"]) == (0.8, 0.88)
        assert "per_attribute" not in accuracy
    else:
        assert "accuracy" not in body
