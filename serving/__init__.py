"""facet's prediction service: a Flask app factory, configured from the environment.

make serve                                  # gunicorn on ${PORT:-8000}
MODEL_RUN=TrainFlow/1234 make serve         # a given run instead of the champion
MODEL_DIR=exported/ make serve              # a folder written by python -m lib.export
"""

from __future__ import annotations

import math
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from lib.settings import ServingSettings


class StrictJSON(DefaultJSONProvider):
    """JSON that every parser reads: a number that is not finite (the ROC AUC of an attribute
    with no positive test example is NaN) is sent as null; attributes keep the model's order."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(finite(obj), allow_nan=False, **kwargs)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinity inside dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def create_app(overrides: dict[str, Any] | None = None, *, load_model_now: bool = False) -> Flask:
    """The service, configured from the environment (lib.settings.ServingSettings, read
    once here) and then `overrides`. The model loads in the background, or before this returns
    with `load_model_now` (gunicorn: its worker accepts connections only after that)."""
    from serving import api, auth, dashboard, errors, metrics, pages, state

    app = Flask(__name__)
    app.json = StrictJSON(app)
    app.config.from_mapping(ServingSettings().flask_config())
    app.config.update(overrides or {})
    errors.register(app)
    metrics.register(app)
    auth.register(app)
    state.init_app(app, load_model_now)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(dashboard.blueprint)
    return app
