"""How often does drift monitoring cry wolf, how close is the accuracy it estimates without
labels, and how long does a large window take?

    python bench/drift_bench.py                      # trains flows/configs/default.json first
    python bench/drift_bench.py --home /tmp/bench    # reuses the champion trained there before
    python bench/drift_bench.py --home /tmp/bench --windows 5 --rows 0   # quick: no large window

In a datastore of its own (never yours: a MonitorFlow run there would move your next window),
against the newest champion TrainFlow run there, trained first if there is none:
1. False alarms: --windows windows of --window-size in-distribution synthetic faces, from seeds
   the training set did not use, each predicted and logged as serving does (lib.inference,
   lib.predlog), then tested against the run's reference by lib.drift.detect_drift, the
   function MonitorFlow's detect step calls. Prints how many windows raised drift.
2. Accuracy: per window kind of KINDS (in distribution; a prior shift, Eyeglasses on 40% of
   the faces; a covariate shift, blur of radius 20), --windows windows of --window-size new
   faces: the mean accuracy estimated from the logged calibrated probabilities without labels
   (lib.performance.estimate, as MonitorFlow estimates it) against the realised mean accuracy
   the generator's labels give at the run's thresholds. Prints both, their difference, and in
   how many windows the estimate's interval held the realised accuracy.
3. Time (skipped with --rows 0): a SQLite log of --rows rows (the in-distribution windows'
   rows drawn again at random), then the same rows shipped as Parquet to a folder
   (lib.shipper.ship, as a replica's shipper does): for each, reading and testing the window
   timed in this process (lib.monitor.read_window and lib.drift.detect_drift, what the detect
   step calls) and `MonitorFlow run` over it; prints the times and how much faster the
   Parquet path reads.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # imported when used: Metaflow reads its settings when first imported
    from lib.performance import Expected

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLOW_FILE = ROOT / "flows" / "train_flow.py"
MONITOR_FLOW = ROOT / "flows" / "monitor_flow.py"
FIRST_SEED = 1000  # the training sets use small seeds
IN_DISTRIBUTION = "in-distribution"
# Window kinds whose accuracy is estimated and realised: lib.synthetic.make_spec overrides.
KINDS = {
    IN_DISTRIBUTION: {},
    "prior shift, Eyeglasses at 40%": {"prevalence": {"Eyeglasses": 0.4}},
    "covariate shift, blur radius 20": {"shifts": {"blur": 20}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="bench folder (datastore, caches); default: a new one")
    parser.add_argument("--config", default=str(ROOT / "flows" / "configs" / "default.json"))
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--window-size", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100_000, help="0: no large window")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="drift-bench-"))
    datastore = home / "datastore"
    datastore.mkdir(parents=True, exist_ok=True)
    # Metaflow reads these when imported: set them before anything imports it.
    os.environ.update(
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(datastore),
        METAFLOW_USER=os.environ.get("METAFLOW_USER", "bench"),
        FACET_CACHE=str(home / "cache"),
        WANDB_MODE="disabled",
    )
    model_run = champion(datastore, json.loads(Path(args.config).read_text()))
    print(f"model: {model_run} (datastore {datastore})")
    logs = home / "logs"  # fresh each time: a log reopened would be appended to
    shutil.rmtree(logs, ignore_errors=True)
    windows = log_windows(model_run, logs, args.windows, args.window_size)
    false_alarms(model_run, [log for log, _ in windows])
    estimated_accuracy(model_run, logs, windows, args.windows, args.window_size)
    if args.rows:
        large_window(model_run, datastore, logs, [log for log, _ in windows], args.rows)


def champion(datastore: Path, config: dict) -> str:
    from metaflow import Runner

    from lib.registry import current_champion

    run = current_champion()
    if run is not None:
        return run.pathspec
    print("training a model first (flows/configs/default.json: a few minutes)")
    # Metaflow takes the config when the runner is made, not per run.
    settings = {"show_output": False, "cwd": datastore, "config_value": [("config", config)]}
    with Runner(str(TRAIN_FLOW_FILE), **settings) as runner:
        result = runner.run()
        assert result.status == "successful", result.stderr[-3000:]
        return result.run.pathspec


def log_windows(
    model_run: str, folder: Path, n_windows: int, size: int, kind: str = IN_DISTRIBUTION
) -> list[tuple[Path, Path]]:
    """(prediction log, faces folder) of each window of `kind` (KINDS), the log written as
    serving writes it, one row per face in the order of the folder's label file."""
    from lib import celeba, synthetic
    from lib.inference import Predictor
    from lib.predlog import PredictionLog

    predictor, windows, k = Predictor.from_run(model_run), [], list(KINDS).index(kind)
    for i in range(n_windows):
        spec = synthetic.make_spec(size, FIRST_SEED + k * n_windows + i, **KINDS[kind])
        root = synthetic.generate(folder / f"faces{k}-{i}", spec)
        _, files, _ = celeba.read_attribute_file(root / celeba.ATTRIBUTE_FILE)
        log = PredictionLog(folder / f"window{k}-{i}.db")
        for start in range(0, size, 32):
            batch = [root / celeba.IMAGE_DIR / name for name in files[start : start + 32]]
            pixels = np.stack([predictor.pixels(path.read_bytes()) for path in batch])
            log.append(f"window{i}", predictor.name, predictor.log_rows(predictor.predict(pixels)))
        windows.append((log.path, root))
    return windows


def false_alarms(model_run: str, logs: list[Path]) -> None:
    from lib.drift import detect_drift
    from lib.monitor import load_reference, read_window

    reference, alarms, smallest_p, largest_distance = load_reference(model_run), 0, 1.0, 0.0
    for log in logs:
        window = (None, time.time())
        rows, _ = read_window(str(log), model_run, window)
        drift, _ = detect_drift(reference, rows, window)
        alarms += drift["drift_detected"]
        smallest_p = min(smallest_p, *(c["score"] for c in drift["columns"].values()))
        embedding = drift["embedding"]
        largest_distance = max(largest_distance, embedding["score"] / embedding["threshold"])
    threshold = next(iter(drift["columns"].values()))["threshold"]
    print(
        f"false alarms: {alarms} of {len(logs)} in-distribution windows of "
        f"{drift['n_current']} images (reference: {drift['n_reference']} rows)\n"
        f"  smallest column p-value {smallest_p:.1e} (threshold {threshold:.1e}); "
        f"largest embedding distance / threshold {largest_distance:.2f}"
    )


def estimated_accuracy(
    model_run: str,
    folder: Path,
    in_distribution: list[tuple[Path, Path]],
    n_windows: int,
    size: int,
) -> None:
    """Per window kind, the mean accuracy estimated without labels against the realised one:
    the in-distribution windows logged already, the others logged here."""
    from lib.monitor import load_expected

    expected = load_expected(model_run)
    print(
        f"accuracy estimated without labels (CBPE) against the generator's labels, "
        f"{n_windows} windows of {size} faces a kind (test mean accuracy "
        f"{expected.test_accuracy.mean():.4f}):"
    )
    for kind in KINDS:
        windows = (
            in_distribution
            if kind == IN_DISTRIBUTION
            else log_windows(model_run, folder, n_windows, size, kind)
        )
        measured = np.array([window_accuracy(expected, *window) for window in windows])
        estimated, realised, _ = measured.mean(axis=0)
        gaps = measured[:, 0] - measured[:, 1]
        print(
            f"  {kind}: estimated {estimated:.4f}, realised {realised:.4f}, estimate - "
            f"realised {estimated - realised:+.4f} (windows {gaps.min():+.4f} to "
            f"{gaps.max():+.4f}; the 95% interval held the realised accuracy in "
            f"{int(measured[:, 2].sum())} of {len(windows)})"
        )


def window_accuracy(expected: "Expected", log: Path, faces: Path) -> tuple[float, float, bool]:
    """A logged window's mean accuracy: estimated from its calibrated probabilities
    (lib.performance.estimate), realised against the generator's labels at the run's
    thresholds, and whether the estimate's interval holds the realised one."""
    from lib import celeba
    from lib.features import probability_columns
    from lib.performance import estimate, realised
    from lib.predlog import PredictionLog

    rows = PredictionLog(log).read()
    probs = rows[probability_columns(expected.attributes)].to_numpy(np.float64)
    names, _, labels = celeba.read_attribute_file(faces / celeba.ATTRIBUTE_FILE)
    truth = labels[:, [names.index(name) for name in expected.attributes]].astype(np.float64)
    correct, labelled = realised(probs, expected.thresholds, truth)
    accuracy, estimated = float((correct / labelled).mean()), estimate(probs, expected.thresholds)
    low, high = estimated["mean_ci"]
    return estimated["mean_accuracy"], accuracy, low <= accuracy <= high


def large_window(
    model_run: str, datastore: Path, folder: Path, logs: list[Path], n_rows: int
) -> None:
    """The same n_rows rows read and tested from a SQLite log, then from the Parquet folder a
    shipper moved them to (lib.shipper.ship), in this process and by MonitorFlow."""
    from lib.predlog import META_COLUMNS, PredictionLog
    from lib.shipper import ship
    from lib.sink import ORDER, Sink

    logged = pd.concat([PredictionLog(log).read() for log in logs], ignore_index=True)
    values = logged.drop(columns=META_COLUMNS)
    drawn = values.sample(n_rows, replace=True, random_state=0).to_dict("records")
    log = PredictionLog(folder / "large.db", replica="bench")
    for start in range(0, n_rows, 1000):
        log.append("large", model_run, drawn[start : start + 1000])
    window = (None, time.time())

    from_sqlite, sqlite_s = timed_window(model_run, log.path, window, "SQLite log")
    monitor_flow(model_run, datastore, log.path)  # before shipping: shipped rows leave the log
    started = time.perf_counter()
    sink = Sink(folder / "sink")
    shipped = ship(log, sink)
    print(
        f"shipped {shipped:,} rows to {len(sink.keys())} Parquet objects in "
        f"{time.perf_counter() - started:.1f} s"
    )
    from_parquet, parquet_s = timed_window(model_run, sink.location, window, "Parquet folder")
    monitor_flow(model_run, datastore, sink.location)
    sqlite_order = from_sqlite.sort_values(ORDER, kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(from_parquet, sqlite_order, check_exact=True)
    print(
        f"Parquet against SQLite, the same {len(from_parquet):,} rows: reading "
        f"{sqlite_s[0] / parquet_s[0]:.1f}x faster, reading and testing "
        f"{sqlite_s[1] / parquet_s[1]:.1f}x faster"
    )


def timed_window(
    model_run: str, log: Path | str, window: tuple, source: str
) -> tuple[pd.DataFrame, tuple[float, float]]:
    """Read the window of `log` and test it as MonitorFlow's detect step does; prints and
    returns the rows and the seconds (reading, reading and testing)."""
    from lib.drift import detect_drift
    from lib.monitor import load_reference, read_window

    started = time.perf_counter()
    rows, objects = read_window(str(log), model_run, window)
    read_s = time.perf_counter() - started
    _, report = detect_drift(load_reference(model_run), rows, window)
    total_s = time.perf_counter() - started
    print(
        f"{source}, a window of {len(rows):,} rows in {len(objects)} object(s): read "
        f"{read_s:.2f} s, test + report {total_s - read_s:.1f} s, {total_s:.1f} s in all "
        f"(report {len(report) / 1e6:.1f} MB)"
    )
    return rows, (read_s, total_s)


def monitor_flow(model_run: str, datastore: Path, log: Path | str) -> None:
    """`MonitorFlow run` over the last day of `log` (all of it), timed."""
    from metaflow import Runner

    started = time.perf_counter()
    with Runner(str(MONITOR_FLOW), show_output=False, cwd=datastore) as runner:
        # No settling: every row was shipped before the run started.
        result = runner.run(
            model_run=model_run, log=str(log), window_hours=24.0, settle_minutes=0.0
        )
        assert result.status == "successful", result.stderr[-3000:]
    wall_s = time.perf_counter() - started
    task = result.run["detect"].task
    detect_s = (task.finished_at - task.created_at).total_seconds()
    print(
        f"  MonitorFlow run over it: {wall_s:.1f} s wall, detect step {detect_s:.1f} s "
        f"({result.run.data.drift['n_current']:,} rows)"
    )


if __name__ == "__main__":
    main()
