"""Where every replica's logged rows meet: Parquet objects under a folder or a gs:// prefix,
written by each replica's shipper (lib.shipper) and read by MonitorFlow one window at a time.

    <sink>/model=<model>/hour=<YYYY-MM-DDTHH>/<replica>-<log id>-<first id>-<last id>.parquet

One object per (model, hour) of each shipped segment: rows first..last of one replica's local
log (lib.predlog), the hour of their ts in UTC. The layout is Hive's (values URI-quoted), so
pyarrow.dataset(partitioning="hive"), DuckDB (hive_partitioning) and BigQuery external tables
read the sink as it is, with `model` and `hour` as columns from the path; they are not columns
of the files, which BigQuery refuses for a partition key. A segment shipped again writes the
same keys with the same bytes: a retried upload replaces itself and never duplicates a row.

A file's columns: ts (float64), replica, request_id, image_index (int64), then one float64
column per drift value (lib.features). A window is read by listing only the hour partitions
that overlap it and opening only their objects.

Feedback (lib.predlog's feedback table: true labels sent to POST /feedback) is shipped the same
way under `_feedback/`, the hour being when the feedback arrived, one float64 column
label_<attribute> per attribute labelled (1.0, 0.0, or NaN where that feedback did not name it):

    <sink>/_feedback/model=<model>/hour=<YYYY-MM-DDTHH>/<replica>-<log id>-<first>-<last>.parquet

pyarrow's datasets (and most Hive readers) skip names starting with "_", so reading the sink's
root reads the predictions only. read_feedback gives the newest label of each attribute for each
answered image.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import reduce
from itertools import chain
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lib.predlog import META_COLUMNS, TABLES, PredictionLog
from lib.storage import GCSFolder, client, fsync, inside, retrying, split_gs_uri

HOUR = "%Y-%m-%dT%H"  # fixed width: hour partitions sort as their names do
SECONDS_PER_HOUR = 3600
ORDER = ["ts", "replica", "request_id", "image_index"]  # a window's rows, sorted
PREFIXES = {"predictions": "", "feedback": "_feedback/"}  # where each table of a log goes
IMAGE = ["replica", "request_id", "image_index"]  # an answered image, wherever it was answered
FILE_FIELDS = [
    pa.field("ts", pa.float64()),
    pa.field("replica", pa.string()),
    pa.field("request_id", pa.string()),
    pa.field("image_index", pa.int64()),
]
COMPRESSION = "zstd"
WORKERS = 16  # listings and downloads at once


class Sink:
    """The objects under a folder or a gs://bucket/prefix, by key (a relative name with
    slashes). In a folder an object is written to a temporary file, flushed and renamed into
    place; on GCS every request is retried like lib.storage's (google-cloud-storage's
    DEFAULT_RETRY unless `retry`), and a missing bucket or refused permission fails naming it."""

    def __init__(self, location: str | Path, retry: Any = None):
        self.location = str(location).rstrip("/")
        self.retry = retry
        self.folder, self._bucket = None, None
        if self.location.startswith("gs://"):
            bucket, prefix = split_gs_uri(self.location)
            self._bucket, self._start = client().bucket(bucket), f"{prefix}/" if prefix else ""
        else:
            self.folder = Path(self.location)

    def put(self, key: str, data: bytes) -> None:
        """Write one object whole: a reader sees the old bytes or the new, never a part. On
        GCS the upload is retried without a generation precondition: the callers rewrite a
        key only with the same bytes, so a repeat is harmless."""
        if self._bucket is not None:
            self._blob(key).upload_from_string(data, retry=retrying(self.retry))
            return
        path = inside(self.folder, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        fsync(partial)
        os.replace(partial, path)
        fsync(path.parent)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under `prefix` ("" or ending in "/"), sorted; none if there is none.
        Temporary files of a folder (names starting with ".") are not objects."""
        if self._bucket is not None:
            listed = GCSFolder(f"{self.location}/{prefix}", Path(), self.retry).names()
            return sorted(prefix + name for name in listed)
        folder = self.folder / prefix
        if not folder.is_dir():
            return []
        files = (path for path in folder.rglob("*") if path.is_file())
        return sorted(
            path.relative_to(self.folder).as_posix()
            for path in files
            if not path.name.startswith(".")
        )

    def get(self, key: str) -> bytes:
        """An object's bytes; FileNotFoundError if there is none."""
        if self._bucket is None:
            return inside(self.folder, key).read_bytes()
        from google.api_core import exceptions

        try:
            return self._blob(key).download_as_bytes(retry=retrying(self.retry))
        except exceptions.NotFound:
            raise FileNotFoundError(f"not found: {self.location}/{key}") from None
        except exceptions.Forbidden as error:
            raise PermissionError(
                f"not allowed to read {self.location}/{key}: {error.message}"
            ) from None

    def _blob(self, key: str) -> Any:
        return self._bucket.blob(self._start + key)


def is_sink(location: str | Path) -> bool:
    """Whether MonitorFlow's log is a sink (a gs:// prefix or a folder) rather than a SQLite
    file: rows reach a sink up to a shipping interval after they were answered."""
    return str(location).startswith("gs://") or Path(location).is_dir()


def model_prefix(model: str, table: str = "predictions") -> str:
    """The key prefix of a model's rows of `table` (predictions or feedback)."""
    return f"{PREFIXES[table]}model={quote(model, safe='')}/"


def partition(model: str, hour: int, table: str = "predictions") -> str:
    """The key prefix of a model's rows of `table` in an hour (whole hours since the epoch,
    UTC)."""
    name = datetime.fromtimestamp(hour * SECONDS_PER_HOUR, UTC).strftime(HOUR)
    return f"{model_prefix(model, table)}hour={name}/"


def write_segment(
    sink: Sink,
    frame: pd.DataFrame,
    log_id: str,
    first_id: int,
    last_id: int,
    table: str = "predictions",
) -> list[str]:
    """Put the rows first_id..last_id of `table` of the log `log_id`
    (PredictionLog.read_segment's frame) as one Parquet object per (model, hour); returns the
    keys. A failed put raises: the caller ships the whole segment again later, to the same
    keys with the same bytes."""
    keys = []
    hours = frame["ts"] // SECONDS_PER_HOUR  # exact: the reader prunes with the same arithmetic
    for (model, hour), rows in frame.groupby([frame["model"], hours], sort=True):
        replica = quote(rows["replica"].iloc[0], safe="")
        prefix = partition(model, int(hour), table)
        key = f"{prefix}{replica}-{log_id}-{first_id:012d}-{last_id:012d}"
        keys.append(f"{key}.parquet")
        sink.put(keys[-1], _parquet(rows))
    return keys


def _parquet(rows: pd.DataFrame) -> bytes:
    """One Parquet file of rows: FILE_FIELDS, then each drift value that any row has, as
    float64 (the other models' columns of a mixed segment are left out)."""
    values = [
        name for name in rows.columns if name not in META_COLUMNS and rows[name].notna().any()
    ]
    schema = pa.schema([*FILE_FIELDS, *(pa.field(name, pa.float64()) for name in values)])
    table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
    buffer = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(), buffer, compression=COMPRESSION)
    return buffer.getvalue().to_pybytes()


def read_window(
    location: str | Path,
    model: str,
    since: float | None,
    until: float | None,
    table: str = "predictions",
) -> tuple[pd.DataFrame, list[str]]:
    """(rows, sources): the model's rows of `table` (predictions or feedback) with
    since <= ts < until (None: no bound), in PredictionLog.read's columns, from a SQLite log
    (sources: its path), a sink (sources: the keys of the objects opened, only those of the
    hours overlapping the window; rows sorted by ts, replica, request_id, image_index), or a
    path that does not exist (no rows, no sources: opening it would create a log)."""
    location = str(location)
    if not is_sink(location):
        if not Path(location).exists():
            return pd.DataFrame(columns=META_COLUMNS), []
        log = PredictionLog(location)
        return log.read(model=model, since=since, until=until, table=table), [location]
    sink = Sink(location)
    keys = _window_keys(sink, model, since, until, table)
    with ThreadPoolExecutor(WORKERS) as pool:
        tables = list(pool.map(lambda key: pq.read_table(pa.BufferReader(sink.get(key))), keys))
    return _window_rows(tables, model, since, until), keys


def read_feedback(location: str | Path, model: str, since: float | None = None) -> pd.DataFrame:
    """The model's feedback received since `since` (None: all there is), from a SQLite log, a
    sink or nothing (read_window's locations): ts, replica, request_id, image_index, then
    label_<attribute> for each attribute labelled at least once, sorted by name (1.0, 0.0, or
    NaN where the image has no label for it). One row per answered image (replica,
    request_id, image_index): for each attribute the newest label sent, ts the newest
    feedback's; sorted like a window."""
    rows, _ = read_window(location, model, since, None, table="feedback")
    labels = sorted(name for name in rows.columns if name.startswith(TABLES["feedback"].prefix))
    newest = rows.sort_values("ts", kind="stable").groupby(IMAGE)[["ts", *labels]].last()
    frame = newest.reset_index()[["ts", *IMAGE, *labels]]
    frame = frame.astype({"ts": "float64", "image_index": "int64"})
    return frame.sort_values(ORDER, ignore_index=True)


def _window_keys(
    sink: Sink, model: str, since: float | None, until: float | None, table: str
) -> list[str]:
    """The model's keys of `table` in the hours h overlapping [since, until):
    h * 3600 < until and (h + 1) * 3600 > since. One listing per hour, or of the model's prefix
    when the window has no start or no end."""
    first = None if since is None else int(since // SECONDS_PER_HOUR)
    last = None if until is None else int(-(-until // SECONDS_PER_HOUR)) - 1
    if first is not None and last is not None:
        with ThreadPoolExecutor(WORKERS) as pool:
            prefixes = [partition(model, hour, table) for hour in range(first, last + 1)]
            return sorted(chain.from_iterable(pool.map(sink.keys, prefixes)))
    keys = sink.keys(model_prefix(model, table))
    if first is not None:
        keys = [key for key in keys if _folder(key) >= partition(model, first, table)]
    if last is not None:
        keys = [key for key in keys if _folder(key) <= partition(model, last, table)]
    return keys


def _folder(key: str) -> str:
    return key[: key.rindex("/") + 1]


def _window_rows(
    tables: list[pa.Table], model: str, since: float | None, until: float | None
) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame(columns=META_COLUMNS)
    table = pa.concat_tables(tables, promote_options="default")
    bounds = [
        compare(table["ts"], bound)
        for compare, bound in ((pc.greater_equal, since), (pc.less, until))
        if bound is not None
    ]
    if bounds:
        table = table.filter(reduce(pc.and_, bounds))
    frame = table.to_pandas()
    frame.insert(META_COLUMNS.index("model"), "model", model)
    return frame.sort_values(ORDER, kind="stable", ignore_index=True)
