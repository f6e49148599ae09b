import torch
from accelerate import Accelerator
from transformers import ViTConfig, ViTForImageClassification

from lib.storage import CheckpointPlace
from lib.train import augment, parameter_groups, positive_weights


def test_positive_weights_follow_prevalence_and_are_clipped():
    weights = positive_weights([0.5, 0.2, 0.001, 0.99, 0.0], max_weight=10.0)
    assert torch.allclose(weights[:2], torch.tensor([1.0, 4.0]))
    assert weights[2] == 10.0 and weights[4] == 10.0  # rare or absent: clipped, never inf
    assert weights[3] == torch.tensor(0.1)  # common: clipped from below
    assert torch.isfinite(weights).all()


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = ViTForImageClassification(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )
    )
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith("weight") and "norm" not in n for n in decayed)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "vit.embeddings.cls_token" in skipped and "classifier.bias" in skipped
    assert len(decayed) + len(skipped) == len(names)


def test_augment_flips_and_shifts_without_changing_shape():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    out = augment(x, generator, max_shift=0)
    for original, augmented in zip(x, out, strict=True):
        assert torch.equal(augmented, original) or torch.equal(augmented, original.flip(-1))
    shifted = augment(x, torch.Generator().manual_seed(3), max_shift=2)
    assert shifted.shape == x.shape


def test_checkpoints_are_complete_and_pruned(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    place = CheckpointPlace(tmp_path / "checkpoints")
    for step in (10, 20, 30):
        place.save(accelerator, step, keep=2)
    folder = place.folder
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == ["step_00000020", "step_00000030"]  # no leftover partial folders
    assert any((folder / "step_00000030").glob("*.safetensors"))
    del model
