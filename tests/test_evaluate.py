import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from lib.evaluate import confusion, roc_auc, scores, summarize, tune_thresholds


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = (rng.random((500, 6)) < [0.5, 0.1, 0.02, 0.9, 0.0, 1.0]).astype(np.uint8)
    signal = [2.0, 1.0, 0.5, 0.0, 1.0, 1.0]
    probs = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + signal * (2 * labels - 1))))
    return probs, labels


def test_metrics_match_scikit_learn(predictions):
    probs, labels = predictions
    thresholds = np.array([0.5, 0.3, 0.7, 0.5, 0.4, 0.6])
    ours = scores(confusion(probs, labels, thresholds))
    auc = roc_auc(probs, labels)
    for i in range(labels.shape[1]):
        y, p = labels[:, i], probs[:, i] >= thresholds[i]
        assert ours["accuracy"][i] == pytest.approx(accuracy_score(y, p))
        with warnings.catch_warnings():  # scikit-learn warns on single-class columns
            warnings.simplefilter("ignore")
            assert ours["balanced_accuracy"][i] == pytest.approx(balanced_accuracy_score(y, p))
        assert ours["f1"][i] == pytest.approx(f1_score(y, p, zero_division=0))
        if 0 < y.sum() < len(y):
            assert auc[i] == pytest.approx(roc_auc_score(y, probs[:, i]))
        else:
            assert np.isnan(auc[i])  # one class only: undefined, never a made-up number


def test_auc_handles_ties_like_scikit_learn():
    labels = np.array([[0], [1], [0], [1], [1]])
    probs = np.array([[0.2], [0.2], [0.5], [0.5], [0.9]])
    assert roc_auc(probs, labels)[0] == pytest.approx(roc_auc_score(labels[:, 0], probs[:, 0]))


def test_tuned_threshold_separates_a_separable_attribute():
    labels = np.array([[0], [0], [0], [1], [1]])
    probs = np.array([[0.05], [0.10], [0.20], [0.30], [0.90]])
    threshold = tune_thresholds(probs, labels)[0]
    assert 0.20 < threshold <= 0.30
    assert scores(confusion(probs, labels, np.array([threshold])))["accuracy"][0] == 1.0


def test_objectives_differ_on_a_rare_attribute():
    """Balanced accuracy buys minority recall with majority errors; accuracy does not."""
    rng = np.random.default_rng(1)
    labels = (rng.random((4000, 1)) < 0.05).astype(np.uint8)
    probs = np.clip(0.1 + 0.15 * labels + rng.normal(0, 0.08, labels.shape), 0, 1)
    by_accuracy = tune_thresholds(probs, labels, "accuracy")
    by_balance = tune_thresholds(probs, labels, "balanced_accuracy")
    assert by_balance[0] < by_accuracy[0]
    acc = {
        k: scores(confusion(probs, labels, t)) for k, t in [("a", by_accuracy), ("b", by_balance)]
    }
    assert acc["a"]["accuracy"][0] > acc["b"]["accuracy"][0]
    assert acc["b"]["balanced_accuracy"][0] > acc["a"]["balanced_accuracy"][0]
    with pytest.raises(ValueError, match="threshold objective"):
        tune_thresholds(probs, labels, "recall")


def test_summary_reports_baseline_and_flags_a_collapsed_model():
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.uint8)
    collapsed = np.full(labels.shape, 0.9)  # says "present" for everything
    metrics = summarize(["A", "B"], collapsed, labels, np.array([0.5, 0.5]), np.array([0.8, 0.3]))
    assert metrics["majority_baseline_accuracy"] == pytest.approx((0.75 + 0.75) / 2)
    assert metrics["per_attribute"]["B"]["accuracy"] == pytest.approx(0.25)
    assert metrics["constant_attributes"] == ["A", "B"]
    assert metrics["beats_baseline"] is False

    perfect = labels.astype(float)
    metrics = summarize(
        ["A", "B"], perfect, labels, np.array([0.5, 0.5]), np.array([0.8, 0.3]), ["A"]
    )
    assert metrics["beats_baseline"] is True and metrics["mean_accuracy"] == 1.0
    assert metrics["drawn_attributes"] == ["A"]
    assert metrics["mean_balanced_accuracy_drawn"] == 1.0
