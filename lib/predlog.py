"""The prediction log: one row per answered image, each replica's durable buffer of its traffic.

A SQLite file in WAL mode: several gunicorn workers append at once (writers queue on the
database lock for at most `timeout_s`, readers never block), and a committed row survives the
writing process being killed. Each row holds the timestamp, the replica that answered, the
request id, model run, image index and a JSON object of drift values (lib.features: image
features, prob_<attribute>, emb_<i>), so the schema does not change when a model's attributes
or projection size do. A write that fails (the database locked past the timeout, the disk full)
raises LogUnavailable: serving answers 503 rather than an answer whose row was not written.

Shipping (lib.shipper) moves the rows to PREDICTION_SINK in segments: a segment is recorded in
the file before it is uploaded (pending_segment) and its rows are deleted only once its objects
are confirmed (mark_shipped), so a shipper killed or failing mid-upload ships the very same
segment next time. Row ids come from AUTOINCREMENT: never reused, even after the newest rows are
deleted, so every row above the high-water mark `shipped_through` is one not yet shipped.
Shipped rows are deleted, so every row in the file is unshipped.

Feedback (POST /feedback: true labels for some attributes of one answered image) is kept beside
the rows: a `feedback` table, shipped the same way with its own segments and high-water mark
(the `table` argument of read, pending_segment, read_segment and mark_shipped), and a `requests`
table, one row per answered request (replica, model, image count), written in the same
transaction as its rows, against which feedback is checked: it outlives the rows' shipping, so
feedback for a request whose rows have left the file is still taken.

Retention (prune) runs in the shipper, never on the request path: rows, feedback and requests
older than a maximum age and the oldest beyond a maximum count are deleted, shipped or not, using
the ts index and the id.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

META_COLUMNS = ["ts", "replica", "request_id", "model", "image_index"]


class Table(NamedTuple):
    """A shipped table: META_COLUMNS and a JSON object of values, read as one float64 column
    per value named `prefix` + its key; its shipping state in log_state under `state` + key."""

    values: str
    prefix: str
    state: str


TABLES = {
    "predictions": Table("drift_values", "", ""),
    "feedback": Table("labels", "label_", "feedback_"),  # {"Eyeglasses": 1}: label_Eyeglasses
}

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS predictions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        replica TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        image_index INTEGER NOT NULL,
        drift_values TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        replica TEXT NOT NULL,
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        image_index INTEGER NOT NULL,
        labels TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS requests (
        request_id TEXT PRIMARY KEY,
        replica TEXT NOT NULL,
        model TEXT NOT NULL,
        images INTEGER NOT NULL,
        ts REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS log_state (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
]
INDEXES = [
    "CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model, ts)",
    "CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts)",
    "CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (ts)",
    "CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts)",
]


class LogUnavailable(Exception):
    """The log could not be written or read. `reason`: "locked" (another writer held it past
    the timeout), "full" (no space on its disk, or the file at its size limit) or "io"."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


class UnknownPrediction(LookupError):
    """Feedback names a request this log has no record of, or an image beyond its images."""


class PredictionLog:
    def __init__(self, path: str | Path, replica: str = "", timeout_s: float = 5.0):
        """Open the log at `path`, creating it (or adding what an older file lacks). Rows
        appended through this object carry `replica`; a write waits at most `timeout_s` for
        another writer's lock."""
        self.path = Path(path)
        self.replica, self.timeout_s = replica, timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._transaction() as db:
            for statement in SCHEMA:
                db.execute(statement)
            columns = {row[1] for row in db.execute("PRAGMA table_info(predictions)")}
            if "replica" not in columns:  # a log written before replicas had ids
                db.execute("ALTER TABLE predictions ADD COLUMN replica TEXT NOT NULL DEFAULT ''")
            for statement in INDEXES:
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO log_state VALUES ('log_id', ?)", (uuid.uuid4().hex,))
            db.executemany(
                "INSERT OR IGNORE INTO log_state VALUES (?, 0)",
                [(f"{table.state}shipped_through",) for table in TABLES.values()],
            )
            self._log_id = _state(db, "log_id")

    @property
    def log_id(self) -> str:
        """This file's id, made when it was created: object names of its segments carry it, so
        two replicas (or a file lost and made again) never write the same object."""
        return self._log_id

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not be shared)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives the process dying; only a power loss
            # can take back the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        """Any sqlite3 error in the block is raised as LogUnavailable, naming the file."""
        try:
            yield
        except sqlite3.Error as error:
            db = getattr(self._local, "db", None)
            if db is not None and db.in_transaction:
                with suppress(sqlite3.Error):
                    db.rollback()
            raise _as_unavailable(self.path, self.timeout_s, error) from error

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database lock at once (BEGIN IMMEDIATE)."""
        with self._unavailable():
            db = self._connection()
            with db:
                db.execute("BEGIN IMMEDIATE")
                yield db

    def append(self, request_id: str, model: str, rows: list[dict[str, float]]) -> None:
        """Write one row per image of a request, and its record in `requests` (a request id
        sent again replaces it), in one transaction, before it is answered. LogUnavailable if
        it cannot be written."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO predictions "
                "(ts, replica, request_id, model, image_index, drift_values) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (now, self.replica, request_id, model, i, json.dumps(row))
                    for i, row in enumerate(rows)
                ],
            )
            db.execute(
                "INSERT OR REPLACE INTO requests (request_id, replica, model, images, ts) "
                "VALUES (?, ?, ?, ?, ?)",
                (request_id, self.replica, model, len(rows), now),
            )

    def add_feedback(
        self, request_id: str, image_index: int, labels: dict[str, int]
    ) -> dict[str, Any]:
        """Store true labels (attribute: 0 or 1) for one image of a request this log answered,
        under the request's replica and model; returns what was stored. UnknownPrediction if
        the log has no record of the request (answered elsewhere, or older than its
        retention) or the request had no such image; LogUnavailable if it cannot be written."""
        with self._transaction() as db:
            found = db.execute(
                "SELECT replica, model, images FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if found is None:
                raise UnknownPrediction(
                    f"no request {request_id!r} in the log of replica {self.replica!r}: "
                    "feedback goes to the replica that answered (the answer's `replica`), "
                    "while the log still holds the request (its retention)"
                )
            replica, model, images = found
            if not 0 <= image_index < images:
                raise UnknownPrediction(
                    f"request {request_id!r} had {images} image(s): "
                    f"there is no image_index {image_index}"
                )
            db.execute(
                "INSERT INTO feedback (ts, replica, request_id, model, image_index, labels) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), replica, request_id, model, image_index, json.dumps(labels)),
            )
        return {
            "model": model,
            "replica": replica,
            "request_id": request_id,
            "image_index": image_index,
            "labels": labels,
        }

    def read(
        self,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        table: str = "predictions",
    ) -> pd.DataFrame:
        """Rows of `table` (predictions or feedback) with since <= ts < until, oldest first:
        ts, replica, request_id, model, image_index and one float64 column per value (a
        prediction's drift values; feedback's label_<attribute>, NaN where not labelled)."""
        clauses, args = [], []
        for clause, value in (("model = ?", model), ("ts >= ?", since), ("ts < ?", until)):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        return self._frame(table, " AND ".join(clauses) or "1", args)

    def read_segment(self, first: int, last: int, table: str = "predictions") -> pd.DataFrame:
        """The rows of `table` with ids first..last, as read() gives them."""
        return self._frame(table, "id BETWEEN ? AND ?", [first, last])

    def _frame(self, table: str, where: str, args: list) -> pd.DataFrame:
        spec = TABLES[table]
        with self._unavailable():
            rows = self._connection().execute(
                f"SELECT {', '.join(META_COLUMNS)}, {spec.values} FROM {table} "
                f"WHERE {where} ORDER BY id",
                args,
            )
            meta, values = [], []
            for *fields, encoded in rows:
                meta.append(fields)
                values.append(json.loads(encoded))
        frame = pd.DataFrame(meta, columns=META_COLUMNS)
        values = pd.DataFrame.from_records(values).astype("float64").add_prefix(spec.prefix)
        return pd.concat([frame, values], axis=1)

    def pending_segment(self, limit: int, table: str = "predictions") -> tuple[int, int] | None:
        """The segment of `table` being shipped, (first id, last id): the one recorded earlier
        if its shipment did not finish (unchanged, so a retry writes the same objects), else a
        new one of the oldest unshipped rows, at most `limit`, recorded now. None if every row
        is shipped."""
        with self._transaction() as db:
            first, last = _pending(db, table)
            if first is not None:
                return first, last
            first, last = db.execute(
                f"SELECT min(id), max(id) FROM "
                f"(SELECT id FROM {table} WHERE id > ? ORDER BY id LIMIT ?)",
                (_state(db, f"{TABLES[table].state}shipped_through"), limit),
            ).fetchone()
            if first is None:
                return None
            _set_shipping(db, table, pending_first=first, pending_last=last)
            return first, last

    def mark_shipped(self, first: int, last: int, table: str = "predictions") -> None:
        """The pending segment's objects are confirmed: delete its rows, move the high-water
        mark to `last` and clear the pending segment, in one transaction."""
        with self._transaction() as db:
            pending = _pending(db, table)
            if pending != (first, last):
                raise ValueError(f"{table} {first}-{last} are not the pending segment {pending}")
            db.execute(f"DELETE FROM {table} WHERE id BETWEEN ? AND ?", (first, last))
            _set_shipping(db, table, shipped_through=last, pending_first=None, pending_last=None)

    def oldest_unshipped_ts(self) -> float | None:
        """The timestamp of the oldest row not shipped yet (None when there is none)."""
        with self._unavailable():
            return self._connection().execute("SELECT min(ts) FROM predictions").fetchone()[0]

    def unshipped_rows(self) -> int:
        """How many rows are not shipped yet."""
        with self._unavailable():
            return self._connection().execute("SELECT count(*) FROM predictions").fetchone()[0]

    def prune(
        self, max_age_hours: float | None, max_rows: int | None, now: float | None = None
    ) -> int:
        """Apply retention to each table: delete what is older than max_age_hours, then the
        oldest beyond max_rows (None: no limit), shipped or not, except a pending segment's
        (kept as it was recorded, at most a shipment's worth). Returns how many rows and
        feedback rows were deleted (records of requests are not counted)."""
        cutoff = None if max_age_hours is None else (now or time.time()) - max_age_hours * 3600
        with self._transaction() as db:
            deleted = 0
            for table in TABLES:
                first, last = _pending(db, table)
                deleted += _prune(db, table, cutoff, max_rows, (first or 0, last or 0))
            _prune(db, "requests", cutoff, max_rows)
        return deleted


def _prune(
    db: sqlite3.Connection,
    table: str,
    cutoff: float | None,
    max_rows: int | None,
    spared: tuple[int, int] = (0, 0),
) -> int:
    """Delete the table's rows with ts < cutoff, then all but the newest max_rows (by rowid),
    except the rowids spared (first, last); returns how many."""
    deleted = 0
    if cutoff is not None:
        deleted += db.execute(
            f"DELETE FROM {table} WHERE ts < ? AND rowid NOT BETWEEN ? AND ?", (cutoff, *spared)
        ).rowcount
    if max_rows is not None:
        deleted += db.execute(
            f"DELETE FROM {table} WHERE rowid <= "
            f"(SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1 OFFSET ?) "
            "AND rowid NOT BETWEEN ? AND ?",
            (max_rows, *spared),
        ).rowcount
    return deleted


def _state(db: sqlite3.Connection, key: str) -> Any:
    row = db.execute("SELECT value FROM log_state WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _pending(db: sqlite3.Connection, table: str) -> tuple[int | None, int | None]:
    """The ids (first, last) of the table's pending segment; (None, None) when none is."""
    state = TABLES[table].state
    return _state(db, f"{state}pending_first"), _state(db, f"{state}pending_last")


def _set_shipping(db: sqlite3.Connection, table: str, **values: Any) -> None:
    """Set the table's shipping state: shipped_through, pending_first, pending_last."""
    state = TABLES[table].state
    db.executemany(
        "INSERT OR REPLACE INTO log_state VALUES (?, ?)",
        [(f"{state}{key}", value) for key, value in values.items()],
    )


def _as_unavailable(path: Path, timeout_s: float, error: sqlite3.Error) -> LogUnavailable:
    """The LogUnavailable for a sqlite3 error, with its reason and a sentence naming the log."""
    name = getattr(error, "sqlite_errorname", None) or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        reason = "locked"
        what = f"is locked by another writer (waited {timeout_s:g} s)"
    elif name.startswith("SQLITE_FULL"):
        reason, what = "full", "is full (no space left on its disk, or at its size limit)"
    else:
        reason, what = "io", "cannot be used"
    return LogUnavailable(reason, f"the prediction log {path} {what}: {error}")
