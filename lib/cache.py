"""Where prepared data lives.

A prepared dataset lives under `<cache>/prepared/<key>/`, where the key hashes the dataset
fingerprint with the preprocessing settings: one `shard-<first row>-<end row>.npy` per shard
(with the shard's missing and unreadable images in a .json beside it), `labels.npy`,
`split.npy` and `manifest.json`. The cache is a local folder (FACET_CACHE, by default
~/.cache/facet) or, when FACET_CACHE is a gs:// URI, that prefix: each machine writes locally
and uploads, and a reader downloads the files it needs before memory-mapping them.
"""

from __future__ import annotations

from pathlib import Path

from lib.settings import FlowSettings
from lib.storage import Folder, folder_at

MANIFEST = "manifest.json"
LABELS, SPLIT = "labels.npy", "split.npy"


def cache_root() -> Path:
    """This machine's cache folder: FACET_CACHE, or ~/.cache/facet when it is unset or a
    gs:// URI."""
    return _configured_cache().local


def prepared_uri(key: str) -> str:
    """Where the prepared dataset with this key is kept, for every machine."""
    return f"{_configured_cache().uri}/prepared/{key}"


def prepared_folder(cache_dir: str | Path) -> Folder:
    """A prepared dataset, from its `prepared_uri`. This machine's copy of one kept on gs://
    is the folder of the same key under the local cache root."""
    return folder_at(cache_dir, copy=cache_root() / "prepared" / cache_key(cache_dir))


def cache_key(cache_dir: str | Path) -> str:
    """The key a prepared dataset's folder or URI ends in."""
    return str(cache_dir).rstrip("/").rsplit("/", 1)[-1]


def shard_file(start: int, stop: int) -> str:
    # Named by its rows, so that a shard cut with another shard_size never passes for it.
    return f"shard-{start:07d}-{stop:07d}.npy"


def bad_images_file(shard: str) -> str:
    """The shard's missing and unreadable images: [[offset in the shard, why], ...]."""
    return shard.removesuffix(".npy") + ".json"


def _configured_cache() -> Folder:
    home = Path.home() / ".cache" / "facet"
    return folder_at(FlowSettings().FACET_CACHE or home, copy=home)
