"""Every environment variable is read through lib.settings, typed and documented once."""

import ast
import os
import subprocess
import sys

import pytest
from helpers import ROOT
from pydantic import ValidationError

from lib.settings import LAYOUT_VARIABLES, FlowSettings, ServingSettings, markdown_table
from serving import create_app


def test_serving_reads_its_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MAX_UPLOAD_MB", "2")
    monkeypatch.setenv("PRECISION", "int8")
    monkeypatch.setenv("PREDICTION_LOG", str(tmp_path / "log.db"))
    app = create_app({"MODEL_DIR": str(tmp_path)})
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024
    assert app.config["PRECISION"] == "int8"
    assert app.config["PREDICTION_LOG"] == str(tmp_path / "log.db")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PRECISION", "fp16"),
        ("MAX_BATCH", "0"),
        ("BATCH_MAX_SIZE", "0"),
        ("BATCH_MAX_WAIT_MS", "-1"),
        ("OMP_WAIT_POLICY", "sometimes"),
    ],
)
def test_a_malformed_value_names_the_variable(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable):
        ServingSettings()


def test_a_secret_never_shows_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "very-secret-key")
    settings = FlowSettings()
    assert settings.WANDB_API_KEY.get_secret_value() == "very-secret-key"
    assert "very-secret-key" not in repr(settings)


def reads_of_the_environment(path) -> list[str]:
    """`os.environ.get(...)`, `os.getenv(...)` and `os.environ[...]` loads in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        load = isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load)
        if load and ast.unparse(node.value) == "os.environ":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_nothing_but_lib_settings_reads_the_environment():
    modules = [p for folder in ("lib", "serving", "flows") for p in (ROOT / folder).rglob("*.py")]
    assert len(modules) > 20
    reads = [r for p in modules if p.name != "settings.py" for r in reads_of_the_environment(p)]
    assert reads == []


def test_the_readme_table_of_variables_is_generated_from_the_definition():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- env-table:begin -->\n", "<!-- env-table:end -->"
    table = readme[readme.index(begin) + len(begin) : readme.index(end)].strip()
    assert table == markdown_table(), "run `python -m lib.settings README.md` to regenerate it"


@pytest.fixture
def default_layout(monkeypatch):
    """No layout variable from the environment the tests run in."""
    for name in LAYOUT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_a_worker_per_core_each_with_one_torch_thread(default_layout, cores):
    assert ServingSettings().layout(cores) == (cores, 8, 1)


def test_one_worker_gets_every_core_as_torch_threads_and_named_settings_win(default_layout):
    assert ServingSettings(WEB_CONCURRENCY=1).layout(16) == (1, 8, 16)
    assert ServingSettings(WEB_CONCURRENCY=3).layout(16) == (3, 8, 5)
    named = ServingSettings(WEB_CONCURRENCY=3, GUNICORN_THREADS=4, TORCH_THREADS=2)
    assert named.layout(16) == (3, 4, 2)


def test_gunicorn_lays_out_the_cores_the_process_may_use(tmp_path):
    """serving/gunicorn.conf.py, run as gunicorn reads it in a child pinned to one core, gives
    one worker and hands its workers TORCH_THREADS."""
    code = (
        "import os, runpy; c = runpy.run_path('serving/gunicorn.conf.py'); "
        "print(c['workers'], c['threads'], os.environ['TORCH_THREADS'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in LAYOUT_VARIABLES}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), GUNICORN_THREADS="5")
    one_core = {min(os.sched_getaffinity(0))}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, one_core),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["1", "5", "1"]
