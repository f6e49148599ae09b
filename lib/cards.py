"""Metaflow card contents for every flow, built here so the steps stay a few lines long:
TrainFlow's (dataset, live training, evaluation) and MonitorFlow's (drift)."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from metaflow.cards import Image, Markdown, ProgressBar, Table, VegaChart
from PIL import Image as PILImage

from lib.drift import INSUFFICIENT, describe_window, drifted_columns


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
) -> list:
    """The evaluate step's card: the headline and per-attribute numbers, then the first test
    images. `shown` is (the test split's dataset, its labels, its probabilities, how many)."""
    split, labels, probs, count = shown
    count = min(count, len(split))
    images = np.stack([split[i][0].numpy() for i in range(count)]) if count else np.zeros((0,))
    return [
        *evaluation_summary(metrics, objective),
        *prediction_grid(images, labels[:count], probs[:count], thresholds, attributes),
    ]


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
    verdict = {True: "drift detected", False: "no drift", None: INSUFFICIENT}
    components = [
        Markdown(f"# Drift: {verdict[drift['drift_detected']]}\n\n{drift['message']}"),
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
    threshold = -math.log10(next(iter(drift["columns"].values()))["threshold"])
    values = [
        {"column": name, "score": -math.log10(max(c["score"], 1e-300)), "drifted": c["drifted"]}
        for name, c in drift["columns"].items()
    ]
    # symlog: a column far past the line (p = 1e-30) must not flatten all the others.
    y = {"type": "quantitative", "title": "-log10 p-value", "scale": {"type": "symlog"}}
    bars = {
        "data": {"values": values},
        "mark": "bar",
        "encoding": {
            "x": {"field": "column", "type": "nominal", "sort": None},
            "y": {"field": "score", **y},
            "color": {"field": "drifted", "type": "nominal"},
        },
    }
    line = {
        "data": {"values": [{"threshold": threshold}]},
        "mark": {"type": "rule", "color": "red"},
        "encoding": {"y": {"field": "threshold", **y}},
    }
    title = "per-column drift: -log10 p-value (drifted past the line)"
    return _vega_lite(title, 700, 220, layer=[bars, line])


def _iframe(report_html: str) -> str:
    """The standalone report inside the card. One line: a blank line would end Markdown's
    HTML block."""
    source = html.escape(report_html).replace("\n", "&#10;")
    return f'<iframe srcdoc="{source}" style="width:100%;height:1400px;border:0"></iframe>'
