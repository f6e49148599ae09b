"""Training survives kills, retries and `resume --origin-run-id` without redoing finished work."""

import pytest
from helpers import resume_flow, run_flow
from safetensors.torch import load

from lib.faults import ENV, InjectedFault, inject

pytestmark = pytest.mark.flow


def weights(run):
    return load(run.data.model["model.safetensors"])


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name


@pytest.fixture
def reference(smoke_run):
    """An uninterrupted smoke run: 10 steps, checkpoints every 4."""
    return smoke_run


def test_sigkill_mid_training_then_resume_continues_from_the_checkpoint(
    smoke_config, reference, monkeypatch
):
    monkeypatch.setenv(ENV, "train@6:kill")  # after step 6; the newest checkpoint is step 4
    killed = run_flow(smoke_config, expect="failed")
    monkeypatch.delenv(ENV)
    resumed = resume_flow(killed)

    assert resumed.data.resumed_from_step == 4
    steps = [record["step"] for record in resumed.data.history]
    assert steps == [record["step"] for record in reference.data.history]  # 2, 4, ... 10
    assert reference.data.resumed_from_step == 0
    assert_same_weights(weights(resumed), weights(reference))
    assert resumed.data.metrics["mean_accuracy"] == pytest.approx(
        reference.data.metrics["mean_accuracy"], abs=0.01
    )


def test_evaluate_failure_resumes_without_training_again(smoke_config, monkeypatch):
    monkeypatch.setenv(ENV, "evaluate:raise")
    failed = run_flow(smoke_config, expect="failed")
    monkeypatch.delenv(ENV)
    resumed = resume_flow(failed)

    assert resumed.successful
    for step in ("prepare_data", "train"):
        assert resumed[step].task.origin_pathspec == failed[step].task.pathspec
    assert resumed["evaluate"].task.origin_pathspec is None  # this one ran again
    assert_same_weights(
        weights(resumed), load(failed["train"].task.data.model["model.safetensors"])
    )


def test_retry_recovers_from_an_exception_mid_training(smoke_config, reference, monkeypatch):
    monkeypatch.setenv(ENV, "train@6:raise")
    run = run_flow({**smoke_config, "retries": 1})
    task = run["train"].task
    assert task.current_attempt == 1  # the first attempt failed, the retry finished
    assert task.data.resumed_from_step == 4
    assert_same_weights(weights(run), weights(reference))


def test_faults_do_nothing_unless_set(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    inject("train", 6)
    monkeypatch.setenv(ENV, "train@6:raise")
    inject("train", 5)
    inject("evaluate")
    inject("train", 6, attempt=1)  # a retry is left alone
    with pytest.raises(InjectedFault):
        inject("train", 6)
    monkeypatch.setenv(ENV, "train@6:explode")
    with pytest.raises(ValueError, match="raise\\|kill"):
        inject("train", 6)
