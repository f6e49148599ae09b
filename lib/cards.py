"""Metaflow card contents, built here so the flow's steps stay a few lines long."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from metaflow.cards import Image, Markdown, ProgressBar, Table, VegaChart
from PIL import Image as PILImage


def _line_chart(history: list[dict[str, float]], field: str, title: str) -> dict[str, Any]:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 500,
        "height": 200,
        "data": {"values": [{"step": r["step"], field: r[field]} for r in history]},
        "mark": {"type": "line", "point": False},
        "encoding": {
            "x": {"field": "step", "type": "quantitative"},
            "y": {"field": field, "type": "quantitative", "scale": {"zero": False}},
        },
    }


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
    chart = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "per-attribute test accuracy vs majority baseline",
        "width": 700,
        "height": 220,
        "data": {
            "values": [
                {"attribute": a, "metric": k, "value": m[k]}
                for a, m in per.items()
                for k in ("accuracy", "balanced_accuracy", "baseline")
            ]
        },
        "mark": "bar",
        "encoding": {
            "x": {"field": "attribute", "type": "nominal", "sort": None},
            "xOffset": {"field": "metric"},
            "y": {"field": "value", "type": "quantitative", "scale": {"domain": [0, 1]}},
            "color": {"field": "metric"},
        },
    }
    columns = ["accuracy", "balanced_accuracy", "f1", "roc_auc", "baseline", "threshold"]
    rows = [
        [a, *(f"{m[c]:.3f}" for c in columns), f"{m['positive_rate']:.3f}"] for a, m in per.items()
    ]
    table = Table(rows, headers=["attribute", *columns, "positive rate"])
    return [Markdown("\n\n".join(lines)), VegaChart(chart), table]


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
