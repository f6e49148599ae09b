"""A trained model ready to answer: loaded from a TrainFlow run or an exported folder, it
turns preprocessed images into calibrated probabilities (the run's lib.calibration map, as
evaluation applied it), present attributes and drift-log rows.

Serving, the benchmarks and the monitoring tests all predict through Predictor, with the
same preprocessing training used (lib.preprocess).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lib import calibration
from lib.features import Projection, drift_rows, image_features
from lib.model import (
    device_for_inference,
    load_model,
    probabilities_and_embeddings,
    traced_for_serving,
)
from lib.preprocess import (
    PREPROCESSOR_FILE,
    Preprocessing,
    decode_image,
    preprocess,
)

PRECISIONS = ("fp32", "bf16", "int8")


@dataclass
class Prediction:
    probs: np.ndarray  # (B, A) calibrated
    projected: np.ndarray  # (B, k): the [CLS] embedding through the run's projection
    features: np.ndarray  # (B, F): lib.features.image_features


@dataclass
class Predictor:
    name: str  # "TrainFlow/<run id>": the run trained it, also when loaded from an export
    model: torch.nn.Module
    preprocessing: Preprocessing
    attributes: list[str]
    thresholds: np.ndarray  # (A,)
    projection: Projection
    info: dict[str, Any]  # what GET /model shows: run, dataset fingerprint, metrics, thresholds
    # and calibration (None for a run from before calibration: the identity)
    precision: str = "fp32"
    # lib.model.traced_for_serving of the model, on a CPU in fp32 and int8; None: eager
    traced: torch.jit.ScriptModule | None = None

    @classmethod
    def from_run(cls, pathspec: str, precision: str = "fp32") -> Predictor:
        files, projection, info = run_record(pathspec)
        return cls._build(info["run"], files, projection, info, precision)

    @classmethod
    def champion(cls, precision: str = "fp32") -> Predictor:
        from lib.registry import champion_pathspec

        advice = "train one (python flows/train_flow.py run) or set MODEL_RUN or MODEL_DIR"
        return cls.from_run(champion_pathspec(advice), precision)

    @classmethod
    def from_dir(cls, folder: str | Path, precision: str = "fp32") -> Predictor:
        """A folder written by `python -m lib.export`."""
        folder = Path(folder)
        wanted = ("config.json", "model.safetensors", PREPROCESSOR_FILE, "facet.json")
        missing = [name for name in wanted if not (folder / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a folder written by python -m lib.export: "
                f"missing {', '.join(missing)}"
            )
        info = json.loads((folder / "facet.json").read_text())
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        # Named after the run it was exported from, so its log rows meet that run's reference.
        return cls._build(info["run"], files, info.pop("projection"), info, precision)

    @classmethod
    def _build(
        cls,
        name: str,
        files: dict[str, bytes],
        projection: dict[str, list],
        info: dict[str, Any],
        precision: str,
    ) -> Predictor:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        model, preprocessing = load_model(files, device_for_inference())
        if precision == "int8":
            model = quantize_int8(model)
        attributes = [model.config.id2label[i] for i in range(model.config.num_labels)]
        # float64, as evaluation compares the calibrated (float64) probabilities with them.
        thresholds = np.array([info["thresholds"][a] for a in attributes], dtype=np.float64)
        return cls(
            name=name,
            model=model,
            preprocessing=preprocessing,
            attributes=attributes,
            thresholds=thresholds,
            projection=Projection.from_dict(projection),
            info=info,
            precision=precision,
            traced=(
                traced_for_serving(model, preprocessing)
                if model.device.type == "cpu" and precision != "bf16"
                else None
            ),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, data: bytes | Image.Image, max_pixels: int | None = None) -> np.ndarray:
        """Encoded image bytes (or an image lib.preprocess.open_image opened) -> the uint8
        model-size array training was cached as."""
        image = decode_image(data, max_pixels=max_pixels)
        return preprocess(image, self.preprocessing.image_size)

    def predict(self, pixels: np.ndarray) -> Prediction:
        """(B, H, W, 3) uint8 at the model's size -> calibrated probabilities and drift
        values."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            probs, embeddings = probabilities_and_embeddings(
                self.model, torch.from_numpy(pixels), self.preprocessing, self.traced
            )
        return Prediction(
            probs=calibration.apply(self.info.get("calibration"), probs),
            projected=self.projection.transform(embeddings),
            features=image_features(pixels),
        )

    def present(self, probs: np.ndarray) -> list[list[str]]:
        """Per image, the attributes at or above the run's tuned thresholds."""
        return [
            [a for a, hit in zip(self.attributes, row, strict=True) if hit]
            for row in (probs >= self.thresholds)
        ]

    def log_rows(self, prediction: Prediction) -> list[dict[str, float]]:
        return drift_rows(
            prediction.features, prediction.probs, prediction.projected, self.attributes
        )


def run_record(pathspec: str) -> tuple[dict[str, bytes], dict[str, list], dict[str, Any]]:
    """What serving needs from a finished TrainFlow run: the model files, the embedding
    projection, and the facts GET /model shows, the calibrator among them (None for a run
    made before runs stored one)."""
    from metaflow import Run, namespace

    namespace(None)
    run = Run(pathspec)
    if not run.successful:
        raise ValueError(f"{pathspec} did not finish successfully; serve a finished run")
    data = run.data
    info = {
        "run": run.pathspec,
        "dataset_fingerprint": data.dataset["fingerprint"],
        "metrics": data.metrics,
        "thresholds": data.thresholds,
        "calibration": data.calibration if "calibration" in data else None,
    }
    return data.model, data.projection, info


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of every Linear layer (weights int8, activations quantised
    on the fly). torch.ao's API is deprecated in favour of torchao but still the one that
    needs no extra dependency."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(
            model.cpu(), {torch.nn.Linear}, dtype=torch.qint8
        )
