"""Build the ViT, move it in and out of a run as the files of a save_pretrained folder, and
predict with it: eager, or traced for serving on a CPU.

A run stores `model` as {file name: bytes}: config.json, model.safetensors and our
preprocessor_config.json. No pickled torch objects, so a CPU-only server loads what a GPU trained.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

from lib.config import ModelConfig
from lib.preprocess import PREPROCESSOR_FILE, Preprocessing, to_model_input


def build_model(model_config: ModelConfig, attributes: list[str]) -> ViTForImageClassification:
    """A multi-label ViT with one logit per attribute: from scratch when the config gives an
    architecture, from a checkpoint (hub name or local folder) when it names `pretrained`."""
    labels = {
        "num_labels": len(attributes),
        "id2label": dict(enumerate(attributes)),
        "label2id": {name: i for i, name in enumerate(attributes)},
        "problem_type": "multi_label_classification",
    }
    if not model_config.pretrained:
        return ViTForImageClassification(ViTConfig(**model_config.architecture(), **labels))
    model = ViTForImageClassification.from_pretrained(
        model_config.pretrained, ignore_mismatched_sizes=True, **labels
    )
    if model.config.image_size != model_config.image_size:
        raise ValueError(
            f"{model_config.pretrained} expects {model.config.image_size}px inputs, "
            f"the config says image_size={model_config.image_size}"
        )
    return model


def preprocessing_of(model_config: ModelConfig) -> Preprocessing:
    """Input size and normalisation; a pretrained checkpoint must be given the statistics it
    was trained with (image_mean / image_std in the config)."""
    return Preprocessing(
        image_size=model_config.image_size,
        mean=tuple(model_config.image_mean),
        std=tuple(model_config.image_std),
    )


def model_to_files(model: torch.nn.Module, preprocessing: Preprocessing) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        (Path(folder) / PREPROCESSOR_FILE).write_text(preprocessing.to_hf_json())
        return {path.name: path.read_bytes() for path in Path(folder).iterdir()}


def write_model_files(files: dict[str, bytes], folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def load_model(
    files: dict[str, bytes], device: str = "cpu"
) -> tuple[ViTForImageClassification, Preprocessing]:
    """The inverse of model_to_files, onto any device, in eval mode."""
    with tempfile.TemporaryDirectory() as folder:
        write_model_files(files, folder)
        model = ViTForImageClassification.from_pretrained(folder)
    preprocessing = Preprocessing.from_hf_json(files[PREPROCESSOR_FILE].decode())
    return model.to(device).eval(), preprocessing


class ProbabilitiesAndEmbeddings(torch.nn.Module):
    """What ViTForImageClassification.forward computes, keeping the [CLS] vectors the classifier
    reads (for drift monitoring): normalised pixels -> (sigmoid probabilities, [CLS] vectors),
    both float32."""

    def __init__(self, model: ViTForImageClassification):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cls = self.model.vit(x).last_hidden_state[:, 0]
        return torch.sigmoid(self.model.classifier(cls).float()), cls.float()


@torch.inference_mode()
def probabilities_and_embeddings(
    model: ViTForImageClassification,
    pixels: torch.Tensor,
    preprocessing: Preprocessing,
    traced: torch.jit.ScriptModule | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 (B, H, W, 3) batch -> sigmoid probabilities and [CLS] vectors, as float32 arrays,
    computed by ProbabilitiesAndEmbeddings(model), or by `traced`, its traced_for_serving copy.
    Evaluation and serving both predict through this."""
    x = to_model_input(pixels.to(next(model.parameters()).device), preprocessing)
    probs, cls = (ProbabilitiesAndEmbeddings(model) if traced is None else traced)(x)
    return probs.cpu().numpy(), cls.cpu().numpy()


def traced_for_serving(
    model: ViTForImageClassification, preprocessing: Preprocessing
) -> torch.jit.ScriptModule:
    """ProbabilitiesAndEmbeddings(model) traced by TorchScript and frozen: the same arithmetic
    without Python's dispatch of each layer and operation, which is most of a small model's
    time at batch 1 on a CPU (docs/serving.md). Traced at batch 1, it answers any batch size
    and runs its first two calls (TorchScript's profiling runs) here."""
    size = preprocessing.image_size
    example = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    with torch.inference_mode(), warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript for torch.compile and torch.export; the tracer
        # also warns of shape checks it fixes, which preprocessing keeps true.
        warnings.simplefilter("ignore")
        eager = ProbabilitiesAndEmbeddings(model).eval()
        traced = torch.jit.freeze(torch.jit.trace(eager, example))
        for _ in range(2):
            traced(example)
    return traced


def device_for_inference() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
