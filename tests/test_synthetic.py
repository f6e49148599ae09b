import hashlib

import numpy as np
import pytest
from PIL import Image

from lib import synthetic
from lib.celeba import read_celeba


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = synthetic.generate(tmp_path / "a", synthetic.make_spec(60, seed=3), processes=2)
    b = synthetic.generate(tmp_path / "b", synthetic.make_spec(60, seed=3), processes=1)
    c = synthetic.generate(tmp_path / "c", synthetic.make_spec(60, seed=4), processes=2)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_writes_the_official_layout(tmp_path):
    root = synthetic.generate(tmp_path, synthetic.make_spec(50, seed=0))
    index = read_celeba(root)
    assert index.attributes == synthetic.ATTRIBUTES and len(index.attributes) == 40
    assert index.files[:2] == ["000001.jpg", "000002.jpg"] and len(index.files) == 50
    assert set(index.split.tolist()) == {0, 1, 2}
    header = (root / "list_attr_celeba.txt").read_text().splitlines()[1]
    assert header.endswith(" ")  # like the official file
    with Image.open(root / "img_align_celeba" / "000001.jpg") as image:
        assert image.format == "JPEG" and image.mode == "RGB" and image.size == (178, 218)


def test_positive_rates_follow_celeba(tmp_path):
    rng = np.random.default_rng(0)
    rows = [synthetic.sample_labels(rng, synthetic.CELEBA_RATES) for _ in range(20_000)]
    for name, rate in synthetic.CELEBA_RATES.items():
        observed = np.mean([row[name] for row in rows])
        assert abs(observed - rate) < 0.025, (name, observed, rate)
    hair = np.array([[row[c] for c in synthetic.HAIR_COLOURS] for row in rows])
    assert hair.sum(axis=1).max() == 1  # exclusive
    bald = np.array([row["Bald"] for row in rows], dtype=bool)
    assert hair[bald].sum() == 0


def test_prevalence_override_and_validation():
    spec = synthetic.make_spec(10, prevalence={"Eyeglasses": 0.4})
    rng = np.random.default_rng(1)
    share = np.mean([synthetic.sample_labels(rng, spec.rates)["Eyeglasses"] for _ in range(5000)])
    assert abs(share - 0.4) < 0.03
    with pytest.raises(ValueError, match="unknown attribute 'Glasses'"):
        synthetic.make_spec(10, prevalence={"Glasses": 0.4})
    with pytest.raises(ValueError, match="must lie in"):
        synthetic.make_spec(10, prevalence={"Eyeglasses": 1.4})
    with pytest.raises(ValueError, match="unknown shift 'tint'"):
        synthetic.make_spec(10, shifts={"tint": 1.0})


def test_shifts_change_the_pixels_they_name(tmp_path):
    def pixels(**shifts):
        root = synthetic.generate(tmp_path / str(shifts), synthetic.make_spec(8, shifts=shifts))
        files = sorted((root / "img_align_celeba").iterdir())
        return np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])

    plain, bright, blurred = pixels(), pixels(brightness=0.3), pixels(blur=3.0)
    assert bright.mean() > plain.mean() * 1.15

    def sharpness(x):
        return np.abs(np.diff(x, axis=2)).mean()

    assert sharpness(blurred) < 0.7 * sharpness(plain)


def test_cli_parses_shifts_and_rejects_bad_pairs(tmp_path):
    synthetic.main(
        [str(tmp_path / "out"), "--n", "5", "--shift", "blur=1", "--prevalence", "Bald=0.2"]
    )
    assert len(list((tmp_path / "out" / "img_align_celeba").iterdir())) == 5
    with pytest.raises(SystemExit, match="NAME=NUMBER"):
        synthetic.main([str(tmp_path / "bad"), "--n", "5", "--shift", "blur"])


# Cached datasets and published results were made from these pixels: a change to the drawing,
# or to the order of its random draws, must show here (pillow and numpy as in constraints.txt).
RENDERED_DIGEST = "359029f03aa8bffff9b7c7043a50c7825aa0ce74f1265e1e759068cb11e5561c"


def test_faces_render_to_the_same_pixels_as_before():
    digest = hashlib.sha256()
    for index in range(40):
        rng = np.random.default_rng([0, index])
        labels = {name: int(rng.random() < 0.5) for name in synthetic.ATTRIBUTES}  # every cue
        shifts = {"brightness": 0.2, "noise": 3.0} if index % 2 else {}
        digest.update(synthetic.render_face(rng, labels, shifts).tobytes())
    assert digest.hexdigest() == RENDERED_DIGEST
