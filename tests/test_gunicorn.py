"""The service under real gunicorn: two workers, concurrent load, one worker killed."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import ROOT, free_port

from lib import synthetic
from lib.predlog import PredictionLog

pytestmark = [pytest.mark.gunicorn, pytest.mark.flow]

REQUESTS = 300


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_image(url: str, image: bytes, request_id: str) -> int | str:
    """The status code, or the connection error a killed worker leaves behind."""
    headers = {"Content-Type": "image/jpeg", "X-Request-ID": request_id}
    request = urllib.request.Request(url, data=image, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
            assert body["request_id"] == request_id
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return type(error).__name__


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.fixture
def gunicorn(smoke_run, tmp_path):
    port, log = free_port(), tmp_path / "predictions.db"
    env = {
        **os.environ,
        "MODEL_RUN": smoke_run.pathspec,
        "PREDICTION_LOG": str(log),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    command = [sys.executable, "-m", "gunicorn", "--config", "serving/gunicorn.conf.py"]
    errors = (tmp_path / "err").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    ready = 0
    while ready < 10:  # both workers answer: several readiness checks in a row
        assert time.monotonic() < deadline, (tmp_path / "err").read_text()[-3000:]
        try:
            ready = ready + 1 if get(f"{base}/readyz")[0] == 200 else 0
        except (urllib.error.URLError, ConnectionError):
            ready = 0
        time.sleep(0.1)
    yield server, base, log
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    errors.close()


def test_every_answered_prediction_is_logged_when_a_worker_is_killed(gunicorn, tmp_path):
    server, base, log_path = gunicorn
    root = synthetic.generate(tmp_path / "faces", synthetic.make_spec(8, seed=3))
    images = [p.read_bytes() for p in sorted(Path(root, "img_align_celeba").iterdir())]
    workers = worker_pids(server.pid)
    assert len(workers) == 2

    done, kill = iter(range(1, REQUESTS + 1)), threading.Lock()

    def send(i: int) -> tuple[str, int | str]:
        request_id = f"load-{i}"
        status = post_image(f"{base}/predict", images[i % len(images)], request_id)
        with kill:
            if next(done) == REQUESTS // 3:  # a third answered, the rest in flight or queued
                os.kill(workers[0], signal.SIGKILL)
        return request_id, status

    with ThreadPoolExecutor(16) as pool:
        results = dict(pool.map(send, range(REQUESTS)))

    answered = {rid for rid, status in results.items() if status == 200}
    logged = PredictionLog(log_path).read()
    logged_ids = set(logged["request_id"])
    assert len(answered) > REQUESTS // 2
    assert workers[0] not in worker_pids(server.pid)  # killed, and replaced by the master
    assert answered <= logged_ids  # every 200 has its row
    assert len(logged) == len(logged_ids)  # one image, one row, per request
    # A row without a 200 is possible only for the request the killed worker had committed
    # but not yet sent: at most one per kill.
    assert len(logged_ids - answered) <= 1
    assert all(status in (200, 503) or isinstance(status, str) for status in results.values())

    status, text = get(f"{base}/metrics")
    assert status == 200
    assert 'facet_requests_total{endpoint="/predict",status="200"}' in text.decode()
