import hashlib

import numpy as np
import pytest
from PIL import Image

from lib import synthetic
from lib.celeba import IMAGE_DIR, read_celeba
from lib.config import SyntheticSpec


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


# generate(make_spec(60, seed=3)) before the faint option existed: without it, the same seed
# must still write the same files, labels and JPEG bytes.
GENERATED_DIGEST = "8789828df46a496c861b5662b63b0bcc1bab2950acc3e23fa30a9f8aa91d3cf1"
FAINT = {"attribute": "Eyeglasses", "group": "Young", "visibility": 0.3}
FAINT_LABELS = ("Young", "Eyeglasses")


def test_without_faint_the_same_seed_writes_the_same_files_as_before(tmp_path):
    root = synthetic.generate(tmp_path, synthetic.make_spec(60, seed=3), processes=2)
    assert digest(root) == GENERATED_DIGEST


def test_faint_changes_only_the_group_faces_that_have_the_attribute(tmp_path):
    glasses = {"Eyeglasses": 0.5}  # enough faces to change
    plain = synthetic.generate(tmp_path / "plain", synthetic.make_spec(60, 3, glasses))
    spec = synthetic.make_spec(60, 3, glasses, faint=FAINT)
    faint = synthetic.generate(tmp_path / "faint", spec)
    index = read_celeba(faint)
    assert (index.labels == read_celeba(plain).labels).all()  # the labels still say glasses
    young, wearing = (index.labels[:, index.attributes.index(a)] == 1 for a in FAINT_LABELS)
    assert 5 < (young & wearing).sum() < 55

    def image(root, name):
        return (root / IMAGE_DIR / name).read_bytes()

    changed = [image(plain, name) != image(faint, name) for name in index.files]
    assert changed == (young & wearing).tolist()


@pytest.mark.parametrize("attribute", synthetic.OVERLAY_ATTRIBUTES)
def test_a_faint_cue_is_the_face_with_and_without_it_blended(attribute):
    labels = {name: 1 for name in synthetic.ATTRIBUTES} | {"Bald": 0, "No_Beard": 0}
    labels |= {"Goatee": 0, "Blurry": int(attribute == "Blurry")}

    def face(visibility=None, **override):
        rng = np.random.default_rng([5, 1])
        faint = None if visibility is None else synthetic.Faint(attribute, "Young", visibility)
        image = synthetic.render_face(rng, labels | override, {}, faint)
        return np.asarray(image, dtype=np.float32), rng.bit_generator.state

    shown, after_shown = face()
    hidden, after_hidden = face(**{attribute: 0})
    half, after_half = face(0.5)
    # The cue draws no random numbers: every later draw (a shift's noise) is the same.
    assert after_shown == after_hidden == after_half
    cue = shown != hidden
    assert cue.any()
    assert (half[~cue] == shown[~cue]).all()
    assert np.abs(half - (shown + hidden) / 2).max() <= 1  # halfway, to rounding
    assert (face(0.0)[0] == hidden).all() and (face(1.0)[0] == shown).all()


@pytest.mark.parametrize("colour", list(synthetic.HAIR_COLOURS))
def test_a_faint_hair_colour_is_painted_part_of_the_way_from_auburn(colour):
    labels = {name: 0 for name in synthetic.ATTRIBUTES} | {colour: 1, "Young": 1}

    def hair(visibility):
        rng = np.random.default_rng([5, 2])
        return np.array(synthetic.place_face(rng, labels, visibility).hair), rng.bit_generator.state

    (full, state), (faint, faint_state), (none, none_state) = map(hair, (1.0, 0.3, 0.0))
    assert state == faint_state == none_state  # the same draws: only the colour moves
    away = np.subtract(synthetic.OTHER_HAIR[0], synthetic.HAIR_COLOURS[colour])  # to auburn
    assert (none - full == away).all()
    assert np.abs(faint - full - 0.7 * away).max() <= 0.5

    def face(faint=None):
        rng = np.random.default_rng([5, 2])
        image = np.asarray(synthetic.render_face(rng, labels, {}, faint))
        return image, rng.bit_generator.state

    (plain, plain_state), (painted, painted_state) = (
        face(),
        face(synthetic.Faint(colour, "Young", 0.3)),
    )
    assert plain_state == painted_state and (plain != painted).any()


@pytest.mark.parametrize(
    ("faint", "message"),
    [
        ({**FAINT, "attribute": "Smiling"}, "'Smiling' cannot be drawn faint"),
        ({**FAINT, "attribute": "Male"}, "'Male' cannot be drawn faint"),
        ({**FAINT, "group": "Eyeglasses"}, "group 'Eyeglasses' must be a label-only"),
        ({**FAINT, "visibility": 1.2}, r"must lie in \[0, 1\]"),
    ],
)
def test_faint_refuses_what_it_cannot_draw(faint, message):
    with pytest.raises(ValueError, match=message):
        synthetic.make_spec(10, faint=faint)


def test_cli_draws_faint_and_rejects_a_malformed_faint(tmp_path):
    synthetic.main([str(tmp_path / "out"), "--n", "3", "--faint", "Mustache,Male,0.2"])
    assert len(list((tmp_path / "out" / "img_align_celeba").iterdir())) == 3
    with pytest.raises(SystemExit, match="ATTRIBUTE,GROUP,VISIBILITY"):
        synthetic.main([str(tmp_path / "bad"), "--n", "3", "--faint", "Mustache,Male"])
    with pytest.raises(SystemExit, match="label-only"):
        synthetic.main([str(tmp_path / "bad"), "--n", "3", "--faint", "Mustache,Bald,0.2"])


def test_the_configs_faint_section_reaches_the_generator():
    # As TrainFlow hands data.synthetic to lib.sources.
    section = SyntheticSpec.model_validate({"n": 5, "faint": FAINT}).model_dump()
    assert synthetic.make_spec(**section).faint == synthetic.Faint("Eyeglasses", "Young", 0.3)
    assert synthetic.make_spec(**SyntheticSpec().model_dump()).faint is None
