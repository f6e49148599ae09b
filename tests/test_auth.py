"""Optional bearer keys (serving/auth.py), through Flask's test client. No model is needed:
an empty MODEL_DIR leaves the model unloaded, so a request that gets past the check answers
503 not_ready and one that does not answers 401."""

import hmac
import logging

import pytest

from serving import auth, create_app

KEYS = ("first-key-0123456789", "second-key-9876543210")
METRICS_KEY = "metrics-key-abcdef"


def make_client(tmp_path, monkeypatch, **environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = {"MODEL_DIR": str(tmp_path), "PREDICTION_LOG": str(tmp_path / "predictions.db")}
    return create_app(settings).test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(tmp_path, monkeypatch):
    return make_client(tmp_path, monkeypatch, API_KEYS=",".join(KEYS))


def test_without_keys_nothing_asks_for_one(tmp_path, monkeypatch):
    client = make_client(tmp_path, monkeypatch)
    assert client.get("/model").status_code == 503
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    "method, path", [("GET", "/model"), ("POST", "/predict"), ("GET", "/monitoring/drift")]
)
def test_protected_endpoints_answer_401_naming_the_scheme(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    error = response.get_json()["error"]
    assert error["code"] == "unauthorized" and "Authorization: Bearer <key>" in error["message"]


def test_every_configured_key_opens_them_and_others_do_not(client):
    for key in KEYS:
        assert client.get("/model", headers=bearer(key)).status_code == 503  # past the check
    wrong = client.get("/model", headers=bearer(KEYS[0][:-1]))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert client.get("/model", headers={"Authorization": f"Basic {KEYS[0]}"}).status_code == 401


def test_probes_and_metrics_stay_open(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503  # no model, but not 401
    assert client.get("/metrics").status_code == 200


def test_metrics_key_guards_metrics_alone(tmp_path, monkeypatch):
    client = make_client(tmp_path, monkeypatch, API_KEYS=KEYS[0], METRICS_KEY=METRICS_KEY)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer(KEYS[0])).status_code == 401
    assert client.get("/metrics", headers=bearer(METRICS_KEY)).status_code == 200
    assert client.get("/model", headers=bearer(METRICS_KEY)).status_code == 401


def test_keys_file_holds_one_key_a_line(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{KEYS[0]}\n\n{KEYS[1]}\n")
    client = make_client(tmp_path, monkeypatch, API_KEYS_FILE=str(keys_file))
    assert client.get("/model").status_code == 401
    assert client.get("/model", headers=bearer(KEYS[1])).status_code == 503


def test_a_keys_file_without_keys_stops_the_service(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("\n \n")
    with pytest.raises(ValueError, match="holds no key"):
        make_client(tmp_path, monkeypatch, API_KEYS_FILE=str(keys_file))


def test_a_key_is_compared_with_every_key_in_constant_time(client, monkeypatch):
    compared, real = [], hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", compare_digest)
    assert client.get("/model", headers=bearer(KEYS[0])).status_code == 503
    assert compared == [key.encode() for key in KEYS]  # no early exit on the first match


def test_keys_appear_in_no_log_metrics_or_settings(client, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-key-should-not-be-logged"
    client.get("/model", headers=bearer(wrong))
    client.post("/predict", headers=bearer(KEYS[0]))
    scraped = client.get("/metrics").get_data(as_text=True)
    shown = repr(client.application.config)
    for secret in (wrong, *KEYS):
        assert secret not in caplog.text
        assert secret not in scraped
        assert secret not in shown
