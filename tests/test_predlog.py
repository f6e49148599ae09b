"""The prediction log: rows in, rows out, retention, and several writers at once."""

import multiprocessing
import sqlite3

from lib.predlog import PredictionLog


def rows(n: int, value: float = 0.5) -> list[dict[str, float]]:
    return [{"brightness": value, "prob_Smiling": value / 2} for _ in range(n)]


def test_rows_come_back_with_their_values_by_model_and_window(tmp_path):
    log = PredictionLog(tmp_path / "log.db")
    log.append("r1", "TrainFlow/1", rows(2, 0.2))
    log.append("r2", "TrainFlow/2", rows(1, 0.8))
    frame = log.read()
    assert list(frame["request_id"]) == ["r1", "r1", "r2"]
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
    assert frame.empty and "ts" in frame.columns


def test_retention_by_age_and_by_count(tmp_path):
    log = PredictionLog(tmp_path / "log.db", max_age_hours=1.0, max_rows=3)
    log.append("old", "m", rows(2))
    now = log.read()["ts"].max()
    assert log.prune(now=now + 2 * 3600) == 2  # both older than an hour
    log.append("a", "m", rows(2))
    log.append("b", "m", rows(2))
    assert log.prune() == 1  # the oldest beyond three rows
    assert list(log.read()["request_id"]) == ["a", "b", "b"]


def test_retention_runs_every_n_appends(tmp_path):
    log = PredictionLog(tmp_path / "log.db", max_rows=2, prune_every=3)
    for i in range(2):
        log.append(str(i), "m", rows(1))
    log.append("2", "m", rows(1))  # the third append prunes
    assert len(log.read()) == 2


def _write(path: str, worker: int) -> None:
    log = PredictionLog(path)
    for i in range(50):
        log.append(f"{worker}-{i}", "m", rows(2))


def test_several_processes_append_at_once_without_losing_rows(tmp_path):
    path = str(tmp_path / "log.db")
    PredictionLog(path)
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write, args=(path, w)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert len(PredictionLog(path).read()) == 4 * 50 * 2
