"""The pipeline learns. The project this replaces trained for days and then predicted one class
for every image; a short run here must beat the majority baseline, learn the attributes that
are drawn, and stay at chance on those that are not."""

from conftest import run_flow


def test_a_short_run_learns_what_is_drawn_and_nothing_else(smoke_config):
    config = {
        **smoke_config,
        "data": {**smoke_config["data"], "synthetic": {"n": 3000, "seed": 1}},
        "model": {
            "image_size": 32,
            "patch_size": 4,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 128,
        },
        "train": {
            **smoke_config["train"],
            "epochs": 10,
            "batch_size": 64,
            "learning_rate": 0.003,
            "gradient_accumulation_steps": 1,
            "max_shift": 1,
            "num_workers": 0,
            "log_every": 20,
            "checkpoint_every": 10_000,
            "wandb": False,
        },
        "require_beats_baseline": True,
    }
    metrics = run_flow(config).data.metrics  # ~30 s on 2 cores
    assert metrics["beats_baseline"]
    assert metrics["mean_accuracy"] > metrics["majority_baseline_accuracy"] + 0.01
    assert metrics["mean_balanced_accuracy_drawn"] > 0.62
    assert abs(metrics["mean_balanced_accuracy_undrawn"] - 0.5) < 0.03
    per = metrics["per_attribute"]
    for easy in ("Black_Hair", "Blond_Hair", "Pale_Skin"):  # bold colours, learned first
        assert per[easy]["balanced_accuracy"] > 0.85, easy
