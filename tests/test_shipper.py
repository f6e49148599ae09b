"""The shipper: a replica's logged rows and feedback reach the sink exactly once, by model and
hour, through an upload failing part way, a SIGTERM and the death of its parent."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from google.api_core.exceptions import RetryError, ServiceUnavailable
from google.cloud.storage.retry import DEFAULT_RETRY
from helpers import ROOT, FlakyProxy, flaky, locked
from prometheus_client import REGISTRY

from lib.predlog import PredictionLog
from lib.settings import ServingSettings
from lib.shipper import run, ship
from lib.sink import Sink, read_feedback

MODELS = ("TrainFlow/1", "TrainFlow/2", "TrainFlow/3")
ROW_KEY = ["replica", "request_id", "image_index"]
# Uploads give up within half a second: the proxy's failures outlast the retry.
SHORT_RETRY = DEFAULT_RETRY.with_delay(initial=0.01, maximum=0.05).with_timeout(0.5)


def fill(log: PredictionLog, requests: int, name: str = "r", images: int = 3) -> None:
    """`requests` requests of `images` images each, spread over the MODELS in turn."""
    for i in range(requests):
        values = [{"brightness": i / 100, "prob_Smiling": j / 10} for j in range(images)]
        log.append(f"{name}{i}", MODELS[i % len(MODELS)], values)


def label(log: PredictionLog, requests: int, name: str = "r") -> None:
    """Feedback for images 0 and 1 of each request `fill` made: Smiling on the first, Smiling
    and Eyeglasses on the second."""
    for i in range(requests):
        log.add_feedback(f"{name}{i}", 0, {"Smiling": i % 2})
        log.add_feedback(f"{name}{i}", 1, {"Smiling": 0, "Eyeglasses": 1})


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def read_folder(folder: Path) -> pd.DataFrame:
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table()
    return table.to_pandas()


def read_sink(sink: Sink, prefix: str = "") -> pd.DataFrame:
    keys = sink.keys(prefix)
    tables = [pq.read_table(pa.BufferReader(sink.get(key))) for key in keys]
    return pa.concat_tables(tables, promote_options="default").to_pandas()


def ship_until_uploads_fail(log: PredictionLog, monkeypatch, after_objects: int) -> FlakyProxy:
    """Ship to gs://facet/log through a FlakyProxy that fails every upload, past the retry,
    once `after_objects` objects are stored; the shipment must raise. Returns the proxy."""
    put, stored = Sink.put, []

    def network_fails_after_some_objects(sink, key, data):
        put(sink, key, data)
        stored.append(key)
        if len(stored) == after_objects:
            proxy.remaining = 1_000_000

    with (
        flaky(monkeypatch, failures=0, failing="uploadType=") as proxy,
        monkeypatch.context() as patch,
    ):
        patch.setattr(Sink, "put", network_fails_after_some_objects)
        with pytest.raises((RetryError, ServiceUnavailable)):
            ship(log, Sink("gs://facet/log", retry=SHORT_RETRY))
    return proxy


def assert_once(
    shipped: pd.DataFrame, logged: pd.DataFrame, values=("brightness", "prob_Smiling")
) -> None:
    """Every logged row is in `shipped` exactly once, with its values."""
    assert not shipped.duplicated(ROW_KEY).any()
    assert len(shipped) == len(logged)
    columns = [*ROW_KEY, "ts", *values]
    expected = logged[columns].sort_values(ROW_KEY, ignore_index=True)
    pd.testing.assert_frame_equal(
        shipped[columns].sort_values(ROW_KEY, ignore_index=True), expected
    )


def test_shipping_to_a_folder_writes_every_row_once_by_model_and_hour(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 10)
    logged = log.read()
    sink, before = Sink(tmp_path / "sink"), metric("facet_log_rows_shipped_total")
    assert ship(log, sink, limit=7) == 30  # five segments
    assert metric("facet_log_rows_shipped_total") - before == 30
    assert log.unshipped_rows() == 0 and log.pending_segment(limit=7) is None
    assert ship(log, sink) == 0

    shipped = read_folder(tmp_path / "sink")
    assert_once(shipped, logged)
    assert set(shipped["replica"]) == {"pod-a"}
    by_row = shipped.merge(logged[[*ROW_KEY, "model"]], on=ROW_KEY, suffixes=("", "_logged"))
    assert (by_row["model"] == by_row["model_logged"]).all()  # the model= partition
    hours = [datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H") for ts in shipped["ts"]]
    assert list(shipped["hour"]) == hours


FEEDBACK_VALUES = ("label_Smiling", "label_Eyeglasses")


def test_feedback_ships_to_a_folder_once_under_its_own_prefix(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 10)
    label(log, 10)
    logged, given = log.read(), log.read(table="feedback")
    newest = {model: read_feedback(log.path, model) for model in MODELS}
    sink, before = Sink(tmp_path / "sink"), metric("facet_log_feedback_shipped_total")
    assert ship(log, sink, limit=7) == 30 + 20
    assert metric("facet_log_feedback_shipped_total") - before == 20
    assert log.read(table="feedback").empty and log.pending_segment(7, "feedback") is None
    assert ship(log, sink) == 0

    assert_once(read_folder(tmp_path / "sink"), logged)  # the root: the predictions only
    assert_once(read_folder(tmp_path / "sink" / "_feedback"), given, FEEDBACK_VALUES)
    for model in MODELS:
        pd.testing.assert_frame_equal(read_feedback(sink.location, model), newest[model])


@pytest.mark.emulator
def test_feedback_failing_part_way_is_shipped_again_without_loss_or_duplicates(
    gcs, tmp_path, monkeypatch
):
    """The rows' three objects are stored, then the first of the feedback's three, then every
    upload fails: the feedback segment stays pending, the rows are done; the next shipment
    writes the same feedback keys again, then the feedback that arrived meanwhile."""
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 9)
    label(log, 9)
    ship_until_uploads_fail(log, monkeypatch, after_objects=4)
    sink = Sink("gs://facet/log")
    first_try = sink.keys("_feedback/")
    assert len(first_try) == 1 and len(sink.keys()) == 4
    stored = sink.get(first_try[0])
    assert log.unshipped_rows() == 0 and log.pending_segment(50_000, "feedback") == (1, 18)

    fill(log, 2, name="late")
    label(log, 2, name="late")
    given = log.read(table="feedback")
    assert ship(log, sink) == 6 + 18 + 4
    assert len(sink.keys("_feedback/")) == 3 + 2 and sink.get(first_try[0]) == stored
    assert_once(read_sink(sink, "_feedback/"), given, FEEDBACK_VALUES)
    late = read_feedback("gs://facet/log", MODELS[0], since=given["ts"].iloc[-4])
    assert late["request_id"].tolist() == ["late0", "late0"]


@pytest.mark.emulator
def test_an_upload_failing_part_way_is_shipped_again_without_loss_or_duplicates(
    gcs, tmp_path, monkeypatch
):
    """A segment of three models (three objects): the first object is stored, then every
    upload fails past the retry. The segment stays pending; the next shipment writes the same
    three keys (the stored one with the same bytes), then the rows that arrived meanwhile."""
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 9)
    proxy = ship_until_uploads_fail(log, monkeypatch, after_objects=1)
    assert proxy.failed > 1  # retried, then given up
    sink = Sink("gs://facet/log")
    first_try = sink.keys()
    assert len(first_try) == 1
    stored = sink.get(first_try[0])
    assert log.pending_segment(limit=50_000) == (1, 27) and log.unshipped_rows() == 27

    fill(log, 2, name="late")
    logged = log.read()
    assert ship(log, sink) == 27 + 6
    keys = sink.keys()
    assert len(keys) == 3 + 2 and sink.get(first_try[0]) == stored  # rewritten, the same
    assert_once(read_sink(sink), logged)
    assert log.unshipped_rows() == 0


def shipper_settings(tmp_path: Path, **values) -> ServingSettings:
    return ServingSettings(PREDICTION_LOG=str(tmp_path / "log.db"), **values)


def run_for_a_while(settings: ServingSettings, until) -> None:
    """run() in a thread, ten rounds a second, until `until()` holds; then it must stop."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(settings, stop))
    thread.start()
    deadline = time.monotonic() + 10
    while not until() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_failing_sink_is_counted_and_logged_and_never_stops_the_shipper(tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    settings = shipper_settings(
        tmp_path, PREDICTION_SINK=str(not_a_folder / "sink"), PREDICTION_SHIP_SECONDS=0.1
    )
    log = PredictionLog(settings.PREDICTION_LOG)
    fill(log, 2)
    before = metric("facet_log_ship_failures_total")
    with caplog.at_level(logging.ERROR, logger="lib.shipper"):
        run_for_a_while(settings, lambda: metric("facet_log_ship_failures_total") >= before + 3)
    assert metric("facet_log_ship_failures_total") >= before + 3
    assert "shipping failed" in caplog.text and "NotADirectoryError" in caplog.text
    assert log.unshipped_rows() == 6 and log.pending_segment(limit=1) == (1, 6)


def test_without_a_sink_the_log_is_pruned_to_its_retention(tmp_path):
    settings = shipper_settings(tmp_path, PREDICTION_SHIP_SECONDS=0.1, PREDICTION_LOG_MAX_ROWS=4)
    log = PredictionLog(settings.PREDICTION_LOG)
    fill(log, 4)
    before = metric("facet_log_rows_pruned_total")
    run_for_a_while(settings, lambda: log.unshipped_rows() == 4)
    assert metric("facet_log_rows_pruned_total") - before == 8
    assert list(log.read()["request_id"]) == ["r2", "r3", "r3", "r3"]  # the newest four


def test_a_log_locked_when_the_shipper_starts_is_waited_out(tmp_path, caplog):
    settings = shipper_settings(
        tmp_path,
        PREDICTION_SINK=str(tmp_path / "sink"),
        PREDICTION_SHIP_SECONDS=0.1,
        PREDICTION_LOG_TIMEOUT_S=0.1,
    )
    log = PredictionLog(settings.PREDICTION_LOG)
    fill(log, 2)
    logged = log.read()
    stop = threading.Event()
    shipper = threading.Thread(target=run, args=(settings, stop))
    with caplog.at_level(logging.ERROR, logger="lib.shipper"):
        with locked(settings.PREDICTION_LOG):
            shipper.start()
            time.sleep(0.5)
            assert shipper.is_alive()
        deadline = time.monotonic() + 10
        while log.unshipped_rows() and time.monotonic() < deadline:
            time.sleep(0.05)
    stop.set()
    shipper.join(10)
    assert "cannot open the log yet" in caplog.text
    assert_once(read_folder(tmp_path / "sink"), logged)


def shipper_environment(tmp_path: Path) -> dict[str, str]:
    """`python -m lib.shipper` shipping to a folder, a shipment an hour (so only a stop ships)."""
    return {
        **os.environ,
        "PREDICTION_LOG": str(tmp_path / "log.db"),
        "PREDICTION_SINK": str(tmp_path / "sink"),
        "PREDICTION_SHIP_SECONDS": "3600",
    }


def wait_for_line(path: Path, text: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.05)


def test_sigterm_ships_everything_within_seconds(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 4)
    there = log.read()
    errors = tmp_path / "shipper.err"
    with errors.open("w") as stderr:
        shipper = subprocess.Popen(
            [sys.executable, "-m", "lib.shipper"],
            cwd=ROOT,
            env=shipper_environment(tmp_path),
            stderr=stderr,
        )
    try:
        wait_for_line(errors, "shipped 12 rows")  # what was there when it started
        fill(log, 3, name="late")  # answered while it waits
        logged = pd.concat([there, log.read()], ignore_index=True)
        started = time.monotonic()
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(10) == 0, errors.read_text()
    finally:
        shipper.kill()
    assert time.monotonic() - started < 5
    assert_once(read_folder(tmp_path / "sink"), logged)


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "lib.shipper"])
print(child.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Whether the process is alive (a zombie nobody reaps has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_the_shipper_stops_when_its_parent_dies(tmp_path):
    log = PredictionLog(tmp_path / "log.db", replica="pod-a")
    fill(log, 2)
    errors = tmp_path / "shipper.err"
    with errors.open("w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT],
            cwd=ROOT,
            env=shipper_environment(tmp_path),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    child = int(parent.stdout.readline())
    try:
        wait_for_line(errors, "shipped 6 rows")
        fill(log, 2, name="late")
        parent.kill()  # a master killed with SIGKILL tells no one
        parent.wait(10)
        parent.stdout.close()
        deadline = time.monotonic() + 10
        while running(child):
            assert time.monotonic() < deadline, errors.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)
    assert "is gone: stopping" in errors.read_text()
    assert len(read_folder(tmp_path / "sink")) == 12  # the late rows too, on its way out
