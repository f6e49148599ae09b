"""The process-wide things a worker holds: the model (loaded in the background, so the
worker answers /healthz and /readyz while it loads) and the prediction log."""

from __future__ import annotations

import logging
import threading

import torch
from flask import Flask, current_app

from lib.inference import Predictor
from lib.predlog import PredictionLog
from serving.errors import ApiError
from serving.metrics import MODEL_INFO

log = logging.getLogger(__name__)


class ModelSlot:
    def __init__(self, config: dict):
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.loaded = threading.Event()
        self._config = config
        threading.Thread(target=self._load, name="load-model", daemon=True).start()

    def _load(self) -> None:
        config = self._config
        try:
            if config["MODEL_DIR"]:
                self.predictor = Predictor.from_dir(config["MODEL_DIR"], config["PRECISION"])
            elif config["MODEL_RUN"]:
                self.predictor = Predictor.from_run(config["MODEL_RUN"], config["PRECISION"])
            else:
                self.predictor = Predictor.champion(config["PRECISION"])
            log.info("serving %s (%s)", self.predictor.name, self.predictor.precision)
            MODEL_INFO.labels(self.predictor.name, self.predictor.precision).set(1)
        except Exception as error:  # reported by /readyz; the worker stays up to say so
            self.error = f"{type(error).__name__}: {error}"
            log.error("could not load the model: %s", self.error)
        finally:
            self.loaded.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once a model is loaded and ready (tests and benches wait on this)."""
        return self.loaded.wait(timeout) and self.predictor is not None


def init_app(app: Flask) -> None:
    if app.config["TORCH_THREADS"]:
        torch.set_num_threads(app.config["TORCH_THREADS"])
    app.extensions["facet.model"] = ModelSlot(app.config)
    app.extensions["facet.log"] = PredictionLog(
        app.config["PREDICTION_LOG"],
        max_age_hours=app.config["PREDICTION_LOG_MAX_AGE_HOURS"],
        max_rows=app.config["PREDICTION_LOG_MAX_ROWS"],
        prune_every=app.config["PREDICTION_LOG_PRUNE_EVERY"],
    )


def model_slot() -> ModelSlot:
    return current_app.extensions["facet.model"]


def predictor() -> Predictor:
    slot = model_slot()
    if slot.predictor is None:
        message = slot.error or "the model is still loading"
        raise ApiError(503, "not_ready", message)
    return slot.predictor


def prediction_log() -> PredictionLog:
    return current_app.extensions["facet.log"]
