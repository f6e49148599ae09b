import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image

import lib.prepare
from lib import synthetic
from lib.datasets import CachedSplit, PreparedImages
from lib.prepare import BadImagesError, finish, plan, prepare, prepare_shard
from lib.preprocess import (
    ImageDecodeError,
    Preprocessing,
    decode_image,
    preprocess,
    to_model_input,
)
from lib.sources import resolve_source, shard_source


@pytest.fixture
def small(tmp_path):
    return synthetic.generate(tmp_path / "celeba", synthetic.make_spec(40, seed=1))


def shard_stamps(cache_dir) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(cache_dir).glob("shard-*")}


def no_decoding(*args):
    raise AssertionError("an image was decoded again")


def test_prepare_writes_shards_and_a_second_prepare_reuses_them(small, monkeypatch):
    first = prepare("test://small", small, image_size=32, shard_size=15)
    assert first["cache_reused"] is False
    assert first["attributes"] == synthetic.ATTRIBUTES
    assert sum(first["split_sizes"].values()) == 40
    assert set(first["positive_rates"]) == {"train", "validation", "test"}
    assert first["skipped"]["missing"]["count"] == 0
    assert [(s["start"], s["stop"]) for s in first["shards"]] == [(0, 15), (15, 30), (30, 40)]
    shard = np.load(Path(first["cache_dir"]) / first["shards"][2]["file"])
    assert shard.shape == (10, 32, 32, 3) and shard.dtype == np.uint8
    images = PreparedImages(first["cache_dir"])
    assert images[:].shape == (40, 32, 32, 3)
    assert np.array_equal(images[31], shard[1]) and np.array_equal(images[[31]][0], shard[1])
    stamps = shard_stamps(first["cache_dir"])
    assert len(stamps) == 6  # an .npy and a .json of bad images per shard

    monkeypatch.setattr(lib.prepare, "_decode_one", no_decoding)
    second = prepare("test://small", small, image_size=32, shard_size=15)
    assert second["cache_reused"] is True
    assert second["cache_dir"] == first["cache_dir"]
    assert second["fingerprint"] == first["fingerprint"]
    assert shard_stamps(second["cache_dir"]) == stamps
    monkeypatch.undo()
    assert prepare("test://small", small, image_size=48)["cache_dir"] != first["cache_dir"]


def test_an_interrupted_preparation_decodes_only_the_missing_shards(small, monkeypatch):
    first = prepare("test://small", small, image_size=32, shard_size=15)
    folder = Path(first["cache_dir"])
    before = PreparedImages(folder)[:]
    (folder / "manifest.json").unlink()  # killed before the join ...
    (folder / first["shards"][1]["file"]).unlink()  # ... and while decoding shard 1
    kept = {name: stamp for name, stamp in shard_stamps(folder).items() if "0015" not in name}
    decoded = []
    original = lib.prepare._decode_one
    monkeypatch.setattr(
        lib.prepare,
        "_decode_one",
        lambda images, name, size: decoded.append(name) or original(images, name, size),
    )
    again = prepare("test://small", small, image_size=32, shard_size=15, processes=1)
    assert again["cache_reused"] is False
    assert decoded == [f"{i:06d}.jpg" for i in range(16, 31)]
    assert {k: v for k, v in shard_stamps(folder).items() if k in kept} == kept
    assert np.array_equal(PreparedImages(folder)[:], before)


def test_changed_labels_change_the_fingerprint(small):
    before = prepare("test://small", small, image_size=32)
    attr = small / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    lines[2] = lines[2][:-2] + ("-1" if lines[2].endswith(" 1") else " 1")
    attr.write_text("\n".join(lines) + "\n")
    after = prepare("test://small", small, image_size=32)
    assert after["fingerprint"] != before["fingerprint"]
    assert after["cache_reused"] is False and after["cache_dir"] != before["cache_dir"]


def test_missing_and_corrupt_images_fail_unless_allowed(small):
    (small / "img_align_celeba" / "000003.jpg").unlink()
    (small / "img_align_celeba" / "000007.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(BadImagesError, match=r"2 listed images.*000003\.jpg.*000007\.jpg"):
        prepare("test://small", small, image_size=32)
    manifest = prepare("test://small", small, image_size=32, allow_skipped=True)
    assert manifest["skipped"]["missing"] == {"count": 1, "names": ["000003.jpg"]}
    assert manifest["skipped"]["unreadable"]["count"] == 1
    assert manifest["skipped"]["unreadable"]["names"][0].startswith("000007.jpg")
    assert sum(manifest["split_sizes"].values()) == 38


def test_images_join_labels_by_name_not_sort_order(tmp_path):
    """image_10 sorts before image_2: each image must still get its own label."""
    root = tmp_path / "named"
    (root / "img_align_celeba").mkdir(parents=True)
    names = [f"image_{i}.jpg" for i in (2, 10, 1, 33, 4)]
    labels = [1, 0, 0, 1, 1]
    for name, label in zip(names, labels, strict=True):
        colour = (250, 250, 250) if label else (5, 5, 5)  # the label is visible in the pixels
        Image.new("RGB", (20, 24), colour).save(root / "img_align_celeba" / name)
    rows = "".join(f"{n} {1 if y else -1:>2}\n" for n, y in zip(names, labels, strict=True))
    (root / "list_attr_celeba.txt").write_text(f"{len(names)}\nBright \n{rows}")
    (root / "list_eval_partition.txt").write_text("".join(f"{n} 0\n" for n in sorted(names)))
    manifest = prepare("test://named", root, image_size=8)
    split = CachedSplit(manifest["cache_dir"], "train")
    for i in range(len(split)):
        pixels, label = split[i]
        assert (pixels.float().mean() > 128) == bool(label[0])


def test_training_and_serving_preprocessing_agree(small):
    """The same JPEG through the training path (prepare -> cache -> loader) and the serving
    path (bytes -> decode -> preprocess) gives identical model inputs."""
    manifest = prepare("test://small", small, image_size=32)
    train_set = CachedSplit(manifest["cache_dir"], "train")
    pixels, _ = next(iter(torch.utils.data.DataLoader(train_set, batch_size=4)))
    settings = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    training_input = to_model_input(pixels, settings)

    served = []
    for row in train_set.rows[:4]:
        payload = (small / "img_align_celeba" / f"{row + 1:06d}.jpg").read_bytes()
        served.append(torch.from_numpy(preprocess(decode_image(payload), 32)))
    serving_input = to_model_input(torch.stack(served), settings)
    assert torch.equal(training_input, serving_input)
    assert training_input.shape == (4, 3, 32, 32)
    assert training_input.min() >= -1.0 and training_input.max() <= 1.0  # normalised once


def test_decode_applies_exif_rotation_and_converts_to_rgb():
    image = Image.new("L", (30, 20), 128)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode_image(buffer.getvalue())
    assert decoded.mode == "RGB" and decoded.size == (20, 30)


@pytest.mark.parametrize(
    ("format", "opened"),
    [
        ("JPEG", True),
        ("PNG", True),
        ("WEBP", True),
        ("BMP", False),
        ("GIF", False),
        ("TIFF", False),
    ],
)
def test_decode_opens_only_the_formats_face_photos_come_in(format, opened):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 90)).save(buffer, format=format)
    if opened:
        assert decode_image(buffer.getvalue()).size == (8, 8)
    else:
        with pytest.raises(ImageDecodeError, match="not a JPEG, PNG or WebP image"):
            decode_image(buffer.getvalue())


def test_decode_never_runs_ghostscript_on_eps(monkeypatch):
    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: ran.append(args))
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    with pytest.raises(ImageDecodeError, match="not a JPEG, PNG or WebP image"):
        decode_image(eps)
    assert ran == []


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
def test_any_decoder_failure_is_an_image_decode_error(format):
    """Pillow fails to rewrite this EXIF block when it undoes the rotation (struct.error):
    the width tag holds text."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated
    exif[0x010F] = "camera"  # the make: text
    width_as_text = exif.tobytes().replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format=format, exif=width_as_text)
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        decode_image(buffer.getvalue())


def test_data_preparation_starts_without_torch():
    """The flow's start, prepare_shard and prepare_data tasks import these; torch would add a
    second or more to each task's start."""
    code = (
        "import sys, lib.config, lib.prepare, lib.sources, lib.cards; print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    imported = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert imported.stdout.strip() == "False", imported.stderr


def test_preprocessing_round_trips_through_its_json():
    settings = Preprocessing(image_size=48, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert Preprocessing.from_hf_json(settings.to_hf_json()) == settings


def test_synthetic_source_is_generated_once(tmp_path):
    uri, root = resolve_source("synthetic", {"n": 12, "seed": 5})
    assert uri == "synthetic://?n=12&seed=5"
    stamp = (root / "list_attr_celeba.txt").stat().st_mtime_ns
    assert resolve_source("synthetic", {"n": 12, "seed": 5}) == (uri, root)
    assert (root / "list_attr_celeba.txt").stat().st_mtime_ns == stamp


def test_another_faint_option_is_another_dataset(tmp_path):
    """The same faces with an attribute drawn faint, or drawn fainter, are generated to a
    folder of their own, named by their own address, and fingerprinted apart."""
    faint = {"attribute": "Wearing_Lipstick", "group": "Young", "visibility": 0.3}
    specs = [
        {"n": 20, "seed": 5},
        {"n": 20, "seed": 5, "faint": faint},
        {"n": 20, "seed": 5, "faint": {**faint, "visibility": 0.6}},
    ]
    sources = [resolve_source("synthetic", spec) for spec in specs]
    uris, roots = zip(*sources, strict=True)
    assert uris[1] == "synthetic://?n=20&seed=5&faint=Wearing_Lipstick,Young,0.3"
    assert len(set(uris)) == len(set(roots)) == 3
    fingerprints = {plan(uri, root, image_size=24).fingerprint for uri, root in sources}
    assert len(fingerprints) == 3
    off = {"n": 20, "seed": 5, "faint": {**faint, "attribute": None}}
    assert resolve_source("synthetic", off) == sources[0]


@pytest.mark.parametrize("layout", ["zip", "kaggle"])
def test_every_layout_prepares_to_the_same_arrays(tmp_path, layout, monkeypatch):
    spec = synthetic.make_spec(30, seed=2)
    official = prepare("x", synthetic.generate(tmp_path / "official", spec), image_size=24)
    monkeypatch.setenv("FACET_CACHE", str(tmp_path / "another-cache"))  # decode it all again
    other = prepare("x", synthetic.generate(tmp_path / layout, spec, layout=layout), image_size=24)
    assert other["layout"] == layout and official["layout"] == "official"
    assert other["cache_dir"] != official["cache_dir"] and not other["cache_reused"]
    # Same content, same dataset: the fingerprint does not depend on the packaging.
    assert other["fingerprint"] == official["fingerprint"]
    assert other["split_sizes"] == official["split_sizes"]
    assert other["positive_rates"] == official["positive_rates"]
    for name in ("labels.npy", "split.npy"):
        a = np.load(f"{official['cache_dir']}/{name}")
        b = np.load(f"{other['cache_dir']}/{name}")
        assert np.array_equal(a, b), name
    assert np.array_equal(
        PreparedImages(official["cache_dir"])[:], PreparedImages(other["cache_dir"])[:]
    )
    if layout == "zip":
        assert not (tmp_path / "zip" / "img_align_celeba").exists()  # read in place


def test_missing_member_of_a_zip_is_counted(tmp_path):
    import zipfile

    root = synthetic.generate(tmp_path / "z", synthetic.make_spec(12, seed=3), layout="zip")
    archive = root / "img_align_celeba.zip"
    kept = zipfile.ZipFile(archive).namelist()[1:]  # drop 000001.jpg
    contents = {name: zipfile.ZipFile(archive).read(name) for name in kept}
    with zipfile.ZipFile(archive, "w") as rewritten:
        for name, data in contents.items():
            rewritten.writestr(name, data)
    manifest = prepare("z", root, image_size=16, allow_skipped=True)
    assert manifest["skipped"]["missing"] == {"count": 1, "names": ["000001.jpg"]}


def test_damaged_and_unusual_images_are_converted_or_counted(tmp_path):
    """PNG, grayscale, CMYK, 16-bit, EXIF-rotated and odd-sized files are converted; a
    truncated JPEG is counted as unreadable, by name."""
    root = synthetic.generate(tmp_path / "odd", synthetic.make_spec(10, seed=4))
    folder = root / "img_align_celeba"
    face = Image.open(folder / "000001.jpg")
    face.save(folder / "000002.jpg", format="PNG")  # a PNG behind a .jpg name
    face.convert("L").save(folder / "000003.jpg")
    face.convert("CMYK").save(folder / "000004.jpg")
    Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 256).save(
        folder / "000005.jpg", format="PNG"
    )
    exif = Image.Exif()
    exif[0x0112] = 8
    face.rotate(-90, expand=True).save(folder / "000006.jpg", exif=exif)
    face.resize((300, 400)).save(folder / "000007.jpg")
    payload = (folder / "000008.jpg").read_bytes()
    (folder / "000008.jpg").write_bytes(payload[: len(payload) // 3])

    with pytest.raises(BadImagesError, match=r"000008\.jpg"):
        prepare("odd", root, image_size=32)
    manifest = prepare("odd", root, image_size=32, allow_skipped=True)
    assert manifest["skipped"]["unreadable"]["count"] == 1
    assert manifest["skipped"]["unreadable"]["names"][0].startswith("000008.jpg")
    assert manifest["skipped"]["missing"]["count"] == 0
    images = PreparedImages(manifest["cache_dir"])[:]
    reference = images[0].astype(int)
    assert np.abs(images[1].astype(int) - reference).mean() < 3  # PNG: same picture
    assert np.abs(images[5].astype(int) - reference).mean() < 12  # EXIF rotation undone
    assert images[2].std(axis=2).max() == 0  # grayscale became three equal channels
    assert np.abs(images[4].astype(int) - images[2].astype(int)).mean() < 1  # 16-bit scaled


def test_shards_decoded_elsewhere_without_a_shared_cache_fail_clearly(small):
    work = plan("test://small", small, image_size=16, shard_size=20)
    prepare_shard(work, 0, small)  # shard 1 went to a machine whose disk this one cannot see
    with pytest.raises(FileNotFoundError, match=r"shard-0000020-0000040\.npy.*FACET_CACHE=gs://"):
        finish(work)


def test_a_shard_reads_the_planners_copy_of_the_source_or_makes_its_own(small, tmp_path):
    work = plan("test://small", small, image_size=16)
    assert shard_source(work, 0, "not needed here") == small
    elsewhere = dataclasses.replace(work, root=tmp_path / "on-the-planning-machine-only")
    spec = {"n": 12, "seed": 5}
    assert shard_source(elsewhere, 0, "synthetic", spec) == resolve_source("synthetic", spec)[1]
