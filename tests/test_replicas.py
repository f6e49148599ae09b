"""Two replicas of the service, each with its own prediction log and replica id, ship their rows
to one gs:// sink (gcp-storage-emulator). Under concurrent load one replica is killed outright
(its whole process group, as a container is) and restarted on the same log; at the end both
are stopped with SIGTERM. MonitorFlow's window then holds every answered request exactly once."""

import http.client
import itertools
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from helpers import post_jpeg, run_monitor, serving, wait_for

from lib import synthetic
from lib.predlog import PredictionLog
from lib.sink import read_window

pytestmark = [pytest.mark.gunicorn, pytest.mark.flow, pytest.mark.emulator]

SINK = "gs://facet/traffic"
CLIENTS_PER_REPLICA = 3


class Load:
    """Clients POSTing faces to each replica, one request after another, while it runs: each
    request's outcome by (replica, request id): 200, another status, or the connection error
    (a killed replica refuses, resets or cuts off the answer)."""

    def __init__(self, bases: dict[str, str], faces: list[bytes]):
        self.bases, self.faces = bases, faces
        self.outcomes: dict[tuple[str, str], int | str] = {}
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.client, args=(replica, n))
            for replica in bases
            for n in range(CLIENTS_PER_REPLICA)
        ]

    def client(self, replica: str, n: int) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            request_id = f"{replica}-{n}-{i}"
            try:
                status, _ = post_jpeg(
                    f"{self.bases[replica]}/predict", self.faces[i % len(self.faces)], request_id
                )
            except (OSError, http.client.HTTPException) as error:
                status = type(error).__name__
                time.sleep(0.05)  # a replica that is down refuses at once
            self.outcomes[replica, request_id] = status

    def answered(self, replica: str, status: int | str = 200) -> set[str]:
        return {rid for (r, rid), s in list(self.outcomes.items()) if r == replica and s == status}

    def failed(self, replica: str) -> set[str]:
        return {rid for (r, rid), s in list(self.outcomes.items()) if r == replica and s != 200}

    @contextmanager
    def running(self) -> Iterator["Load"]:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in self.threads:
                thread.join(120)


def replica(tmp_path: Path, name: str, model_run: str):
    """A replica's gunicorn (helpers.serving), its log in its own folder, shipping every second."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return serving(
        folder,
        REPLICA_ID=name,
        MODEL_RUN=model_run,
        PREDICTION_SINK=SINK,
        PREDICTION_SHIP_SECONDS="1",
    )


def test_two_replicas_ship_every_answered_request_exactly_once(smoke_run, gcs, tmp_path):
    root = synthetic.generate(tmp_path / "faces", synthetic.make_spec(8, seed=21))
    faces = [p.read_bytes() for p in sorted((root / "img_align_celeba").iterdir())]
    started = time.time()
    with ExitStack() as replicas:
        a, a_base, a_errors = replicas.enter_context(replica(tmp_path, "a", smoke_run.pathspec))
        _, b_base, b_errors = replicas.enter_context(replica(tmp_path, "b", smoke_run.pathspec))
        load = Load({"a": a_base, "b": b_base}, faces)
        with load.running():
            wait_for(lambda: len(load.answered("a")) >= 40, 120, a_errors)
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()
            answered_by_b = len(load.answered("b"))
            wait_for(lambda: len(load.answered("b")) >= answered_by_b + 40, 120, b_errors)
            _, load.bases["a"], a_errors = replicas.enter_context(
                replica(tmp_path, "a", smoke_run.pathspec)
            )
            answered_by_a = len(load.answered("a"))
            wait_for(lambda: len(load.answered("a")) >= answered_by_a + 40, 120, a_errors)
        # Leaving the block stops both replicas with SIGTERM: each ships what is left.

    rows, _ = read_window(SINK, smoke_run.pathspec, started - 1, time.time() + 1)
    keys = list(zip(rows["replica"], rows["request_id"], rows["image_index"], strict=True))
    assert not [key for key, n in Counter(keys).items() if n > 1], "rows shipped twice"
    assert set(rows["image_index"]) == {0}
    for name in ("a", "b"):
        logged = {rid for r, rid, _ in keys if r == name}
        answered = load.answered(name)
        assert answered <= logged, f"{name}: answered but not shipped: {answered - logged}"
        # A row is committed before its answer: a request cut off by the kill may be logged
        # without its client having had the answer, and nothing else may.
        assert logged - answered <= load.failed(name), f"{name}: {logged - answered}"
        assert PredictionLog(tmp_path / name / "predictions.db").unshipped_rows() == 0
    assert logged == answered  # b was never killed: exactly what it answered

    monitored = run_monitor(
        model_run=smoke_run.pathspec, log=SINK, window_hours=1, settle_minutes=0, min_rows=20
    )
    assert monitored.data.drift["n_current"] == len(rows)
