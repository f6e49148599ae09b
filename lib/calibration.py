"""Per-attribute probability calibration: fitted on the validation split, applied by evaluation
and serving alike, so that a served 0.9 means about nine in ten.

Both methods map a probability p through its logit z = log(p / (1 - p)) to
sigmoid(slope * z + intercept), fitted by maximum likelihood on validation probabilities
against Platt's smoothed labels (platt_targets): "platt" fits slope and intercept,
"temperature" the slope alone (temperature T = 1 / slope, intercept 0), "none" is the
identity. The slope is bounded below by MIN_SLOPE, so every map is strictly increasing: ROC
AUC and any ranking stay as they were (up to float64's resolution: probabilities within 1e-16
of 1 tie), and only the values (and so the tuned thresholds) move. scikit-learn's
LogisticRegression cannot bound a coefficient's sign and regularises by default, so the fit is
scipy's bounded L-BFGS over the log loss: two parameters per attribute, convex.

Isotonic regression is not offered: its map is a step function, which ties probabilities and
changes ROC AUC.

The fitted calibrator is plain data (the TrainFlow artifact `calibration`, and a key of an
exported folder's facet.json): {"method", "slope": [...], "intercept": [...]}, one float per
attribute in the model's order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

METHODS = ("platt", "temperature", "none")
MIN_SLOPE = 1e-3
ECE_BINS = 15
# Probabilities are clipped into [LOWEST, HIGHEST] before the logit, so exact 0s and 1s map to
# finite values. HIGHEST is the largest float64 below 1 and LOWEST is far below float32's
# smallest normal value: no two distinct float32 probabilities are clipped together.
LOWEST = 1e-300
HIGHEST = float(np.nextafter(1.0, 0.0))
IDENTITY: dict[str, Any] = {"method": "none"}
POOLED = "all attributes"


def logit(probs: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, finite for every p in [0, 1]."""
    p = np.clip(np.asarray(probs, dtype=np.float64), LOWEST, HIGHEST)
    return np.log(p) - np.log1p(-p)


def fit(method: str, probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The calibrator of each attribute's column of probs (n, a) against labels (n, a)."""
    if method not in METHODS:
        raise ValueError(f"calibration must be one of {METHODS}, got {method!r}")
    if method == "none":
        return dict(IDENTITY)
    z = logit(probs)
    fitted = [
        _fit_logistic(z[:, i], platt_targets(labels[:, i]), method == "platt")
        for i in range(z.shape[1])
    ]
    return {
        "method": method,
        "slope": [slope for slope, _ in fitted],
        "intercept": [intercept for _, intercept in fitted],
    }


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's (1999) targets for 0/1 labels: (positives + 1) / (positives + 2) for a positive,
    1 / (negatives + 2) for a negative. They keep the fit finite where validation separates
    an attribute perfectly (plain 0/1 targets drive the slope to infinity there: 76 and 143 on
    a short run's 294 validation images, saturating test probabilities to exactly 0 and 1),
    and cost nothing elsewhere."""
    positives = float(labels.sum())
    negatives = len(labels) - positives
    return np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))


def _fit_logistic(z: np.ndarray, y: np.ndarray, with_intercept: bool) -> tuple[float, float]:
    """(slope, intercept) minimising the mean log loss of sigmoid(slope * z + intercept),
    slope >= MIN_SLOPE; the intercept stays 0 unless `with_intercept`."""
    free = 2 if with_intercept else 1

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        slope, intercept = (*params, 0.0)[:2]
        s = slope * z + intercept
        residual = expit(s) - y
        gradient = np.array([np.mean(residual * z), np.mean(residual)])
        return float(np.mean(np.logaddexp(0.0, s) - y * s)), gradient[:free]

    bounds = [(MIN_SLOPE, None), (None, None)][:free]
    result = minimize(loss, np.array([1.0, 0.0][:free]), jac=True, method="L-BFGS-B", bounds=bounds)
    slope, intercept = (*result.x, 0.0)[:2]
    return float(slope), float(intercept)


def apply(calibration: dict[str, Any] | None, probs: np.ndarray) -> np.ndarray:
    """probs (n, a) through the fitted calibrator. None (a run from before calibration) and
    "none" leave them as they are. Evaluation and serving both calibrate through this."""
    if calibration is None or calibration["method"] == "none":
        return probs
    slope, intercept = np.array(calibration["slope"]), np.array(calibration["intercept"])
    return expit(slope * logit(probs) + intercept)


def _bins(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per attribute and equal-width bin of the probability: counts, summed probabilities and
    summed labels, each (a, bins). A probability of exactly 1 falls in the last bin."""
    a = probs.shape[1]
    index = np.minimum((probs * bins).astype(np.int64), bins - 1) + bins * np.arange(a)
    flat = index.ravel()

    def total(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(flat, weights, minlength=a * bins).reshape(a, bins)

    return {
        "count": total(None),
        "prob": total(np.asarray(probs, dtype=np.float64).ravel()),
        "label": total(np.asarray(labels, dtype=np.float64).ravel()),
    }


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error per attribute (a,): over equal-width bins of the predicted
    probability, the gap between mean probability and positive rate, weighted by the share
    of images in the bin."""
    binned = _bins(probs, labels, bins)
    return np.abs(binned["prob"] - binned["label"]).sum(axis=1) / len(probs)


def brier(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Brier score per attribute (a,): the mean squared gap between probability and label."""
    return np.mean((np.asarray(probs, dtype=np.float64) - labels) ** 2, axis=0)


def reliability(
    attributes: list[str], probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> dict[str, list[dict[str, float]]]:
    """Reliability-diagram points of every attribute, and of all of them pooled (key POOLED):
    for each non-empty bin, the mean predicted probability, the observed positive rate and
    the number of predictions."""
    columns = [(POOLED, probs.reshape(-1, 1), labels.reshape(-1, 1))] + [
        (a, probs[:, [i]], labels[:, [i]]) for i, a in enumerate(attributes)
    ]
    return {name: _points(_bins(p, y, bins)) for name, p, y in columns}


def _points(binned: dict[str, np.ndarray]) -> list[dict[str, float]]:
    count, prob, label = (binned[k][0] for k in ("count", "prob", "label"))
    return [
        {"predicted": p / c, "observed": y / c, "count": int(c)}
        for c, p, y in zip(count, prob, label, strict=True)
        if c
    ]


def report(
    method: str,
    attributes: list[str],
    raw: np.ndarray,
    calibrated: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """metrics["calibration"]: the method, and ECE and Brier score before and after, their
    means over the attributes and per attribute."""
    measured = {
        f"{name}_{when}": score(probs, labels)
        for name, score in (("ece", ece), ("brier", brier))
        for when, probs in (("before", raw), ("after", calibrated))
    }
    return {
        "method": method,
        **{f"mean_{key}": float(np.mean(values)) for key, values in measured.items()},
        "bins": ECE_BINS,
        "per_attribute": {
            attribute: {key: float(values[i]) for key, values in measured.items()}
            for i, attribute in enumerate(attributes)
        },
    }
