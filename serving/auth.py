"""Optional bearer-token authentication (RFC 6750: `Authorization: Bearer <key>`).

With API_KEYS or API_KEYS_FILE set, every endpoint but the probes (/healthz, /readyz), the
pages for people (/, /docs, /openapi.json) and static files needs one of those keys; /metrics
needs METRICS_KEY when that is set and is open otherwise. Keys are compared in constant time
against every configured key, and never logged or echoed.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from pydantic import SecretStr

from serving.errors import error_response

OPEN = frozenset({"/healthz", "/readyz", "/", "/docs", "/openapi.json"})
METRICS = "/metrics"
SCHEME = "Bearer"


def register(app: Flask) -> None:
    api_keys = configured_api_keys(app.config)
    metrics_keys = split_keys(secret_text(app.config["METRICS_KEY"]))
    if not (api_keys or metrics_keys):
        return

    @app.before_request
    def authenticate() -> Response | None:
        keys = metrics_keys if request.path == METRICS else api_keys
        if request.path in OPEN or is_static(request.endpoint) or not keys:
            return None
        return refusal(presented_key(), keys)


def is_static(endpoint: str | None) -> bool:
    """A static-file endpoint, the app's or a blueprint's: a page's scripts and styles."""
    return endpoint is not None and endpoint.rpartition(".")[2] == "static"


def configured_api_keys(config: dict[str, Any]) -> list[bytes]:
    """API_KEYS and the lines of API_KEYS_FILE; a configured source without a key stops the
    service rather than leaving it open."""
    keys = split_keys(secret_text(config["API_KEYS"]))
    if config["API_KEYS_FILE"]:
        keys += split_keys(Path(config["API_KEYS_FILE"]).read_text())
    if (config["API_KEYS"] or config["API_KEYS_FILE"]) and not keys:
        raise ValueError("API_KEYS or API_KEYS_FILE is set but holds no key")
    return keys


def secret_text(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret else ""


def split_keys(text: str) -> list[bytes]:
    """The keys in comma- or newline-separated text, blanks dropped."""
    return [key.strip().encode() for key in text.replace(",", "\n").splitlines() if key.strip()]


def presented_key() -> bytes | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip().encode() if scheme.lower() == SCHEME.lower() and key.strip() else None


def matches_any(presented: bytes, keys: list[bytes]) -> bool:
    """Compared with every key, in constant time each, so timing tells nothing about which
    key came close."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def refusal(presented: bytes | None, keys: list[bytes]) -> Response | None:
    """None when the presented key is one of `keys`, else a 401 naming the scheme."""
    if presented is None:
        message = f"this endpoint needs an API key: send the header Authorization: {SCHEME} <key>"
        challenge = f'{SCHEME} realm="facet"'
    elif not matches_any(presented, keys):
        message = f"the {SCHEME} key sent is not a key of this service"
        challenge = f'{SCHEME} realm="facet", error="invalid_token"'
    else:
        return None
    response = error_response(401, "unauthorized", message)
    response.headers["WWW-Authenticate"] = challenge
    return response
