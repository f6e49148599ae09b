"""The pages for people (serving/pages.py) and the OpenAPI description (serving/openapi.py),
through Flask's test client: the pages and their assets are the service's own, under its
Content-Security-Policy; the description is valid OpenAPI 3.1, names every route and nothing
else, and real answers, good ones and every error code, match it."""

import io
import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ROOT, locked
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.validation.response.exceptions import InvalidData
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from PIL import Image
from werkzeug import Request

from lib.calibration import METHODS
from serving import create_app, openapi

# serving.api (torch, transformers) imported before any flow runs: once Metaflow's Runner has
# loaded a flow in this process, importing transformers fails on its vendored typing_extensions.
from serving.api import FIELD
from serving.auth import is_static
from serving.errors import ERRORS, markdown_table

PAGE_WEIGHT_LIMIT = 200_000
ANY_URL = re.compile(rb"https?://")
KEY = "page-test-key-0123456789"
SERVED = "TrainFlow/1"
# Codes no request can be made to produce: Werkzeug's parse failure (its parser is lenient
# with whatever the test client can send) and a failure of the server itself.
UNPRODUCIBLE = {"bad_request", "internal_error"}
# Codes answered where the description has no operation: unknown paths and methods, static files.
OUTSIDE_OPERATIONS = {"not_found", "method_not_allowed", "requested_range_not_satisfiable"}
# Small limits so that every refusal takes a few small images (40x40 is answered).
LIMITS = {
    "MAX_BATCH": 3,
    "MAX_IMAGE_PIXELS": 50 * 50,
    "MAX_REQUEST_PIXELS": 2 * 40 * 40,
    "MAX_CONTENT_LENGTH": 100_000,
}


def make_app(tmp_path, **overrides):
    settings = {"PREDICTION_LOG": str(tmp_path / "predictions.db"), "MODEL_DIR": str(tmp_path)}
    return create_app({**settings, **overrides})


@pytest.fixture
def client(tmp_path):
    """The service without a model (an empty MODEL_DIR): the pages need none."""
    return make_app(tmp_path).test_client()


@pytest.fixture
def keyed(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEYS", KEY)
    return make_app(tmp_path).test_client()


@pytest.fixture
def served(smoke_run, tmp_path):
    """The module's smoke run served under LIMITS."""
    app = make_app(
        tmp_path,
        MODEL_DIR=None,
        MODEL_RUN=smoke_run.pathspec,
        PREDICTION_LOG_TIMEOUT_S=0.2,
        **LIMITS,
    )
    assert app.extensions["facet.model"].wait(60), app.extensions["facet.model"].error
    return app.test_client()


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_dict(openapi.document())


class Assets(HTMLParser):
    """The URLs a page loads: its scripts' src and its stylesheets' href."""

    def __init__(self, html: str):
        super().__init__()
        self.urls: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and "src" in attrs:
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("rel") == "stylesheet":
            self.urls.append(attrs["href"])


def png(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client, *images: bytes, field: str = FIELD, **kwargs):
    files = [(io.BytesIO(data), f"face{i}.png") for i, data in enumerate(images)]
    return client.post(
        "/predict", data={field: files}, content_type="multipart/form-data", **kwargs
    )


def feedback(client, request_id: str, labels: dict):
    body = {"request_id": request_id, "image_index": 0, "labels": labels}
    return client.post("/feedback", json=body)


def assert_documented(spec: OpenAPI, response) -> None:
    """The answer is one the description allows for its request's method and path: status,
    schema, error code. (The request is rebuilt without its body, which was read already.)"""
    sent = response.request
    request = Request.from_values(path=sent.path, method=sent.method)
    spec.validate_response(WerkzeugOpenAPIRequest(request), WerkzeugOpenAPIResponse(response))


def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def concrete(path: str) -> str:
    return path.replace("{run_id}", "1")


def documented_operations() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
    }


def test_try_it_page_and_its_assets_are_the_services_own_under_its_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for hook in ('id="images"', "multiple", 'id="api-key"', 'id="results"'):
        assert hook in html
    assets = [client.get(url) for url in Assets(html).urls]
    assert len(assets) == 2 and all(asset.status_code == 200 for asset in assets)
    for response in (page, *assets):
        assert response.headers["Content-Security-Policy"] == "default-src 'self'"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert not ANY_URL.search(response.data)
    assert sum(len(response.data) for response in (page, *assets)) < PAGE_WEIGHT_LIMIT


def test_the_page_has_no_inline_script_or_style(client):
    html = client.get("/").get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert "<style" not in html and "style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no event handler attributes


def test_docs_render_the_description_with_assets_served_here(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and not ANY_URL.search(docs.data)
    assert 'data-spec="/openapi.json"' in docs.get_data(as_text=True)
    urls = Assets(docs.get_data(as_text=True)).urls
    assert any(url.endswith("/swagger-ui-bundle.js") for url in urls)
    for url in urls:
        assert url.startswith("/")
        assert client.get(url).status_code == 200
    assert docs.headers["X-Content-Type-Options"] == "nosniff"
    assert docs.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_the_description_is_valid_openapi_3_1(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1.")
    validate(document, cls=OpenAPIV31SpecValidator)


def test_every_route_is_documented_and_every_documented_operation_is_a_route(client):
    routes = {
        (method, flask_path(rule.rule))
        for rule in client.application.url_map.iter_rules()
        if not is_static(rule.endpoint)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = documented_operations()
    assert routes - documented == set(), "routes the description lacks"
    assert documented - routes == set(), "documented operations the service lacks"


def test_pages_need_no_key_and_documented_security_is_what_the_service_asks(keyed):
    for url in ["/", "/docs", "/openapi.json", *Assets(keyed.get("/").get_data(as_text=True)).urls]:
        assert keyed.get(url).status_code == 200, url
    for method, path in documented_operations():
        operation = openapi.document()["paths"][path][method.lower()]
        asks = keyed.open(concrete(path), method=method).status_code == 401
        assert asks == ({} not in operation["security"]), (method, path)


def test_the_docs_table_of_errors_is_the_registry():
    text = (ROOT / "docs" / "serving.md").read_text()
    assert markdown_table() in text, "run: python -m serving.errors docs/serving.md"


def test_every_error_code_is_documented_with_its_status():
    document = openapi.document()
    assert document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
        "enum"
    ] == list(ERRORS)
    for code, error in ERRORS.items():
        assert f"| `{code}` | {error.status} |" in document["info"]["description"]
    for item in document["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                codes = response["content"].get(openapi.JSON, {}).get("schema", {}).get("allOf")
                if codes:
                    enum = codes[1]["properties"]["error"]["properties"]["code"]["enum"]
                    assert {ERRORS[code].status for code in enum} == {int(status)}


@pytest.mark.flow
def test_good_answers_match_the_description(served, spec, smoke_run):
    two = upload(served, png(40, 1), png(40, 2), headers={"X-Request-ID": "page-test"})
    assert two.status_code == 200 and len(two.get_json()["predictions"]) == 2
    body = served.post("/predict", data=png(40), content_type="image/png")
    labelled = feedback(served, "page-test", {"Eyeglasses": 1, "Smiling": 0})
    answers = [two, body, labelled] + [
        served.get(path) for path in ("/", "/docs", "/openapi.json", "/healthz", "/readyz")
    ]
    answers += [served.get(path) for path in ("/model", "/metrics", "/monitoring/history")]
    for response in answers:
        assert response.status_code == 200, (response.request.path, response.data[:200])
        assert_documented(spec, response)
    model = served.get("/model").get_json()
    assert model["thresholds"] == smoke_run.data.thresholds
    assert model["calibration"] == smoke_run.data.calibration


@pytest.mark.flow
def test_every_error_code_is_answered_and_matches_the_description(served, keyed, spec, tmp_path):
    with locked(tmp_path / "predictions.db"):
        unlogged = upload(served, png(40))
    assert upload(served, png(40), headers={"X-Request-ID": "answered"}).status_code == 200
    answers = {
        "no_image": upload(served, png(40), field="file"),
        "empty_image": upload(served, b""),
        "invalid_image": upload(served, b"a text file, not an image\n"),
        "image_too_large": upload(served, png(60)),
        "too_many_images": upload(served, *[png(8)] * (LIMITS["MAX_BATCH"] + 1)),
        "too_many_pixels": upload(served, png(40), png(40), png(40)),
        "request_entity_too_large": served.post(
            "/predict", data=b"\0" * LIMITS["MAX_CONTENT_LENGTH"] * 2, content_type="image/png"
        ),
        "unsupported_media_type": served.post("/predict", data="x", content_type="text/plain"),
        "invalid_feedback": served.post("/feedback", data="x", content_type="text/plain"),
        "unknown_attribute": feedback(served, "answered", {"Glasses": 1}),
        "invalid_label": feedback(served, "answered", {"Eyeglasses": 2}),
        "unknown_prediction": feedback(served, "never-answered", {"Eyeglasses": 1}),
        "unauthorized": keyed.get("/model"),
        "no_drift_report": served.get("/monitoring/drift"),
        "not_found": served.get("/no-such-page"),
        "method_not_allowed": served.get("/predict"),
        "requested_range_not_satisfiable": served.get(
            Assets(served.get("/").get_data(as_text=True)).urls[0],
            headers={"Range": "bytes=9999999-"},
        ),
        "not_ready": keyed.get("/model", headers={"Authorization": f"Bearer {KEY}"}),
        "log_unavailable": unlogged,
    }
    assert set(answers) == set(ERRORS) - UNPRODUCIBLE
    for code, response in answers.items():
        assert response.get_json()["error"]["code"] == code, response.get_json()
        assert response.status_code == ERRORS[code].status
        if code not in OUTSIDE_OPERATIONS:
            assert_documented(spec, response)
    report = served.get("/monitoring/runs/1/report")
    assert report.get_json()["error"]["code"] == "no_drift_report"
    assert_documented(spec, report)


@pytest.mark.parametrize(
    "calibration",
    [
        None,  # a run made before runs stored a calibrator
        {"method": "none"},
        {"method": "platt", "slope": [1.3, 0.8], "intercept": [-0.2, 0.1]},
        {"method": "isotonic"},  # not one of lib.calibration.METHODS: refused
    ],
)
def test_the_model_facts_name_the_calibrator_or_null(tmp_path, spec, calibration):
    app = make_app(tmp_path)
    info = {"run": SERVED, "thresholds": {"Eyeglasses": 0.4, "Smiling": 0.5}}
    app.extensions["facet.model"].predictor = SimpleNamespace(
        name=SERVED,
        precision="fp32",
        preprocessing=SimpleNamespace(image_size=64),
        attributes=["Eyeglasses", "Smiling"],
        info={**info, "calibration": calibration},
    )
    response = app.test_client().get("/model")
    assert response.get_json()["calibration"] == calibration
    if calibration is None or calibration["method"] in METHODS:
        assert_documented(spec, response)
    else:
        with pytest.raises(InvalidData):
            assert_documented(spec, response)


def test_a_document_that_disagrees_with_the_service_is_caught(client, spec):
    """The check above has teeth: an answer outside the description fails it."""
    response = client.get("/healthz")
    response.set_data(json.dumps({"status": "fine"}))
    with pytest.raises(InvalidData):
        assert_documented(spec, response)
