"""The smoke configuration end to end, as a user runs it, through metaflow.Runner."""

import base64
import json
import re

import numpy as np
import pytest
import torch
from helpers import run_flow
from metaflow.cards import get_cards
from transformers import AutoModelForImageClassification

from lib import calibration
from lib.config import RunConfig
from lib.datasets import CachedSplit
from lib.evaluate import predict
from lib.export import export
from lib.model import load_model
from lib.preprocess import to_model_input

pytestmark = pytest.mark.flow


def test_smoke_run_stores_every_artifact(smoke_run, smoke_config):
    data = smoke_run.data
    assert data.config["model"] == {**RunConfig().model.model_dump(), **smoke_config["model"]}

    dataset = data.dataset
    assert dataset["source"] == "synthetic://?n=400&seed=0"
    assert len(dataset["fingerprint"]) == 64 and len(dataset["attributes"]) == 40
    assert sum(dataset["split_sizes"].values()) == 400
    assert set(dataset["positive_rates"]["train"]) == set(dataset["attributes"])

    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(data.model)
    assert set(data.thresholds) == set(dataset["attributes"])
    assert all(0 < t < 1 for t in data.thresholds.values())

    metrics = data.metrics
    for key in ("mean_accuracy", "mean_balanced_accuracy", "majority_baseline_accuracy"):
        assert 0 <= metrics[key] <= 1
    per = metrics["per_attribute"]["Eyeglasses"]
    assert set(per) >= {"accuracy", "balanced_accuracy", "f1", "roc_auc", "threshold", "baseline"}
    assert len(metrics["drawn_attributes"]) == 20
    for key in ("mean_balanced_accuracy_drawn", "mean_balanced_accuracy_undrawn"):
        assert 0 <= metrics[key] <= 1

    history = data.history
    assert [r["step"] for r in history] == sorted({r["step"] for r in history})
    assert all(np.isfinite(r["loss"]) and r["lr"] >= 0 for r in history)
    assert history[-1]["step"] == 10  # 2 epochs of 320 images, batch 32, accumulation 2

    for step in ("prepare_data", "train", "evaluate"):
        cards = get_cards(smoke_run[step].task)
        assert len(cards) == 1 and cards[0].type == "blank"
    content = card_text(get_cards(smoke_run["evaluate"].task)[0].get())
    assert "majority baseline" in content and "Eyeglasses" in content
    assert "predicted vs true" in content
    assert "training loss" in card_text(get_cards(smoke_run["train"].task)[0].get())


def test_preparation_fans_out_over_shards(smoke_run):
    """400 images in shards of 200: two prepare_shard tasks, joined by prepare_data."""
    assert len(list(smoke_run["prepare_shard"].tasks())) == 2
    shards = smoke_run.data.dataset["shards"]
    assert [(s["start"], s["stop"]) for s in shards] == [(0, 200), (200, 400)]


def card_text(html: str) -> str:
    """A card's components travel base64-encoded inside its HTML."""
    encoded = re.search(r'window.__MF_DATA__\[[^]]+\] = "([^"]+)"', html).group(1)
    return base64.b64decode(encoded).decode()


def test_model_artifact_loads_on_cpu_and_reproduces_evaluation(smoke_run):
    data = smoke_run.data
    model, preprocessing = load_model(data.model, "cpu")
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label[15] == "Eyeglasses"
    raw = predict(model, CachedSplit(data.dataset["cache_dir"], "test"), preprocessing).probs
    probs = calibration.apply(data.calibration, raw)  # the thresholds are for calibrated ones
    thresholds = np.array(list(data.thresholds.values()))
    rate = (probs >= thresholds).mean(axis=0)
    per = data.metrics["per_attribute"]
    expected = [per[a]["predicted_positive_rate"] for a in data.dataset["attributes"]]
    assert np.allclose(rate, expected)


def test_export_loads_with_plain_transformers(smoke_run, tmp_path):
    folder = export(smoke_run.pathspec, tmp_path / "exported")
    plain = AutoModelForImageClassification.from_pretrained(folder).eval()
    ours, preprocessing = load_model(smoke_run.data.model)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    x = to_model_input(pixels, preprocessing)
    with torch.no_grad():
        assert torch.allclose(plain(pixel_values=x).logits, ours(pixel_values=x).logits)
    assert json.loads((folder / "thresholds.json").read_text()) == smoke_run.data.thresholds


def test_wandb_offline_run_holds_the_logged_loss(smoke_run, smoke_home):
    logs = list((smoke_home[0] / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    content = logs[0].read_bytes()
    final_loss = smoke_run.data.history[-1]["loss"]
    # History rows are stored as JSON text inside the log's protobuf records.
    assert b'"loss"' in content or b"loss" in content
    assert json.dumps(final_loss).encode() in content


def test_data_parameter_points_the_flow_at_a_celeba_folder(smoke_config, isolated):
    from lib import synthetic

    folder = synthetic.generate(isolated / "my-celeba", synthetic.make_spec(120, seed=9))
    run = run_flow(smoke_config, data=str(folder))
    assert run.data.dataset["source"] == str(folder)
    assert sum(run.data.dataset["split_sizes"].values()) == 120
    assert "drawn_attributes" not in run.data.metrics  # not known to be synthetic


def test_a_model_below_the_baseline_fails_the_run_loudly_but_keeps_its_record(smoke_config):
    run = run_flow({**smoke_config, "require_beats_baseline": True}, expect="failed")
    evaluated = run["evaluate"].task.data
    assert evaluated.metrics["beats_baseline"] is False
    assert evaluated.metrics["mean_accuracy"] <= evaluated.metrics["majority_baseline_accuracy"]
    assert "model" in evaluated and "thresholds" in evaluated
    assert "majority-class baseline" in run["end"].task.stderr
