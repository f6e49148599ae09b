"""Where files that are not artifacts live: datasets fetched from gs://, prepared shards shared
through gs://, and training checkpoints.

A `Folder` is named files kept together, either a folder on this machine (`LocalFolder`) or
the objects under a gs:// prefix with a local copy of those this machine needs (`GCSFolder`);
`folder_at` chooses one from a path or URI, so its callers never look at the scheme.

Checkpoints are written to a local folder inside Metaflow's local datastore root, keyed by
flow and run. When the run's datastore is GCS (Metaflow's DEFAULT_DATASTORE is gs), each
finished checkpoint is also mirrored under the same gs:// root (DATASTORE_SYSROOT_GS), so a
retry or resume on another machine finds it.

Nothing read back is trusted to be what was written: a name never leaves its folder, a
checkpoint is sealed with the size and SHA-256 of every file (a damaged one is skipped for the
one before), and a checkpoint whose pickles name anything but tensors and plain data is
refused before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from metaflow import metaflow_config
from metaflow.plugins.datastores.local_storage import LocalStorage

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "_checkpoints"
COMPLETE = "COMPLETE"  # written last: a mirrored checkpoint without it is ignored
PREFIX = "step_"
SEAL = "manifest.json"  # in a checkpoint: the size and SHA-256 of every other file
PICKLES = ("*.bin", "*.pkl")  # what accelerate's load_state reads with torch.load


class DamagedCheckpoint(Exception):
    """A checkpoint whose files are not those it was sealed with (truncated, changed)."""


class UnsafeCheckpoint(Exception):
    """A checkpoint holding a pickle that would run code or build objects when loaded."""


class Checkpointed(Protocol):
    """State saved beside what accelerator.save_state writes, in files read without pickle."""

    def save(self, folder: Path) -> None: ...


class Folder(Protocol):
    """Named files kept together. Files are written into `local` and then published; they are
    read from `local` once fetched. A name may contain slashes (a file in a subfolder)."""

    local: Path  # this machine's copy

    @property
    def uri(self) -> str:
        """Where the folder is, for every machine: an absolute path or a gs:// URI."""

    def names(self) -> set[str]:
        """The names of the files there, subfolders' included."""

    def fetch(self, names: Collection[str] | None = None, missing_ok: bool = False) -> Path:
        """Bring the files `names` (by default all) into `local`, and return it. A missing
        file fails (FileNotFoundError), unless `missing_ok`."""

    def publish(self, names: Iterable[str]) -> None:
        """Make these files of `local` visible to every machine, in this order."""


def folder_at(location: str | Path, copy: Path) -> Folder:
    """The folder at a gs:// URI or a local path. `copy` is where this machine keeps what it
    fetches from a gs:// folder; a local folder is its own copy."""
    if str(location).startswith("gs://"):
        return GCSFolder(str(location), copy)
    return LocalFolder(Path(location))


@dataclass(frozen=True)
class LocalFolder:
    """A folder on this machine (or a disk that every machine mounts): fetching only checks
    that the files are there, and publishing has nothing to do."""

    local: Path

    @property
    def uri(self) -> str:
        return str(self.local.resolve())

    def names(self) -> set[str]:
        return {str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file()}

    def fetch(self, names: Collection[str] | None = None, missing_ok: bool = False) -> Path:
        paths = [self.local] if names is None else [inside(self.local, name) for name in names]
        absent = [str(path) for path in paths if not path.exists()]
        if absent and not missing_ok:
            raise FileNotFoundError(f"not found: {absent}")
        return self.local

    def publish(self, names: Iterable[str]) -> None:
        pass


class GCSFolder:
    """The objects under gs://bucket/prefix, with a copy in `local` of those this machine
    fetched. Every request, upload or download, is retried with exponential backoff on
    transient errors (429, 5xx, connection resets): google-cloud-storage's DEFAULT_RETRY
    unless `retry` is given. A missing bucket or a refused permission fails naming the URI;
    an object whose name would leave `local` (`prefix/../x`) is refused before any download."""

    def __init__(self, uri: str, local: Path, retry: Any = None, workers: int = 16):
        self.bucket_name, prefix = split_gs_uri(uri)
        self.uri = uri.rstrip("/")
        self.local = Path(local)
        self.retry = retry
        self.workers = workers  # downloads at once
        self._start = f"{prefix}/" if prefix else ""

    def names(self) -> set[str]:
        return {self._name_of(blob) for blob in self._list()}

    def _name_of(self, blob: Any) -> str:
        return blob.name[len(self._start) :]

    def fetch(self, names: Collection[str] | None = None, missing_ok: bool = False) -> Path:
        """Download every object under the prefix, or only the objects `names`, fetched by
        name without listing the prefix. Files already here (with the object's size, when
        listed) are kept, so a second fetch downloads nothing new. An empty prefix fails too."""
        if names is None:
            blobs = self._list()
            if not blobs:
                raise FileNotFoundError(f"no objects under {self.uri}")
        else:
            bucket = client().bucket(self.bucket_name)
            blobs = [bucket.blob(self._start + name) for name in names]
        for blob in blobs:
            inside(self.local, self._name_of(blob))
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            absent = [name for name in pool.map(self._download, blobs) if name]
        if absent and not missing_ok:
            raise FileNotFoundError(f"not found under {self.uri}: {sorted(absent)}")
        return self.local

    def publish(self, names: Iterable[str]) -> None:
        """Upload the files. Rewriting the same bytes is idempotent, so the upload is retried
        even without the generation precondition google-cloud-storage otherwise requires."""
        bucket = client().bucket(self.bucket_name)
        for name in names:
            blob = bucket.blob(self._start + name)
            blob.upload_from_filename(inside(self.local, name), retry=self._retry())

    def _download(self, blob: Any) -> str | None:
        """Download one object into `local`; its name if the bucket lacks it."""
        from google.api_core import exceptions

        name = self._name_of(blob)
        target = inside(self.local, name)
        if target.exists() and blob.size in (None, target.stat().st_size):
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        # Per process: training ranks on one machine may fetch the same shard at once.
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            blob.download_to_filename(partial, retry=self._retry())
        except exceptions.NotFound:
            partial.unlink(missing_ok=True)
            return name
        except exceptions.Forbidden as error:
            raise PermissionError(
                f"not allowed to read gs://{self.bucket_name}/{blob.name}: {error.message}"
            ) from None
        partial.rename(target)
        return None

    def _list(self) -> list:
        from google.api_core import exceptions

        try:
            blobs = list(
                client().list_blobs(self.bucket_name, prefix=self._start, retry=self._retry())
            )
        except exceptions.NotFound:
            raise FileNotFoundError(f"bucket not found: gs://{self.bucket_name}") from None
        except exceptions.Forbidden as error:
            raise PermissionError(f"not allowed to list {self.uri}: {error.message}") from None
        return [blob for blob in blobs if not blob.name.endswith("/")]

    def _retry(self) -> Any:
        return retrying(self.retry)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://") or len(uri) <= len("gs://"):
        raise ValueError(f"expected a gs:// URI, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


def inside(folder: Path, name: str) -> Path:
    """folder/name, refusing a name that would leave the folder: absolute, or with `..`."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise ValueError(f"refusing the name {name!r}: it would leave {folder}")
    return folder / name


def retrying(retry: Any) -> Any:
    """`retry`, or google-cloud-storage's DEFAULT_RETRY: exponential backoff on 429, 5xx and
    connection errors, for reads and writes alike."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return retry or DEFAULT_RETRY


def client() -> Any:
    """A google-cloud-storage client. With STORAGE_EMULATOR_HOST set (the tests), it talks to
    that emulator with anonymous credentials on its own."""
    from google.cloud import storage

    return storage.Client()


@dataclass
class CheckpointPlace:
    """One run's checkpoints: a local folder of step_* folders, and its gs:// mirror when the
    datastore is GCS."""

    folder: Path
    mirror: GCSMirror | None = None

    def candidates(self) -> Iterator[Path]:
        """The finished checkpoints, newest first: this machine's, or when it has none the
        mirror's, each downloaded when reached. Only finished saves are named step_*, so a
        partial one is never a candidate."""
        here = sorted(self.folder.glob(f"{PREFIX}*"), reverse=True)
        if here or self.mirror is None:
            yield from here
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for step in reversed(self.mirror.complete_steps()):
            yield self.mirror.pull(step, self.folder)

    def save(
        self, accelerator: Accelerator, step: int, keep: int, extra: Checkpointed | None = None
    ) -> Path:
        """accelerator.save_state and `extra` into a temporary folder, sealed, flushed to disk
        and renamed when complete: a kill or a power cut mid-save leaves no broken checkpoint.
        Keeps the newest `keep`, here and mirrored. Called by every training process."""
        final = self.folder / f"{PREFIX}{step:08d}"
        partial = self.folder / f".partial-{final.name}"
        main = accelerator.is_main_process
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        # Every process calls save_state (each writes its own RNG state; the main process the
        # model and optimizer); only the main one seals, renames, prunes and uploads.
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if main:
            if extra is not None:
                extra.save(partial)
            seal(partial)
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            fsync(self.folder)
            for old in sorted(self.folder.glob(f"{PREFIX}*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
            if self.mirror is not None:
                self.mirror.push(final, keep)
        accelerator.wait_for_everyone()
        return final


def usable_checkpoint(
    places: Sequence[CheckpointPlace], say: Callable[[str], None] = print
) -> Path | None:
    """The newest intact checkpoint of the first place that has one; None if there is none.
    A damaged one is passed over for the one before, and `say` names both; one that would
    unpickle anything but plain data stops here (UnsafeCheckpoint), as does finding only
    damaged ones (DamagedCheckpoint)."""
    damaged = []
    for checkpoint in chain.from_iterable(place.candidates() for place in places):
        try:
            check_seal(checkpoint)
        except DamagedCheckpoint as error:
            damaged.append(f"{checkpoint} ({error})")
            continue
        refuse_pickled_code(checkpoint)
        if damaged:
            say(f"damaged checkpoint {'; '.join(damaged)}: resuming from {checkpoint} instead")
        return checkpoint
    if damaged:
        raise DamagedCheckpoint(f"no intact checkpoint to resume from: {'; '.join(damaged)}")
    return None


def seal(folder: Path) -> None:
    """Flush every file of a finished checkpoint to disk and write SEAL, listing each file's
    size and SHA-256, flushed too."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SEAL)
    listing = {str(path.relative_to(folder)): _fingerprint(path) for path in files}
    for path in files:
        fsync(path)
    (folder / SEAL).write_text(json.dumps(listing, indent=1))
    fsync(folder / SEAL)
    for sub in {path.parent for path in files} | {folder}:
        fsync(sub)


def check_seal(folder: Path) -> None:
    """DamagedCheckpoint unless every file SEAL lists is there with its size and SHA-256."""
    try:
        listing = json.loads((folder / SEAL).read_text())
    except (OSError, ValueError) as error:
        raise DamagedCheckpoint(f"unreadable {SEAL}: {error}") from None
    for name, expected in listing.items():
        path = inside(folder, name)
        if not path.is_file():
            raise DamagedCheckpoint(f"{name} is missing")
        if _fingerprint(path) != expected:
            raise DamagedCheckpoint(f"{name} is not the file that was saved (truncated?)")


def refuse_pickled_code(folder: Path) -> None:
    """UnsafeCheckpoint if a torch.save file of the checkpoint names a global beyond tensors,
    plain data and the numpy arrays of RNG states (what accelerate's load_state accepts
    with weights_only=True): checked by reading the pickle's opcodes, never by unpickling."""
    import torch
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    for path in sorted(chain.from_iterable(folder.rglob(pattern) for pattern in PICKLES)):
        try:
            with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except (RuntimeError, ValueError) as error:
            raise UnsafeCheckpoint(f"{path} is not a torch.save archive: {error}") from None
        if unsafe:
            raise UnsafeCheckpoint(
                f"{path} would run code when unpickled (it names {', '.join(unsafe)}): "
                "refusing to restore from it"
            )


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoint_places(
    flow_name: str, run_id: str, origin_run_id: str | None = None
) -> list[CheckpointPlace]:
    """Where a run looks for checkpoints to continue from, in order: its own (a @retry
    attempt finds those of the attempt before) and, when resumed, its origin run's. The
    first is also where it writes."""
    places = [checkpoint_place(flow_name, run_id)]
    if origin_run_id:
        places.append(checkpoint_place(flow_name, origin_run_id))
    return places


def checkpoint_place(flow_name: str, run_id: str) -> CheckpointPlace:
    """Where one run keeps its checkpoints: inside the .metaflow folder that
    METAFLOW_DATASTORE_SYSROOT_LOCAL or the working tree selects, mirrored under Metaflow's
    DATASTORE_SYSROOT_GS when its DEFAULT_DATASTORE is gs. Metaflow reads these settings
    (METAFLOW_* variables, then its config files) once, when it is imported: the mirror is
    where this process's Metaflow keeps its artifacts."""
    root = LocalStorage.get_datastore_root_from_config(lambda *_, **__: None)
    folder = Path(root) / CHECKPOINTS / flow_name / run_id
    if metaflow_config.DEFAULT_DATASTORE != "gs":
        return CheckpointPlace(folder)
    gs_root = metaflow_config.DATASTORE_SYSROOT_GS
    if not gs_root:
        raise ValueError("METAFLOW_DEFAULT_DATASTORE=gs needs METAFLOW_DATASTORE_SYSROOT_GS")
    mirror = GCSMirror(f"{gs_root.rstrip('/')}/{CHECKPOINTS}/{flow_name}/{run_id}")
    return CheckpointPlace(folder, mirror)


class GCSMirror:
    """A gs://bucket/prefix holding step_* checkpoint folders. Uploads, downloads, listings
    and deletions are retried like GCSFolder's (`retry`, by default DEFAULT_RETRY)."""

    def __init__(self, uri: str, retry: Any = None):
        self.bucket_name, self.prefix = split_gs_uri(uri)
        self.uri = uri.rstrip("/")
        self.retry = retry

    def complete_steps(self) -> list[str]:
        """The step_* folders whose upload finished, oldest first."""
        names = self._names_under("")
        return sorted(name.removesuffix(f"/{COMPLETE}") for name in names if _marks(name))

    def push(self, folder: Path, keep: int) -> None:
        """Upload a finished checkpoint folder, mark it complete, drop the oldest beyond keep."""
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self._folder(folder.name, folder).publish(files)
        self._blob(f"{folder.name}/{COMPLETE}").upload_from_string(b"", retry=self._retry())
        for old in self.complete_steps()[:-keep]:
            # The marker goes first, so a half-deleted checkpoint is never taken as complete.
            self._blob(f"{old}/{COMPLETE}").delete(retry=self._retry())
            for name in self._names_under(old):
                self._blob(f"{old}/{name}").delete(retry=self._retry())

    def pull(self, step: str, into: Path) -> Path:
        """Download the complete checkpoint `step` into `into`/`step` (kept if already there)."""
        final = into / step
        if final.exists():
            return final
        partial = into / f".partial-{step}"
        shutil.rmtree(partial, ignore_errors=True)
        remote = self._folder(step, partial)
        remote.fetch(remote.names() - {COMPLETE})
        partial.rename(final)
        return final

    def _names_under(self, step: str) -> set[str]:
        return self._folder(step, Path()).names()  # listing only: nothing comes here

    def _folder(self, step: str, local: Path) -> GCSFolder:
        return GCSFolder(f"{self.uri}/{step}".rstrip("/"), local, self.retry)

    def _blob(self, name: str) -> Any:
        return client().bucket(self.bucket_name).blob(f"{self.prefix}/{name}")

    def _retry(self) -> Any:
        return retrying(self.retry)


def _marks(name: str) -> bool:
    """Whether an object name under a mirror is a step folder's COMPLETE marker."""
    step, _, last = name.partition("/")
    return step.startswith(PREFIX) and last == COMPLETE
