"""Prepare a CelebA-format folder once into uint8 arrays, and read them back for training.

The cache lives under `<cache root>/<key>/`, where the key hashes the dataset fingerprint
(file list, sizes, label files) with the preprocessing settings. A second preparation of the
same data finds the finished cache and only pays for the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib import synthetic
from lib.celeba import SPLITS, CelebAIndex, ImageFolder, ImageZip, read_celeba
from lib.preprocess import PREPROCESS_VERSION, ImageDecodeError, decode_image, preprocess
from lib.storage import fetch_prefix

MANIFEST = "manifest.json"
MAX_NAMED = 100  # named per kind of bad image in the manifest; the count is always exact


def cache_root() -> Path:
    return Path(os.environ.get("FACET_CACHE", Path.home() / ".cache" / "facet"))


class BadImagesError(ValueError):
    """Images listed in the label file that are missing or unreadable, with skipping off."""


def fingerprint(index: CelebAIndex) -> str:
    """Identifies the data, not its packaging: attribute names, every labelled image's name
    and size, its labels and its split. The same images and labels in another layout (zip,
    Kaggle's CSVs) give the same fingerprint; one changed label gives another."""
    digest = hashlib.sha256("\0".join(index.attributes).encode())
    sizes = index.images.sizes()
    digest.update("".join(f"{name}\0{sizes.get(name, -1)}\n" for name in index.files).encode())
    digest.update(index.labels.tobytes())
    digest.update(index.split.tobytes())
    return digest.hexdigest()


def resolve_source(data: str, synthetic_spec: dict[str, Any] | None = None) -> tuple[str, Path]:
    """Map the config's `data` to (source URI, local CelebA folder). A gs:// URI is mirrored
    under the cache root (later runs download only what changed); "synthetic" generates the
    embedded default dataset once, keyed by its spec, under the cache root."""
    if data.startswith("gs://"):
        key = hashlib.sha256(data.encode()).hexdigest()[:16]
        return data, fetch_prefix(data, cache_root() / "gcs" / key)
    if data != "synthetic":
        return str(Path(data).resolve()), Path(data)
    spec = synthetic.make_spec(**(synthetic_spec or {}))
    key = hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root() / "synthetic" / key
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        synthetic.generate(root, spec)
        (root / "DONE").touch()
    uri = f"synthetic://?n={spec.n}&seed={spec.seed}"
    return uri, root


def _decode_one(args: tuple[ImageFolder | ImageZip, str, int]) -> np.ndarray | str:
    images, name, size = args
    try:
        return preprocess(decode_image(images.read(name)), size)
    except FileNotFoundError:
        return "missing"
    except ImageDecodeError as error:  # unreadable makes the image skipped, not the run failed
        return f"unreadable: {error}"


def prepare(
    source: str,
    root: Path,
    image_size: int,
    allow_skipped: bool = False,
    processes: int | None = None,
) -> dict[str, Any]:
    """Decode and resize every labelled image once; return the dataset manifest.

    Missing or unreadable images are counted and named in the manifest. Unless
    `allow_skipped`, any such image fails the preparation (BadImagesError)."""
    try:
        index = read_celeba(root)
    except FileNotFoundError as error:
        if source.startswith("gs://"):
            raise FileNotFoundError(f"{error}, in {root}, the local mirror of {source}") from None
        raise
    source_fingerprint = fingerprint(index)
    settings = {"image_size": image_size, "preprocess_version": PREPROCESS_VERSION}
    key = hashlib.sha256(f"{source_fingerprint}{json.dumps(settings)}".encode()).hexdigest()[:24]
    cache_dir = cache_root() / "prepared" / key
    if (cache_dir / MANIFEST).exists():
        manifest = json.loads((cache_dir / MANIFEST).read_text())
        _check_skipped(manifest, allow_skipped)
        return {**manifest, "source": source, "layout": index.layout, "cache_reused": True}

    # Build in a scratch folder and rename at the end: a killed run never leaves a half cache.
    scratch = cache_dir.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    n = len(index.files)
    images = np.lib.format.open_memmap(
        scratch / "images.npy", mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)
    )
    ok = np.zeros(n, dtype=bool)
    bad: dict[str, list[str]] = {"missing": [], "unreadable": []}
    jobs = [(index.images, name, image_size) for name in index.files]
    with Pool(processes or os.cpu_count()) as pool:
        for i, result in enumerate(pool.imap(_decode_one, jobs, chunksize=256)):
            if isinstance(result, str):
                kind = result.split(":")[0]
                bad[kind].append(
                    index.files[i] if kind == "missing" else f"{index.files[i]} ({result})"
                )
            else:
                images[i] = result
                ok[i] = True
    images.flush()
    del images
    np.save(scratch / "labels.npy", index.labels)
    np.save(scratch / "split.npy", np.where(ok, index.split, -1).astype(np.int8))  # -1: skipped
    manifest = _manifest(index, source_fingerprint, key, cache_dir, settings, ok, bad)
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(cache_dir, ignore_errors=True)
    scratch.rename(cache_dir)
    _check_skipped(manifest, allow_skipped)
    return {**manifest, "source": source, "layout": index.layout, "cache_reused": False}


def _manifest(index, source_fingerprint, key, cache_dir, settings, ok, bad) -> dict[str, Any]:
    split = np.where(ok, index.split, -1)
    rates = {}
    for name, value in SPLITS.items():
        rows = index.labels[split == value]
        mean = rows.mean(axis=0) if len(rows) else np.zeros(len(index.attributes))
        rates[name] = {a: round(float(r), 5) for a, r in zip(index.attributes, mean, strict=True)}
    return {
        "fingerprint": source_fingerprint,
        "cache_key": key,
        "cache_dir": str(cache_dir),
        **settings,
        "attributes": index.attributes,
        "n_listed": len(index.files),
        "split_sizes": {name: int((split == value).sum()) for name, value in SPLITS.items()},
        "positive_rates": rates,
        "skipped": {
            kind: {"count": len(names), "names": names[:MAX_NAMED]} for kind, names in bad.items()
        },
    }


def _check_skipped(manifest: dict[str, Any], allow_skipped: bool) -> None:
    skipped = manifest["skipped"]
    total = sum(kind["count"] for kind in skipped.values())
    if total and not allow_skipped:
        details = "; ".join(
            f"{k}: {v['count']} (e.g. {v['names'][:3]})" for k, v in skipped.items() if v["count"]
        )
        raise BadImagesError(
            f"{total} listed images could not be used ({details}). Fix the data, or set "
            f"data.allow_skipped=true in the config to train without them."
        )


class CachedSplit(torch.utils.data.Dataset):
    """One split of a prepared dataset: (uint8 HxWx3 image, float labels) pairs.

    The image array is memory-mapped lazily, so each DataLoader worker maps it itself
    instead of receiving a pickled copy."""

    def __init__(self, cache_dir: str | Path, split: str):
        self.cache_dir = Path(cache_dir)
        self.rows = np.flatnonzero(np.load(self.cache_dir / "split.npy") == SPLITS[split])
        self.labels = torch.from_numpy(np.load(self.cache_dir / "labels.npy")[self.rows]).float()
        self._images = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.cache_dir / "images.npy", mmap_mode="r")
        return self._images

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[self.rows[i]])), self.labels[i]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}
