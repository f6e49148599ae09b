"""The sink: segments written as Hive-partitioned Parquet in a folder and on gs:// (the GCS
emulator), and windows read back from a sink, a SQLite log or nothing."""

import re
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from lib.predlog import PredictionLog
from lib.sink import Sink, read_window, write_segment

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
