"""Read CelebA in any of its three layouts; labels are joined to images by file name, never
by order.

official  <root>/img_align_celeba/000001.jpg ...
          <root>/list_attr_celeba.txt     count line, attribute names, `name v1 ... v40` (-1/1)
          <root>/list_eval_partition.txt  `name split`, 0 = train, 1 = validation, 2 = test
zip       the same, with the images inside <root>/img_align_celeba.zip (read in place)
kaggle    <root>/img_align_celeba/img_align_celeba/000001.jpg ...
          <root>/list_attr_celeba.csv     header image_id,<40 names>; values 1 / -1
          <root>/list_eval_partition.csv  header image_id,partition
"""

from __future__ import annotations

import csv
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
KAGGLE_ATTRIBUTE_FILE = "list_attr_celeba.csv"
KAGGLE_PARTITION_FILE = "list_eval_partition.csv"
SPLITS = {"train": 0, "validation": 1, "test": 2}


@dataclass(frozen=True)
class ImageFolder:
    """Images as files in a folder."""

    folder: Path

    def sizes(self) -> dict[str, int]:
        return {entry.name: entry.stat().st_size for entry in os.scandir(self.folder)}

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()


@dataclass(frozen=True)
class ImageZip:
    """Images inside a zip archive, read in place: 200k files need not touch the disk. Each
    process opens the archive once (the object pickles as its path)."""

    path: Path
    prefix: str = f"{IMAGE_DIR}/"

    def _archive(self) -> zipfile.ZipFile:
        if self.path not in _OPEN_ZIPS:
            _OPEN_ZIPS[self.path] = zipfile.ZipFile(self.path)
        return _OPEN_ZIPS[self.path]

    def sizes(self) -> dict[str, int]:
        return {
            info.filename[len(self.prefix) :]: info.file_size
            for info in self._archive().infolist()
            if info.filename.startswith(self.prefix) and not info.is_dir()
        }

    def read(self, name: str) -> bytes:
        try:
            return self._archive().read(self.prefix + name)
        except KeyError:
            raise FileNotFoundError(f"{self.path}: no member {self.prefix + name}") from None


_OPEN_ZIPS: dict[Path, zipfile.ZipFile] = {}


@dataclass
class CelebAIndex:
    """What a CelebA folder says, before any image is opened."""

    root: Path
    layout: str  # "official", "zip" or "kaggle"
    images: ImageFolder | ImageZip
    label_files: list[Path]
    attributes: list[str]
    files: list[str]  # in the attribute file's order
    labels: np.ndarray  # (n, n_attributes) uint8, 0/1
    split: np.ndarray  # (n,) int8, values of SPLITS


def _refuse_paths(label_file: Path, files: list[str]) -> None:
    """Image names are file names inside the image folder: one with a separator or `..` (an
    absolute name has one) would read, or from a bucket write, a file elsewhere."""
    unsafe = [name for name in files if name in ("", ".", "..") or set(name) & {"/", "\\"}]
    if unsafe:
        raise ValueError(
            f"{label_file}: image names must be file names in the image folder, got {unsafe[:5]}"
        )


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
        files.append(fields[0])
        rows.append([_parse_value(v, f"{path}:{number}") for v in fields[1:]])
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


def _parse_value(value: str, where: str) -> bool:
    if value not in ("1", "-1"):
        raise ValueError(f"{where}: values must be 1 or -1, got {value!r}")
    return value == "1"


def read_kaggle_attribute_file(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or rows[0][:1] != ["image_id"]:
        raise ValueError(f"{path}:1: expected a header starting with image_id")
    attributes = [name.strip() for name in rows[0][1:]]
    files, values = [], []
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(attributes) + 1:
            raise ValueError(
                f"{path}:{number}: expected image_id and {len(attributes)} values, got {len(row)}"
            )
        files.append(row[0].strip())
        values.append([_parse_value(v.strip(), f"{path}:{number}") for v in row[1:]])
    if len(set(files)) != len(files):
        raise ValueError(f"{path}: some file names are listed more than once")
    return (
        attributes,
        files,
        np.asarray(values, dtype=np.uint8).reshape(len(files), len(attributes)),
    )


def read_kaggle_partition_file(path: Path) -> dict[str, int]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [c.strip() for c in rows[0]] != ["image_id", "partition"]:
        raise ValueError(f"{path}:1: expected the header image_id,partition")
    partition = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or row[1].strip() not in ("0", "1", "2"):
            raise ValueError(f"{path}:{number}: expected `file_name,0|1|2`, got {row}")
        partition[row[0].strip()] = int(row[1])
    return partition


def detect_layout(root: Path) -> str:
    """kaggle if its CSV label files are there, zip if the images come as the archive,
    official otherwise (whose missing parts are then named by read_celeba)."""
    if (root / KAGGLE_ATTRIBUTE_FILE).exists():
        return "kaggle"
    if (root / IMAGE_ZIP).exists() and not (root / IMAGE_DIR).exists():
        return "zip"
    return "official"


def image_location(layout: str) -> str:
    """Where a layout keeps its images, relative to the root: a folder, or the zip."""
    return {"kaggle": f"{IMAGE_DIR}/{IMAGE_DIR}", "zip": IMAGE_ZIP}.get(layout, IMAGE_DIR)


def open_images(root: Path, layout: str) -> ImageFolder | ImageZip:
    """The images of a CelebA folder in a known layout; a missing folder or zip fails at once.
    Preparation shards call it on their own machine, where the folder may live elsewhere."""
    location = _require(root / image_location(layout), "image folder")
    return ImageZip(location) if layout == "zip" else ImageFolder(location)


def read_celeba(root: str | Path) -> CelebAIndex:
    """Index a CelebA folder in any layout. Missing files fail at once, naming the path."""
    root = _require(Path(root), "folder")
    layout = detect_layout(root)
    images = open_images(root, layout)
    if layout == "kaggle":
        label_files = [root / KAGGLE_ATTRIBUTE_FILE, root / KAGGLE_PARTITION_FILE]
        attributes, files, labels = read_kaggle_attribute_file(label_files[0])
        partition = read_kaggle_partition_file(_require(label_files[1], "partition file"))
    else:
        label_files = [root / ATTRIBUTE_FILE, root / PARTITION_FILE]
        attributes, files, labels = read_attribute_file(_require(label_files[0], "attribute file"))
        partition = read_partition_file(_require(label_files[1], "partition file"))
    _refuse_paths(label_files[0], files)
    unsplit = [name for name in files if name not in partition]
    if unsplit:
        raise ValueError(
            f"{label_files[1]}: {len(unsplit)} labelled images have no split, e.g. {unsplit[:5]}"
        )
    split = np.asarray([partition[name] for name in files], dtype=np.int8)
    return CelebAIndex(
        root=root,
        layout=layout,
        images=images,
        label_files=label_files,
        attributes=attributes,
        files=files,
        labels=labels,
        split=split,
    )
