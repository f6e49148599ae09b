"""facet's prediction service: a Flask app factory, configured from the environment.

make serve                                  # gunicorn on ${PORT:-8000}
MODEL_RUN=TrainFlow/1234 make serve         # a given run instead of the champion
MODEL_DIR=exported/ make serve              # a folder written by python -m lib.export
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from lib import predlog


def settings_from_environment() -> dict[str, Any]:
    env = os.environ.get
    max_age, max_rows = env("PREDICTION_LOG_MAX_AGE_HOURS"), env("PREDICTION_LOG_MAX_ROWS")
    return {
        "MODEL_RUN": env("MODEL_RUN"),
        "MODEL_DIR": env("MODEL_DIR"),
        "PRECISION": env("PRECISION", "fp32"),  # fp32 | bf16 | int8; see bench/serve_bench.py
        "PREDICTION_LOG": predlog.default_path(),
        "PREDICTION_LOG_MAX_AGE_HOURS": float(max_age) if max_age else None,
        "PREDICTION_LOG_MAX_ROWS": int(max_rows) if max_rows else None,
        "PREDICTION_LOG_PRUNE_EVERY": int(env("PREDICTION_LOG_PRUNE_EVERY", "1000")),
        "MAX_BATCH": int(env("MAX_BATCH", "32")),
        "MAX_CONTENT_LENGTH": int(env("MAX_UPLOAD_MB", "32")) * 1024 * 1024,
        "MAX_IMAGE_PIXELS": int(env("MAX_IMAGE_PIXELS", "40000000")),
        "TORCH_THREADS": int(env("TORCH_THREADS", "0")),  # 0: leave torch's default
    }


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    from serving import api, errors, metrics, state

    app = Flask(__name__)
    app.config.from_mapping(settings_from_environment())
    app.config.update(overrides or {})
    app.json.sort_keys = False  # attributes keep the model's order
    errors.register(app)
    metrics.register(app)
    state.init_app(app)
    app.register_blueprint(api.blueprint)
    return app
