"""Per-class utility and fairness measures (DESIGN.md §6), on plain label arrays.

Everything here is a pure function of integer labels or counts, so every number
in an audit report can be checked by hand. Conventions:

* per-class recall a_k = correct predictions of class k / true examples of k;
  a class with no true examples has an undefined recall (NaN) and is left out
  of the summaries below (as scikit-learn's ``balanced_accuracy_score`` does);
* balanced accuracy = mean of a_k; worst class = min a_k; gap = max a_k − min a_k;
* class-wise bias = **population** standard deviation (ddof = 0) of a_k;
* bias reduction of A over B = 1 − bias_A / bias_B (positive: A is fairer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "METRIC_DIRECTIONS",
    "ClassMetrics",
    "bias_reduction",
    "classification_metrics",
    "confusion",
    "label_fidelity",
    "tv_distance",
]

# Which way is better for every summary number an audit reports (used by the
# comparison table's ``direction`` column). "lower" for the membership attack
# means "closer to chance" (AUC 0.5), since an attack never does worse than
# chance by more than noise.
METRIC_DIRECTIONS: dict[str, str] = {
    "accuracy": "higher",
    "balanced_accuracy": "higher",
    "worst_class": "higher",
    "gap": "lower",
    "bias": "lower",
    "bias_reduction": "higher",
    "utility_ratio": "higher",
    "label_fidelity": "higher",
    "worst_class_fidelity": "higher",
    "tv_distance": "lower",
    "tv_to_real": "lower",
    "dcr_ratio": "higher",
    "share_closer_to_train": "lower",
    "near_copies": "lower",
    "min_distance": "higher",
    "mia_auc": "lower",
    "mia_tpr_at_1pct_fpr": "lower",
    "mia_tpr_at_0.1pct_fpr": "lower",
    "fid": "lower",
    "precision": "higher",
    "recall": "higher",
    "epsilon": "lower",
}


def _labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class labels, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_pair(y_true, y_pred, num_classes: int, names=("y_true", "y_pred")) -> tuple[np.ndarray, np.ndarray]:
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    a, b = _labels(y_true, names[0]), _labels(y_pred, names[1])
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has {a.size} labels but {names[1]} has {b.size}")
    if a.size == 0:
        raise ValueError("no labels to score")
    for arr, name in ((a, names[0]), (b, names[1])):
        if arr.min() < 0 or arr.max() >= num_classes:
            raise ValueError(f"{name} holds labels outside [0, {num_classes})")
    return a, b


def _per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall per class, NaN where the class has no true example (scikit-learn, zero_division=nan)."""
    from sklearn.metrics import recall_score

    return np.asarray(
        recall_score(y_true, y_pred, labels=list(range(num_classes)), average=None, zero_division=np.nan),
        dtype=np.float64,
    )


@dataclass(frozen=True)
class ClassMetrics:
    """Utility and class-wise fairness of one classifier on one labelled test set.

    ``per_class_recall[k]`` is NaN when class k has no test example; the
    summaries (balanced accuracy, worst class, gap, bias) ignore such classes.
    ``bias`` is the population standard deviation (ddof = 0) of the per-class
    recalls: with recalls (1, 0.5) it is 0.25, not 0.354.
    """

    accuracy: float
    balanced_accuracy: float
    per_class_recall: tuple[float, ...]
    worst_class: float
    worst_class_index: int
    gap: float
    bias: float
    support: tuple[int, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_class_recall"] = list(self.per_class_recall)
        d["support"] = list(self.support)
        return d


def classification_metrics(y_true, y_pred, *, num_classes: int) -> dict:
    """Accuracy, balanced accuracy, per-class recall, worst class, gap and bias.

    Returns :meth:`ClassMetrics.to_dict` (a JSON-friendly dict):
    ``accuracy`` (share of correct predictions), ``balanced_accuracy`` (mean of
    the per-class recalls a_k), ``per_class_recall`` (list, NaN for classes absent
    from ``y_true``), ``worst_class`` (min a_k) and ``worst_class_index`` (its k,
    lowest k on ties), ``gap`` (max a_k − min a_k), ``bias`` = population standard
    deviation (ddof = 0) of the a_k, and ``support`` (true examples per class).
    """
    from sklearn.metrics import accuracy_score

    y_true, y_pred = _check_pair(y_true, y_pred, num_classes)
    recall = _per_class_recall(y_true, y_pred, num_classes)
    present = recall[~np.isnan(recall)]
    worst_index = int(np.nanargmin(recall))
    return ClassMetrics(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(present.mean()),
        per_class_recall=tuple(float(r) for r in recall),
        worst_class=float(present.min()),
        worst_class_index=worst_index,
        gap=float(present.max() - present.min()),
        bias=float(present.std(ddof=0)),
        support=tuple(int(c) for c in np.bincount(y_true, minlength=num_classes)),
    ).to_dict()


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts, shape (K, K): row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = _check_pair(y_true, y_pred, num_classes)
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).astype(np.int64)


def tv_distance(counts_a: Sequence[float], counts_b: Sequence[float]) -> float:
    """Total variation ½ Σ_k |p_k − q_k| between two histograms, each normalised to sum 1.

    0 = same class proportions, 1 = disjoint support. Counts (not proportions)
    are accepted so callers can pass raw class counts.
    """
    a = np.asarray(counts_a, dtype=np.float64)
    b = np.asarray(counts_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"histograms must be 1-D with the same length, got {a.shape} and {b.shape}")
    if (a < 0).any() or (b < 0).any() or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("histogram counts must be finite and non-negative")
    if a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("a histogram is empty (all counts zero)")
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def label_fidelity(pred_labels, cond_labels, num_classes: int) -> tuple[float, list[float]]:
    """How often a real-data classifier agrees with the label each image was generated for.

    ``pred_labels``: the real-data classifier's predictions on the synthetic
    images; ``cond_labels``: the conditioning labels. Returns ``(overall,
    per_class)``: the share of agreement, and for each conditioning class k the
    share of its images classified as k (NaN if no image was generated for k).
    """
    cond, pred = _check_pair(cond_labels, pred_labels, num_classes, names=("cond_labels", "pred_labels"))
    per_class = _per_class_recall(cond, pred, num_classes)
    return float((pred == cond).mean()), [float(v) for v in per_class]


def bias_reduction(bias_a: float, bias_b: float) -> float:
    """Bias reduction of A over B = 1 − bias_A / bias_B.

    0.4 means A's class-wise bias is 40 % lower than B's; negative means A is
    less fair. Undefined (NaN) when B has zero bias, unless A has too (then 0).
    """
    a, b = float(bias_a), float(bias_b)
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if b == 0.0:
        return 0.0 if a == 0.0 else float("nan")
    return 1.0 - a / b
