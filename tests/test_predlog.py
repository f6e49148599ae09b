"""The prediction log: rows in, rows out, replicas, the shipping segments, retention, a locked
or full database, an older file, several writers at once, and feedback beside the rows."""

import multiprocessing
import sqlite3
import time
from contextlib import closing

import pytest
from helpers import locked

from lib.predlog import LogUnavailable, PredictionLog, UnknownPrediction


def rows(n: int, value: float = 0.5) -> list[dict[str, float]]:
    return [{"brightness": value, "prob_Smiling": value / 2} for _ in range(n)]


def test_rows_come_back_with_their_values_by_model_and_window(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.append("r1", "TrainFlow/1", rows(2, 0.2))
    log.append("r2", "TrainFlow/2", rows(1, 0.8))
    frame = log.read()
    assert list(frame["request_id"]) == ["r1", "r1", "r2"]
    assert list(frame["image_index"]) == [0, 1, 0]
    assert list(frame["brightness"]) == [0.2, 0.2, 0.8]
    assert len(log.read(model="TrainFlow/2")) == 1
    assert len(log.read(model="TrainFlow/1")) == 2
    assert log.read(since=frame["ts"].max() + 1).empty
    assert len(log.read(until=frame["ts"].max() + 1)) == 3
    assert sqlite3.connect(tmp_path / "log.db").execute("PRAGMA journal_mode").fetchone() == (
        "wal",
    )


def test_an_empty_log_reads_as_an_empty_frame(tmp_path):
    frame = PredictionLog(tmp_path / "new" / "log.db").read()
    assert frame.empty and list(frame.columns) == [
        "ts",
        "replica",
        "request_id",
        "model",
        "image_index",
    ]


def test_every_row_carries_the_replica_that_wrote_it(tmp_path):
    PredictionLog(tmp_path / "log.db", replica="pod-a").append("a", "m", rows(2))
    PredictionLog(tmp_path / "log.db", replica="pod-b").append("b", "m", rows(1))
    frame = PredictionLog(tmp_path / "log.db").read()
    assert list(frame.columns[:5]) == ["ts", "replica", "request_id", "model", "image_index"]
    assert list(frame["replica"]) == ["pod-a", "pod-a", "pod-b"]


def test_the_log_id_is_made_once_per_file(tmp_path):
    first = PredictionLog(tmp_path / "log.db").log_id
    assert PredictionLog(tmp_path / "log.db").log_id == first
    assert len(first) == 32 and PredictionLog(tmp_path / "other.db").log_id != first


def test_a_pending_segment_survives_a_crash_unchanged(tmp_path):
    """Recorded, then the shipper dies before marking it: the file reopened gives the same
    segment, with the same rows, even though more rows arrived since."""
    log = PredictionLog(tmp_path / "log.db")
    for i in range(3):
        log.append(f"r{i}", "m", rows(2))
    assert log.pending_segment(limit=4) == (1, 4)
    recorded = log.read_segment(1, 4)

    reopened = PredictionLog(tmp_path / "log.db")
    reopened.append("late", "m", rows(2))
    assert reopened.pending_segment(limit=100) == (1, 4)
    assert reopened.read_segment(1, 4).equals(recorded)
    assert list(recorded["request_id"]) == ["r0", "r0", "r1", "r1"]


def test_marking_a_segment_shipped_deletes_exactly_its_rows(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    assert log.pending_segment(limit=10) is None and log.oldest_unshipped_ts() is None
    for i in range(3):
        log.append(f"r{i}", "m", rows(2))
    first_ts = log.read()["ts"].min()
    segment = log.pending_segment(limit=3)
    with pytest.raises(ValueError, match="not the pending segment"):
        log.mark_shipped(1, 2)
    log.mark_shipped(*segment)
    assert list(log.read()["request_id"]) == ["r1", "r2", "r2"]
    assert log.unshipped_rows() == 3 and log.oldest_unshipped_ts() > first_ts

    assert log.pending_segment(limit=10) == (4, 6)
    log.mark_shipped(4, 6)
    assert log.pending_segment(limit=10) is None and log.unshipped_rows() == 0
    # Every row was deleted: a new one still gets an id above the shipped ones.
    log.append("new", "m", rows(1))
    assert log.pending_segment(limit=10) == (7, 7)


def test_retention_by_age_and_by_count_spares_the_pending_segment(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.append("old", "m", rows(2))
    now = log.read()["ts"].max()
    assert log.prune(max_age_hours=None, max_rows=None) == 0
    assert log.prune(max_age_hours=1.0, max_rows=None, now=now + 2 * 3600) == 2
    log.append("a", "m", rows(2))
    log.append("b", "m", rows(2))
    assert log.prune(max_age_hours=1.0, max_rows=3) == 1  # the oldest beyond three rows
    assert list(log.read()["request_id"]) == ["a", "b", "b"]

    segment = log.pending_segment(limit=1)
    assert log.prune(max_age_hours=1.0, max_rows=0, now=now + 2 * 3600) == 2
    assert log.read_segment(*segment)["request_id"].tolist() == ["a"]


def test_a_locked_log_is_unavailable_until_the_lock_is_released(tmp_path):
    path = tmp_path / "log.db"
    log = PredictionLog(path, timeout_s=0.2)
    with locked(path):
        started = time.monotonic()
        with pytest.raises(LogUnavailable) as refused:
            log.append("blocked", "m", rows(1))
        assert 0.2 <= time.monotonic() - started < 2
        assert refused.value.reason == "locked"
        assert str(path) in refused.value.message and "locked" in str(refused.value)
    log.append("after", "m", rows(1))
    assert list(log.read()["request_id"]) == ["after"]


def test_a_full_log_is_unavailable_until_space_returns(tmp_path, monkeypatch):
    """The file may grow four pages past its empty size (a tiny disk): appends fail with
    "full", nothing half-written; once shipped rows are deleted, appends work again."""
    path = tmp_path / "log.db"
    PredictionLog(path)
    with closing(sqlite3.connect(path)) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    connect = sqlite3.connect

    def tiny_disk(*args, **kwargs):
        db = connect(*args, **kwargs)
        db.execute(f"PRAGMA max_page_count = {pages + 4}")
        return db

    monkeypatch.setattr(sqlite3, "connect", tiny_disk)
    log = PredictionLog(path)
    with pytest.raises(LogUnavailable) as full:
        for i in range(10_000):
            log.append(str(i), "m", rows(4))
    assert full.value.reason == "full" and str(path) in full.value.message
    written = log.unshipped_rows()
    assert written == 4 * i  # the failed request left no row
    with pytest.raises(LogUnavailable):
        log.append("still full", "m", rows(4))

    log.mark_shipped(*log.pending_segment(limit=written))
    log.append("after", "m", rows(4))
    assert log.read()["request_id"].tolist() == ["after"] * 4


OLD_SCHEMA = """
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    image_index INTEGER NOT NULL,
    drift_values TEXT NOT NULL
);
CREATE INDEX predictions_model_ts ON predictions (model, ts);
INSERT INTO predictions (ts, request_id, model, image_index, drift_values)
VALUES (1.0, 'old', 'm', 0, '{"brightness": 0.1}');
"""


def test_a_log_written_before_replicas_is_migrated(tmp_path):
    path = tmp_path / "log.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(OLD_SCHEMA)
    log = PredictionLog(path, replica="pod-a")
    log.append("new", "m", rows(1))
    log.add_feedback("new", 0, {"Smiling": 1})  # the feedback tables are added
    with pytest.raises(UnknownPrediction):
        log.add_feedback("old", 0, {"Smiling": 1})  # answered before requests were recorded
    frame = log.read()
    assert list(frame["replica"]) == ["", "pod-a"]
    assert list(frame["brightness"]) == [0.1, 0.5]
    assert log.pending_segment(limit=10) == (1, 2)  # the old row is shipped too
    with closing(sqlite3.connect(path)) as db:
        indexes = {row[1] for row in db.execute("PRAGMA index_list(predictions)")}
    assert "predictions_ts" in indexes


def _write(path: str, worker: int) -> None:
    log = PredictionLog(path, replica=f"w{worker}")
    for i in range(50):
        log.append(f"{worker}-{i}", "m", rows(2))


def test_several_processes_append_at_once_without_losing_rows(tmp_path):
    path = str(tmp_path / "log.db")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(path, w)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    frame = PredictionLog(path).read()
    assert len(frame) == 4 * 50 * 2
    assert frame.groupby("replica").size().to_dict() == {f"w{w}": 100 for w in range(4)}


def test_feedback_is_stored_under_the_requests_replica_and_model(tmp_path):
    PredictionLog(tmp_path / "log.db", replica="pod-a").append("r1", "TrainFlow/1", rows(2))
    log = PredictionLog(tmp_path / "log.db", replica="pod-b")  # another writer of the file
    log.append("r2", "TrainFlow/2", rows(1))
    stored = log.add_feedback("r1", 1, {"Smiling": 1, "Eyeglasses": 0})
    assert stored == {
        "model": "TrainFlow/1",
        "replica": "pod-a",
        "request_id": "r1",
        "image_index": 1,
        "labels": {"Smiling": 1, "Eyeglasses": 0},
    }
    log.add_feedback("r1", 1, {"Smiling": 0})
    log.add_feedback("r2", 0, {"Bald": 1})
    feedback = log.read(table="feedback")
    assert list(feedback.columns) == [
        "ts",
        "replica",
        "request_id",
        "model",
        "image_index",
        "label_Smiling",
        "label_Eyeglasses",
        "label_Bald",
    ]
    assert feedback["label_Smiling"].tolist()[:2] == [1.0, 0.0]
    assert feedback["label_Eyeglasses"].isna().tolist() == [False, True, True]
    assert feedback.dtypes["label_Bald"] == "float64"
    assert list(log.read(model="TrainFlow/2", table="feedback")["request_id"]) == ["r2"]
    assert len(log.read()) == 3  # the predictions are untouched


def test_feedback_for_an_unknown_request_or_image_is_refused(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    log.append("r1", "m", rows(2))
    with pytest.raises(
        UnknownPrediction, match="no request 'elsewhere' in the log of replica 'pod-a'"
    ):
        log.add_feedback("elsewhere", 0, {"Smiling": 1})
    for index in (2, -1):
        with pytest.raises(UnknownPrediction, match="had 2 image"):
            log.add_feedback("r1", index, {"Smiling": 1})
    log.append("r1", "m", rows(3))  # the id sent again: the newest request counts
    log.add_feedback("r1", 2, {"Smiling": 1})
    assert log.read(table="feedback")["image_index"].tolist() == [2]


def test_feedback_is_taken_after_the_requests_rows_were_shipped(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.append("r1", "m", rows(2))
    log.mark_shipped(*log.pending_segment(limit=10))
    assert log.unshipped_rows() == 0
    log.add_feedback("r1", 1, {"Smiling": 1})
    assert log.read(table="feedback")["request_id"].tolist() == ["r1"]


def test_feedback_ships_in_its_own_segments(tmp_path):
    """The feedback table's segments and high-water mark are its own: shipping one table
    leaves the other's rows and pending segment as they were."""
    log = PredictionLog(tmp_path / "log.db")
    log.append("r1", "m", rows(3))
    for i in range(3):
        log.add_feedback("r1", i, {"Smiling": i % 2})
    assert log.pending_segment(limit=2, table="feedback") == (1, 2)
    assert log.pending_segment(limit=10) == (1, 3)
    assert log.read_segment(1, 2, table="feedback")["label_Smiling"].tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="not the pending segment"):
        log.mark_shipped(1, 3, table="feedback")
    log.mark_shipped(1, 2, table="feedback")
    assert log.read(table="feedback")["image_index"].tolist() == [2]
    assert log.pending_segment(limit=10) == (1, 3) and log.unshipped_rows() == 3
    assert log.pending_segment(limit=10, table="feedback") == (3, 3)


def test_retention_prunes_feedback_and_requests_like_the_rows(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.append("old", "m", rows(1))
    log.add_feedback("old", 0, {"Smiling": 1})
    later = log.read()["ts"].max() + 2 * 3600
    assert log.prune(max_age_hours=1.0, max_rows=None, now=later) == 2  # a row, a label
    with pytest.raises(UnknownPrediction):
        log.add_feedback("old", 0, {"Smiling": 1})
    assert log.read(table="feedback").empty

    for name in "abc":
        log.append(name, "m", rows(1))
        log.add_feedback(name, 0, {"Smiling": 1})
    assert log.prune(max_age_hours=None, max_rows=2) == 2
    assert log.read(table="feedback")["request_id"].tolist() == ["b", "c"]
    with pytest.raises(UnknownPrediction):
        log.add_feedback("a", 0, {"Smiling": 1})
    log.add_feedback("b", 0, {"Smiling": 0})
