"""Fairness slices: how each attribute's test metrics differ between the groups of a slice
attribute (Male and not Male, Young and not Young by default: `evaluate.slices`).

For each slice attribute S and every other attribute A, fairlearn's MetricFrame splits the
test rows by S's label and scores A's thresholded predictions in each group: accuracy,
true-positive rate and false-positive rate. A's gap on S is fairlearn's equalized-odds
difference: the larger of the TPR gap and the FPR gap, each the largest rate minus the smallest.
One MetricFrame per slice scores all attributes at once (its metrics return a value per column).

A rate with nothing to count is NaN: a group without positives has no TPR, one without
negatives no FPR. Every gap that needs it is NaN too (fairlearn's own aggregates would skip the
group and report a gap of 0), `undefined` names each case, and `largest_gaps` leaves them out.
A rate from a handful of faces is mostly chance (1 of 2 against 0 of 3 is a gap of 0.5), so
`largest_gaps` ranks only attributes whose groups each hold at least `min_count` positives and
as many negatives (`ranked`); the others' gaps are reported all the same.

The report, stored as the run's metrics["slices"], is plain data (str, int, float, bool):

    {
      "slice_by": ["Male", "Young"],
      "min_count": 20,
      "slices": {
        "Male": {
          "groups": {"Male": 812, "not Male": 1188},     # test rows in each group
          "attributes": {                                # every attribute but Male itself
            "Eyeglasses": {
              "accuracy": {"Male": 0.97, "not Male": 0.95},
              "true_positive_rate": {"Male": 0.91, "not Male": 0.62},
              "false_positive_rate": {"Male": 0.01, "not Male": 0.02},
              "positives": {"Male": 57, "not Male": 73},
              "negatives": {"Male": 755, "not Male": 1115},
              "accuracy_gap": 0.02,
              "true_positive_rate_gap": 0.29,
              "false_positive_rate_gap": 0.01,
              "equalized_odds_difference": 0.29,
              "ranked": true,                          # enough faces in each group
            },
            ...
          },
          "undefined": [                                 # rates that are NaN, and why
            {"attribute": "Bald", "group": "not Male", "rate": "true_positive_rate",
             "reason": "no positives"},
          ],
        },
        "Young": {...},
      },
      "largest_gaps": [                     # the largest first; NaN, too few left out
        {"slice": "Young", "attribute": "Eyeglasses", "equalized_odds_difference": 0.41,
         "true_positive_rate_gap": 0.41, "false_positive_rate_gap": 0.02},
        ...
      ],
    }
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame

RATES = ("accuracy", "true_positive_rate", "false_positive_rate")
# A rate's denominator: a group without any has no such rate.
DENOMINATORS = {"true_positive_rate": "positives", "false_positive_rate": "negatives"}
GAPS = ("equalized_odds_difference", "true_positive_rate_gap", "false_positive_rate_gap")
LARGEST = 5  # entries in largest_gaps
MIN_COUNT = 20  # positives and negatives each group needs for its gap to be ranked


def _share(hits: np.ndarray, of: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits.sum(axis=0) / of.sum(axis=0)


# MetricFrame's metrics, called with one group's (rows, attributes) boolean arrays: each gives
# one value per attribute.
METRICS = {
    "accuracy": lambda truth, guess: _share(truth == guess, np.ones_like(truth)),
    "true_positive_rate": lambda truth, guess: _share(truth & guess, truth),
    "false_positive_rate": lambda truth, guess: _share(~truth & guess, ~truth),
    "positives": lambda truth, guess: truth.sum(axis=0),
    "negatives": lambda truth, guess: (~truth).sum(axis=0),
}


def slice_report(
    labels: np.ndarray,
    predicted: np.ndarray,
    attributes: list[str],
    slice_by: list[str],
    min_count: int = MIN_COUNT,
) -> dict[str, Any]:
    """Per-group accuracy, TPR and FPR of every attribute for each slice attribute, their
    gaps, and the largest equalized-odds differences among attributes with `min_count`
    positives and negatives in each group (the module docstring shows the shape).
    labels, predicted: (rows, attributes) 0/1, predicted at the tuned thresholds."""
    unknown = [name for name in slice_by if name not in attributes]
    if unknown:
        raise ValueError(f"unknown slice attribute(s) {unknown}; known attributes: {attributes}")
    if labels.shape != predicted.shape or labels.shape[1:] != (len(attributes),):
        raise ValueError(
            f"labels {labels.shape} and predicted {predicted.shape} must both be "
            f"(rows, {len(attributes)} attributes)"
        )
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    truth, guess = labels.astype(bool), predicted.astype(bool)
    slices = {by: _slice(truth, guess, attributes, by, min_count) for by in slice_by}
    return {
        "slice_by": list(slice_by),
        "min_count": min_count,
        "slices": slices,
        "largest_gaps": _largest(slices),
    }


def _slice(
    truth: np.ndarray, guess: np.ndarray, attributes: list[str], by: str, min_count: int
) -> dict:
    """One slice attribute's groups (its positive and negative rows) compared on every other
    attribute."""
    member = truth[:, attributes.index(by)]
    by_group = MetricFrame(
        metrics=METRICS, y_true=truth, y_pred=guess, sensitive_features=member
    ).by_group
    groups = {by: True, f"not {by}": False}
    values = {
        name: _group_values(by_group, value, len(attributes)) for name, value in groups.items()
    }
    report = {
        attribute: _attribute(values, i, min_count)
        for i, attribute in enumerate(attributes)
        if attribute != by
    }
    return {
        "groups": {name: int((member == value).sum()) for name, value in groups.items()},
        "attributes": report,
        "undefined": [
            {"attribute": attribute, "group": group, "rate": rate, "reason": f"no {denominator}"}
            for attribute, entry in report.items()
            for rate, denominator in DENOMINATORS.items()
            for group, count in entry[denominator].items()
            if count == 0
        ],
    }


def _group_values(by_group: Any, value: bool, width: int) -> dict[str, np.ndarray]:
    """MetricFrame's row for one group: metric -> one value per attribute. A group without
    rows has none: zero counts and NaN rates."""
    if value in by_group.index:
        return dict(by_group.loc[value])
    return {
        metric: np.zeros(width) if metric in DENOMINATORS.values() else np.full(width, np.nan)
        for metric in METRICS
    }


def _attribute(values: dict[str, dict[str, np.ndarray]], i: int, min_count: int) -> dict[str, Any]:
    """One attribute's per-group rates and counts, its gaps and equalized-odds difference,
    and whether it has the faces to be ranked."""
    entry: dict[str, Any] = {
        metric: {group: float(by[metric][i]) for group, by in values.items()} for metric in RATES
    }
    for count in DENOMINATORS.values():
        entry[count] = {group: int(by[count][i]) for group, by in values.items()}
    for rate in RATES:  # NaN when a group's rate is: there is no gap to measure
        rates = list(entry[rate].values())
        entry[f"{rate}_gap"] = float(np.max(rates) - np.min(rates))
    entry["equalized_odds_difference"] = float(
        np.max([entry["true_positive_rate_gap"], entry["false_positive_rate_gap"]])
    )
    counts = [*entry["positives"].values(), *entry["negatives"].values()]
    entry["ranked"] = min(counts) >= min_count  # never with a NaN gap: min_count >= 1
    return entry


def _largest(slices: dict[str, dict]) -> list[dict[str, Any]]:
    """The LARGEST equalized-odds differences of ranked attributes over every slice, the
    largest first."""
    gaps = [
        {"slice": by, "attribute": attribute, **{gap: entry[gap] for gap in GAPS}}
        for by, report in slices.items()
        for attribute, entry in report["attributes"].items()
        if entry["ranked"]
    ]
    return sorted(gaps, key=lambda gap: -gap["equalized_odds_difference"])[:LARGEST]
