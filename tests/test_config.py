"""One typed definition of every config key: files hold only overrides, mistakes stop a run
before it starts and name the key."""

import json
import subprocess
import sys

import pytest
from helpers import FLOW, ROOT

from lib.config import CONFIGS, ConfigError, RunConfig, keys, load, markdown_table, parse
from lib.synthetic import ATTRIBUTES


def test_defaults_are_the_embedded_default_run():
    assert load().model_copy(update={"notes": ""}) == RunConfig()
    assert load().model.image_size == 64 and load().train.epochs == 4


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_config_files_hold_only_what_differs_from_the_defaults(path):
    overrides, defaults = json.loads(path.read_text()), RunConfig().model_dump(mode="json")

    def same_as_default(values: dict, base: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in values.items():
            if isinstance(value, dict):
                found += same_as_default(value, base[key], f"{prefix}{key}.")
            elif value == base[key]:
                found.append(f"{prefix}{key}")
        return found

    assert same_as_default(overrides, defaults) == []
    assert load(path).model_dump(mode="json") == parse(path.read_text())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train": {"learnig_rate": 0.01}},
            "train.learnig_rate: unknown key; did you mean 'learning_rate'?",
        ),
        ({"modle": {}}, "modle: unknown key; did you mean 'model'?"),
        (
            {"data": {"synthetic": {"count": 5}}},
            "data.synthetic.count: unknown key; known keys: n, seed",
        ),
        ({"train": {"epochs": 2.5}}, "train.epochs: Input should be a valid integer (got 2.5)"),
        ({"train": {"wandb": "no"}}, "train.wandb: Input should be a valid boolean (got 'no')"),
        ({"model": {"image_mean": [0.5, 0.5]}}, "model.image_mean: List should have at least 3"),
        (
            {"evaluate": {"threshold_objective": "auc"}},
            "evaluate.threshold_objective: Input should be",
        ),
    ],
)
def test_a_mistake_names_the_key_and_the_nearest_valid_name(overrides, message):
    with pytest.raises(ConfigError) as error:
        parse(json.dumps(overrides))
    assert message in str(error.value)


def test_slices_are_celeba_attributes():
    """A slice that is not one of the 40 attributes stops the config, naming it and them."""
    with pytest.raises(ConfigError) as error:
        parse(json.dumps({"evaluate": {"slices": ["Male", "young", "Age"]}}))
    message = str(error.value)
    assert "evaluate.slices" in message and "['young', 'Age'] not among" in message
    assert all(name in message for name in ATTRIBUTES)
    every = parse(json.dumps({"evaluate": {"slices": ATTRIBUTES}}))
    assert every["evaluate"]["slices"] == ATTRIBUTES


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError, match="2 problem"):
        parse('{"train": {"epochs": 0, "seed": "x"}}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse("{'train': {}}")


def test_check_refuses_a_misspelled_key_before_anything_runs(tmp_path):
    config = tmp_path / "typo.json"
    config.write_text('{"train": {"learnig_rate": 0.01}}')
    done = subprocess.run(
        [sys.executable, FLOW, "--config", "config", config, "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "train.learnig_rate: unknown key; did you mean 'learning_rate'?" in output
    assert "Traceback" not in output


def test_merged_overrides_are_validated_too():
    config = load().merged({"train": {"epochs": 1}})
    assert config.train.epochs == 1 and config.train.batch_size == load().train.batch_size
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load().merged({"train": {"epochs": -1}})


def test_the_readme_table_is_generated_from_the_definition():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- config-table:begin -->\n", "<!-- config-table:end -->"
    table = readme[readme.index(begin) + len(begin) : readme.index(end)].strip()
    assert table == markdown_table(), "run `python -m lib.config README.md` to regenerate it"
    assert len(table.splitlines()) == 2 + len(list(keys()))
