"""Files that are not artifacts: datasets fetched from gs://, prepared shards shared through
gs://, and training checkpoints.

Checkpoints are written to a local folder inside Metaflow's local datastore root, keyed by
flow and run. When the run's datastore is GCS (METAFLOW_DEFAULT_DATASTORE=gs), each finished
checkpoint is also mirrored under the same gs:// root, so a retry or resume on another
machine finds it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metaflow.plugins.datastores.local_storage import LocalStorage

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINTS = "_checkpoints"
COMPLETE = "COMPLETE"  # written last: a mirrored checkpoint without it is ignored


PREFIX = "step_"


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
    METAFLOW_DATASTORE_SYSROOT_LOCAL or the working tree selects, mirrored under
    METAFLOW_DATASTORE_SYSROOT_GS when METAFLOW_DEFAULT_DATASTORE=gs."""
    root = LocalStorage.get_datastore_root_from_config(lambda *_, **__: None)
    folder = Path(root) / CHECKPOINTS / flow_name / run_id
    if os.environ.get("METAFLOW_DEFAULT_DATASTORE") != "gs":
        return CheckpointPlace(folder)
    gs_root = os.environ.get("METAFLOW_DATASTORE_SYSROOT_GS")
    if not gs_root:
        raise ValueError("METAFLOW_DEFAULT_DATASTORE=gs needs METAFLOW_DATASTORE_SYSROOT_GS")
    mirror = GCSMirror(f"{gs_root.rstrip('/')}/{CHECKPOINTS}/{flow_name}/{run_id}")
    return CheckpointPlace(folder, mirror)


def split_gs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://") or len(uri) <= len("gs://"):
        raise ValueError(f"expected a gs:// URI, got {uri!r}")
    bucket, _, prefix = uri[len("gs://") :].partition("/")
    return bucket, prefix.strip("/")


def fetch_prefix(
    uri: str,
    into: Path,
    workers: int = 16,
    retry=None,
    names: Collection[str] | None = None,
    missing_ok: bool = False,
) -> Path:
    """Mirror every object under gs://bucket/prefix into a local folder, or only the objects
    `names` (relative to the prefix), fetched by name without listing the prefix: at most
    `workers` downloads at once, each retried with exponential backoff on transient errors
    (429, 5xx, connection resets: google-cloud-storage's DEFAULT_RETRY unless `retry` is
    given). Files already there (with the object's size, when listed) are kept, so a second
    fetch downloads nothing new. A missing bucket, an empty prefix, a missing named object
    (unless `missing_ok`) or a refused permission fails naming the URI."""
    from concurrent.futures import ThreadPoolExecutor

    from google.api_core import exceptions

    retry = retry or _default_retry()
    bucket_name, prefix = split_gs_uri(uri)
    start = f"{prefix}/" if prefix else ""
    if names is None:
        blobs = _list_blobs(uri, retry)
        if not blobs:
            raise FileNotFoundError(f"no objects under {uri}")
    else:
        bucket = _storage_client().bucket(bucket_name)
        blobs = [bucket.blob(start + name) for name in names]
    absent = []

    def download(blob) -> None:
        target = into / blob.name[len(start) :]
        if target.exists() and blob.size in (None, target.stat().st_size):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # Per process: training ranks on one machine may fetch the same shard at once.
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            blob.download_to_filename(partial, retry=retry)
        except exceptions.NotFound:
            partial.unlink(missing_ok=True)
            absent.append(blob.name[len(start) :])
            return
        except exceptions.Forbidden as error:
            raise PermissionError(
                f"not allowed to read gs://{bucket_name}/{blob.name}: {error.message}"
            ) from None
        partial.rename(target)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(download, blobs))
    if absent and not missing_ok:
        raise FileNotFoundError(f"not found under {uri}: {sorted(absent)}")
    return into


def list_prefix(uri: str, retry=None) -> dict[str, int]:
    """{name relative to the prefix: size} of the objects under gs://bucket/prefix; {} if
    there are none. A missing bucket or a refused permission fails naming the URI."""
    prefix = split_gs_uri(uri)[1]
    start = len(prefix) + 1 if prefix else 0
    return {blob.name[start:]: blob.size for blob in _list_blobs(uri, retry)}


def upload_file(path: Path, uri: str, retry=None) -> None:
    """Upload one file to gs://bucket/name, retried on transient errors: rewriting the same
    bytes is idempotent, so the retry is safe even without a generation precondition (which
    google-cloud-storage otherwise requires before it retries an upload)."""
    bucket_name, name = split_gs_uri(uri)
    blob = _storage_client().bucket(bucket_name).blob(name)
    blob.upload_from_filename(path, retry=retry or _default_retry())


def _default_retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _list_blobs(uri: str, retry=None) -> list:
    from google.api_core import exceptions

    bucket_name, prefix = split_gs_uri(uri)
    start = f"{prefix}/" if prefix else ""
    client = _storage_client()
    try:
        blobs = list(client.list_blobs(bucket_name, prefix=start, retry=retry or _default_retry()))
    except exceptions.NotFound:
        raise FileNotFoundError(f"bucket not found: gs://{bucket_name}") from None
    except exceptions.Forbidden as error:
        raise PermissionError(f"not allowed to list {uri}: {error.message}") from None
    return [b for b in blobs if not b.name.endswith("/")]


def _storage_client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):  # tests: a local emulator, no credentials
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="facet-test", credentials=AnonymousCredentials())
    return storage.Client()


class GCSMirror:
    """A gs://bucket/prefix holding step_* checkpoint folders."""

    def __init__(self, uri: str):
        bucket, self.prefix = split_gs_uri(uri)
        self.uri = uri
        self.bucket = _storage_client().bucket(bucket)

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
