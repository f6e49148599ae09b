"""facet's prediction service: a Flask app factory, configured from the environment.

make serve                                  # gunicorn on ${PORT:-8000}
MODEL_RUN=TrainFlow/1234 make serve         # a given run instead of the champion
MODEL_DIR=exported/ make serve              # a folder written by python -m lib.export
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from lib.settings import ServingSettings


def create_app(overrides: dict[str, Any] | None = None, *, load_model_now: bool = False) -> Flask:
    """The service, configured from the environment (lib.settings.ServingSettings, read
    once here) and then `overrides`. The model loads in the background, or before this returns
    with `load_model_now` (gunicorn: its worker accepts connections only after that)."""
    from serving import api, auth, dashboard, errors, metrics, pages, state

    app = Flask(__name__)
    app.config.from_mapping(ServingSettings().flask_config())
    app.config.update(overrides or {})
    app.json.sort_keys = False  # attributes keep the model's order
    errors.register(app)
    metrics.register(app)
    auth.register(app)
    state.init_app(app, load_model_now)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(dashboard.blueprint)
    return app
