"""Fairness slices: per-group rates and equalized-odds gaps, checked against counts by hand,
and a gap drawn on purpose (lib.synthetic's faint option) found in a trained model."""

import json
import math
import time

import numpy as np
import pytest
from fairlearn.metrics import equalized_odds_difference

from lib import synthetic
from lib.cards import slice_gap_chart, slices_summary
from lib.celeba import IMAGE_DIR, read_celeba
from lib.inference import Predictor
from lib.slices import slice_report

ATTRIBUTES = ["A", "B", "C", "G"]
#                    G: rows 0-3 | not G: rows 4-7
LABELS = np.array(
    [
        [1, 1, 0, 0, 1, 1, 0, 0],  # A
        [0, 0, 0, 1, 0, 0, 0, 1],  # B
        [0, 0, 0, 0, 1, 0, 1, 0],  # C: no positives among G
        [1, 1, 1, 1, 0, 0, 0, 0],  # G, the slice
    ]
).T
PREDICTED = np.array(
    [
        [1, 1, 0, 0, 1, 0, 0, 0],  # A: G finds 2 of 2, not G 1 of 2
        [1, 1, 0, 1, 0, 0, 0, 1],  # B: G raises 2 false alarms in 3, not G none
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
    ]
).T


def test_rates_and_gaps_match_the_counts_by_hand():
    report = slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G"], min_count=1)
    assert report["slice_by"] == ["G"] and report["min_count"] == 1
    g = report["slices"]["G"]
    assert g["groups"] == {"G": 4, "not G": 4}
    assert list(g["attributes"]) == ["A", "B", "C"]  # the slice is not sliced by itself
    a, b = g["attributes"]["A"], g["attributes"]["B"]
    assert a["accuracy"] == {"G": 1.0, "not G": 0.75}
    assert a["true_positive_rate"] == {"G": 1.0, "not G": 0.5}
    assert a["false_positive_rate"] == {"G": 0.0, "not G": 0.0}
    assert a["positives"] == {"G": 2, "not G": 2} and a["negatives"] == {"G": 2, "not G": 2}
    assert (a["accuracy_gap"], a["true_positive_rate_gap"]) == (0.25, 0.5)
    assert (a["false_positive_rate_gap"], a["equalized_odds_difference"]) == (0.0, 0.5)
    assert b["true_positive_rate"] == {"G": 1.0, "not G": 1.0}
    assert b["false_positive_rate"] == {"G": 2 / 3, "not G": 0.0}
    assert b["accuracy"] == {"G": 0.5, "not G": 1.0}
    assert b["equalized_odds_difference"] == pytest.approx(2 / 3)
    for name, entry in (("A", a), ("B", b)):  # fairlearn's definition, where both are defined
        column = ATTRIBUTES.index(name)
        expected = equalized_odds_difference(
            LABELS[:, column], PREDICTED[:, column], sensitive_features=LABELS[:, 3]
        )
        assert entry["equalized_odds_difference"] == pytest.approx(expected)
    assert [(gap["attribute"], gap["slice"]) for gap in report["largest_gaps"]] == [
        ("B", "G"),
        ("A", "G"),
    ]
    assert report["largest_gaps"][0]["false_positive_rate_gap"] == pytest.approx(2 / 3)


def test_a_group_without_positives_has_no_rate_and_says_so():
    report = slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G"], min_count=1)
    c = report["slices"]["G"]["attributes"]["C"]
    assert math.isnan(c["true_positive_rate"]["G"]) and c["true_positive_rate"]["not G"] == 0.5
    assert math.isnan(c["true_positive_rate_gap"]) and math.isnan(c["equalized_odds_difference"])
    assert c["false_positive_rate"] == {"G": 0.25, "not G": 0.0}  # still defined
    assert report["slices"]["G"]["undefined"] == [
        {"attribute": "C", "group": "G", "rate": "true_positive_rate", "reason": "no positives"}
    ]
    assert "C" not in [gap["attribute"] for gap in report["largest_gaps"]]


def test_only_gaps_between_groups_with_enough_faces_are_ranked():
    # A has 2 positives and 2 negatives in each group; B 1 positive and 3 negatives.
    report = slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G"], min_count=2)
    assert [gap["attribute"] for gap in report["largest_gaps"]] == ["A"]
    ranked = {name: e["ranked"] for name, e in report["slices"]["G"]["attributes"].items()}
    assert ranked == {"A": True, "B": False, "C": False}
    assert report["slices"]["G"]["attributes"]["B"]["equalized_odds_difference"] > 0.5
    assert slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G"])["largest_gaps"] == []  # 20
    with pytest.raises(ValueError, match="min_count must be at least 1"):
        slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G"], min_count=0)


def test_a_slice_with_one_group_only_reports_the_other_as_empty():
    everyone = LABELS.copy()
    everyone[:, 3] = 1
    report = slice_report(everyone, PREDICTED, ATTRIBUTES, ["G"])
    g = report["slices"]["G"]
    assert g["groups"] == {"G": 8, "not G": 0}
    assert math.isnan(g["attributes"]["A"]["accuracy"]["not G"])
    assert g["attributes"]["A"]["positives"]["not G"] == 0
    assert report["largest_gaps"] == []


def test_the_report_is_plain_data():
    def kinds(value) -> set[type]:
        if isinstance(value, dict):
            return {str} | set().union(*map(kinds, value.values()))
        if isinstance(value, list):
            return set().union(*map(kinds, value))
        return {type(value)}

    report = slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G", "A"])
    assert kinds(report) == {str, int, float, bool}  # no numpy scalars
    assert json.loads(json.dumps(report))["slice_by"] == ["G", "A"]
    assert list(report["slices"]["A"]["attributes"]) == ["B", "C", "G"]


def test_an_unknown_slice_attribute_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown slice attribute\(s\) \['Old'\]; known attri"):
        slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G", "Old"])
    with pytest.raises(ValueError, match="must both be"):
        slice_report(LABELS, PREDICTED[:, :3], ATTRIBUTES, ["G"])


def test_forty_attributes_by_two_slices_on_two_thousand_rows_is_quick():
    rng = np.random.default_rng(0)
    labels, predicted = (rng.random((2, 2000, 40)) < 0.3).astype(np.uint8)
    names = [f"a{i}" for i in range(40)]
    started = time.perf_counter()
    report = slice_report(labels, predicted, names, ["a0", "a1"])
    assert time.perf_counter() - started < 2.0  # about 0.3 s on 2 cores
    assert len(report["largest_gaps"]) == 5 and len(report["slices"]["a1"]["attributes"]) == 39


def test_the_card_charts_each_slices_largest_gaps_and_tables_the_largest():
    report = slice_report(LABELS, PREDICTED, ATTRIBUTES, ["G", "A"], min_count=1)
    bars = slice_gap_chart(report, shown=1)["data"]["values"]
    # By A, B has no positives in one group: no gap; C's is the TPR's, 1 - 0.
    assert [(bar["slice"], bar["attribute"], bar["rate"]) for bar in bars] == [
        ("G", "B", "FPR"),
        ("A", "C", "TPR"),
    ]
    assert [bar["gap"] for bar in bars] == [pytest.approx(2 / 3), 1.0]
    text, chart, table = slices_summary(report)
    assert "2 rates are undefined" in text._text  # C's TPR among G, B's among A
    assert chart._spec == slice_gap_chart(report)
    assert [row[:3] for row in table._data] == [
        ["A", "C", "1.000"],
        ["G", "B", "0.667"],
        ["G", "A", "0.500"],
        ["A", "G", "0.000"],
    ]
    assert table._data[1][3:] == ["G 1.000, not G 1.000", "G 0.667, not G 0.000", "G 1, not G 1"]


@pytest.mark.flow
def test_a_cue_drawn_faint_for_one_group_is_the_gap_the_report_finds(learned_run, tmp_path):
    """The learning run's model meets faces whose blond hair is painted faint (most of the way
    to auburn) on the Young. It misses it there, and the report says so: the largest gap is
    Blond_Hair by Young, far above every other drawn attribute's. A hair colour because the
    model sees it at 32 px; thin cues such as glasses it learns too unevenly from run to run.
    Measured: 0.97 (a TPR of 0.00 against 0.97), the next drawn attribute by Young 0.13."""
    faint = {"attribute": "Blond_Hair", "group": "Young", "visibility": 0.3}
    root = synthetic.generate(tmp_path / "faces", synthetic.make_spec(2000, seed=7, faint=faint))
    index = read_celeba(root)
    predictor = Predictor.from_run(learned_run.pathspec)
    pixels = np.stack([predictor.pixels((root / IMAGE_DIR / f).read_bytes()) for f in index.files])
    probs = np.concatenate([predictor.predict(batch).probs for batch in np.array_split(pixels, 8)])
    predicted = probs >= predictor.thresholds
    report = slice_report(index.labels, predicted, index.attributes, ["Male", "Young"])

    top = report["largest_gaps"][0]
    assert (top["slice"], top["attribute"]) == ("Young", "Blond_Hair"), report["largest_gaps"]
    young = report["slices"]["Young"]["attributes"]
    blond = young["Blond_Hair"]
    assert blond["true_positive_rate"]["Young"] < blond["true_positive_rate"]["not Young"]
    others = {
        name: entry["equalized_odds_difference"]
        for name, entry in young.items()
        if name in synthetic.DRAWN_ATTRIBUTES and name != "Blond_Hair" and entry["ranked"]
    }
    assert blond["equalized_odds_difference"] > max(0.5, 3 * max(others.values())), others
