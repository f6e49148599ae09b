"""Prepare a CelebA-format folder once into uint8 shards, and read them back for training.

Preparation comes in three parts, so that a Metaflow foreach can spread it over processes or
machines: `plan` reads the index, fingerprints it and lists the shards left to decode;
`prepare_shard` decodes one shard's rows (any number at once, anywhere); `finish` merges the
shards' bad-image lists and writes the labels, splits and manifest. `prepare` runs all three
in this process.

A prepared dataset lives under `<cache>/prepared/<key>/`, where the key hashes the dataset
fingerprint with the preprocessing settings: one `shard-<first row>-<end row>.npy` per shard,
`labels.npy`, `split.npy` and `manifest.json`. The cache is a local folder (FACET_CACHE, by
default ~/.cache/facet) or, when FACET_CACHE is a gs:// URI, that prefix: each machine writes
locally and uploads, and a reader downloads the shards it needs before memory-mapping them.
Every file is renamed into place when complete and the manifest comes last, so a second
preparation of the same data finds the manifest and only pays for the fingerprint, and one
after a kill decodes only the shards that were missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lib import synthetic
from lib.celeba import (
    SPLITS,
    CelebAIndex,
    ImageFolder,
    ImageZip,
    image_location,
    open_images,
    read_celeba,
)
from lib.preprocess import PREPROCESS_VERSION, ImageDecodeError, decode_image, preprocess
from lib.storage import fetch_prefix, list_prefix, upload_file

MANIFEST = "manifest.json"
LABELS, SPLIT = "labels.npy", "split.npy"
MAX_NAMED = 100  # named per kind of bad image in the manifest; the count is always exact
SHARD_SIZE = 5000  # images per shard unless the config's data.shard_size says otherwise
CACHE_FORMAT = 2  # part of the key: caches of format 1 (a single images.npy) are not read


def cache_root() -> Path:
    """This machine's cache folder: FACET_CACHE, or ~/.cache/facet when it is unset or a
    gs:// URI (see shared_cache)."""
    configured = os.environ.get("FACET_CACHE", "")
    if configured and not configured.startswith("gs://"):
        return Path(configured)
    return Path.home() / ".cache" / "facet"


def shared_cache() -> str | None:
    """FACET_CACHE when it is a gs:// URI: where prepared datasets are kept for every machine."""
    configured = os.environ.get("FACET_CACHE", "")
    return configured.rstrip("/") if configured.startswith("gs://") else None


def local_folder(cache_dir: str | Path) -> Path:
    """Where this machine keeps a prepared dataset: the folder itself, or for a gs:// one a
    copy under the local cache root with the same key."""
    cache_dir = str(cache_dir)
    if cache_dir.startswith("gs://"):
        return cache_root() / "prepared" / cache_dir.rstrip("/").rsplit("/", 1)[-1]
    return Path(cache_dir)


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


def gcs_mirror(uri: str) -> Path:
    """The local folder that mirrors a gs:// source, under the cache root."""
    return cache_root() / "gcs" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def resolve_source(data: str, synthetic_spec: dict[str, Any] | None = None) -> tuple[str, Path]:
    """Map the config's `data` to (source URI, local CelebA folder). A gs:// URI is mirrored
    under the cache root (later runs download only what changed); "synthetic" generates the
    embedded default dataset once, keyed by its spec, under the cache root."""
    if data.startswith("gs://"):
        return data, fetch_prefix(data, gcs_mirror(data))
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


@dataclass
class Plan:
    """What a preparation produces and what is left to do. It travels as a Metaflow artifact
    from the planning step to each shard task and to the join, so it carries the index that
    the join needs: the join never reads the source."""

    source: str
    root: Path  # the planning machine's copy of the source
    layout: str
    fingerprint: str
    settings: dict[str, Any]  # image_size, preprocess_version, format: hashed into the key
    cache_dir: str  # a local folder or a gs:// prefix, ending in the key
    attributes: list[str]
    files: list[str]
    labels: np.ndarray
    split: np.ndarray
    shards: list[tuple[int, int]]  # rows [start, stop) of each shard
    todo: list[int]  # the shards not in the cache yet
    complete: bool  # the manifest is there: nothing to decode or write


def shard_file(start: int, stop: int) -> str:
    # Named by its rows, so that a shard cut with another shard_size never passes for it.
    return f"shard-{start:07d}-{stop:07d}.npy"


def _bad_file(shard: str) -> str:
    return shard.removesuffix(".npy") + ".json"


def plan(source: str, root: Path, image_size: int, shard_size: int = SHARD_SIZE) -> Plan:
    """Index and fingerprint the CelebA folder at `root`, and find which of its shards of
    `shard_size` rows the cache still lacks."""
    try:
        index = read_celeba(root)
    except FileNotFoundError as error:
        if source.startswith("gs://"):
            raise FileNotFoundError(f"{error}, in {root}, the local mirror of {source}") from None
        raise
    source_fingerprint = fingerprint(index)
    settings = {
        "image_size": image_size,
        "preprocess_version": PREPROCESS_VERSION,
        "format": CACHE_FORMAT,
    }
    key = hashlib.sha256(f"{source_fingerprint}{json.dumps(settings)}".encode()).hexdigest()[:24]
    shared = shared_cache()
    cache_dir = f"{shared}/prepared/{key}" if shared else str(cache_root() / "prepared" / key)
    n = len(index.files)
    shards = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    present = _present(cache_dir)
    complete = MANIFEST in present
    return Plan(
        source=source,
        root=Path(root),
        layout=index.layout,
        fingerprint=source_fingerprint,
        settings=settings,
        cache_dir=cache_dir,
        attributes=index.attributes,
        files=index.files,
        labels=index.labels,
        split=index.split,
        shards=shards,
        todo=[] if complete else [i for i, r in enumerate(shards) if shard_file(*r) not in present],
        complete=complete,
    )


def _present(cache_dir: str) -> set[str]:
    """The names of the complete files of a prepared dataset, wherever it is kept."""
    if cache_dir.startswith("gs://"):
        return set(list_prefix(cache_dir))
    folder = Path(cache_dir)
    return set(os.listdir(folder)) if folder.is_dir() else set()


def shard_source(
    plan: Plan, shard: int, data: str, synthetic_spec: dict[str, Any] | None = None
) -> Path:
    """This machine's copy of what shard `shard` reads: the planning machine's copy when this
    is it. Elsewhere (a pod per shard), a gs:// source gives only that shard's images (a zip
    layout, its one archive), fetched by name, and a synthetic source is generated. An image
    the bucket lacks is left out, and the decoder counts it missing, as for a local folder."""
    if plan.root.exists():
        return plan.root
    if not data.startswith("gs://"):
        return resolve_source(data, synthetic_spec)[1]
    location = image_location(plan.layout)
    if plan.layout == "zip":
        names = [location]
    else:
        start, stop = plan.shards[shard]
        names = [f"{location}/{name}" for name in plan.files[start:stop]]
    return fetch_prefix(data, gcs_mirror(data), names=names, missing_ok=True)


def prepare_shard(plan: Plan, shard: int, root: Path) -> None:
    """Decode shard number `shard` of the plan from `root` (this machine's copy of the
    source) into a uint8 (rows, size, size, 3) .npy, with its missing and unreadable images
    in a .json beside it, and upload both when the cache is on gs://. A shard already in the
    cache is not decoded again."""
    start, stop = plan.shards[shard]
    name = shard_file(start, stop)
    remote = plan.cache_dir.startswith("gs://")
    if remote and name in _present(plan.cache_dir):
        return
    folder = local_folder(plan.cache_dir)
    if not (folder / name).exists():
        images = open_images(root, plan.layout)
        _decode_shard(images, plan.files[start:stop], plan.settings["image_size"], folder, name)
    if remote:
        for file in (_bad_file(name), name):  # the .npy last: it marks the shard complete
            upload_file(folder / file, f"{plan.cache_dir}/{file}")


def _decode_shard(
    images: ImageFolder | ImageZip, names: list[str], size: int, folder: Path, name: str
) -> None:
    # Rows go straight to a memory-mapped file: a 224 px shard of 5000 is 750 MB.
    folder.mkdir(parents=True, exist_ok=True)
    partial_file = folder / f".{name}.partial-{os.getpid()}"
    array = np.lib.format.open_memmap(
        partial_file, mode="w+", dtype=np.uint8, shape=(len(names), size, size, 3)
    )
    bad = []  # [offset in the shard, "missing" or "unreadable: why"]
    for offset, image_name in enumerate(names):
        result = _decode_one(images, image_name, size)
        if isinstance(result, str):
            bad.append([offset, result])
        else:
            array[offset] = result
    array.flush()
    del array
    _save(folder / _bad_file(name), json.dumps(bad).encode())
    partial_file.rename(folder / name)  # last: a shard whose .npy exists is complete


def _decode_one(images: ImageFolder | ImageZip, name: str, size: int) -> np.ndarray | str:
    try:
        return preprocess(decode_image(images.read(name)), size)
    except FileNotFoundError:
        return "missing"
    except ImageDecodeError as error:  # unreadable makes the image skipped, not the run failed
        return f"unreadable: {error}"


def _save(path: Path, data: bytes | np.ndarray) -> None:
    """Write under a temporary name and rename: a reader never sees half a file."""
    partial_file = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with partial_file.open("wb") as handle:
        if isinstance(data, np.ndarray):
            np.save(handle, data)
        else:
            handle.write(data)
    partial_file.rename(path)


def finish(plan: Plan, allow_skipped: bool = False) -> dict[str, Any]:
    """Join the shards into the dataset manifest (the `dataset` artifact): merge their
    bad-image lists and write labels, splits and the manifest, or read the manifest of a
    complete cache. Unless `allow_skipped`, any missing or unreadable image then fails
    (BadImagesError); the cache stays, so a rerun that allows skipping decodes nothing."""
    folder = local_folder(plan.cache_dir)
    if plan.complete:
        if plan.cache_dir.startswith("gs://"):
            fetch_prefix(plan.cache_dir, folder, names=[MANIFEST])
        manifest = json.loads((folder / MANIFEST).read_text())
    else:
        manifest = _write_manifest(plan, folder)
    _check_skipped(manifest, allow_skipped)
    return {**manifest, "source": plan.source, "layout": plan.layout, "cache_reused": plan.complete}


def _write_manifest(plan: Plan, folder: Path) -> dict[str, Any]:
    shards = [shard_file(*rows) for rows in plan.shards]
    missing = sorted(set(shards) - _present(plan.cache_dir))
    if missing:
        raise FileNotFoundError(
            f"shards missing from {plan.cache_dir}: {missing[:3]}. Shards prepared on other "
            "machines must share a cache: set FACET_CACHE=gs://bucket/prefix."
        )
    remote = plan.cache_dir.startswith("gs://")
    if remote:
        fetch_prefix(plan.cache_dir, folder, names=[_bad_file(name) for name in shards])
    ok = np.ones(len(plan.files), dtype=bool)
    bad: dict[str, list[str]] = {"missing": [], "unreadable": []}
    for (start, _), name in zip(plan.shards, shards, strict=True):
        for offset, result in json.loads((folder / _bad_file(name)).read_text()):
            row = start + offset
            ok[row] = False
            kind = result.split(":")[0]
            bad[kind].append(
                plan.files[row] if kind == "missing" else f"{plan.files[row]} ({result})"
            )
    split = np.where(ok, plan.split, -1).astype(np.int8)  # -1: skipped
    manifest = _manifest(plan, shards, split, bad)
    _save(folder / LABELS, plan.labels)
    _save(folder / SPLIT, split)
    _save(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    if remote:
        for file in (LABELS, SPLIT, MANIFEST):  # the manifest last: it marks the cache complete
            upload_file(folder / file, f"{plan.cache_dir}/{file}")
    return manifest


def _manifest(
    plan: Plan, shards: list[str], split: np.ndarray, bad: dict[str, list[str]]
) -> dict[str, Any]:
    rates = {}
    for name, value in SPLITS.items():
        rows = plan.labels[split == value]
        mean = rows.mean(axis=0) if len(rows) else np.zeros(len(plan.attributes))
        rates[name] = {a: round(float(r), 5) for a, r in zip(plan.attributes, mean, strict=True)}
    return {
        "fingerprint": plan.fingerprint,
        "cache_key": plan.cache_dir.rstrip("/").rsplit("/", 1)[-1],
        "cache_dir": plan.cache_dir,
        **plan.settings,
        "attributes": plan.attributes,
        "n_listed": len(plan.files),
        "shards": [
            {"file": file, "start": start, "stop": stop}
            for file, (start, stop) in zip(shards, plan.shards, strict=True)
        ],
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


def prepare(
    source: str,
    root: Path,
    image_size: int,
    allow_skipped: bool = False,
    processes: int | None = None,
    shard_size: int = SHARD_SIZE,
) -> dict[str, Any]:
    """Plan, decode the missing shards in up to `processes` processes (default: one per
    core), and finish, all here; the flow runs the same parts as separate steps. Returns the
    dataset manifest. Missing or unreadable images are counted and named in it; unless
    `allow_skipped`, any such image fails the preparation (BadImagesError)."""
    work = plan(source, root, image_size, shard_size)
    decode = partial(prepare_shard, work, root=root)
    if len(work.todo) > 1 and processes != 1:
        with Pool(min(processes or os.cpu_count(), len(work.todo))) as pool:
            pool.map(decode, work.todo, chunksize=1)
    else:
        for shard in work.todo:
            decode(shard)
    return finish(work, allow_skipped)


class PreparedImages:
    """The images of a prepared dataset, indexed by row like one uint8 (N, S, S, 3) array,
    stored as one .npy per shard. Each shard is memory-mapped on first use in each process:
    DataLoader workers receive the folder, never pickled pixels."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.shards = manifest["shards"]
        self.starts = np.array([shard["start"] for shard in self.shards])
        size = manifest["image_size"]
        self.shape = (manifest["n_listed"], size, size, 3)
        self._mapped: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: int | slice | np.ndarray) -> np.ndarray:
        """One row (a memory-mapped view) or many (a slice or an array of rows, copied)."""
        if isinstance(rows, int | np.integer):
            k = int(self._shard_of(rows))
            return self._shard(k)[rows - self.starts[k]]
        rows = np.arange(len(self))[rows]
        shard_of = self._shard_of(rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for k in np.unique(shard_of):
            here = shard_of == k
            out[here] = self._shard(k)[rows[here] - self.starts[k]]
        return out

    def files_for(self, rows: np.ndarray) -> list[str]:
        """The shard files holding these rows."""
        return [self.shards[k]["file"] for k in np.unique(self._shard_of(rows))]

    def _shard_of(self, rows: int | np.ndarray) -> int | np.ndarray:
        return np.searchsorted(self.starts, rows, side="right") - 1

    def _shard(self, k: int) -> np.ndarray:
        if k not in self._mapped:
            file = self.folder / self.shards[k]["file"]
            self._mapped[k] = np.load(file, mmap_mode="r")
        return self._mapped[k]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mapped": {}}


class CachedSplit(torch.utils.data.Dataset):
    """One split of a prepared dataset: (uint8 HxWx3 image, float labels) pairs.

    `cache_dir` is the manifest's: a local folder, or a gs:// prefix from which this machine
    first downloads the labels and only the shards that hold the split's rows."""

    def __init__(self, cache_dir: str | Path, split: str):
        remote = str(cache_dir).startswith("gs://")
        self.cache_dir = local_folder(cache_dir)
        if remote:
            fetch_prefix(str(cache_dir), self.cache_dir, names=[MANIFEST, LABELS, SPLIT])
        elif not (self.cache_dir / MANIFEST).exists():
            raise FileNotFoundError(
                f"no prepared dataset in {self.cache_dir}. A step on another machine reads "
                "it only from a shared cache: set FACET_CACHE=gs://bucket/prefix."
            )
        self.rows = np.flatnonzero(np.load(self.cache_dir / SPLIT) == SPLITS[split])
        self.labels = torch.from_numpy(np.load(self.cache_dir / LABELS)[self.rows]).float()
        self.images = PreparedImages(self.cache_dir)
        if remote:
            fetch_prefix(str(cache_dir), self.cache_dir, names=self.images.files_for(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[self.rows[i]])), self.labels[i]
