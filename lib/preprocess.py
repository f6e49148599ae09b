"""The one image pipeline. Training, evaluation and serving all go through these functions:

    decode_image (bytes or path -> RGB PIL image; open_image reads the header alone)
    -> preprocess (PIL -> uint8 HxWx3 at the model's size; cached on disk for training)
    -> to_model_input (uint8 batch -> normalised float tensor, done on the model's device)

Normalisation happens in exactly one place, to_model_input, so inputs can never be
normalised twice or not at all.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

# Bump when decode_image() or preprocess() changes: the version is part of every cache key.
PREPROCESS_VERSION = 3
PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_hf_json(self) -> str:
        """Hugging Face's preprocessor_config.json for this pipeline, so an exported model
        also works with transformers' ViTImageProcessor (which resizes without our crop)."""
        return json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": self.image_size, "width": self.image_size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(self.mean),
                "image_std": list(self.std),
                "facet": {**asdict(self), "center_crop": True, "version": PREPROCESS_VERSION},
            },
            indent=2,
        )

    @classmethod
    def from_hf_json(cls, text: str) -> Preprocessing:
        facet = json.loads(text)["facet"]
        return cls(facet["image_size"], tuple(facet["mean"]), tuple(facet["std"]))


# The formats face photos come in (cameras, phones, browsers). Every other Pillow plugin stays
# closed: EPS would run Ghostscript, and each extra decoder is more code hostile bytes reach.
# JPEG includes MPO, the multi-picture JPEG some phones write.
FORMATS = ("JPEG", "PNG", "WEBP")


class ImageDecodeError(ValueError):
    """The bytes are not an image we can read: not an image, truncated, or too large."""


class ImageTooLargeError(ImageDecodeError):
    """The header claims more pixels than allowed (a decompression bomb, or just too big)."""


def decode_image(
    source: bytes | str | Path | Image.Image, max_pixels: int | None = None
) -> Image.Image:
    """Decode a file or bytes (or an image open_image opened) into an upright 8-bit RGB
    image: EXIF rotation applied, 16-bit values scaled (not clipped), transparency
    composited onto white."""
    image = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    try:
        return upright_rgb(image)
    except Exception as error:  # hostile bytes reach many decoders' corners: none may escape
        raise ImageDecodeError(f"cannot decode image: {error}") from error


def open_image(source: bytes | str | Path, max_pixels: int | None = None) -> Image.Image:
    """Read only the header of a JPEG, PNG or WebP image. One with more than `max_pixels`
    pixels is refused here, before any decoding (a few KB of PNG can claim 30000x30000). A
    missing file is a FileNotFoundError: only the bytes' faults are ImageDecodeErrors."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours
        raise ImageTooLargeError(str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError("not a JPEG, PNG or WebP image") from error
    except Exception as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} pixels, more than the limit of {max_pixels:,}"
        )
    return image


def upright_rgb(image: Image.Image) -> Image.Image:
    """Decode an opened image's pixels and convert them to upright 8-bit RGB."""
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        scaled = np.asarray(image, dtype=np.float32) / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    return image.convert("RGB")


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop to a square on the shorter side, then resize to size x size (bilinear,
    antialiased). CelebA's 178x218 crops keep rows 20-198, the whole face."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.array(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_model_input(pixels: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W), scaled to [0, 1] and normalised."""
    import torch  # here, not above: the data-preparation tasks read images without torch

    mean = torch.tensor(preprocessing.mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=pixels.device).view(1, 3, 1, 1)
    x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return (x - mean) / std
