"""The pipeline learns. The project this replaces trained for days and then predicted one class
for every image; a short run here must beat the majority baseline, learn the attributes that
are drawn, and stay at chance on those that are not."""

import pytest

pytestmark = pytest.mark.flow


def test_a_short_run_learns_what_is_drawn_and_nothing_else(learned_run):
    metrics = learned_run.data.metrics  # helpers.learning_config(): ~30 s on 2 cores
    assert metrics["beats_baseline"]
    assert metrics["mean_accuracy"] > metrics["majority_baseline_accuracy"] + 0.01
    assert metrics["mean_balanced_accuracy_drawn"] > 0.62
    assert abs(metrics["mean_balanced_accuracy_undrawn"] - 0.5) < 0.03
    per = metrics["per_attribute"]
    for easy in ("Black_Hair", "Blond_Hair", "Pale_Skin"):  # bold colours, learned first
        assert per[easy]["balanced_accuracy"] > 0.85, easy
