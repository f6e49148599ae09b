"""Metaflow card contents for every flow, built here so the steps stay a few lines long:
TrainFlow's (dataset, live training, evaluation) and MonitorFlow's (drift, and the history of
a model's runs, whose charts serving's /monitoring page draws too)."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from metaflow.cards import Image, Markdown, ProgressBar, Table, VegaChart
from PIL import Image as PILImage

from lib.calibration import POOLED
from lib.drift import INSUFFICIENT, describe_window, drifted_columns

VERDICTS = {True: "drift detected", False: "no drift", None: INSUFFICIENT}
# A drift score on a chart: -log10 of a p-value. symlog: a column far past the threshold
# (p = 1e-30) must not flatten all the others.
MINUS_LOG10_P = {"type": "quantitative", "title": "-log10 p-value", "scale": {"type": "symlog"}}
# Window ends on the x axis, in UTC like the tables (a utc scale formats its ticks in UTC).
_WINDOW_END = {
    "field": "window_end",
    "type": "temporal",
    "title": "window end (UTC)",
    "scale": {"type": "utc"},
    "axis": {"format": "%Y-%m-%d %H:%M"},
}
HISTORY_HEADERS = (
    "run",
    "window",
    "verdict",
    "rows",
    "most drifted columns (p-value)",
    "estimated / realised accuracy",
)


def _vega_lite(title: str, width: int, height: int, **spec: Any) -> dict[str, Any]:
    """A Vega-Lite chart for VegaChart: `spec` holds its data, marks and encodings."""
    schema = "https://vega.github.io/schema/vega-lite/v5.json"
    return {"$schema": schema, "title": title, "width": width, "height": height, **spec}


def _line_chart(history: list[dict[str, float]], field: str, title: str) -> dict[str, Any]:
    return _vega_lite(
        title,
        500,
        200,
        data={"values": [{"step": r["step"], field: r[field]} for r in history]},
        mark={"type": "line", "point": False},
        encoding={
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": field, "type": "quantitative", "scale": {"zero": False}},
        },
    )


class TrainingCard:
    """Live card for the train step: a progress bar and a loss curve. Call it with each logged
    record (lib.train.train's on_log). Each refresh renders the card in a subprocess, which
    competes with training for the CPU, so it refreshes at most every `every_seconds`."""

    def __init__(self, card, every_seconds: float = 30.0):
        self.card = card
        self.every_seconds = every_seconds
        self.last_refresh = time.monotonic()
        self.history: list[dict[str, float]] = []
        self.status = Markdown("Training is starting…")
        self.progress: ProgressBar | None = None
        self.chart = VegaChart(_line_chart([], "loss", "training loss"))
        card.extend([Markdown("# Training"), self.status, self.chart])
        card.refresh()

    def __call__(self, record: dict[str, float]) -> None:
        self.history.append(record)
        if self.progress is None:
            self.progress = ProgressBar(max=int(record["total_steps"]), label="optimizer steps")
            self.card.append(self.progress)
        self.progress.update(int(record["step"]))
        self.status.update(
            f"step {record['step']}/{record['total_steps']} · epoch {record['epoch']} · "
            f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · "
            f"{record['images_per_second']:.0f} images/s"
        )
        self.chart.update(_line_chart(self.history, "loss", "training loss"))
        finished = record["step"] == record["total_steps"]
        if finished or time.monotonic() - self.last_refresh >= self.every_seconds:
            self.card.refresh()
            self.last_refresh = time.monotonic()

    def finish(self, steps: int, resumed_from_step: int) -> None:
        start = f"resumed from step {resumed_from_step}" if resumed_from_step else "a fresh start"
        self.status.update(f"Finished at step {steps} ({start}).")
        self.card.refresh()


def dataset_summary(dataset: dict[str, Any]) -> list:
    skipped = dataset["skipped"]
    n_skipped = sum(kind["count"] for kind in skipped.values())
    lines = [
        "# Dataset",
        f"- source: `{dataset['source']}`",
        f"- fingerprint: `{dataset['fingerprint'][:16]}…`",
        f"- splits: {dataset['split_sizes']}",
        f"- cache: `{dataset['cache_dir']}` ({'reused' if dataset['cache_reused'] else 'built'})",
        f"- images skipped: **{n_skipped}**"
        + "".join(f"; {k}: {v['count']}" for k, v in skipped.items() if v["count"]),
    ]
    return [Markdown("\n".join(lines))]


def evaluation_summary(metrics: dict[str, Any], objective: str) -> list:
    """Headline numbers against the majority baseline, a per-attribute chart and table."""
    verdict = (
        "beats the majority baseline"
        if metrics["beats_baseline"]
        else "**does NOT beat the majority baseline: the model may have collapsed**"
    )
    lines = [
        f"# Test metrics ({metrics['n_images']} images)",
        f"Mean accuracy **{metrics['mean_accuracy']:.4f}** vs majority baseline "
        f"{metrics['majority_baseline_accuracy']:.4f}: {verdict}.",
        f"Mean balanced accuracy {metrics['mean_balanced_accuracy']:.4f}, "
        f"mean F1 {metrics['mean_f1']:.4f}, mean ROC AUC {metrics['mean_roc_auc']:.4f}. "
        f"Thresholds tuned on the validation split for **{objective}**.",
    ]
    if "drawn_attributes" in metrics:
        lines.append(
            f"Synthetic data: mean balanced accuracy {metrics['mean_balanced_accuracy_drawn']:.4f} "
            f"on the {len(metrics['drawn_attributes'])} drawn attributes, "
            f"{metrics['mean_balanced_accuracy_undrawn']:.4f} on the undrawn ones (chance is 0.5)."
        )
    if metrics["constant_attributes"]:
        lines.append(f"Predicted constant on the test split: {metrics['constant_attributes']}.")
    per = metrics["per_attribute"]
    columns = ["accuracy", "balanced_accuracy", "f1", "roc_auc", "baseline", "threshold"]
    rows = [
        [a, *(f"{m[c]:.3f}" for c in columns), f"{m['positive_rate']:.3f}"] for a, m in per.items()
    ]
    table = Table(rows, headers=["attribute", *columns, "positive rate"])
    return [Markdown("\n\n".join(lines)), VegaChart(_accuracy_chart(per)), table]


def _accuracy_chart(per_attribute: dict[str, dict[str, float]]) -> dict[str, Any]:
    values = [
        {"attribute": a, "metric": k, "value": m[k]}
        for a, m in per_attribute.items()
        for k in ("accuracy", "balanced_accuracy", "baseline")
    ]
    return _vega_lite(
        "per-attribute test accuracy vs majority baseline",
        700,
        220,
        data={"values": values},
        mark="bar",
        encoding={
            "x": {"field": "attribute", "type": "nominal", "sort": None},
            "xOffset": {"field": "metric"},
            "y": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]}},
            "color": {"field": "metric"},
        },
    )


def evaluation_card(
    metrics: dict[str, Any],
    objective: str,
    shown: tuple[Sequence, np.ndarray, np.ndarray, int],
    thresholds: np.ndarray,
    attributes: list[str],
    reliability: dict[str, dict[str, list[dict[str, float]]]],
) -> list:
    """The evaluate step's card: the headline and per-attribute numbers, calibration, the
    fairness slices, then the first test images. `shown` is (the test split's dataset, its
    labels, its calibrated probabilities, how many); `reliability` is
    lib.calibration.reliability's points of the test split "before" and "after" calibration."""
    split, labels, probs, count = shown
    count = min(count, len(split))
    images = np.stack([split[i][0].numpy() for i in range(count)]) if count else np.zeros((0,))
    return [
        *evaluation_summary(metrics, objective),
        *calibration_summary(metrics["calibration"], reliability),
        *slices_summary(metrics["slices"]),
        *prediction_grid(images, labels[:count], probs[:count], thresholds, attributes),
    ]


def calibration_summary(
    calibration: dict[str, Any], reliability: dict[str, dict[str, list[dict[str, float]]]]
) -> list:
    """ECE and Brier score before and after calibration (metrics["calibration"]), the
    reliability diagram of all attributes pooled and of each, and a per-attribute table."""
    text = (
        f"# Calibration ({calibration['method']})\n\n"
        "Fitted on the validation split; measured on the test split. Mean ECE "
        f"({calibration['bins']} equal-width bins) **{calibration['mean_ece_before']:.4f} → "
        f"{calibration['mean_ece_after']:.4f}**, mean Brier score "
        f"{calibration['mean_brier_before']:.4f} → {calibration['mean_brier_after']:.4f}. "
        "The map is strictly increasing, so ROC AUC is unchanged. Thresholds are tuned on "
        "calibrated probabilities, and serving answers calibrated probabilities."
    )
    columns = ["ece_before", "ece_after", "brier_before", "brier_after"]
    rows = [[a, *(f"{m[c]:.4f}" for c in columns)] for a, m in calibration["per_attribute"].items()]
    each = [name for name in reliability["before"] if name != POOLED]
    return [
        Markdown(text),
        VegaChart(_reliability_chart(reliability, [POOLED])),
        VegaChart(_reliability_chart(reliability, each)),
        Table(rows, headers=["attribute", *columns]),
    ]


def _reliability_chart(
    reliability: dict[str, dict[str, list[dict[str, float]]]], names: list[str]
) -> dict[str, Any]:
    """Observed positive rate against mean predicted probability per bin, before and after
    calibration, beside the diagonal of perfect calibration: one panel, or a small one per
    name when there are several."""
    values = [
        {"name": name, "calibration": when, **point}
        for when, by_name in reliability.items()
        for name in names
        for point in by_name[name]
    ]
    single = len(names) == 1
    unit = {"type": "quantitative", "scale": {"domain": [0, 1]}}
    diagonal = {
        "mark": {"type": "rule", "color": "#9e9e9e", "strokeDash": [4, 4]},
        "encoding": {
            "x": {"datum": 0, **unit},
            "y": {"datum": 0, **unit},
            "x2": {"datum": 1},
            "y2": {"datum": 1},
        },
    }
    curves = {
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "predicted", **unit},
            "y": {"field": "observed", **unit},
            "color": {"field": "calibration", "type": "nominal", "sort": list(reliability)},
            "tooltip": [
                {"field": "calibration"},
                {"field": "predicted", "format": ".3f"},
                {"field": "observed", "format": ".3f"},
                {"field": "count"},
            ],
        },
    }
    curves["encoding"]["x"]["title"] = "mean predicted probability" if single else "predicted"
    curves["encoding"]["y"]["title"] = "observed positive rate" if single else "observed"
    data = {"values": values}
    if single:
        title = f"reliability diagram, {names[0]}, test split"
        return _vega_lite(title, 300, 300, data=data, layer=[diagonal, curves])
    # A facet ignores a top-level width and height; they keep VegaChart from setting width
    # "container", which only a single view takes.
    return {
        **_vega_lite("reliability diagram per attribute, test split", 90, 90, data=data),
        "facet": {"field": "name", "type": "nominal", "title": None, "sort": names},
        "columns": 6,
        "spec": {"width": 90, "height": 90, "layer": [diagonal, curves]},
    }


def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    attributes: list[str],
) -> list:
    """Test images with what the model says beside the truth: misses and false alarms named."""
    rows = []
    for image, truth, prob in zip(images, labels, probs, strict=True):
        predicted = {a for a, p, t in zip(attributes, prob, thresholds, strict=True) if p >= t}
        actual = {a for a, y in zip(attributes, truth, strict=True) if y}
        picture = PILImage.fromarray(image).resize((128, 128), PILImage.Resampling.NEAREST)
        rows.append(
            [
                Image.from_pil_image(picture),
                Markdown(
                    f"**correct:** {', '.join(sorted(predicted & actual)) or '-'}\n\n"
                    f"**missed:** {', '.join(sorted(actual - predicted)) or '-'}\n\n"
                    f"**false alarms:** {', '.join(sorted(predicted - actual)) or '-'}"
                ),
            ]
        )
    return [
        Markdown("# Test images: predicted vs true"),
        Table(rows, headers=["image", "attributes"]),
    ]


def drift_card(model_run: str, drift: dict[str, Any], report_html: str | None) -> list:
    """MonitorFlow's detect step: summary, per-column scores, and evidently's full report."""
    components = [
        Markdown(f"# Drift: {VERDICTS[drift['drift_detected']]}\n\n{drift['message']}"),
        Table(_drift_summary_rows(model_run, drift), headers=["", ""]),
    ]
    if report_html is None:
        return components
    scores = [
        [name, f"{c['score']:.2e}", f"{c['threshold']:.1e}", "drifted" if c["drifted"] else ""]
        for name, c in sorted(drift["columns"].items(), key=lambda item: item[1]["score"])
    ]
    return [
        *components,
        VegaChart(_drift_score_chart(drift)),
        Table(scores, headers=["column", "p-value", "threshold", ""]),
        Markdown("## evidently's report"),
        Markdown(_iframe(report_html)),
    ]


def _drift_summary_rows(model_run: str, drift: dict[str, Any]) -> list[list[str]]:
    rows = [
        ["model", model_run],
        ["window", describe_window((drift["window_start"], drift["window_end"]))],
        ["rows (window / reference)", f"{drift['n_current']} / {drift['n_reference']}"],
    ]
    if drift["drift_detected"] is None:
        return rows
    embedding = drift["embedding"]
    return [
        *rows,
        ["drifted columns", f"{len(drifted_columns(drift))} of {len(drift['columns'])}"],
        [
            "embedding distance / threshold",
            f"{embedding['score']:.3f} / {embedding['threshold']:.3f}",
        ],
    ]


def _drift_score_chart(drift: dict[str, Any]) -> dict[str, Any]:
    """-log10 of each column's p-value, against the threshold's: bars past the line drifted."""
    threshold = minus_log10(next(iter(drift["columns"].values()))["threshold"])
    values = [
        {"column": name, "score": minus_log10(c["score"]), "drifted": c["drifted"]}
        for name, c in drift["columns"].items()
    ]
    bars = {
        "data": {"values": values},
        "mark": "bar",
        "encoding": {
            "x": {"field": "column", "type": "nominal", "sort": None},
            "y": {"field": "score", **MINUS_LOG10_P},
            "color": {"field": "drifted", "type": "nominal"},
        },
    }
    line = {
        "data": {"values": [{"threshold": threshold}]},
        "mark": {"type": "rule", "color": "red"},
        "encoding": {"y": {"field": "threshold", **MINUS_LOG10_P}},
    }
    title = "per-column drift: -log10 p-value (drifted past the line)"
    return _vega_lite(title, 700, 220, layer=[bars, line])


def minus_log10(p_value: float) -> float:
    return -math.log10(max(p_value, 1e-300))


def history_card(model_run: str, history: list[dict[str, Any]]) -> list:
    """MonitorFlow's end step: the charts and table of the model's runs (lib.monitor.history,
    newest first)."""
    charts = history_charts(history)
    rows = [list(history_row(run).values()) for run in history]
    return [
        Markdown(f"# Monitoring history of {model_run}\n\n{len(history)} runs, newest first."),
        VegaChart(charts["verdicts"]),
        VegaChart(charts["scores"]),
        Table(rows, headers=list(HISTORY_HEADERS)),
    ]


def history_row(run: dict[str, Any]) -> dict[str, str]:
    """One run of the history as the card's and the /monitoring page's table show it."""
    columns = ", ".join(f"{c['column']} {c['score']:.1e}" for c in run["top_columns"])
    cells = (
        run["pathspec"],
        describe_window((run["window_start"], run["window_end"])),
        VERDICTS[run["drift_detected"]],
        str(run["n_current"]),
        columns or "-",
        _accuracy_cell(run["performance"]),
    )
    return dict(zip(HISTORY_HEADERS, cells, strict=True))


def _accuracy_cell(performance: dict[str, Any] | None) -> str:
    """A run's estimated and realised mean accuracy, "-" where it has none (no rows, no
    feedback, or a run made before runs measured accuracy), and its accuracy alerts."""
    if performance is None:
        return "-"
    estimated, realised = (
        "-" if value is None else f"{value:.3f}"
        for value in (performance["estimated_mean_accuracy"], performance["realised_mean_accuracy"])
    )
    labelled = f" ({performance['n_labelled']} labelled)" if performance["n_labelled"] else ""
    alerts = len(performance["alerts"])
    return f"{estimated} / {realised}{labelled}" + (f", {alerts} alert(s)" if alerts else "")


def history_charts(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Vega-Lite specs over a model's MonitorFlow runs (lib.monitor.history): `verdicts`, the
    rows each window tested coloured by its verdict, and `scores`, the -log10 p-values of each
    run's most drifted columns against the threshold. MonitorFlow's end card and serving's
    /monitoring page both draw these."""
    return {"verdicts": _verdict_history_chart(history), "scores": _score_history_chart(history)}


def _window_end(run: dict[str, Any]) -> str:
    return datetime.fromtimestamp(run["window_end"], UTC).isoformat()


def _verdict_history_chart(history: list[dict[str, Any]]) -> dict[str, Any]:
    values = [
        {
            "window_end": _window_end(run),
            "rows": run["n_current"],
            "verdict": VERDICTS[run["drift_detected"]],
            "run": run["pathspec"],
        }
        for run in history
    ]
    colours = {"drift detected": "#d62728", "no drift": "#2ca02c", INSUFFICIENT: "#9e9e9e"}
    verdict = {
        "field": "verdict",
        "type": "nominal",
        "scale": {"domain": list(colours), "range": list(colours.values())},
    }
    return _vega_lite(
        "verdict and rows tested per window",
        700,
        200,
        data={"values": values},
        mark={"type": "point", "filled": True, "size": 90},
        encoding={
            "x": _WINDOW_END,
            "y": {"field": "rows", "type": "quantitative", "title": "rows tested"},
            "color": verdict,
            "tooltip": [{"field": "run"}, {"field": "verdict"}, {"field": "rows"}],
        },
    )


def _score_history_chart(history: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [
        {"window_end": _window_end(run), "column": c["column"], "score": minus_log10(c["score"])}
        for run in history
        for c in run["top_columns"]
    ]
    thresholds = [
        {
            "window_end": _window_end(run),
            "threshold": minus_log10(run["top_columns"][0]["threshold"]),
        }
        for run in history
        if run["top_columns"]
    ]
    columns = {
        "data": {"values": scores},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": _WINDOW_END,
            "y": {"field": "score", **MINUS_LOG10_P},
            "color": {"field": "column", "type": "nominal"},
            "tooltip": [{"field": "column"}, {"field": "score", "format": ".1f"}],
        },
    }
    threshold = {
        "data": {"values": thresholds},
        "mark": {"type": "line", "color": "red", "strokeDash": [4, 4]},
        "encoding": {"x": _WINDOW_END, "y": {"field": "threshold", **MINUS_LOG10_P}},
    }
    title = "the most drifted columns per window: -log10 p-value (drifted past the red line)"
    return _vega_lite(title, 700, 220, layer=[columns, threshold])


def _iframe(report_html: str) -> str:
    """The standalone report inside the card. One line: a blank line would end Markdown's
    HTML block."""
    source = html.escape(report_html).replace("\n", "&#10;")
    return f'<iframe srcdoc="{source}" style="width:100%;height:1400px;border:0"></iframe>'


def slices_summary(report: dict[str, Any], shown: int = 10) -> list:
    """The fairness slices (lib.slices.slice_report): what they measure, a chart of each
    slice's `shown` largest equalized-odds differences and a table of the largest overall."""
    largest = report["largest_gaps"]
    undefined = sum(len(s["undefined"]) for s in report["slices"].values())
    lines = [
        "# Fairness slices",
        f"Test metrics in the groups of {', '.join(report['slice_by'])}. An attribute's gap is "
        "its equalized-odds difference (fairlearn): the larger of the true-positive-rate and "
        "false-positive-rate gaps between the groups. Shown: attributes with at least "
        f"{report['min_count']} positives and negatives in each group.",
    ]
    if undefined:
        lines.append(
            f"{undefined} rates are undefined (a group without positives or negatives); their "
            'gaps are NaN and listed in metrics["slices"].'
        )
    rows = []
    for gap in largest:
        entry = report["slices"][gap["slice"]]["attributes"][gap["attribute"]]
        rows.append(
            [
                gap["slice"],
                gap["attribute"],
                f"{gap['equalized_odds_difference']:.3f}",
                *(
                    ", ".join(f"{group} {value:.3f}" for group, value in entry[rate].items())
                    for rate in ("true_positive_rate", "false_positive_rate")
                ),
                ", ".join(f"{group} {count}" for group, count in entry["positives"].items()),
            ]
        )
    headers = ["slice", "attribute", "equalized-odds difference", "TPR", "FPR", "positives"]
    return [
        Markdown("\n\n".join(lines)),
        VegaChart(slice_gap_chart(report, shown)),
        Table(rows, headers=headers),
    ]


def slice_gap_chart(report: dict[str, Any], shown: int = 10) -> dict[str, Any]:
    """Each slice's `shown` largest ranked equalized-odds differences as bars, a panel per
    slice, coloured by the rate whose gap it is."""
    values = []
    for by, sliced in report["slices"].items():
        gaps = [
            {
                "slice": by,
                "attribute": attribute,
                "gap": entry["equalized_odds_difference"],
                "rate": "TPR"
                if entry["true_positive_rate_gap"] >= entry["false_positive_rate_gap"]
                else "FPR",
            }
            for attribute, entry in sliced["attributes"].items()
            if entry["ranked"]
        ]
        values += sorted(gaps, key=lambda gap: -gap["gap"])[:shown]
    title = "largest equalized-odds differences per slice, test split"
    # A facet ignores a top-level width and height; they keep VegaChart from setting width
    # "container", which only a single view takes.
    return {
        **_vega_lite(title, 250, 200, data={"values": values}),
        "facet": {"field": "slice", "type": "nominal", "title": None},
        "columns": 2,
        "spec": {
            "width": 250,
            "height": 200,
            "mark": "bar",
            "encoding": {
                "y": {"field": "attribute", "type": "nominal", "sort": "-x", "title": None},
                "x": {
                    "field": "gap",
                    "type": "quantitative",
                    "title": "equalized-odds difference",
                    "scale": {"domain": [0, 1]},
                },
                "color": {"field": "rate", "type": "nominal", "title": "gap in"},
                "tooltip": [{"field": "attribute"}, {"field": "gap", "format": ".3f"}],
            },
        },
        "resolve": {"scale": {"y": "independent"}},
    }


def performance_card(performance: dict[str, Any]) -> list:
    """MonitorFlow's detect step, after the drift: the accuracy estimated from the window's
    calibrated probabilities (lib.performance) against the test split's, and the realised
    accuracy where feedback labelled rows: summary, alerts, a chart and a table."""
    alerts = "".join(f"\n- **{alert}**" for alert in performance["alerts"])
    components = [
        Markdown(f"# Accuracy on the window's traffic\n\n{performance['message']}{alerts}")
    ]
    if performance["estimated_mean_accuracy"] is None:
        return components
    rows = [
        [
            name,
            f"{a['estimated_accuracy']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})",
            f"{a['estimated_f1']:.3f}",
            "-" if a["realised_accuracy"] is None else f"{a['realised_accuracy']:.3f}",
            str(a["n_labelled"]),
            f"{a['test_accuracy']:.3f}",
            "-" if a["p_value"] is None else f"{a['p_value']:.1e}",
            "significant drop" if a["significant_drop"] else "",
        ]
        for name, a in performance["per_attribute"].items()
    ]
    headers = ["attribute", "estimated (CI)", "estimated F1", "realised", "labelled", "test"]
    return [
        *components,
        VegaChart(accuracy_estimate_chart(performance)),
        Table(rows, headers=[*headers, "p-value (drop)", ""]),
    ]


def accuracy_estimate_chart(performance: dict[str, Any]) -> dict[str, Any]:
    """Per attribute: the estimated accuracy with its interval, the test accuracy, and the
    realised accuracy where rows were labelled."""
    values = [
        {
            "attribute": name,
            "estimated": a["estimated_accuracy"],
            "ci_low": a["ci_low"],
            "ci_high": a["ci_high"],
            "test": a["test_accuracy"],
            "realised": a["realised_accuracy"],
        }
        for name, a in performance["per_attribute"].items()
    ]
    attribute = {"field": "attribute", "type": "nominal", "sort": None}
    accuracy = {"type": "quantitative", "title": "accuracy", "scale": {"zero": False}}
    kinds = {"estimated": "#1f77b4", "test": "#2ca02c", "realised": "#d62728"}
    interval = {
        "mark": {"type": "rule", "color": kinds["estimated"]},
        "encoding": {
            "x": attribute,
            "y": {"field": "ci_low", **accuracy},
            "y2": {"field": "ci_high"},
        },
    }
    points = {
        "transform": [
            {"fold": list(kinds), "as": ["kind", "accuracy"]},
            {"filter": "datum.accuracy != null"},
        ],
        "mark": {"type": "point", "filled": True, "size": 60},
        "encoding": {
            "x": attribute,
            "y": {"field": "accuracy", **accuracy},
            "color": {
                "field": "kind",
                "type": "nominal",
                "scale": {"domain": list(kinds), "range": list(kinds.values())},
            },
            "shape": {"field": "kind", "type": "nominal"},
            "tooltip": [
                {"field": "attribute"},
                {"field": "kind"},
                {"field": "accuracy", "format": ".3f"},
            ],
        },
    }
    title = "accuracy per attribute: estimated (95% interval), test split, realised on feedback"
    return _vega_lite(title, 700, 240, data={"values": values}, layer=[interval, points])
