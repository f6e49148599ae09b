"""The sink: segments written as Hive-partitioned Parquet in a folder and on gs:// (the GCS
emulator), and windows read back from a sink, a SQLite log or nothing; feedback beside them,
read back as the newest label of each attribute for each image."""

import re
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from lib.predlog import PredictionLog
from lib.sink import Sink, read_feedback, read_window, write_segment

HOUR = 3600
START = 1_750_000_000 // HOUR * HOUR  # an hour's first second
MODEL, OTHER = "TrainFlow/12", "TrainMultiNodeFlow/7"


def segment(ts, model: str = MODEL, replica: str = "pod-a", seed: int = 0) -> pd.DataFrame:
    """A frame as PredictionLog.read_segment gives it: one row per ts, drift values whose
    floats need all 64 bits."""
    n = len(ts)
    values = np.random.default_rng(seed).random((n, 2)) / 3
    return pd.DataFrame(
        {
            "ts": np.asarray(ts, dtype=float),
            "replica": replica,
            "request_id": [f"{replica}-{seed}-{i}" for i in range(n)],
            "model": model,
            "image_index": np.arange(n, dtype=np.int64),
            "brightness": values[:, 0],
            "prob_Smiling": values[:, 1],
        }
    )


def window_order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["ts", "replica", "request_id", "image_index"], ignore_index=True)


@pytest.fixture(params=["folder", pytest.param("gs", marks=pytest.mark.emulator)])
def location(request, tmp_path) -> str:
    """A sink in a folder, or under a prefix of the emulator's bucket."""
    if request.param == "gs":
        request.getfixturevalue("gcs")
        return "gs://facet/predictions"
    return str(tmp_path / "sink")


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """The keys of the objects read from any sink, as they are read."""
    keys, get = [], Sink.get

    def recording(self, key):
        keys.append(key)
        return get(self, key)

    monkeypatch.setattr(Sink, "get", recording)
    return keys


def test_a_segment_comes_back_as_it_was_written(location):
    mine = segment(START + np.array([10.0, 10.0, HOUR + 0.123456789, 5 * HOUR - 1e-6]))
    others = segment([START + 20.0], model=OTHER, seed=1)
    frame = pd.concat([mine, others], ignore_index=True).assign(prob_Eyeglasses=np.nan)
    frame.loc[frame["model"] == OTHER, "prob_Eyeglasses"] = 0.25  # only the other model's
    keys = write_segment(Sink(location), frame, "ab12", 1, 5)
    assert len(keys) == 4  # (MODEL, 3 hours) and (OTHER, 1)

    rows, sources = read_window(location, MODEL, None, START + 6 * HOUR)
    pd.testing.assert_frame_equal(rows, window_order(mine), check_exact=True)
    assert sources == sorted(key for key in keys if key.startswith("model=TrainFlow%2F12/"))
    theirs, _ = read_window(location, OTHER, None, START + 6 * HOUR)
    expected = others.assign(prob_Eyeglasses=0.25)
    pd.testing.assert_frame_equal(theirs, expected, check_exact=True)


def test_keys_are_hive_partitions_that_pyarrow_reads(tmp_path):
    frame = segment(START + np.array([1.0, 2.0, HOUR + 3.0]), replica="pod a/1")
    keys = write_segment(Sink(tmp_path), frame, "ab12", 7, 9)
    hour = time.strftime("%Y-%m-%dT%H", time.gmtime(START))
    assert (
        keys[0]
        == f"model=TrainFlow%2F12/hour={hour}/pod%20a%2F1-ab12-000000000007-000000000009.parquet"
    )
    assert all(
        re.fullmatch(r"model=[^/]+/hour=\d{4}-\d\d-\d\dT\d\d/[^/]+\.parquet", k) for k in keys
    )

    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    back = table.to_pandas().sort_values("ts", ignore_index=True)
    assert list(back["model"]) == [MODEL] * 3
    hours = [time.strftime("%Y-%m-%dT%H", time.gmtime(ts)) for ts in frame["ts"]]
    assert list(back["hour"]) == hours and hours[0] != hours[2]
    assert list(back["ts"]) == list(frame["ts"]) and list(back["replica"]) == ["pod a/1"] * 3


def test_a_segment_written_again_replaces_its_objects(location):
    sink, frame = Sink(location), segment(START + np.arange(6) * 1000.0)
    keys = write_segment(sink, frame, "ab12", 1, 6)
    written = [sink.get(key) for key in keys]
    assert write_segment(sink, frame, "ab12", 1, 6) == keys
    assert [sink.get(key) for key in keys] == written and sink.keys() == sorted(keys)
    rows, _ = read_window(location, MODEL, None, START + 10 * HOUR)
    pd.testing.assert_frame_equal(rows, frame, check_exact=True)


def test_a_window_holds_exactly_its_rows_from_the_hours_it_overlaps(location, opened):
    since, until = START + 1800.0, START + 2 * HOUR
    edges = [since - 1e-6, since, START + HOUR, np.nextafter(until, 0), until]
    sink = Sink(location)
    keys = {
        "before": write_segment(sink, segment([START - 1.0], seed=1), "ab12", 1, 1),
        "edges": write_segment(sink, segment(edges, seed=2), "ab12", 2, 6),
        "later": write_segment(sink, segment([START + 3 * HOUR], seed=3), "cd34", 1, 1),
        "other model": write_segment(sink, segment(edges, OTHER, seed=4), "ab12", 7, 11),
    }
    rows, sources = read_window(location, MODEL, since, until)
    assert list(rows["ts"]) == edges[1:4]
    # The partitions of START's hour and the next, not the one holding `until` itself.
    assert sources == sorted(keys["edges"][:2]) and sorted(opened) == sources

    opened.clear()
    everything, sources = read_window(location, MODEL, None, until)
    assert list(everything["ts"]) == [START - 1.0, *edges[:4]]
    assert sources == sorted(keys["before"] + keys["edges"][:2]) and sorted(opened) == sources


def test_a_window_of_a_sqlite_log_or_of_nothing(tmp_path, location):
    log = PredictionLog(tmp_path / "log.db")
    log.append("r1", MODEL, [{"brightness": 0.1}, {"brightness": 0.2}])
    log.append("r2", OTHER, [{"brightness": 0.3}])
    rows, sources = read_window(str(log.path), MODEL, None, time.time() + 1)
    assert list(rows["brightness"]) == [0.1, 0.2] and sources == [str(log.path)]

    nowhere = tmp_path / "nowhere.db"
    rows, sources = read_window(nowhere, MODEL, None, time.time())
    assert rows.empty and "ts" in rows.columns and sources == []
    assert not nowhere.exists()
    rows, sources = read_window(location, MODEL, None, time.time())  # a sink with no rows yet
    assert rows.empty and sources == []


def feedback(ts, request_id: str, labels: dict[str, float], replica: str = "pod-a", model=MODEL):
    """A feedback frame as PredictionLog.read_segment(table="feedback") gives it: one row per
    ts, for image 0 of `request_id`, label_<attribute> columns (NaN: not labelled)."""
    n = len(ts)
    return pd.DataFrame(
        {
            "ts": np.asarray(ts, dtype=float),
            "replica": replica,
            "request_id": request_id,
            "model": model,
            "image_index": np.zeros(n, dtype=np.int64),
            **{f"label_{name}": np.full(n, value, dtype=float) for name, value in labels.items()},
        }
    )


NEWEST_COLUMNS = ["ts", "replica", "request_id", "image_index", "label_Bald", "label_Smiling"]


def test_feedback_is_read_back_as_the_newest_label_of_each_attribute(location, opened):
    """Smiling labelled 1 then 0 an hour later, Bald only in between: the newest Smiling (0)
    and the one Bald; another image's labels stay apart; feedback is not in the predictions
    window, nor are predictions in the feedback."""
    sink = Sink(location)
    first = pd.concat(
        [
            feedback([START + 10.0], "r1", {"Smiling": 1.0, "Bald": np.nan}),
            feedback([START + 20.0], "r1", {"Smiling": np.nan, "Bald": 1.0}),
            feedback([START + 30.0], "r1", {"Smiling": 1.0, "Bald": np.nan}, replica="pod-b"),
        ],
        ignore_index=True,
    )
    keys = write_segment(sink, first, "ab12", 1, 3, table="feedback")
    keys += write_segment(
        sink, feedback([START + HOUR + 5.0], "r1", {"Smiling": 0.0}), "ab12", 4, 4, table="feedback"
    )
    assert all(key.startswith("_feedback/model=TrainFlow%2F12/hour=") for key in keys)
    write_segment(sink, segment([START + 15.0]), "ab12", 1, 1)  # a prediction

    labels = read_feedback(location, MODEL)
    expected = pd.DataFrame(
        {
            "ts": [START + 30.0, START + HOUR + 5.0],
            "replica": ["pod-b", "pod-a"],
            "request_id": ["r1", "r1"],
            "image_index": np.zeros(2, dtype=np.int64),
            "label_Bald": [np.nan, 1.0],
            "label_Smiling": [1.0, 0.0],
        }
    )
    pd.testing.assert_frame_equal(labels, expected, check_exact=True)
    assert sorted(opened) == sorted(keys)

    opened.clear()
    since = read_feedback(location, MODEL, since=START + HOUR)
    assert since["label_Smiling"].tolist() == [0.0] and "label_Bald" not in since
    assert opened == keys[-1:]  # the hours before `since` are not opened
    rows, _ = read_window(location, MODEL, None, START + 2 * HOUR)
    assert rows["request_id"].tolist() == ["pod-a-0-0"]
    assert read_feedback(location, OTHER).empty


def test_pyarrow_reading_the_sinks_root_skips_the_feedback(tmp_path):
    write_segment(Sink(tmp_path), segment([START + 1.0]), "ab12", 1, 1)
    write_segment(
        Sink(tmp_path),
        feedback([START + 2.0], "r1", {"Smiling": 1.0}),
        "ab12",
        1,
        1,
        table="feedback",
    )
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table["request_id"].to_pylist() == ["pod-a-0-0"]
    assert "label_Smiling" not in table.column_names


def test_feedback_of_a_sqlite_log_or_of_nothing(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    log.append("r1", MODEL, [{"brightness": 0.1}, {"brightness": 0.2}])
    log.append("r2", OTHER, [{"brightness": 0.3}])
    log.add_feedback("r1", 1, {"Smiling": 1, "Bald": 0})
    log.add_feedback("r1", 1, {"Smiling": 0})
    log.add_feedback("r1", 0, {"Bald": 1})
    log.add_feedback("r2", 0, {"Smiling": 1})
    labels = read_feedback(log.path, MODEL)
    assert list(labels.columns) == NEWEST_COLUMNS
    expected = pd.DataFrame(
        {
            "request_id": ["r1", "r1"],
            "image_index": [1, 0],  # by the ts of their newest feedback
            "label_Smiling": [0.0, np.nan],
            "label_Bald": [0.0, 1.0],
        }
    )
    pd.testing.assert_frame_equal(labels[expected.columns], expected)
    assert read_feedback(log.path, MODEL, since=time.time() + 1).empty

    nowhere = tmp_path / "nowhere.db"
    empty = read_feedback(nowhere, MODEL)
    assert empty.empty and list(empty.columns) == NEWEST_COLUMNS[:4] and not nowhere.exists()
