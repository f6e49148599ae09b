"""Training in two processes (torchrun, gloo on CPU), and compiled, against one eager process
taking the same step on the same batch."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from helpers import MULTINODE_FLOW, SMOKE, run_flow, use_gs_datastore

from lib import synthetic
from lib.config import RunConfig, load
from lib.datasets import CachedSplit
from lib.distributed import run_training
from lib.model import build_model, load_model
from lib.prepare import prepare
from lib.registry import champion_pathspec, promote_if_better
from lib.storage import checkpoint_place

pytestmark = pytest.mark.flow


def one_step_config(per_process_batch: int, processes: int, **train) -> RunConfig:
    """One optimizer step over the same global batch, nothing random but the init: no
    augmentation, no warmup, no dropout (the ViT config has none); `train` overrides."""
    one_step = {
        "epochs": 1,
        "batch_size": per_process_batch,
        "gradient_accumulation_steps": 1,
        "warmup_ratio": 0.0,
        "max_shift": 0,
        "flip_probability": 0.0,
        "num_workers": 0,
        "log_every": 1,
        "checkpoint_every": 1000,
        "wandb": False,
        "num_processes": processes,
    }
    return load(SMOKE).merged({"train": {**one_step, **train}})


def test_two_processes_take_the_same_step_as_one(tmp_path):
    root = synthetic.generate(tmp_path / "data", synthetic.make_spec(48, seed=5))
    dataset = prepare("two", root, image_size=32)
    half = len(CachedSplit(dataset["cache_dir"], "train")) // 2  # 2 x half <= train < 3 x half

    config = one_step_config(2 * half, 1)
    one = run_training(config, dataset, ("Test", "one", None))
    two = run_training(one_step_config(half, 2), dataset, ("Test", "two", None))

    assert (one.steps, two.steps) == (1, 1)
    assert (one.world_size, two.world_size) == (1, 2)
    ours, theirs = one.model.state_dict(), two.model.state_dict()
    for name, weight in ours.items():
        assert torch.allclose(weight, theirs[name], atol=1e-5), name
    set_seed(0)  # the initial weights both started from: the step moved them
    initial = build_model(config.model, dataset["attributes"]).state_dict()
    assert not torch.allclose(initial["classifier.weight"], ours["classifier.weight"])
    assert [record["step"] for record in two.history] == [1]  # rank 0's log, relayed


def test_a_compiled_model_takes_the_same_step(tmp_path):
    root = synthetic.generate(tmp_path / "data", synthetic.make_spec(48, seed=5))
    dataset = prepare("compiled", root, image_size=32)
    batch = len(CachedSplit(dataset["cache_dir"], "train"))
    eager = run_training(one_step_config(batch, 1), dataset, ("Test", "eager", None))
    config = one_step_config(batch, 1, compile=True)
    compiled = run_training(config, dataset, ("Test", "compiled", None))
    for name, weight in eager.model.state_dict().items():
        assert torch.allclose(weight, compiled.model.state_dict()[name], atol=1e-4), name


def test_two_nodes_train_like_two_processes_on_one(smoke_config, monkeypatch):
    """TrainFlow with 2 processes, and TrainMultiNodeFlow with 2 nodes of 1 process (Metaflow
    runs @parallel's nodes as local processes): the same job, so the same weights."""
    smoke_config["train"]["num_processes"] = 2
    one_node = run_flow(smoke_config)
    smoke_config["train"].update(num_processes=1, num_nodes=2)
    # Locally, Metaflow starts the other nodes with the `python` it finds on PATH.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    two_nodes = run_flow(smoke_config, flow=MULTINODE_FLOW)
    assert len(list(two_nodes["train"])) == 2
    for run in (one_node, two_nodes):
        assert run["evaluate"].task.data.world_size == 2
        assert run.data.metrics["mean_accuracy"] > 0
    weights = [
        load_model(run["evaluate"].task.data.model)[0].state_dict() for run in (one_node, two_nodes)
    ]
    # The same job, but a lone process per node may use more torch threads than two ranks
    # sharing a machine: reductions may be ordered differently, so not bitwise.
    for name, weight in weights[0].items():
        assert torch.allclose(weight, weights[1][name], atol=1e-5), name

    # Champions of both flows compete on the same data, and serving finds either.
    metrics = {**one_node.data.metrics, "beats_baseline": True}
    assert promote_if_better(one_node.pathspec, one_node.data.dataset, metrics)[0]
    better = {**metrics, "mean_accuracy": metrics["mean_accuracy"] + 0.01}
    promoted, reason = promote_if_better(two_nodes.pathspec, two_nodes.data.dataset, better)
    assert promoted and one_node.pathspec in reason
    assert champion_pathspec("train one") == two_nodes.pathspec


def test_one_node_flow_refuses_several_nodes(smoke_config):
    smoke_config["train"]["num_nodes"] = 2
    run = run_flow(smoke_config, expect="failed")
    assert "train_multinode_flow.py" in run["train"].task.stderr


@pytest.mark.emulator
def test_processes_on_a_fresh_machine_resume_from_the_mirror(gcs, tmp_path, monkeypatch):
    """A retry on a new pod: the checkpoint is only in gs://. It is downloaded once per
    machine (the local main process first), and every process continues from it."""
    use_gs_datastore(monkeypatch, "gs://facet/metaflow")
    root = synthetic.generate(tmp_path / "data", synthetic.make_spec(48, seed=5))
    dataset = prepare("mirror", root, image_size=32)
    config = one_step_config(4, 2, epochs=2, checkpoint_every=2)
    first = run_training(config, dataset, ("Test", "pod", None))
    shutil.rmtree(checkpoint_place("Test", "pod").folder)  # the new machine has no checkpoints
    again = run_training(config, dataset, ("Test", "pod", None))
    assert (again.resumed_from_step, again.world_size) == (first.steps, 2)
    for name, weight in first.model.state_dict().items():  # no step taken after the resume
        assert torch.equal(weight, again.model.state_dict()[name]), name
