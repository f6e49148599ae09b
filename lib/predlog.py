"""The prediction log: one row per answered image, what MonitorFlow compares with training.

A SQLite file in WAL mode: several gunicorn workers append at once (writers queue on the
database lock, readers never block), and a committed row survives the writing process being
killed. Each row holds the timestamp, request id, model run, and a JSON object of drift values
(lib.features: image features, prob_<attribute>, emb_<i>), so the schema does not change when
a model's attributes or projection size do.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    drift_values TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_model_ts ON predictions (model, ts);
"""


class PredictionLog:
    def __init__(
        self,
        path: str | Path,
        max_age_hours: float | None = None,
        max_rows: int | None = None,
        prune_every: int = 1000,
    ):
        """Retention: rows older than max_age_hours, and the oldest beyond max_rows, are
        deleted every `prune_every` appends made through this object."""
        self.path = Path(path)
        self.max_age_hours, self.max_rows = max_age_hours, max_rows
        self.prune_every, self._appends = prune_every, itertools.count(1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as db:
            db.executescript(SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not be shared)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: in WAL mode a commit survives the process dying; only a power loss
            # can take back the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def append(self, request_id: str, model: str, rows: list[dict[str, float]]) -> None:
        """Write one row per image of a request, in one transaction, before it is answered."""
        now = time.time()
        db = self._connection()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO predictions (ts, request_id, model, image_index, drift_values) "
                "VALUES (?, ?, ?, ?, ?)",
                [(now, request_id, model, i, json.dumps(row)) for i, row in enumerate(rows)],
            )
        retention = self.max_age_hours is not None or self.max_rows is not None
        if retention and next(self._appends) % self.prune_every == 0:
            self.prune()

    def prune(self, now: float | None = None) -> int:
        """Apply retention: drop rows older than max_age_hours, then the oldest beyond
        max_rows. Returns how many rows were deleted."""
        db = self._connection()
        deleted = 0
        with db:
            db.execute("BEGIN IMMEDIATE")
            if self.max_age_hours is not None:
                cutoff = (now or time.time()) - self.max_age_hours * 3600
                deleted += db.execute("DELETE FROM predictions WHERE ts < ?", (cutoff,)).rowcount
            if self.max_rows is not None:
                deleted += db.execute(
                    "DELETE FROM predictions WHERE id <= "
                    "(SELECT id FROM predictions ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (self.max_rows,),
                ).rowcount
        return deleted

    def read(
        self, model: str | None = None, since: float | None = None, until: float | None = None
    ) -> pd.DataFrame:
        """Rows with since <= ts < until, oldest first: ts, request_id, model, image_index and
        one column per drift value."""
        query, args = _where(model, since, until)
        rows = self._connection().execute(
            "SELECT ts, request_id, model, image_index, drift_values FROM predictions"
            f"{query} ORDER BY id",
            args,
        )
        meta, values = [], []
        for ts, request_id, model_name, index, drift_values in rows:
            meta.append((ts, request_id, model_name, index))
            values.append(json.loads(drift_values))
        frame = pd.DataFrame(meta, columns=["ts", "request_id", "model", "image_index"])
        return pd.concat([frame, pd.DataFrame.from_records(values)], axis=1)


def _where(model: str | None, since: float | None, until: float | None) -> tuple[str, list]:
    clauses, args = [], []
    for clause, value in (("model = ?", model), ("ts >= ?", since), ("ts < ?", until)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args
