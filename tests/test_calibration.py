"""Calibration: the fit on miscalibrated synthetic probabilities, and on a trained run, where
evaluation and serving must give the same calibrated probabilities."""

import base64
import io
import json
import re

import numpy as np
import pytest
from helpers import PROBABILITY_ATOL, assert_same_probabilities, learning_config
from metaflow.cards import get_cards
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from lib import calibration
from lib.celeba import SPLITS, read_celeba
from lib.datasets import CachedSplit
from lib.evaluate import predict, roc_auc
from lib.export import export
from lib.inference import Predictor
from lib.model import load_model
from lib.sources import resolve_source
from serving import create_app

RATES = np.array([0.5, 0.1, 0.02, 0.9])
PRIOR_LOGIT = np.log(RATES / (1 - RATES))


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of four attributes (common to rare) and a model's probabilities: well ranked,
    badly calibrated. Its evidence e is N(+-1 + c, 1) for a positive (negative), c the prior
    logit, so the true log-odds are 2e - c; the model says sigmoid(3e + 0.5), whose logit z
    gives true log-odds (2/3) z - 1/3 - c: a Platt map, which the fit should recover."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < RATES).astype(np.uint8)
    evidence = rng.normal(size=labels.shape) + (2.0 * labels - 1) + PRIOR_LOGIT
    return 1 / (1 + np.exp(-(3 * evidence + 0.5))), labels


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_lowers_ece_and_brier_on_held_out_data(method):
    fit_probs, fit_labels = overconfident(4000, seed=0)
    probs, labels = overconfident(4000, seed=1)
    fitted = calibration.fit(method, fit_probs, fit_labels)
    calibrated = calibration.apply(fitted, probs)
    before, after = calibration.ece(probs, labels), calibration.ece(calibrated, labels)
    assert (after < before).all()
    assert (calibration.brier(calibrated, labels) < calibration.brier(probs, labels)).all()
    np.testing.assert_array_equal(roc_auc(calibrated, labels), roc_auc(probs, labels))
    # Plain data, as the artifact and facet.json hold it.
    assert json.loads(json.dumps(fitted)) == fitted
    if method == "temperature":
        assert fitted["intercept"] == [0.0] * 4


def test_platt_recovers_the_true_map():
    probs, labels = overconfident(20_000, seed=6)
    fitted = calibration.fit("platt", probs, labels)
    np.testing.assert_allclose(fitted["slope"], [2 / 3] * 4, atol=0.05)
    held_out, held_out_labels = overconfident(20_000, seed=7)
    truth = expit(2 / 3 * calibration.logit(held_out) - 1 / 3 - PRIOR_LOGIT)
    calibrated = calibration.apply(fitted, held_out)
    assert np.abs(calibrated - truth).max() < 0.03
    assert calibration.ece(calibrated, held_out_labels).max() < 0.01


def test_the_map_is_strictly_increasing_even_for_a_model_that_ranks_backwards():
    rng = np.random.default_rng(2)
    probs = rng.random((500, 2))
    # Column 0's labels fall as its probability rises: an unbounded fit turns the slope
    # negative and reverses the ranking; the bounded one stops at MIN_SLOPE. Column 1 is
    # calibrated already: its slope stays near 1.
    labels = np.stack([probs[:, 0] < 0.3, rng.random(500) < probs[:, 1]], axis=1)
    fitted = calibration.fit("platt", probs, labels.astype(np.uint8))
    assert fitted["slope"][0] == pytest.approx(calibration.MIN_SLOPE)
    assert fitted["slope"][1] == pytest.approx(1, abs=0.3)
    grid = np.repeat(np.linspace(0, 1, 10_001)[:, None], 2, axis=1)
    assert (np.diff(calibration.apply(fitted, grid), axis=0) > 0).all()


def test_an_attribute_validation_separates_perfectly_keeps_a_finite_map():
    probs = np.linspace(0.01, 0.99, 200)[:, None]
    labels = (probs > 0.5).astype(np.uint8)
    fitted = calibration.fit("platt", probs, labels)
    assert fitted["slope"][0] < 20  # 0/1 targets would send it towards infinity
    calibrated = calibration.apply(fitted, probs)
    assert calibrated.min() > 0 and calibrated.max() < 1
    targets = calibration.platt_targets(labels[:, 0])  # 100 negatives, 100 positives
    np.testing.assert_allclose(targets[[0, -1]], [1 / 102, 101 / 102])


def test_exact_zeros_and_ones_are_calibrated_to_finite_probabilities():
    probs = np.array([[0.0, 1.0], [1.0, 0.0], [0.3, 0.6], [0.0, 1.0]])
    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 1]], dtype=np.uint8)
    fitted = calibration.fit("platt", probs, labels)
    calibrated = calibration.apply(fitted, probs)
    assert np.isfinite(fitted["slope"] + fitted["intercept"]).all()
    assert np.isfinite(calibrated).all() and ((calibrated >= 0) & (calibrated <= 1)).all()
    # Still ordered: 0 < 0.3 < 1 in column 0 stays so.
    assert calibrated[0, 0] < calibrated[2, 0] < calibrated[1, 0]


def test_none_and_a_run_without_calibration_are_the_identity():
    probs, labels = overconfident(100, seed=3)
    fitted = calibration.fit("none", probs, labels)
    assert fitted == {"method": "none"}
    assert calibration.apply(fitted, probs) is probs
    assert calibration.apply(None, probs) is probs
    with pytest.raises(ValueError, match="calibration must be one of"):
        calibration.fit("isotonic", probs, labels)


def test_ece_brier_and_reliability_agree_with_scikit_learn():
    probs, labels = overconfident(3000, seed=4)
    points = calibration.reliability(["A", "B", "C", "D"], probs, labels)
    assert list(points) == [calibration.POOLED, "A", "B", "C", "D"]
    ece = calibration.ece(probs, labels)
    for i, name in enumerate("ABCD"):
        y, p = labels[:, i], probs[:, i]
        assert calibration.brier(probs, labels)[i] == pytest.approx(brier_score_loss(y, p))
        observed, predicted = calibration_curve(y, p, n_bins=calibration.ECE_BINS)
        np.testing.assert_allclose([q["observed"] for q in points[name]], observed)
        np.testing.assert_allclose([q["predicted"] for q in points[name]], predicted)
        counts = np.array([q["count"] for q in points[name]])
        assert counts.sum() == len(y)
        gaps = np.abs(observed - predicted)
        assert ece[i] == pytest.approx((counts * gaps).sum() / len(y))
    assert sum(q["count"] for q in points[calibration.POOLED]) == labels.size


def test_report_holds_means_and_every_attribute():
    probs, labels = overconfident(1000, seed=5)
    calibrated = calibration.apply(calibration.fit("platt", probs, labels), probs)
    report = calibration.report("platt", list("ABCD"), probs, calibrated, labels)
    assert report["method"] == "platt"
    assert report["mean_ece_after"] < report["mean_ece_before"]
    assert report["mean_brier_after"] < report["mean_brier_before"]
    assert set(report["per_attribute"]) == set("ABCD")
    assert report["per_attribute"]["C"]["ece_before"] == pytest.approx(
        calibration.ece(probs, labels)[2]
    )


@pytest.fixture
def test_split(learned_run):
    """The learned run's test split: raw (uncalibrated) probabilities and labels."""
    dataset = learned_run.data.dataset
    model, preprocessing = load_model(learned_run.data.model, "cpu")
    split = CachedSplit(dataset["cache_dir"], "test")
    return split, predict(model, split, preprocessing)


@pytest.mark.flow
def test_a_trained_run_is_better_calibrated_and_ranks_as_before(learned_run, test_split):
    report = learned_run.data.metrics["calibration"]
    print(
        f"learned run, test split: mean ECE {report['mean_ece_before']:.4f} -> "
        f"{report['mean_ece_after']:.4f}, mean Brier {report['mean_brier_before']:.4f} -> "
        f"{report['mean_brier_after']:.4f}"
    )
    assert report["method"] == "platt"
    assert report["mean_ece_after"] < report["mean_ece_before"]
    assert report["mean_brier_after"] <= report["mean_brier_before"]
    _, raw = test_split
    calibrated = calibration.apply(learned_run.data.calibration, raw.probs)
    attributes = learned_run.data.dataset["attributes"]
    auc = dict(zip(attributes, roc_auc(calibrated, raw.labels), strict=True))
    np.testing.assert_allclose(list(auc.values()), roc_auc(raw.probs, raw.labels), atol=1e-12)
    assert auc == pytest.approx(
        {a: m["roc_auc"] for a, m in learned_run.data.metrics["per_attribute"].items()},
        nan_ok=True,
    )
    # The drift reference holds what serving logs: calibrated probabilities.
    reference = learned_run.data.reference_features[[f"prob_{a}" for a in attributes]]
    np.testing.assert_allclose(reference.to_numpy(), calibrated, atol=PROBABILITY_ATOL, rtol=0)


@pytest.mark.flow
def test_the_evaluate_card_shows_calibration(learned_run):
    html = get_cards(learned_run["evaluate"].task)[0].get()
    encoded = re.search(r'window.__MF_DATA__\[[^]]+\] = "([^"]+)"', html).group(1)
    content = str(json.loads(base64.b64decode(encoded)))
    report = learned_run.data.metrics["calibration"]
    assert "reliability diagram, all attributes" in content
    assert "reliability diagram per attribute" in content
    assert f"{report['mean_ece_before']:.4f} → {report['mean_ece_after']:.4f}" in content


@pytest.mark.flow
def test_serving_answers_the_calibrated_probabilities_evaluation_stored(learned_run, tmp_path):
    """The test split's JPEGs through /predict give the probabilities the evaluate step
    stored for them, calibrated, and present means at or above the thresholds tuned on
    calibrated validation probabilities."""
    spec = learning_config()["data"]["synthetic"]
    source, root = resolve_source("synthetic", spec)
    assert source == learned_run.data.dataset["source"]
    index = read_celeba(root)
    names = [f for f, s in zip(index.files, index.split, strict=True) if s == SPLITS["test"]]
    app = create_app(
        {"MODEL_RUN": learned_run.pathspec, "PREDICTION_LOG": str(tmp_path / "log.db")}
    )
    assert app.extensions["facet.model"].wait(60), app.extensions["facet.model"].error
    files = [(io.BytesIO(index.images.read(name)), name) for name in names[:8]]
    response = app.test_client().post("/predict", data={"image": files})
    assert response.status_code == 200, response.get_json()
    attributes = learned_run.data.dataset["attributes"]
    reference = learned_run.data.reference_features
    thresholds = learned_run.data.thresholds
    answers = response.get_json()["predictions"]
    for row, answer in zip(reference.head(len(files)).itertuples(), answers, strict=True):
        stored = {a: getattr(row, f"prob_{a}") for a in attributes}
        assert_same_probabilities(answer["attributes"], stored)
        assert answer["present"] == [a for a in attributes if stored[a] >= thresholds[a]]


@pytest.mark.flow
def test_an_export_carries_the_calibration_and_an_old_run_serves_raw(
    learned_run, test_split, tmp_path
):
    split, raw = test_split
    pixels = np.stack([split[i][0].numpy() for i in range(4)])
    folder = export(learned_run.pathspec, tmp_path / "exported")
    facet = json.loads((folder / "facet.json").read_text())
    assert facet["calibration"] == learned_run.data.calibration
    exported = Predictor.from_dir(folder).predict(pixels).probs
    expected = calibration.apply(learned_run.data.calibration, raw.probs[:4])
    np.testing.assert_allclose(exported, expected, atol=PROBABILITY_ATOL, rtol=0)
    # A run from before calibration: no `calibration` in its record, probabilities as trained.
    del facet["calibration"]
    (folder / "facet.json").write_text(json.dumps(facet))
    old = Predictor.from_dir(folder).predict(pixels).probs
    np.testing.assert_allclose(old, raw.probs[:4], atol=PROBABILITY_ATOL, rtol=0)
    assert np.abs(old - exported).max() > 0.01
