"""Every environment variable is read through lib.settings, typed and documented once."""

import ast
import os
import subprocess
import sys

import pytest
from helpers import ROOT
from pydantic import ValidationError

from lib.settings import FlowSettings, ServingSettings, markdown_table
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


def gunicorn_layout(tmp_path, cpus: set[int], **env: str) -> tuple[int, int, int]:
    """(workers, request threads, TORCH_THREADS) that serving/gunicorn.conf.py gives a process
    allowed to run on `cpus`, read by running the file as gunicorn does, in a child."""
    code = (
        "import os, runpy; c = runpy.run_path('serving/gunicorn.conf.py'); "
        "print(c['workers'], c['threads'], os.environ['TORCH_THREADS'])"
    )
    layout = ("WEB_CONCURRENCY", "GUNICORN_THREADS", "TORCH_THREADS")
    child_env = {k: v for k, v in os.environ.items() if k not in layout}
    child_env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), **env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=child_env,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        capture_output=True,
        text=True,
        check=True,
    )
    workers, threads, torch_threads = map(int, out.stdout.split())
    return workers, threads, torch_threads


@pytest.mark.parametrize("cores", sorted({1, len(os.sched_getaffinity(0))}))
def test_gunicorn_runs_a_worker_per_core_each_with_one_torch_thread(tmp_path, cores):
    cpus = set(sorted(os.sched_getaffinity(0))[:cores])
    assert gunicorn_layout(tmp_path, cpus) == (cores, 8, 1)


def test_one_worker_gets_every_core_as_torch_threads_and_named_settings_win(tmp_path):
    cpus = os.sched_getaffinity(0)
    assert gunicorn_layout(tmp_path, cpus, WEB_CONCURRENCY="1") == (1, 8, len(cpus))
    named = {"WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "4", "TORCH_THREADS": "2"}
    assert gunicorn_layout(tmp_path, cpus, **named) == (3, 4, 2)
