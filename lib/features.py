"""What drift monitoring compares: per-image features, predicted probabilities and a small
projection of the model's embedding, computed by the same functions for TrainFlow's reference
(the test split) and for every image serving answers.

Image features are measured on the preprocessed uint8 image, the pixels the model sees, so a
change that the resize wipes out is not reported and one the model notices is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

IMAGE_FEATURES = ("brightness", "contrast", "sharpness", "saturation", "red", "green", "blue")
PROJECTION_DIM = 8

# ITU-R BT.601 luma weights.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def image_features(pixels: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, len(IMAGE_FEATURES)) float32, every feature in [0, ~1]."""
    rgb = pixels.astype(np.float32) / 255.0
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Channel by channel: numpy's reductions and products over a last axis of 3 are slow.
    luma = LUMA[0] * red + LUMA[1] * green + LUMA[2] * blue
    # Laplacian of the luma on the interior: its mean magnitude falls as an image blurs.
    laplacian = (
        4 * luma[:, 1:-1, 1:-1]
        - luma[:, :-2, 1:-1]
        - luma[:, 2:, 1:-1]
        - luma[:, 1:-1, :-2]
        - luma[:, 1:-1, 2:]
    )
    top = np.maximum(np.maximum(red, green), blue)
    bottom = np.minimum(np.minimum(red, green), blue)
    saturation = (top - bottom) / np.maximum(top, 1e-6)  # 0 for black, where top is 0
    columns = [
        luma.mean(axis=(1, 2)),
        luma.std(axis=(1, 2)),
        np.abs(laplacian).mean(axis=(1, 2)),
        saturation.mean(axis=(1, 2)),
        *(channel.mean(axis=(1, 2)) for channel in (red, green, blue)),
    ]
    return np.stack(columns, axis=1).astype(np.float32)


@dataclass(frozen=True)
class Projection:
    """PCA of the model's [CLS] embedding, fitted once during evaluation and stored with the
    run, so serving projects its embeddings with exactly the same transform."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D)

    @classmethod
    def fit(cls, embeddings: np.ndarray, dim: int = PROJECTION_DIM) -> Projection:
        embeddings = embeddings.astype(np.float64)
        mean = embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        return cls(mean.astype(np.float32), vt[:dim].astype(np.float32))

    def transform(self, embeddings: np.ndarray) -> np.ndarray:
        return (embeddings.astype(np.float32) - self.mean) @ self.components.T

    def to_dict(self) -> dict[str, list]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Projection:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["components"], np.float32))


def embedding_columns(dim: int) -> list[str]:
    return [f"emb_{i}" for i in range(dim)]


def probability_columns(attributes: list[str]) -> list[str]:
    return [f"prob_{name}" for name in attributes]


def drift_columns(attributes: list[str], projection_dim: int) -> list[str]:
    """The drift values of one image, in order: image features, probabilities, embedding."""
    return [
        *IMAGE_FEATURES,
        *probability_columns(attributes),
        *embedding_columns(projection_dim),
    ]


def drift_values(features: np.ndarray, probs: np.ndarray, projected: np.ndarray) -> np.ndarray:
    """(B, F), (B, A), (B, k) -> (B, F + A + k) float32, in drift_columns order."""
    return np.concatenate([features, probs, projected], axis=1).astype(np.float32)


def feature_frame(
    features: np.ndarray, probs: np.ndarray, projected: np.ndarray, attributes: list[str]
) -> pd.DataFrame:
    """One row per image: image features, predicted probabilities, projected embedding."""
    return pd.DataFrame(
        drift_values(features, probs, projected),
        columns=drift_columns(attributes, projected.shape[1]),
    )


def drift_rows(
    features: np.ndarray, probs: np.ndarray, projected: np.ndarray, attributes: list[str]
) -> list[dict[str, float]]:
    """The same values as feature_frame, as one dict per image: what the prediction log
    stores per request, built without pandas (a third of a small model's request time)."""
    names = drift_columns(attributes, projected.shape[1])
    values = drift_values(features, probs, projected).tolist()
    return [dict(zip(names, row, strict=True)) for row in values]
