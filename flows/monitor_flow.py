"""MonitorFlow: compare the traffic a model served with what it was trained on.

    python flows/monitor_flow.py run                               # the champion, new rows
    python flows/monitor_flow.py run --model-run TrainFlow/1234 --window-hours 24
    python flows/monitor_flow.py run --log gs://bucket/predictions # every replica's rows
    python flows/monitor_flow.py argo-workflows create             # every hour on Argo

The log (--log; default PREDICTION_SINK when set, else PREDICTION_LOG) is a replica's SQLite
file, or the sink every replica's shipper fills (lib.sink): Parquet in a folder or under a
gs:// prefix, of which a run lists and downloads only its window's hours.
A window of a sink ends --settle-minutes before now, so that rows still being shipped are
left to the next run (whose window starts there) rather than missed.

`start` picks the model, the log and the window, `detect` runs evidently on the window's rows
against the model's reference, estimates the model's accuracy from the rows' calibrated
probabilities and measures it on the rows that feedback labelled (`performance`), makes the
card and keeps what it read (`log_objects`: the SQLite file, or the keys of the Parquet
objects), `end` makes a card of the model's runs so far (this one included), then tags the run
`drift` when it found drift and `accuracy` when the estimated accuracy fell more than
--accuracy-margin below the test accuracy or a realised drop was significant, and POSTs them
to ALERT_WEBHOOK_URL. The logic lives in lib/: monitor (the model, the log, the window, the
rows, the feedback, the reference and the history), sink (the Parquet layout), drift (the
tests), performance (the accuracy), cards (the cards) and alerts (the tags and the webhook).
"""

from metaflow import FlowSpec, Parameter, card, current, schedule, step

import lib  # noqa: F401  (light: puts lib/ into the code package that remote steps run from)


@schedule(hourly=True)
class MonitorFlow(FlowSpec):
    """Drift of served traffic against the training reference, with evidently."""

    # Read when the run starts, not when the flow is deployed: a scheduled run follows the
    # champion and the environment of the machine it runs on.
    model = Parameter(
        "model-run", default="", help="a TrainFlow or TrainMultiNodeFlow run; default: the champion"
    )
    log = Parameter(
        "log",
        default="",
        help="a SQLite prediction log, a Parquet folder or a gs:// prefix of one; default: "
        "PREDICTION_SINK if set, else PREDICTION_LOG",
    )
    window_hours = Parameter(
        "window-hours",
        default=0.0,
        help="rows of the last N hours; default (0): every row since the last verdict",
    )
    settle_minutes = Parameter(
        "settle-minutes",
        default=5.0,
        help="a window of a sink (not of a SQLite log) ends this long before now: rows arrive "
        "up to a shipping interval late",
    )
    min_rows = Parameter(
        "min-rows", default=100, help="fewer rows than this: no verdict, no accuracy alarm"
    )
    accuracy_margin = Parameter(
        "accuracy-margin",
        default=0.05,
        help="alarm when the estimated mean accuracy is more than this below the test's",
    )

    @step
    def start(self):
        from lib.monitor import choose_window, log_location
        from lib.registry import resolve_model_run

        self.model_run = resolve_model_run(self.model, "pass --model-run")
        self.log_path = log_location(self.log)
        self.window = choose_window(
            self.model_run, self.log_path, self.window_hours, self.settle_minutes
        )
        self.next(self.detect)

    @card(type="blank")
    @step
    def detect(self):
        from lib.cards import drift_card, performance_card
        from lib.drift import detect_drift
        from lib.monitor import load_reference, measure_performance, read_window

        rows, self.log_objects = read_window(self.log_path, self.model_run, self.window)
        reference = load_reference(self.model_run)
        self.drift, self.report_html = detect_drift(reference, rows, self.window, self.min_rows)
        self.performance = measure_performance(
            self.log_path, self.model_run, self.window, rows, self.accuracy_margin, self.min_rows
        )
        current.card.extend(drift_card(self.model_run, self.drift, self.report_html))
        current.card.extend(performance_card(self.performance))
        print(f"{self.model_run}, {self.log_path}: {self.drift['message']}")
        print(f"accuracy: {self.performance['message']}")
        self.next(self.end)

    @card(type="blank")
    @step
    def end(self):
        from lib.alerts import raise_alarm
        from lib.cards import history_card
        from lib.monitor import history_with

        pathspec = f"{current.flow_name}/{current.run_id}"
        runs = history_with(pathspec, self.model_run, self.drift, self.performance)
        current.card.extend(history_card(self.model_run, runs))
        raise_alarm(pathspec, self.model_run, self.drift, self.performance)


if __name__ == "__main__":
    MonitorFlow()
