"""Fairness metrics against hand computations on small fixed predictions (DESIGN.md §6)."""

import math

import numpy as np
import pytest

from synthfed.fairness.audit import COMPARE_METRICS, compare_audits
from synthfed.fairness.metrics import (
    METRIC_DIRECTIONS,
    bias_reduction,
    classification_metrics,
    confusion,
    label_fidelity,
    tv_distance,
)

# 10 test images of 3 classes (support 4, 2, 4).
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 0, 2, 2, 1, 0]
# By hand: recall_0 = 3/4, recall_1 = 1/2, recall_2 = 2/4; 6 of 10 correct.


def test_classification_metrics_match_hand_computation():
    # Prepare
    recalls = [0.75, 0.5, 0.5]
    mean = (0.75 + 0.5 + 0.5) / 3
    pop_std = math.sqrt(((0.75 - mean) ** 2 + 2 * (0.5 - mean) ** 2) / 3)  # ddof = 0
    # Execute
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=3)
    # Assert
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["per_class_recall"] == pytest.approx(recalls)
    assert m["balanced_accuracy"] == pytest.approx(0.583333, abs=1e-6)
    assert m["worst_class"] == pytest.approx(0.5)
    assert m["worst_class_index"] == 1  # lowest k among the tied worst classes
    assert m["gap"] == pytest.approx(0.25)
    assert m["bias"] == pytest.approx(pop_std)
    assert m["bias"] == pytest.approx(0.117851, abs=1e-6)  # not the sample std 0.144338
    assert m["support"] == [4, 2, 4]


def test_a_class_absent_from_the_test_set_is_nan_and_left_out_of_the_summaries():
    # Prepare: the same predictions scored over 4 classes; class 3 has no test image
    # Execute
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=4)
    # Assert
    assert math.isnan(m["per_class_recall"][3])
    assert m["support"][3] == 0
    assert m["balanced_accuracy"] == pytest.approx(0.583333, abs=1e-6)
    assert m["bias"] == pytest.approx(0.117851, abs=1e-6)
    assert m["gap"] == pytest.approx(0.25)


def test_perfect_predictions_have_zero_gap_and_bias():
    # Prepare / Execute
    m = classification_metrics([0, 1, 2, 2], [0, 1, 2, 2], num_classes=3)
    # Assert
    assert m["accuracy"] == 1.0 and m["worst_class"] == 1.0
    assert m["gap"] == 0.0 and m["bias"] == 0.0


def test_confusion_rows_are_true_classes():
    # Prepare / Execute
    cm = confusion(Y_TRUE, Y_PRED, 3)
    # Assert
    np.testing.assert_array_equal(cm, [[3, 1, 0], [1, 1, 0], [1, 1, 2]])


def test_tv_distance_by_hand():
    # Prepare: p = (1/4, 1/4, 1/2), q = (1/2, 1/4, 1/4)
    # Execute / Assert
    assert tv_distance([1, 1, 2], [2, 1, 1]) == pytest.approx(0.25)
    assert tv_distance([2, 2, 4], [2, 1, 1]) == pytest.approx(0.25)  # counts are normalised
    assert tv_distance([5, 0], [0, 3]) == pytest.approx(1.0)
    assert tv_distance([3, 3], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        tv_distance([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        tv_distance([0, 0], [1, 1])


def test_label_fidelity_by_hand():
    # Prepare: generated for classes 0,0,1,1,2,2; the real-data classifier says 0,1,1,2,2,2
    cond = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 2, 2, 2]
    # Execute
    overall, per_class = label_fidelity(pred, cond, 4)
    # Assert
    assert overall == pytest.approx(4 / 6)
    assert per_class[:3] == pytest.approx([0.5, 0.5, 1.0])
    assert math.isnan(per_class[3])  # nothing generated for class 3


def test_bias_reduction():
    # Execute / Assert
    assert bias_reduction(0.1, 0.4) == pytest.approx(0.75)
    assert bias_reduction(0.4, 0.1) == pytest.approx(-3.0)
    assert bias_reduction(0.0, 0.0) == 0.0
    assert math.isnan(bias_reduction(0.1, 0.0))


def test_bad_inputs_raise_value_errors():
    # Execute / Assert
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 1], [0], num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 3], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match="integer"):
        classification_metrics([0.5, 1.0], [0, 1], num_classes=2)


def _fake_report(bias: float, accuracy: float, dp_eps=None) -> dict:
    """The fields of an audit report that the comparison reads."""
    return {
        "utility": {"tstr": {"accuracy": accuracy, "balanced_accuracy": accuracy, "worst_class": accuracy - 0.1,
                             "gap": 0.2, "bias": bias}, "utility_ratio": accuracy},
        "fairness": {"label_fidelity": 0.8, "worst_class_fidelity": 0.5, "tv_distance": 0.1},
        "privacy": {"differentially_private": dp_eps is not None, "epsilon_max": dp_eps,
                    "memorization": {"dcr_ratio": 1.0, "near_copies": 0},
                    "membership": {"skipped": "no run"}},
    }


def test_compare_audits_has_a_direction_per_metric_and_bias_reduction_vs_reference():
    # Prepare
    reports = {"local": _fake_report(0.4, 0.5), "fedavg": _fake_report(0.1, 0.8, dp_eps=8.0)}
    # Execute
    table = compare_audits(reports, reference="local")
    # Assert
    assert list(table.columns) == ["local", "fedavg", "direction"]
    assert set(table["direction"]) <= {"higher", "lower"}
    assert table.loc["bias_reduction", "fedavg"] == pytest.approx(0.75)
    assert table.loc["bias_reduction", "local"] == 0.0
    assert table.loc["epsilon", "local"] == math.inf  # no guarantee is the worst epsilon
    assert table.loc["epsilon", "fedavg"] == 8.0
    assert math.isnan(table.loc["mia_auc", "local"])
    assert table.loc["bias", "direction"] == "lower" and table.loc["accuracy", "direction"] == "higher"
    with pytest.raises(ValueError, match="reference"):
        compare_audits(reports, reference="nope")


def test_every_compared_metric_has_a_direction():
    # Execute / Assert
    assert set(COMPARE_METRICS) <= set(METRIC_DIRECTIONS)
    assert set(METRIC_DIRECTIONS.values()) == {"higher", "lower"}
