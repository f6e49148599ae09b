"""Read CelebA's official layout: labels joined to images by file name, never by order.

<root>/img_align_celeba/000001.jpg ...
<root>/list_attr_celeba.txt       count line, attribute names, then `name v1 ... v40` (-1/1)
<root>/list_eval_partition.txt    `name split`, 0 = train, 1 = validation, 2 = test
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_DIR = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
SPLITS = {"train": 0, "validation": 1, "test": 2}


@dataclass
class CelebAIndex:
    """What a CelebA folder says, before any image is opened."""

    root: Path
    attributes: list[str]
    files: list[str]  # in the attribute file's order
    labels: np.ndarray  # (n, n_attributes) uint8, 0/1
    split: np.ndarray  # (n,) int8, values of SPLITS

    @property
    def image_dir(self) -> Path:
        return self.root / IMAGE_DIR

    @property
    def label_files(self) -> list[Path]:
        return [self.root / ATTRIBUTE_FILE, self.root / PARTITION_FILE]


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"CelebA {what} not found: {path}")
    return path


def read_attribute_file(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse list_attr_celeba.txt: tolerant of padded columns and trailing spaces, strict on
    content (row length, values, the count line)."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line")
    try:
        expected = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}:1: expected the number of images, got {lines[0]!r}") from None
    attributes = lines[1].split()
    files, rows = [], []
    for number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(attributes) + 1:
            raise ValueError(
                f"{path}:{number}: expected a file name and {len(attributes)} values, "
                f"got {len(fields)} fields"
            )
        values = fields[1:]
        if any(v not in ("1", "-1") for v in values):
            raise ValueError(f"{path}:{number}: values must be 1 or -1, got {values}")
        files.append(fields[0])
        rows.append([v == "1" for v in values])
    if len(files) != expected:
        raise ValueError(
            f"{path}: the count line says {expected} images, the file lists {len(files)}"
        )
    if len(set(files)) != len(files):
        raise ValueError(f"{path}: some file names are listed more than once")
    return attributes, files, np.asarray(rows, dtype=np.uint8).reshape(len(files), len(attributes))


def read_partition_file(path: Path) -> dict[str, int]:
    partition = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}:{number}: expected `file_name 0|1|2`, got {line!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def read_celeba(root: str | Path) -> CelebAIndex:
    """Index a CelebA folder. Missing files fail at once, naming the path."""
    root = _require(Path(root), "folder")
    _require(root / IMAGE_DIR, "image folder")
    attributes, files, labels = read_attribute_file(
        _require(root / ATTRIBUTE_FILE, "attribute file")
    )
    partition = read_partition_file(_require(root / PARTITION_FILE, "partition file"))
    unsplit = [name for name in files if name not in partition]
    if unsplit:
        raise ValueError(
            f"{root / PARTITION_FILE}: {len(unsplit)} labelled images have no split, "
            f"e.g. {unsplit[:5]}"
        )
    split = np.asarray([partition[name] for name in files], dtype=np.int8)
    return CelebAIndex(root=root, attributes=attributes, files=files, labels=labels, split=split)
