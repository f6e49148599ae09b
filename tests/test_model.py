import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from lib.config import ModelConfig
from lib.inference import quantize_int8
from lib.model import (
    build_model,
    load_model,
    model_to_files,
    preprocessing_of,
    probabilities_and_embeddings,
    traced_for_serving,
)
from lib.preprocess import to_model_input

ATTRIBUTES = ["Bald", "Smiling", "Young"]
ARCHITECTURE = {
    "image_size": 16,
    "patch_size": 8,
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
}
TINY = ModelConfig(**ARCHITECTURE)


def test_scratch_model_is_multi_label_with_named_outputs():
    model = build_model(TINY, ATTRIBUTES)
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.id2label == {0: "Bald", 1: "Smiling", 2: "Young"}
    assert model(pixel_values=torch.zeros(2, 3, 16, 16)).logits.shape == (2, 3)


def test_pretrained_checkpoint_from_a_local_folder_keeps_its_backbone(tmp_path):
    """The path real runs take with a hub name, exercised on a local checkpoint: a 10-class
    classifier becomes a 3-attribute multi-label one with the backbone weights intact."""
    source = ViTForImageClassification(ViTConfig(**ARCHITECTURE, num_labels=10))
    source.save_pretrained(tmp_path / "checkpoint")
    model = build_model(
        ModelConfig(pretrained=str(tmp_path / "checkpoint"), image_size=16), ATTRIBUTES
    )
    assert model.config.num_labels == 3 and model.config.id2label[2] == "Young"
    assert model.config.problem_type == "multi_label_classification"
    expected = source.vit.embeddings.patch_embeddings.projection.weight
    assert torch.equal(model.vit.embeddings.patch_embeddings.projection.weight, expected)
    with pytest.raises(ValueError, match="expects 16px inputs"):
        build_model(
            ModelConfig(pretrained=str(tmp_path / "checkpoint"), image_size=224), ATTRIBUTES
        )


def test_model_files_round_trip_with_their_preprocessing():
    config = TINY.model_copy(update={"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2] * 3})
    model = build_model(config, ATTRIBUTES).eval()
    files = model_to_files(model, preprocessing_of(config))
    assert set(files) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    loaded, preprocessing = load_model(files)
    assert preprocessing.mean == (0.4, 0.4, 0.4) and preprocessing.image_size == 16
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, model(pixel_values=x).logits)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_traced_model_answers_every_batch_size_as_the_model_does(precision):
    """Serving's traced copy is made at batch 1; at every batch size it computes what the eager
    model computes, to the bit, in fp32 and in int8."""
    model = build_model(TINY, ATTRIBUTES).eval()
    if precision == "int8":
        model = quantize_int8(model)
    preprocessing = preprocessing_of(TINY)
    traced = traced_for_serving(model, preprocessing)
    assert isinstance(traced, torch.jit.ScriptModule)
    pixels = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    for batch in (1, 3, 8):
        eager = probabilities_and_embeddings(model, pixels[:batch], preprocessing)
        with torch.inference_mode():
            fast = traced(to_model_input(pixels[:batch], preprocessing))
        for computed, expected in zip(fast, eager, strict=True):
            assert computed.shape == expected.shape and computed.shape[0] == batch
            np.testing.assert_array_equal(computed.numpy(), expected)
