"""How accurate the served model is on a window's traffic: estimated without labels from its
calibrated probabilities, and realised on the rows that received feedback.

Estimated (confidence-based performance estimation, CBPE): with a calibrated probability p
that an attribute is present and the run's threshold t, the prediction p >= t is right with
probability c = p when it says present and 1 - p when it says absent. A window's expected
accuracy is then mean(c), and the expected confusion counts are TP = sum of p and FP = sum of
1 - p over the rows predicted present, FN = sum of p and TN = sum of 1 - p over the others,
from which the expected F1 follows (lib.evaluate.scores, the conventions evaluation reports).
The interval is for the accuracy the window's labels would give, not for a population's: the
rows' correctness are independent Bernoulli(c) draws, so realised - estimated has standard
deviation sqrt(sum c(1 - c)) / n. Across attributes the correctness of one face's predictions
may be dependent (hair colours exclude each other), so the mean's deviation is bounded by the
mean of the attributes' deviations, which holds whatever that dependence. The interval assumes
calibration: it holds under a change of the attributes' prevalence where faces look as before
(the probabilities stay calibrated), and not under a change of how faces look that the
calibrator never saw (blur), where the model is confidently wrong and the estimate stays high.
docs/monitoring.md has the numbers. NannyML's CBPE is the reference; nannyml 0.13.1 does not
install with our pins (it needs gcsfs, whose fsspec pins conflict with ours), and the
estimator is these few lines.

Realised: per attribute, the share of labelled rows predicted right, tested one-sided against
the test split's accuracy with Fisher's exact test on the two (correct, wrong) counts. The
issue asks for a binomial test or the like; a binomial test takes the test accuracy as exact,
so an attribute that scored 1.0 on a few hundred test images alarms at its first error in
traffic, where Fisher's test knows how few images that 1.0 came from. A drop is significant at
ALPHA / (attributes tested) (Bonferroni: at most one false alarm in a hundred windows for the
window as a whole, as with drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lib.drift import FALSE_ALARM_RATE
from lib.features import probability_columns

LEVEL = 0.95  # of the estimate's interval
ALPHA = FALSE_ALARM_RATE  # a realised drop's significance, all attributes of a window together
FEEDBACK_KEYS = ["replica", "request_id", "image_index"]  # a row's identity, as feedback names it
# An attribute's entries in `performance`, and the keys of estimate's result they come from.
ESTIMATED = {
    "estimated_accuracy": "accuracy",
    "ci_low": "ci_low",
    "ci_high": "ci_high",
    "estimated_f1": "f1",
}


@dataclass(frozen=True)
class Expected:
    """What the model run measured on its test split, and the thresholds it predicts with."""

    attributes: list[str]
    thresholds: np.ndarray  # (a,)
    test_accuracy: np.ndarray  # (a,)
    n_test: int  # test images


def label_columns(attributes: list[str]) -> list[str]:
    return [f"label_{name}" for name in attributes]


def estimate(probs: np.ndarray, thresholds: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """CBPE per attribute of probs (n, a), n >= 1: expected accuracy with its interval at
    `level` and expected F1, each (a,); and the mean accuracy over attributes with its
    interval."""
    # Imported here, like the test below: lib.monitor, which serving imports, imports this
    # module for Expected, and lib.evaluate imports torch.
    from scipy.stats import norm

    from lib.evaluate import scores

    p = np.asarray(probs, dtype=np.float64)
    predicted = p >= thresholds
    right = np.where(predicted, p, 1.0 - p)
    counts = {
        "tp": np.where(predicted, p, 0.0).sum(axis=0),
        "fp": np.where(predicted, 1.0 - p, 0.0).sum(axis=0),
        "fn": np.where(predicted, 0.0, p).sum(axis=0),
        "tn": np.where(predicted, 0.0, 1.0 - p).sum(axis=0),
    }
    accuracy, z = right.mean(axis=0), norm.ppf(0.5 + level / 2)
    deviation = np.sqrt((right * (1.0 - right)).sum(axis=0)) / len(p)
    mean, half_width = accuracy.mean(), z * deviation.mean()
    return {
        "accuracy": accuracy,
        "ci_low": np.clip(accuracy - z * deviation, 0.0, 1.0),
        "ci_high": np.clip(accuracy + z * deviation, 0.0, 1.0),
        "f1": scores(counts)["f1"],
        "mean_accuracy": float(mean),
        "mean_ci": [float(v) for v in np.clip([mean - half_width, mean + half_width], 0, 1)],
    }


def realised(
    probs: np.ndarray, thresholds: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(correct, labelled), each (a,): per attribute, the rows whose label is known (labels
    (n, a): 1.0, 0.0, NaN for unknown) and how many of them the prediction got right."""
    known = ~np.isnan(labels)
    correct = known & ((probs >= thresholds) == (labels == 1.0))
    return correct.sum(axis=0), known.sum(axis=0)


def drop_p_values(
    correct: np.ndarray, labelled: np.ndarray, test_accuracy: np.ndarray, n_test: int
) -> np.ndarray:
    """Per attribute, the one-sided p-value of Fisher's exact test that the labelled rows'
    odds of a right prediction are below the test split's; NaN where nothing is labelled."""
    from scipy.stats import fisher_exact

    test_correct = np.rint(np.asarray(test_accuracy) * n_test).astype(int)
    return np.array(
        [
            fisher_exact([[k, n - k], [t, n_test - t]], alternative="less").pvalue if n else np.nan
            for k, n, t in zip(correct, labelled, test_correct, strict=True)
        ]
    )


def feedback_labels(
    rows: pd.DataFrame, feedback: pd.DataFrame | None, attributes: list[str]
) -> np.ndarray:
    """(n, a) labels of the window's rows from feedback (lib.sink.read_feedback's frame: one
    row per FEEDBACK_KEYS, label_<attribute> 1.0 / 0.0 / NaN), NaN where none was given."""
    columns = label_columns(attributes)
    if feedback is None or feedback.empty or rows.empty:
        return np.full((len(rows), len(attributes)), np.nan)
    given = feedback.reindex(columns=[*FEEDBACK_KEYS, *columns])
    joined = rows[FEEDBACK_KEYS].merge(given, on=FEEDBACK_KEYS, how="left", validate="m:1")
    return joined[columns].to_numpy(np.float64)


def measure(
    rows: pd.DataFrame,
    feedback: pd.DataFrame | None,
    expected: Expected,
    margin: float,
    min_rows: int = 1,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    """MonitorFlow's `performance` for a window's rows (lib.sink.read_window's frame) and
    their feedback: the estimate (None without rows), the realised accuracy (None without
    labels) with its tests, and the alerts. The estimate alerts when its mean falls more than
    `margin` below the test mean accuracy on at least `min_rows` rows; the realised accuracy
    when an attribute's drop is significant at alpha / (attributes labelled)."""
    attributes, thresholds = expected.attributes, expected.thresholds
    probs = rows.reindex(columns=probability_columns(attributes)).to_numpy(np.float64)
    labels = feedback_labels(rows, feedback, attributes)
    estimated = estimate(probs, thresholds) if len(rows) else None
    correct, labelled = realised(probs, thresholds, labels)
    p_values = drop_p_values(correct, labelled, expected.test_accuracy, expected.n_test)
    tested = labelled > 0
    significant = tested & (p_values <= alpha / max(int(tested.sum()), 1))
    accuracy = correct / np.maximum(labelled, 1)
    summary = {
        "n_rows": len(rows),
        "estimated_mean_accuracy": estimated and estimated["mean_accuracy"],
        "estimated_mean_accuracy_ci": estimated and estimated["mean_ci"],
        # Over the attributes labelled at all: compare it with theirs, not the 40's.
        "realised_mean_accuracy": float(accuracy[tested].mean()) if tested.any() else None,
        "n_labelled": int((~np.isnan(labels)).any(axis=1).sum()),
        "attributes_labelled": int(tested.sum()),
        "test_mean_accuracy": float(expected.test_accuracy.mean()),
        "accuracy_margin": margin,
        "alpha": alpha,
        "per_attribute": {
            name: {
                **_estimated(estimated, i),
                "realised_accuracy": float(accuracy[i]) if tested[i] else None,
                "n_labelled": int(labelled[i]),
                "test_accuracy": float(expected.test_accuracy[i]),
                "p_value": float(p_values[i]) if tested[i] else None,
                "significant_drop": bool(significant[i]),
            }
            for i, name in enumerate(attributes)
        },
    }
    summary["alerts"] = _alerts(summary, min_rows)
    summary["message"] = _verdict(summary, min_rows)
    return summary


def _estimated(estimated: dict[str, Any] | None, i: int) -> dict[str, float | None]:
    """One attribute's estimate: accuracy, its interval and F1 (None without rows)."""
    return {key: estimated and float(estimated[name][i]) for key, name in ESTIMATED.items()}


def _alerts(summary: dict[str, Any], min_rows: int) -> list[str]:
    """One line per reason to alarm: the estimate below the test accuracy by more than the
    margin, and each attribute whose realised accuracy dropped significantly."""
    alerts, estimated = [], summary["estimated_mean_accuracy"]
    test, margin = summary["test_mean_accuracy"], summary["accuracy_margin"]
    if estimated is not None and summary["n_rows"] >= min_rows and estimated < test - margin:
        low, high = summary["estimated_mean_accuracy_ci"]
        alerts.append(
            f"estimated mean accuracy {estimated:.3f} ({LEVEL:.0%} CI {low:.3f}-{high:.3f}, "
            f"{summary['n_rows']} rows) is more than {margin} below the test mean accuracy "
            f"{test:.3f}"
        )
    for name, a in summary["per_attribute"].items():
        if a["significant_drop"]:
            alerts.append(
                f"realised accuracy of {name} {a['realised_accuracy']:.3f} on "
                f"{a['n_labelled']} labelled rows is significantly below its test accuracy "
                f"{a['test_accuracy']:.3f} (p = {a['p_value']:.1e} <= {summary['alpha']} / "
                f"{summary['attributes_labelled']})"
            )
    return alerts


def _verdict(summary: dict[str, Any], min_rows: int) -> str:
    """One line: the estimate, the test accuracy, the realised accuracy, how many alerts."""
    estimated, realised_mean = summary["estimated_mean_accuracy"], summary["realised_mean_accuracy"]
    parts = [
        "no rows: nothing estimated"
        if estimated is None
        else f"estimated mean accuracy {estimated:.3f} on {summary['n_rows']} rows",
        f"test mean accuracy {summary['test_mean_accuracy']:.3f}",
    ]
    if estimated is not None and summary["n_rows"] < min_rows:
        parts.append(f"fewer rows than min_rows={min_rows}: the estimate raises no alert")
    if realised_mean is not None:
        parts.append(
            f"realised mean accuracy {realised_mean:.3f} on {summary['n_labelled']} labelled "
            f"rows ({summary['attributes_labelled']} of {len(summary['per_attribute'])} "
            "attributes labelled)"
        )
    parts.append(f"{len(summary['alerts'])} alert(s)" if summary["alerts"] else "no alert")
    return ", ".join(parts)
