"""The pages for people, open without a key: GET / (try the model on your own images),
GET /openapi.json (the API's description, serving/openapi.py) and GET /docs (that description
rendered by Swagger UI, served from the swagger-ui-bundle-v2 package, never a CDN).

Pages load scripts and styles from the service only: the try-it page under a
Content-Security-Policy of 'self' alone, so no inline script or style runs on it.
"""

from __future__ import annotations

from flask import Blueprint, Response, render_template, request
from swagger_ui_bundle import swagger_ui_path

from serving import openapi
from serving.auth import is_static

blueprint = Blueprint(
    "pages", __name__, static_folder=str(swagger_ui_path), static_url_path="/docs/ui"
)

NOSNIFF = {"X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'", **NOSNIFF}
# Swagger UI sets inline styles and draws its icons from data: URLs; it shows only this
# service's own description.
DOCS_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:",
    **NOSNIFF,
}


@blueprint.get("/")
def try_it() -> Response:
    return Response(render_template("try.html"), mimetype="text/html", headers=PAGE_HEADERS)


@blueprint.get("/docs")
def docs() -> Response:
    return Response(render_template("docs.html"), mimetype="text/html", headers=DOCS_HEADERS)


@blueprint.get("/openapi.json")
def openapi_json() -> dict:
    return openapi.document()


@blueprint.after_app_request
def protect_static(response: Response) -> Response:
    """Static files (the pages' scripts and styles) under the pages' policy and nosniff."""
    if is_static(request.endpoint):
        for name, value in PAGE_HEADERS.items():
            response.headers.setdefault(name, value)
    return response
