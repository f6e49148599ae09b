"""Drift values: the same numbers for the training reference and for served images."""

import numpy as np
from PIL import Image, ImageFilter

from lib import synthetic
from lib.features import IMAGE_FEATURES, Projection, drift_rows, feature_frame, image_features
from lib.preprocess import decode_image, preprocess


def faces(tmp_path, n=4, **shifts) -> np.ndarray:
    spec = synthetic.make_spec(n, seed=2, shifts=shifts or None)
    root = synthetic.generate(tmp_path / str(sorted(shifts.items())), spec)
    paths = sorted((root / "img_align_celeba").iterdir())
    return np.stack([preprocess(decode_image(p), 64) for p in paths])


def column(pixels: np.ndarray, name: str) -> np.ndarray:
    return image_features(pixels)[:, IMAGE_FEATURES.index(name)]


def test_features_move_with_the_shifts_the_generator_applies(tmp_path):
    plain = faces(tmp_path)
    assert np.all(
        column(faces(tmp_path, brightness=0.3), "brightness") > column(plain, "brightness")
    )
    assert np.all(column(faces(tmp_path, blur=3.0), "sharpness") < column(plain, "sharpness"))
    assert np.all(column(faces(tmp_path, contrast=0.5), "contrast") > column(plain, "contrast"))


def test_a_gray_image_has_no_saturation_and_a_flat_one_no_sharpness():
    flat = np.full((1, 16, 16, 3), 128, np.uint8)
    values = dict(zip(IMAGE_FEATURES, image_features(flat)[0], strict=True))
    assert values["saturation"] == 0
    assert values["sharpness"] < 1e-6 and values["contrast"] < 1e-6
    assert abs(values["brightness"] - 128 / 255) < 1e-6


def test_projection_survives_the_round_trip_through_an_artifact():
    embeddings = np.random.default_rng(0).normal(size=(50, 12)).astype(np.float32)
    projection = Projection.fit(embeddings, dim=4)
    again = Projection.from_dict(projection.to_dict())
    assert np.allclose(projection.transform(embeddings), again.transform(embeddings))
    projected = projection.transform(embeddings)
    assert projected.shape == (50, 4)
    variances = projected.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)  # principal components, largest first


def test_log_rows_hold_exactly_the_reference_frame_values():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    probs, projected = rng.random((3, 2)), rng.normal(size=(3, 4))
    attributes = ["Smiling", "Eyeglasses"]
    frame = feature_frame(image_features(pixels), probs, projected, attributes)
    rows = drift_rows(image_features(pixels), probs, projected, attributes)
    assert rows == frame.to_dict("records")
    assert list(rows[0]) == [
        *IMAGE_FEATURES,
        "prob_Smiling",
        "prob_Eyeglasses",
        *[f"emb_{i}" for i in range(4)],
    ]


def test_blur_is_seen_at_the_model_resolution():
    """A blur the generator draws at 178x218 must survive the resize to the model's input."""
    face = Image.new("RGB", (178, 218), "white")
    face.paste((0, 0, 0), (60, 60, 120, 160))
    sharp = preprocess(face, 32)[None]
    blurred = preprocess(face.filter(ImageFilter.GaussianBlur(3)), 32)[None]
    assert column(blurred, "sharpness")[0] < 0.8 * column(sharp, "sharpness")[0]
