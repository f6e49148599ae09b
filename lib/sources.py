"""Resolve the config's `data` to a CelebA folder on this machine: a local folder is used in
place, a gs:// URI is mirrored under the cache root (later runs download only what changed),
and "synthetic" generates the embedded default dataset once, keyed by its whole spec (size,
seed, rates, shifts, faint option), and named by the address synthetic://?n=&seed=, with
&faint=ATTRIBUTE,GROUP,VISIBILITY when an attribute is drawn faint."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lib import synthetic
from lib.cache import cache_root
from lib.celeba import image_location
from lib.storage import Folder, folder_at

if TYPE_CHECKING:
    from lib.prepare import Plan


def resolve_source(data: str, synthetic_spec: dict[str, Any] | None = None) -> tuple[str, Path]:
    """Map the config's `data` to (source URI, local CelebA folder)."""
    if data == "synthetic":
        return _synthetic_source(synthetic_spec)
    source = _source_folder(data)
    return source.uri, source.fetch()


def shard_source(
    plan: Plan, shard: int, data: str, synthetic_spec: dict[str, Any] | None = None
) -> Path:
    """This machine's copy of what shard `shard` reads: the planning machine's copy when this
    is it. Elsewhere (a pod per shard), a gs:// source gives only that shard's images (a zip
    layout, its one archive), fetched by name, and a synthetic source is generated. An image
    the bucket lacks is left out, and the decoder counts it missing, as for a local folder."""
    if plan.root.exists():
        return plan.root
    if data == "synthetic":
        return resolve_source(data, synthetic_spec)[1]
    return _source_folder(data).fetch(_shard_inputs(plan, shard), missing_ok=True)


def _shard_inputs(plan: Plan, shard: int) -> list[str]:
    """The files shard `shard` reads, relative to the source folder."""
    location = image_location(plan.layout)
    if plan.layout == "zip":
        return [location]
    start, stop = plan.shards[shard]
    return [f"{location}/{name}" for name in plan.files[start:stop]]


def _source_folder(data: str) -> Folder:
    """A gs:// source's copy is kept under the cache root, named by a hash of its URI."""
    mirror = cache_root() / "gcs" / hashlib.sha256(data.encode()).hexdigest()[:16]
    return folder_at(data, copy=mirror)


def _synthetic_source(synthetic_spec: dict[str, Any] | None) -> tuple[str, Path]:
    """(address, cache folder) of the generated dataset, generated on first use. The folder
    is named by a hash of the whole spec, so a faint option of its own is another dataset."""
    spec = synthetic.make_spec(**(synthetic_spec or {}))
    key = hashlib.sha256(json.dumps(spec.__dict__, sort_keys=True).encode()).hexdigest()[:16]
    root = cache_root() / "synthetic" / key
    if not (root / "DONE").exists():
        shutil.rmtree(root, ignore_errors=True)
        synthetic.generate(root, spec)
        (root / "DONE").touch()
    return _synthetic_address(spec), root


def _synthetic_address(spec: synthetic.Spec) -> str:
    """The source the dataset artifact names: its size and seed, and its faint option as
    lib.synthetic's --faint takes it."""
    address = f"synthetic://?n={spec.n}&seed={spec.seed}"
    return address if spec.faint is None else f"{address}&faint={','.join(map(str, spec.faint))}"
