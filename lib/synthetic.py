"""A deterministic synthetic CelebA: procedurally drawn faces in CelebA's exact file layout.

    python -m lib.synthetic OUT_DIR --n 20000 --seed 0 [--shift blur=2]
        [--prevalence Eyeglasses=0.4] [--layout official|zip|kaggle]
        [--faint Eyeglasses,Young,0.3]

writes OUT_DIR/img_align_celeba/000001.jpg ... (178x218 RGB JPEG), list_attr_celeba.txt and
list_eval_partition.txt, formatted like the official files (count line, header with a trailing
space, padded -1/1 columns); or the same with the images in img_align_celeba.zip, or Kaggle's
layout (nested image folder, CSV label files). Every attribute is sampled at CelebA's positive
rate; the ones in DRAWN_ATTRIBUTES are painted on the face, the rest are labels without a
visual cue, so a model should score about chance on them. Each image depends only on
(seed, index), so generation is parallel and any image can be regenerated alone.

`faint` paints one attribute's cue less visibly on the faces of one group (a label-only
attribute such as Young): a model then misses it more often there, a known unfairness for the
fairness slices (lib.slices) to find. Without it the same seed draws the same faces.

Cues are drawn boldly on purpose: the model sees the central 178x178 square shrunk to 64 px,
where anything thinner than about 8 source pixels disappears.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import shutil
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lib import celeba

WIDTH, HEIGHT = 178, 218
Colour = tuple[int, int, int]

# The 40 attributes in official order, with their positive share over all 202,599 CelebA images.
CELEBA_RATES: dict[str, float] = {
    "5_o_Clock_Shadow": 0.111,
    "Arched_Eyebrows": 0.267,
    "Attractive": 0.513,
    "Bags_Under_Eyes": 0.205,
    "Bald": 0.022,
    "Bangs": 0.152,
    "Big_Lips": 0.241,
    "Big_Nose": 0.235,
    "Black_Hair": 0.239,
    "Blond_Hair": 0.148,
    "Blurry": 0.051,
    "Brown_Hair": 0.205,
    "Bushy_Eyebrows": 0.142,
    "Chubby": 0.058,
    "Double_Chin": 0.047,
    "Eyeglasses": 0.065,
    "Goatee": 0.063,
    "Gray_Hair": 0.042,
    "Heavy_Makeup": 0.387,
    "High_Cheekbones": 0.455,
    "Male": 0.417,
    "Mouth_Slightly_Open": 0.483,
    "Mustache": 0.042,
    "Narrow_Eyes": 0.115,
    "No_Beard": 0.835,
    "Oval_Face": 0.284,
    "Pale_Skin": 0.043,
    "Pointy_Nose": 0.277,
    "Receding_Hairline": 0.080,
    "Rosy_Cheeks": 0.066,
    "Sideburns": 0.057,
    "Smiling": 0.482,
    "Straight_Hair": 0.208,
    "Wavy_Hair": 0.320,
    "Wearing_Earrings": 0.189,
    "Wearing_Hat": 0.048,
    "Wearing_Lipstick": 0.472,
    "Wearing_Necklace": 0.123,
    "Wearing_Necktie": 0.073,
    "Young": 0.774,
}
ATTRIBUTES: list[str] = list(CELEBA_RATES)

# Attributes with a visual cue in the rendered face; docs/data.md lists them too.
DRAWN_ATTRIBUTES: list[str] = [
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Rosy_Cheeks",
    "Smiling",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necktie",
]
LABEL_ONLY: list[str] = [name for name in ATTRIBUTES if name not in DRAWN_ATTRIBUTES]

HAIR_COLOURS = {
    "Black_Hair": (25, 22, 25),
    "Blond_Hair": (235, 205, 110),
    "Brown_Hair": (115, 70, 35),
    "Gray_Hair": (175, 175, 180),
}
OTHER_HAIR = [(175, 65, 35), (205, 115, 50)]  # auburn and ginger: "none of the four"
SATURATED = [(200, 30, 40), (30, 70, 200), (30, 150, 60), (230, 120, 20), (120, 40, 160)]
SHIFT_NAMES = ("brightness", "contrast", "blur", "noise")
LAYOUTS = ("official", "zip", "kaggle")
# CelebA's official split sizes, used as proportions: 162,770 / 19,867 / 19,962.
SPLIT_SHARES = (162_770 / 202_599, 19_867 / 202_599)

# Drawn cues painted over the face without random draws of their own: the same face drawn
# without one differs from it only there, so blending the two draws the cue faint. Hair
# colours are drawn faint as a colour part of the way from auburn (no hair-colour label). The
# others change a part's shape (a smile, a goatee), or draw colours that shift every later draw.
OVERLAY_ATTRIBUTES = [
    "Bangs",
    "Blurry",
    "Eyeglasses",
    "Mustache",
    "Rosy_Cheeks",
    "Wearing_Lipstick",
]
FAINT_ATTRIBUTES: list[str] = sorted([*OVERLAY_ATTRIBUTES, *HAIR_COLOURS])


class Faint(NamedTuple):
    """`attribute`'s cue painted at `visibility` (0: absent, 1: as usual) on the faces
    labelled `group`; their labels still say the attribute is there."""

    attribute: str
    group: str
    visibility: float

    def applies(self, labels: dict[str, int]) -> bool:
        return bool(labels[self.group] and labels[self.attribute])


def make_faint(attribute: str | None, group: str, visibility: float) -> Faint | None:
    """Validate a faint option (None when `attribute` is None): the attribute must be one the
    generator can draw faint, the group one the faces do not show."""
    if attribute is None:
        return None
    if attribute not in FAINT_ATTRIBUTES:
        raise ValueError(
            f"faint attribute {attribute!r} cannot be drawn faint; one of {FAINT_ATTRIBUTES}"
        )
    if group not in LABEL_ONLY:
        raise ValueError(
            f"faint group {group!r} must be a label-only attribute, one of {LABEL_ONLY}"
        )
    if not 0.0 <= visibility <= 1.0:
        raise ValueError(f"faint visibility {visibility} must lie in [0, 1]")
    return Faint(attribute, group, float(visibility))


@dataclass(frozen=True)
class Spec:
    """What to generate: how many images, from which seed, with which distribution shifts,
    and which attribute is drawn faint for which group."""

    n: int
    seed: int = 0
    rates: dict[str, float] = field(default_factory=lambda: dict(CELEBA_RATES))
    shifts: dict[str, float] = field(default_factory=dict)
    faint: Faint | None = None


def make_spec(
    n: int,
    seed: int = 0,
    prevalence: dict[str, float] | None = None,
    shifts: dict[str, float] | None = None,
    faint: dict[str, Any] | None = None,
) -> Spec:
    """Validate overrides and build a Spec; unknown names or out-of-range values raise.
    `faint` holds make_faint's arguments (the config's data.synthetic.faint)."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    rates = dict(CELEBA_RATES)
    for name, rate in (prevalence or {}).items():
        if name not in rates:
            raise ValueError(f"unknown attribute {name!r} in --prevalence; known: {ATTRIBUTES}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"--prevalence {name}={rate}: a rate must lie in [0, 1]")
        rates[name] = rate
    hair = sum(rates[c] for c in HAIR_COLOURS)
    if hair + rates["Bald"] > 1.0:
        raise ValueError("hair colour rates plus Bald exceed 1: they are mutually exclusive here")
    for name in shifts or {}:
        if name not in SHIFT_NAMES:
            raise ValueError(f"unknown shift {name!r}; known: {list(SHIFT_NAMES)}")
    faint_spec = make_faint(**faint) if faint else None
    return Spec(n=n, seed=seed, rates=rates, shifts=dict(shifts or {}), faint=faint_spec)


def sample_labels(rng: np.random.Generator, rates: dict[str, float]) -> dict[str, int]:
    """One face's 40 labels. Independent draws, except where drawing forces consistency:
    hair colours are exclusive and absent when bald, bangs need hair, a goatee is a beard."""
    labels = {name: int(rng.random() < rate) for name, rate in rates.items()}
    bald = labels["Bald"]
    u = rng.random() * (1.0 - rates["Bald"])
    cumulative = 0.0
    for colour in HAIR_COLOURS:
        labels[colour] = int(not bald and cumulative <= u < cumulative + rates[colour])
        cumulative += rates[colour]
    labels["Bangs"] = int(not bald and rng.random() < rates["Bangs"] / (1.0 - rates["Bald"]))
    beard = 1 - labels["No_Beard"]
    labels["Goatee"] = int(
        beard and rng.random() < rates["Goatee"] / max(1 - rates["No_Beard"], 1e-9)
    )
    return labels


def _jitter(rng: np.random.Generator, colour: Colour, amount: int = 15) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


@dataclass(frozen=True)
class Face:
    """One face to paint: its labels, where it sits and its colours. Every part is drawn
    relative to the centre (cx, cy) and the half-width."""

    labels: dict[str, int]
    cx: int
    cy: int
    half_width: int
    skin: Colour
    hair: Colour | None  # None when bald


def render_face(
    rng: np.random.Generator,
    labels: dict[str, int],
    shifts: dict[str, float],
    faint: Faint | None = None,
) -> Image.Image:
    """Paint one 178x218 face whose visible cues follow `labels`, then shift it. When `faint`
    applies to it, its hair colour is painted part of the way from auburn, or its cue is
    blended at the faint visibility over the same face painted without it, from the same
    random draws."""
    if faint is None or not faint.applies(labels):
        image = paint_face(rng, labels)
    elif faint.attribute in HAIR_COLOURS:
        image = paint_face(rng, labels, hair_visibility=faint.visibility)
    else:
        plain = paint_face(copy.deepcopy(rng), {**labels, faint.attribute: 0})
        image = Image.blend(plain, paint_face(rng, labels), faint.visibility)
    return apply_shifts(image, shifts, rng)


def paint_face(
    rng: np.random.Generator, labels: dict[str, int], hair_visibility: float = 1.0
) -> Image.Image:
    """Paint the face back to front. The order of the parts is the order of their random
    draws: changing it changes every image."""
    background = tuple(int(v) for v in rng.integers(40, 220, 3))
    image = Image.new("RGB", (WIDTH, HEIGHT), background)
    draw = ImageDraw.Draw(image)
    face = place_face(rng, labels, hair_visibility)
    draw_torso(draw, rng, face)
    draw_head(draw, rng, face)
    draw_hat(draw, rng, face)
    draw_eyes(draw, rng, face)
    draw_nose(draw, face)
    draw_cheeks(draw, face)
    draw_facial_hair(draw, rng, face)
    draw_mouth(draw, face)
    draw_earrings(draw, rng, face)
    if labels["Blurry"]:
        image = image.filter(ImageFilter.GaussianBlur(5))
    return image


def place_face(
    rng: np.random.Generator, labels: dict[str, int], hair_visibility: float = 1.0
) -> Face:
    """Pick at random where the face sits, its size, its skin and its hair colour; a labelled
    colour at `hair_visibility` is mixed with auburn (at 0, hair with no colour label)."""
    cx = WIDTH // 2 + int(rng.integers(-6, 7))
    cy = 112 + int(rng.integers(-5, 6))
    half_width = int(rng.integers(36, 44))
    if labels["Pale_Skin"]:
        skin = _jitter(rng, (246, 236, 228), 6)
    else:
        tone = rng.random()
        skin = (int(205 - 90 * tone), int(160 - 75 * tone), int(120 - 60 * tone))
    hair = None
    if not labels["Bald"]:
        colours = [
            _mix(HAIR_COLOURS[c], OTHER_HAIR[0], hair_visibility) for c in HAIR_COLOURS if labels[c]
        ]
        hair = _jitter(rng, colours[0] if colours else OTHER_HAIR[rng.integers(len(OTHER_HAIR))])
    return Face(labels, cx, cy, half_width, skin, hair)


def draw_torso(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    """Shoulders, neck and necktie, inside the central square the model sees (rows 20-198)."""
    cx, cy = face.cx, face.cy
    shirt = _jitter(rng, (120, 120, 130), 40)
    draw.ellipse([cx - 70, cy + 62, cx + 70, cy + 150], fill=shirt)
    draw.rectangle([cx - 15, cy + 40, cx + 15, cy + 72], fill=face.skin)
    if face.labels["Wearing_Necktie"]:
        tie = SATURATED[rng.integers(len(SATURATED))]
        draw.polygon(
            [(cx - 11, cy + 56), (cx + 11, cy + 56), (cx + 16, cy + 78), (cx - 16, cy + 78)],
            fill=tie,
        )
        draw.polygon([(cx - 16, cy + 76), (cx + 16, cy + 76), (cx, cy + 86)], fill=tie)


def draw_head(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    """Hair behind the head, ears, the face, then the hairline and bangs or a bald shine."""
    cx, cy, w, hair = face.cx, face.cy, face.half_width, face.hair
    if hair is not None:  # hair mass behind the head, visible at the sides
        draw.ellipse([cx - w - 14, cy - 62, cx + w + 14, cy + 38], fill=hair)
    draw.ellipse([cx - w - 6, cy - 14, cx - w + 6, cy + 14], fill=face.skin)  # ears
    draw.ellipse([cx + w - 6, cy - 14, cx + w + 6, cy + 14], fill=face.skin)
    draw.ellipse([cx - w, cy - 55, cx + w, cy + 52], fill=face.skin)
    if face.labels["Bald"]:  # a shine on the bare scalp
        draw.ellipse([cx - 14, cy - 50, cx + 6, cy - 40], fill=_jitter(rng, (250, 250, 245), 4))
    if hair is not None:
        draw.chord([cx - w - 2, cy - 62, cx + w + 2, cy - 20], 180, 360, fill=hair)
    if face.labels["Bangs"]:
        draw.rectangle([cx - w + 4, cy - 44, cx + w - 4, cy - 26], fill=hair)


def draw_hat(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    if face.labels["Wearing_Hat"]:
        cx, cy, w = face.cx, face.cy, face.half_width
        hat = SATURATED[rng.integers(len(SATURATED))]
        draw.rectangle([cx - w - 4, cy - 92, cx + w + 4, cy - 48], fill=hat)
        draw.rectangle([cx - w - 22, cy - 52, cx + w + 22, cy - 42], fill=hat)


def draw_eyes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    """Eye shadow under Heavy_Makeup, the eyes and brows, and glasses over them."""
    eye_y = face.cy - 12
    centres = [face.cx - 17, face.cx + 17]
    if face.labels["Heavy_Makeup"]:
        shadow = _jitter(rng, (110, 40, 150), 25)
        for ex in centres:
            draw.ellipse([ex - 13, eye_y - 15, ex + 13, eye_y + 2], fill=shadow)
    for ex in centres:
        draw.ellipse([ex - 8, eye_y - 4, ex + 8, eye_y + 4], fill=(245, 245, 245))
        draw.ellipse([ex - 3, eye_y - 3, ex + 3, eye_y + 3], fill=(30, 30, 40))
        draw.line([ex - 9, eye_y - 12, ex + 9, eye_y - 12], fill=(60, 45, 35), width=3)
    if face.labels["Eyeglasses"]:
        for ex in centres:
            draw.rectangle(
                [ex - 14, eye_y - 10, ex + 14, eye_y + 10], outline=(10, 10, 10), width=5
            )
        draw.line([face.cx - 4, eye_y - 2, face.cx + 4, eye_y - 2], fill=(10, 10, 10), width=5)


def draw_nose(draw: ImageDraw.ImageDraw, face: Face) -> None:
    cx, cy = face.cx, face.cy
    draw.line([cx, cy - 2, cx - 4, cy + 12], fill=_shade(face.skin, 0.75), width=3)


def draw_cheeks(draw: ImageDraw.ImageDraw, face: Face) -> None:
    if face.labels["Rosy_Cheeks"]:
        for side in (-1, 1):
            x = face.cx + side * 26
            draw.ellipse([x - 10, face.cy + 8, x + 10, face.cy + 26], fill=(235, 80, 100))


def draw_facial_hair(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    """A full beard along the jaw unless it is a goatee, and a mustache."""
    cx, cy, w, labels = face.cx, face.cy, face.half_width, face.labels
    dark = _jitter(rng, (40, 28, 20), 10)  # drawn for every face, bearded or not
    if not labels["No_Beard"] and not labels["Goatee"]:
        draw.chord([cx - w, cy - 10, cx + w, cy + 52], 20, 160, fill=dark)
    if labels["Goatee"]:
        draw.rectangle([cx - 14, cy + 38, cx + 14, cy + 56], fill=dark)
    if labels["Mustache"]:
        draw.rectangle([cx - 22, cy + 12, cx + 22, cy + 22], fill=dark)


def draw_mouth(draw: ImageDraw.ImageDraw, face: Face) -> None:
    """Open, smiling, both (a grin with teeth) or neither; red lips under Wearing_Lipstick."""
    cx, cy, labels = face.cx, face.cy, face.labels
    lips = (215, 15, 45) if labels["Wearing_Lipstick"] else _shade(face.skin, 0.55)
    inside = (35, 10, 15)
    if labels["Mouth_Slightly_Open"] and labels["Smiling"]:  # a wide D with a row of teeth
        draw.pieslice(
            [cx - 24, cy + 8, cx + 24, cy + 48], 0, 180, fill=inside, outline=lips, width=5
        )
        draw.rectangle([cx - 17, cy + 28, cx + 17, cy + 34], fill=(250, 250, 250))
    elif labels["Mouth_Slightly_Open"]:  # a round O
        draw.ellipse([cx - 12, cy + 22, cx + 12, cy + 46], fill=inside, outline=lips, width=5)
    elif labels["Smiling"]:  # closed lips curving up at the corners
        draw.arc([cx - 26, cy, cx + 26, cy + 42], 15, 165, fill=lips, width=9)
    else:
        draw.line([cx - 16, cy + 32, cx + 16, cy + 32], fill=lips, width=8)


def draw_earrings(draw: ImageDraw.ImageDraw, rng: np.random.Generator, face: Face) -> None:
    if face.labels["Wearing_Earrings"]:
        gold = _jitter(rng, (255, 210, 0), 10)
        for side in (-1, 1):
            x = face.cx + side * (face.half_width + 2)
            draw.ellipse([x - 7, face.cy + 12, x + 7, face.cy + 26], fill=gold)


def _mix(colour: Colour, other: Colour, share: float) -> Colour:
    """`share` of `colour`, the rest `other`."""
    return tuple(round(share * c + (1 - share) * o) for c, o in zip(colour, other, strict=True))


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(c * factor) for c in colour)


def apply_shifts(
    image: Image.Image, shifts: dict[str, float], rng: np.random.Generator
) -> Image.Image:
    """Distribution shifts for monitoring demos: brightness and contrast are relative changes
    (0.3 = 30% brighter), blur is a Gaussian radius in pixels, noise a std in 0-255 units."""
    if shifts.get("blur"):
        image = image.filter(ImageFilter.GaussianBlur(shifts["blur"]))
    if not any(shifts.get(k) for k in ("brightness", "contrast", "noise")):
        return image
    pixels = np.asarray(image, dtype=np.float32)
    mean = pixels.mean()
    pixels = mean + (pixels - mean) * (1.0 + shifts.get("contrast", 0.0))
    pixels = pixels * (1.0 + shifts.get("brightness", 0.0))
    if shifts.get("noise"):
        pixels = pixels + rng.normal(0.0, shifts["noise"], pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def split_of(index: int, n: int) -> int:
    """0/1/2 (train/validation/test) by position, in CelebA's proportions."""
    n_train = round(n * SPLIT_SHARES[0])
    n_val = round(n * SPLIT_SHARES[1])
    return 0 if index < n_train else 1 if index < n_train + n_val else 2


def file_name(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _generate_one(args: tuple[Spec, int, str]) -> list[int]:
    spec, index, image_dir = args
    rng = np.random.default_rng([spec.seed, index])
    labels = sample_labels(rng, spec.rates)
    render_face(rng, labels, spec.shifts, spec.faint).save(
        os.path.join(image_dir, file_name(index)), quality=92
    )
    return [labels[name] for name in ATTRIBUTES]


def generate(
    out_dir: str | Path, spec: Spec, processes: int | None = None, layout: str = "official"
) -> Path:
    """Write the dataset under out_dir in one of CelebA's layouts (see lib.celeba): official,
    zip (the images inside img_align_celeba.zip) or kaggle (nested folder, CSV labels)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {list(LAYOUTS)}")
    out = Path(out_dir)
    image_dir = out / celeba.IMAGE_DIR
    if layout == "kaggle":
        image_dir = image_dir / celeba.IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, i, str(image_dir)) for i in range(spec.n)]
    with Pool(processes or os.cpu_count()) as pool:
        rows = pool.map(_generate_one, jobs, chunksize=64)
    names = [file_name(i) for i in range(spec.n)]
    splits = [split_of(i, spec.n) for i in range(spec.n)]
    if layout == "kaggle":
        write_kaggle_label_files(out, names, rows, splits)
        return out
    write_attribute_file(out / celeba.ATTRIBUTE_FILE, names, rows)
    partition = "".join(f"{name} {split}\n" for name, split in zip(names, splits, strict=True))
    (out / celeba.PARTITION_FILE).write_text(partition)
    if layout == "zip":
        # JPEGs do not compress: store them, as the official archive does.
        with zipfile.ZipFile(out / celeba.IMAGE_ZIP, "w", zipfile.ZIP_STORED) as archive:
            for name in names:
                archive.write(image_dir / name, f"{celeba.IMAGE_DIR}/{name}")
        shutil.rmtree(image_dir)
    return out


def write_attribute_file(path: Path, names: list[str], rows: Iterable[list[int]]) -> None:
    """CelebA's format: count line, names with a trailing space, padded -1/1 columns."""
    lines = [str(len(names)), " ".join(ATTRIBUTES) + " "]
    for name, row in zip(names, rows, strict=True):
        lines.append(name + "".join(f" {1 if v else -1:>2}" for v in row))
    path.write_text("\n".join(lines) + "\n")


def write_kaggle_label_files(out: Path, names: list[str], rows: list, splits: list[int]) -> None:
    with (out / celeba.KAGGLE_ATTRIBUTE_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", *ATTRIBUTES])
        for name, row in zip(names, rows, strict=True):
            writer.writerow([name, *(1 if v else -1 for v in row)])
    with (out / celeba.KAGGLE_PARTITION_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "partition"])
        writer.writerows(zip(names, splits, strict=True))


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, float]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            parsed[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"{flag} expects NAME=NUMBER, got {pair!r}")
    return parsed


def _parse_faint(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        attribute, group, visibility = value.split(",")
        return {"attribute": attribute, "group": group, "visibility": float(visibility)}
    except ValueError:
        raise SystemExit(f"--faint expects ATTRIBUTE,GROUP,VISIBILITY, got {value!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lib.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out_dir")
    parser.add_argument("--n", type=int, default=20_000, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="official")
    parser.add_argument(
        "--shift",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"distribution shift, one of {', '.join(SHIFT_NAMES)}",
    )
    parser.add_argument(
        "--prevalence",
        action="append",
        default=[],
        metavar="ATTRIBUTE=RATE",
        help="override an attribute's positive rate",
    )
    parser.add_argument(
        "--faint",
        metavar="ATTRIBUTE,GROUP,VISIBILITY",
        help=f"draw one of {', '.join(FAINT_ATTRIBUTES)} at this visibility on the group's faces",
    )
    args = parser.parse_args(argv)
    try:
        spec = make_spec(
            args.n,
            args.seed,
            _parse_pairs(args.prevalence, "--prevalence"),
            _parse_pairs(args.shift, "--shift"),
            _parse_faint(args.faint),
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(f"wrote {spec.n} images to {generate(args.out_dir, spec, layout=args.layout)}")


if __name__ == "__main__":
    main()
