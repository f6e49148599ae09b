"""Where files that are not artifacts live: datasets fetched from gs://, prepared shards shared
through gs://, and training checkpoints.

A `Folder` is named files kept together, either a folder on this machine (`LocalFolder`) or
the objects under a gs:// prefix with a local copy of those this machine needs (`GCSFolder`);
`folder_at` chooses one from a path or URI, so its callers never look at the scheme.

Checkpoints are written to a local folder inside Metaflow's local datastore root, keyed by
flow and run. When the run's datastore is GCS (Metaflow's DEFAULT_DATASTORE is gs), each
finished checkpoint is also mirrored under the same gs:// root (DATASTORE_SYSROOT_GS), so a
retry or resume on another machine finds it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from metaflow import metaflow_config
from metaflow.plugins.datastores.local_storage import LocalStorage

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "_checkpoints"
COMPLETE = "COMPLETE"  # written last: a mirrored checkpoint without it is ignored
PREFIX = "step_"


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
        paths = [self.local] if names is None else [self.local / name for name in names]
        absent = [str(path) for path in paths if not path.exists()]
        if absent and not missing_ok:
            raise FileNotFoundError(f"not found: {absent}")
        return self.local

    def publish(self, names: Iterable[str]) -> None:
        pass


class GCSFolder:
    """The objects under gs://bucket/prefix, with a copy in `local` of those this machine
    fetched. Every request is retried with exponential backoff on transient errors (429, 5xx,
    connection resets): google-cloud-storage's DEFAULT_RETRY unless `retry` is given. A
    missing bucket or a refused permission fails naming the URI."""

    def __init__(self, uri: str, local: Path, retry: Any = None, workers: int = 16):
        self.bucket_name, prefix = split_gs_uri(uri)
        self.uri = uri.rstrip("/")
        self.local = Path(local)
        self.retry = retry
        self.workers = workers  # downloads at once
        self._start = f"{prefix}/" if prefix else ""

    def names(self) -> set[str]:
        return {blob.name[len(self._start) :] for blob in self._list()}

    def fetch(self, names: Collection[str] | None = None, missing_ok: bool = False) -> Path:
        """Download every object under the prefix, or only the objects `names`, fetched by
        name without listing the prefix. Files already here (with the object's size, when
        listed) are kept, so a second fetch downloads nothing new. An empty prefix fails too."""
        if names is None:
            blobs = self._list()
            if not blobs:
                raise FileNotFoundError(f"no objects under {self.uri}")
        else:
            bucket = _client().bucket(self.bucket_name)
            blobs = [bucket.blob(self._start + name) for name in names]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            absent = [name for name in pool.map(self._download, blobs) if name]
        if absent and not missing_ok:
            raise FileNotFoundError(f"not found under {self.uri}: {sorted(absent)}")
        return self.local

    def publish(self, names: Iterable[str]) -> None:
        """Upload the files. Rewriting the same bytes is idempotent, so the upload is retried
        even without the generation precondition google-cloud-storage otherwise requires."""
        bucket = _client().bucket(self.bucket_name)
        for name in names:
            blob = bucket.blob(self._start + name)
            blob.upload_from_filename(self.local / name, retry=self._retry())

    def _download(self, blob: Any) -> str | None:
        """Download one object into `local`; its name if the bucket lacks it."""
        from google.api_core import exceptions

        name = blob.name[len(self._start) :]
        target = self.local / name
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
                _client().list_blobs(self.bucket_name, prefix=self._start, retry=self._retry())
            )
        except exceptions.NotFound:
            raise FileNotFoundError(f"bucket not found: gs://{self.bucket_name}") from None
        except exceptions.Forbidden as error:
            raise PermissionError(f"not allowed to list {self.uri}: {error.message}") from None
        return [blob for blob in blobs if not blob.name.endswith("/")]

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return self.retry or DEFAULT_RETRY


def split_gs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://") or len(uri) <= len("gs://"):
        raise ValueError(f"expected a gs:// URI, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


def _client() -> Any:
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

    def latest(self) -> Path | None:
        """The newest complete checkpoint, fetched from the mirror when this machine has none.
        Only finished saves are named step_*, so a partial one is never a candidate."""
        found = sorted(self.folder.glob(f"{PREFIX}*"))
        if found:
            return found[-1]
        if self.mirror is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            return self.mirror.pull_latest(self.folder)
        return None

    def save(self, accelerator: Accelerator, step: int, keep: int) -> Path:
        """accelerator.save_state into a temporary folder, renamed when complete: a kill
        mid-save leaves no broken checkpoint. Keeps the newest `keep`, here and mirrored.
        Called by every training process."""
        final = self.folder / f"{PREFIX}{step:08d}"
        partial = self.folder / f".partial-{final.name}"
        main = accelerator.is_main_process
        if main:
            shutil.rmtree(partial, ignore_errors=True)
        # Every process calls save_state (each writes its own RNG state; the main process the
        # model and optimizer); only the main one renames, prunes and uploads.
        accelerator.wait_for_everyone()
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in sorted(self.folder.glob(f"{PREFIX}*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
            if self.mirror is not None:
                self.mirror.push(final, keep)
        accelerator.wait_for_everyone()
        return final


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
    """A gs://bucket/prefix holding step_* checkpoint folders."""

    def __init__(self, uri: str):
        bucket, self.prefix = split_gs_uri(uri)
        self.uri = uri
        self.bucket = _client().bucket(bucket)

    def _complete_steps(self) -> list[str]:
        names = (blob.name for blob in self.bucket.list_blobs(prefix=f"{self.prefix}/"))
        marker = f"/{COMPLETE}"
        return sorted(n[len(self.prefix) + 1 : -len(marker)] for n in names if n.endswith(marker))

    def push(self, folder: Path, keep: int) -> None:
        """Upload a finished checkpoint folder, mark it complete, drop the oldest beyond keep."""
        remote = f"{self.prefix}/{folder.name}"
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.bucket.blob(f"{remote}/{path.relative_to(folder)}").upload_from_filename(path)
        self.bucket.blob(f"{remote}/{COMPLETE}").upload_from_string(b"")
        for old in self._complete_steps()[:-keep]:
            # The marker goes first, so a half-deleted checkpoint is never taken as complete.
            self.bucket.blob(f"{self.prefix}/{old}/{COMPLETE}").delete()
            for blob in self.bucket.list_blobs(prefix=f"{self.prefix}/{old}/"):
                blob.delete()

    def pull_latest(self, into: Path) -> Path | None:
        """Download the newest complete checkpoint into `into`/step_*; None if there is none."""
        steps = self._complete_steps()
        if not steps:
            return None
        final = into / steps[-1]
        if final.exists():
            return final
        partial = into / f".partial-{steps[-1]}"
        shutil.rmtree(partial, ignore_errors=True)
        remote = f"{self.prefix}/{steps[-1]}/"
        for blob in self.bucket.list_blobs(prefix=remote):
            relative = blob.name[len(remote) :]
            if relative == COMPLETE:
                continue
            target = partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(target)
        partial.rename(final)
        return final
