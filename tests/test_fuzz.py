"""Hostile images through POST /predict: truncated, bit-flipped and header-mangled JPEG, PNG
and WebP files, and files whose EXIF block is mangled, are answered (200) or refused as
invalid (400), never a 500, and the service still answers a good image afterwards."""

import io
import random
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image

import serving.api  # noqa: F401  torch and transformers: they fail to import after a flow ran
from lib import synthetic
from lib.preprocess import FORMATS
from serving import create_app

pytestmark = [
    pytest.mark.flow,
    pytest.mark.filterwarnings("ignore::UserWarning:PIL"),  # Pillow warns of each damaged EXIF
]

SEED = 1234
MUTANTS_PER_KIND = 700  # four kinds: a few thousand files, about 25 s on 2 busy cores


@pytest.fixture
def client(smoke_run, tmp_path):
    """The service on one torch thread: thousands of one-image batches run many times faster
    on 2 busy cores than on two threads that wait for each other."""
    threads = torch.get_num_threads()
    settings = {"PREDICTION_LOG": str(tmp_path / "predictions.db"), "TORCH_THREADS": 1}
    app = create_app({**settings, "MODEL_RUN": smoke_run.pathspec})
    assert app.extensions["facet.model"].wait(60), app.extensions["facet.model"].error
    yield app.test_client()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Image.Image:
    root = synthetic.generate(tmp_path_factory.mktemp("faces"), synthetic.make_spec(1, seed=3))
    (path,) = (root / "img_align_celeba").iterdir()
    return Image.open(path).convert("RGB").resize((48, 60))


def camera_exif() -> Image.Exif:
    """What a phone writes: orientation, make and model, a date and GPS in sub-IFDs."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: exif_transpose parses and rewrites the block
    exif[0x010F], exif[0x0110] = "facet", "fuzzer"
    exif[0x8769] = {0x9003: "2024:01:01 12:00:00", 0x927C: b"maker note"}
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    return exif


def encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def originals(face: Image.Image) -> list[tuple[Image.Image, str, dict]]:
    """(image, format, save options): the encodings a face photo comes in."""
    exif = camera_exif()
    sixteen_bit = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 256)
    return [
        (face, "JPEG", {"exif": exif}),
        (face, "JPEG", {"progressive": True, "quality": 70}),
        (face.convert("CMYK"), "JPEG", {}),
        (face, "PNG", {"exif": exif}),
        (face.convert("P"), "PNG", {}),
        (face.convert("RGBA"), "PNG", {}),
        (sixteen_bit, "PNG", {}),
        (face, "WEBP", {"exif": exif}),
        (face.convert("RGBA"), "WEBP", {"lossless": True}),
    ]


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    mutant = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        mutant[rng.randrange(len(mutant))] ^= 1 << rng.randrange(8)
    return bytes(mutant)


def overwrite_bytes(data: bytes, rng: random.Random, within: int) -> bytes:
    mutant = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        mutant[rng.randrange(min(within, len(mutant)))] = rng.randrange(256)
    return bytes(mutant)


def truncated(image: Image.Image, format: str, options: dict, rng: random.Random) -> bytes:
    data = encode(image, format, **options)
    return data[: rng.randrange(1, len(data))]


def bit_flipped(image: Image.Image, format: str, options: dict, rng: random.Random) -> bytes:
    return flip_bits(encode(image, format, **options), rng)


def header_mangled(image: Image.Image, format: str, options: dict, rng: random.Random) -> bytes:
    return overwrite_bytes(encode(image, format, **options), rng, within=64)


def exif_mangled(image: Image.Image, format: str, options: dict, rng: random.Random) -> bytes:
    """A well-formed file (PNG's checksums right) around a damaged EXIF block."""
    exif = camera_exif().tobytes()
    damaged = flip_bits(exif, rng) if rng.random() < 0.5 else overwrite_bytes(exif, rng, len(exif))
    if rng.random() < 0.2:
        damaged = damaged[: rng.randrange(6, len(damaged))]
    return encode(image, format, **{**options, "exif": damaged})


MUTATIONS: list[Callable[[Image.Image, str, dict, random.Random], bytes]] = [
    truncated,
    bit_flipped,
    header_mangled,
    exif_mangled,
]


def test_hostile_images_are_answered_or_refused_never_a_500(client, face):
    rng = random.Random(SEED)
    encodings = originals(face)
    assert {format for _, format, _ in encodings} == set(FORMATS)  # every format opened
    answered: Counter[tuple[str, int, str]] = Counter()
    for mutate in MUTATIONS:
        for _ in range(MUTANTS_PER_KIND):
            image, format, options = rng.choice(encodings)
            mutant = mutate(image, format, options, rng)
            response = client.post("/predict", data=mutant, content_type="image/jpeg")
            code = response.get_json().get("error", {}).get("code", "")
            answered[mutate.__name__, response.status_code, code] += 1
            assert response.status_code in (200, 400), (mutate.__name__, format, code)
            assert response.status_code == 200 or code in ("invalid_image", "image_too_large")
    # Every kind of damage was refused at times, and some damaged files were still answered.
    assert {name for name, status, _ in answered if status == 400} == {
        m.__name__ for m in MUTATIONS
    }
    assert any(status == 200 for _, status, _ in answered)
    good = encode(face, "JPEG")
    assert client.post("/predict", data=good, content_type="image/jpeg").status_code == 200
