"""Read a prepared dataset (lib.prepare) back for training and evaluation, as torch datasets
over memory-mapped uint8 shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lib.cache import LABELS, MANIFEST, SPLIT, prepared_folder
from lib.celeba import SPLITS


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
        cache = prepared_folder(cache_dir)
        try:
            self.cache_dir = cache.fetch([MANIFEST, LABELS, SPLIT])
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"no prepared dataset in {cache_dir} ({error}). A step on another machine "
                "reads it only from a shared cache: set FACET_CACHE=gs://bucket/prefix."
            ) from None
        self.rows = np.flatnonzero(np.load(self.cache_dir / SPLIT) == SPLITS[split])
        self.labels = torch.from_numpy(np.load(self.cache_dir / LABELS)[self.rows]).float()
        self.images = PreparedImages(self.cache_dir)
        cache.fetch(self.images.files_for(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.images[self.rows[i]])), self.labels[i]
