"""The process-wide things a worker holds: the model, its batcher and the prediction log.

Every /predict of a worker goes through its one lib.batching.Batcher: one model call at a time,
a lone request's in its own thread, the requests that waited meanwhile as one batch in the
batcher's runner thread, each with TORCH_THREADS torch threads (gunicorn: the cores divided
among the workers).

The model loads in the background by default, so the app answers /healthz and /readyz while it
loads; under gunicorn the worker loads it before it accepts a connection (create_app's
load_model_now), so a respawned worker never answers 503 for a model still loading. A failed
load is retried, backing off from RETRY_FIRST_S to RETRY_MAX_S, and /readyz says why it failed.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator

import torch
from flask import Flask, current_app

from lib.batching import Batcher
from lib.inference import Predictor
from lib.predlog import PredictionLog
from serving.errors import ApiError
from serving.metrics import MODEL_INFO, MODEL_LOAD_FAILURES, observe_batch

log = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0


class ModelSlot:
    def __init__(self, config: dict, load_now: bool = False):
        self.predictor: Predictor | None = None
        self.batcher: Batcher | None = None  # set with the predictor, just before it
        self.error: str | None = None
        self.loaded = threading.Event()  # set once the first attempt has ended, either way
        self._config = config
        if load_now and self._try_load():
            return
        delays = retry_delays() if load_now else itertools.chain([0.0], retry_delays())
        threading.Thread(target=self._load, args=(delays,), name="load-model", daemon=True).start()

    def _load(self, delays: Iterator[float]) -> None:
        for delay in delays:
            time.sleep(delay)
            if self._try_load():
                return

    def _try_load(self) -> bool:
        try:
            predictor = load_predictor(self._config)
            self.batcher = batcher_for(predictor, self._config)
            self.predictor = predictor
        except Exception as error:  # reported by /readyz; the worker stays up to say so
            self.error = f"{type(error).__name__}: {error} (retrying)"
            log.error("could not load the model: %s", self.error)
            MODEL_LOAD_FAILURES.inc()
            return False
        finally:
            self.loaded.set()
        self.error = None
        log.info("serving %s (%s)", self.predictor.name, self.predictor.precision)
        MODEL_INFO.labels(self.predictor.name, self.predictor.precision).set(1)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """True once a model is loaded and ready (tests and benches wait on this)."""
        return self.loaded.wait(timeout) and self.predictor is not None


def load_predictor(config: dict) -> Predictor:
    if config["MODEL_DIR"]:
        return Predictor.from_dir(config["MODEL_DIR"], config["PRECISION"])
    if config["MODEL_RUN"]:
        return Predictor.from_run(config["MODEL_RUN"], config["PRECISION"])
    return Predictor.champion(config["PRECISION"])


def batcher_for(served: Predictor, config: dict) -> Batcher:
    return Batcher(
        served.predict,
        max_size=config["BATCH_MAX_SIZE"],
        max_wait_s=config["BATCH_MAX_WAIT_MS"] / 1000,
        observe=observe_batch,
    )


def retry_delays() -> Iterator[float]:
    """Seconds to wait before each retry: doubling from RETRY_FIRST_S up to RETRY_MAX_S."""
    delay = RETRY_FIRST_S
    while True:
        yield delay
        delay = min(2 * delay, RETRY_MAX_S)


def init_app(app: Flask, load_model_now: bool = False) -> None:
    if app.config["TORCH_THREADS"]:
        torch.set_num_threads(app.config["TORCH_THREADS"])
    app.extensions["facet.model"] = ModelSlot(app.config, load_model_now)
    app.extensions["facet.log"] = PredictionLog(
        app.config["PREDICTION_LOG"],
        replica=app.config["REPLICA_ID"] or socket.gethostname(),
        timeout_s=app.config["PREDICTION_LOG_TIMEOUT_S"],
    )


def model_slot() -> ModelSlot:
    return current_app.extensions["facet.model"]


def predictor() -> Predictor:
    slot = model_slot()
    if slot.predictor is None:
        message = slot.error or "the model is still loading"
        raise ApiError(503, "not_ready", message)
    return slot.predictor


def batcher() -> Batcher:
    """The batcher of the model predictor() returned (set before it)."""
    return model_slot().batcher


def prediction_log() -> PredictionLog:
    return current_app.extensions["facet.log"]
