"""Prepare a CelebA-format folder once into uint8 shards in the cache (lib.cache).

Preparation comes in three parts, so that a Metaflow foreach can spread it over processes or
machines: `plan` reads the index, fingerprints it and lists the shards left to decode;
`prepare_shard` decodes one shard's rows (any number at once, anywhere); `finish` merges the
shards' bad-image lists and writes the labels, splits and manifest. `prepare` runs all three
in this process.

Every file is renamed into place when complete and the manifest comes last, so a second
preparation of the same data finds the manifest and only pays for the fingerprint, and one
after a kill decodes only the shards that were missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from lib.cache import (
    LABELS,
    MANIFEST,
    SPLIT,
    bad_images_file,
    cache_key,
    prepared_folder,
    prepared_uri,
    shard_file,
)
from lib.celeba import SPLITS, CelebAIndex, ImageFolder, ImageZip, open_images, read_celeba
from lib.preprocess import PREPROCESS_VERSION, ImageDecodeError, decode_image, preprocess

MAX_NAMED = 100  # named per kind of bad image in the manifest; the count is always exact
SHARD_SIZE = 5000  # images per shard unless the config's data.shard_size says otherwise
CACHE_FORMAT = 2  # part of the key: caches of format 1 (a single images.npy) are not read


class BadImagesError(ValueError):
    """Images listed in the label file that are missing or unreadable, with skipping off."""


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


def plan(source: str, root: Path, image_size: int, shard_size: int = SHARD_SIZE) -> Plan:
    """Index and fingerprint the CelebA folder at `root` (this machine's copy of `source`),
    and find which of its shards of `shard_size` rows the cache still lacks."""
    index = _read_index(source, root)
    source_fingerprint = fingerprint(index)
    settings = {
        "image_size": image_size,
        "preprocess_version": PREPROCESS_VERSION,
        "format": CACHE_FORMAT,
    }
    key = hashlib.sha256(f"{source_fingerprint}{json.dumps(settings)}".encode()).hexdigest()[:24]
    cache_dir = prepared_uri(key)
    n = len(index.files)
    shards = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    present = prepared_folder(cache_dir).names()
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


def _read_index(source: str, root: Path) -> CelebAIndex:
    """read_celeba, naming the source too when `root` is a copy of it (a gs:// mirror)."""
    try:
        return read_celeba(root)
    except FileNotFoundError as error:
        if source == str(Path(root).resolve()):
            raise
        raise FileNotFoundError(f"{error}, in {root}, this machine's copy of {source}") from None


def prepare_shard(plan: Plan, shard: int, root: Path) -> None:
    """Decode shard number `shard` of the plan from `root` (this machine's copy of the
    source) into a uint8 (rows, size, size, 3) .npy, with its missing and unreadable images
    in a .json beside it, and publish both to the cache. A shard already in the cache is not
    decoded again."""
    start, stop = plan.shards[shard]
    name = shard_file(start, stop)
    cache = prepared_folder(plan.cache_dir)
    if name in cache.names():
        return
    if not (cache.local / name).exists():
        images = open_images(root, plan.layout)
        _decode_shard(
            images, plan.files[start:stop], plan.settings["image_size"], cache.local, name
        )
    cache.publish([bad_images_file(name), name])  # the .npy last: it marks the shard complete


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
    _save(folder / bad_images_file(name), json.dumps(bad).encode())
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
    if plan.complete:
        folder = prepared_folder(plan.cache_dir).fetch([MANIFEST])
        manifest = json.loads((folder / MANIFEST).read_text())
    else:
        manifest = _write_manifest(plan)
    _check_skipped(manifest, allow_skipped)
    return {**manifest, "source": plan.source, "layout": plan.layout, "cache_reused": plan.complete}


def _write_manifest(plan: Plan) -> dict[str, Any]:
    cache = prepared_folder(plan.cache_dir)
    shards = [shard_file(*rows) for rows in plan.shards]
    missing = sorted(set(shards) - cache.names())
    if missing:
        raise FileNotFoundError(
            f"shards missing from {plan.cache_dir}: {missing[:3]}. Shards prepared on other "
            "machines must share a cache: set FACET_CACHE=gs://bucket/prefix."
        )
    folder = cache.fetch([bad_images_file(name) for name in shards])
    ok, bad = _merge_bad_images(plan, folder, shards)
    split = np.where(ok, plan.split, -1).astype(np.int8)  # -1: skipped
    manifest = _manifest(plan, shards, split, bad)
    _save(folder / LABELS, plan.labels)
    _save(folder / SPLIT, split)
    _save(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    cache.publish([LABELS, SPLIT, MANIFEST])  # the manifest last: it marks the cache complete
    return manifest


def _merge_bad_images(
    plan: Plan, folder: Path, shards: list[str]
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Which rows are usable, and the names of the missing and the unreadable images."""
    ok = np.ones(len(plan.files), dtype=bool)
    bad: dict[str, list[str]] = {"missing": [], "unreadable": []}
    for (start, _), name in zip(plan.shards, shards, strict=True):
        for offset, result in json.loads((folder / bad_images_file(name)).read_text()):
            row = start + offset
            ok[row] = False
            kind = result.split(":")[0]
            bad[kind].append(
                plan.files[row] if kind == "missing" else f"{plan.files[row]} ({result})"
            )
    return ok, bad


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
        "cache_key": cache_key(plan.cache_dir),
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
