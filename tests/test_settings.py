"""Every environment variable is read through lib.settings, typed and documented once."""

import ast

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
