"""Fixtures: every test gets its own Metaflow datastore, cache and W&B folder, and never the
network. Helpers that are not fixtures live in helpers.py."""

from pathlib import Path

import pytest
from gcp_storage_emulator.server import create_server
from helpers import free_port, learning_config, run_flow, use_home
from helpers import smoke_config as read_smoke_config
from metaflow import Run


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch) -> Path:
    return use_home(monkeypatch, tmp_path)


@pytest.fixture
def smoke_config() -> dict:
    return read_smoke_config()


@pytest.fixture(scope="module")
def smoke_home(tmp_path_factory) -> tuple[Path, str]:
    """One smoke run shared by a module's tests, in its own home."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = use_home(monkeypatch, tmp_path_factory.mktemp("smoke"))
        return home, run_flow(read_smoke_config()).pathspec


@pytest.fixture
def smoke_run(smoke_home, monkeypatch) -> Run:
    home, pathspec = smoke_home
    use_home(monkeypatch, home)
    return Run(pathspec)


@pytest.fixture(scope="session")
def learned_home(tmp_path_factory) -> tuple[Path, str]:
    """One run of helpers.learning_config() for the session: test_learning checks what it
    learned, test_monitor watches the traffic it serves."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = use_home(monkeypatch, tmp_path_factory.mktemp("learned"))
        return home, run_flow(learning_config()).pathspec


@pytest.fixture
def learned_run(learned_home, monkeypatch) -> Run:
    home, pathspec = learned_home
    use_home(monkeypatch, home)
    return Run(pathspec)


@pytest.fixture
def gcs(monkeypatch):
    """gcp-storage-emulator on 127.0.0.1 with an empty bucket `facet`."""
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="facet")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    yield server
    server.stop()
