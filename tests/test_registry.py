"""The champion tag: earned by beating the baseline and the newest champion on the same data."""

import pytest
from helpers import run_flow
from metaflow import Run

from lib.registry import CHAMPION, current_champion, promote_if_better

pytestmark = pytest.mark.flow


def test_champion_is_earned_on_the_same_dataset(smoke_run, smoke_config):
    first = smoke_run
    dataset = first.data.dataset
    assert CHAMPION not in first.tags  # the smoke model does not beat the baseline
    assert current_champion(dataset["fingerprint"]) is None

    real = first.data.metrics
    promoted, reason = promote_if_better(first.pathspec, dataset, {**real, "beats_baseline": True})
    assert promoted and "first on this dataset" in reason
    assert CHAMPION in Run(first.pathspec).tags

    second = run_flow(smoke_config)
    assert second.data.dataset["fingerprint"] == dataset["fingerprint"]
    worse = {**real, "beats_baseline": True, "mean_accuracy": real["mean_accuracy"] - 0.01}
    promoted, reason = promote_if_better(second.pathspec, dataset, worse)
    assert not promoted and f"{first.pathspec} stays champion" in reason

    better = {**worse, "mean_accuracy": real["mean_accuracy"] + 0.01}
    collapsed = {**better, "beats_baseline": False}
    assert promote_if_better(second.pathspec, dataset, collapsed)[0] is False
    promoted, reason = promote_if_better(second.pathspec, dataset, better)
    assert promoted and first.pathspec in reason
    assert current_champion(dataset["fingerprint"]).pathspec == second.pathspec
    assert current_champion("another fingerprint") is None
