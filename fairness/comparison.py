"""Comparing audits: headline metrics side by side with a direction column,
and bias reduction against a reference dataset; strict-JSON conversion."""

from __future__ import annotations

import math

import numpy as np

from synthfed.fairness.metrics import METRIC_DIRECTIONS, bias_reduction

def jsonable(obj):
    """Numpy scalars/arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


# --------------------------------------------------------------------------- comparison
COMPARE_METRICS = (
    "accuracy", "balanced_accuracy", "worst_class", "gap", "bias", "bias_reduction", "utility_ratio",
    "label_fidelity", "worst_class_fidelity", "tv_distance", "fid", "precision", "recall", "dcr_ratio",
    "near_copies", "mia_auc", "mia_tpr_at_1pct_fpr", "mia_tpr_at_0.1pct_fpr", "epsilon",
)


def headline_metrics(report: dict) -> dict[str, float]:
    """The summary numbers of one audit report, keyed like :data:`METRIC_DIRECTIONS`."""
    def num(v):
        return float("nan") if v is None else float(v)

    tstr = report["utility"]["tstr"]
    fair = report["fairness"]
    priv = report["privacy"]
    mia = priv.get("membership") or {}
    dist = report.get("distribution") or {}  # absent from reports made before it
    return {
        "accuracy": num(tstr["accuracy"]),
        "balanced_accuracy": num(tstr["balanced_accuracy"]),
        "worst_class": num(tstr["worst_class"]),
        "gap": num(tstr["gap"]),
        "bias": num(tstr["bias"]),
        "utility_ratio": num(report["utility"].get("utility_ratio")),
        "label_fidelity": num(fair["label_fidelity"]),
        "worst_class_fidelity": num(fair.get("worst_class_fidelity")),
        "tv_distance": num(fair["tv_distance"]),
        "dcr_ratio": num(priv["memorization"]["dcr_ratio"]),
        "near_copies": num(priv["memorization"]["near_copies"]),
        "mia_auc": num(mia.get("auc")),
        "mia_tpr_at_1pct_fpr": num(mia.get("tpr_at_1pct_fpr")),
        "mia_tpr_at_0.1pct_fpr": num((mia.get("tpr_at_fpr") or {}).get("0.001")),
        # FID is comparable between audits in one feature space only (the same real data and judge settings)
        "fid": num(dist.get("fid")),
        "precision": num(dist.get("precision")),
        "recall": num(dist.get("recall")),
        # No guarantee at all is the worst possible epsilon.
        "epsilon": num(priv["epsilon_max"]) if priv["differentially_private"] else float("inf"),
    }


def compare_audits(reports: dict[str, dict], *, reference: str | None = None):
    """One table over several audits: rows = metrics, a column per dataset, and ``direction``.

    ``bias_reduction`` = 1 − bias(column) / bias(reference) (reference: the
    first report unless named), so a local-only reference makes it "how much
    collaboration reduced class-wise bias". ``epsilon`` is inf for data without
    a DP guarantee; NaN marks a number the audit could not compute (e.g. no
    membership attack without the source run).
    """
    import pandas as pd

    if not reports:
        raise ValueError("nothing to compare")
    names = list(reports)
    ref = reference if reference is not None else names[0]
    if ref not in reports:
        raise ValueError(f"reference {ref!r} is not among the compared datasets {names}")
    heads = {n: headline_metrics(r) for n, r in reports.items()}
    for n in names:
        heads[n]["bias_reduction"] = bias_reduction(heads[n]["bias"], heads[ref]["bias"])
    table = pd.DataFrame({n: [heads[n][m] for m in COMPARE_METRICS] for n in names}, index=list(COMPARE_METRICS))
    table.index.name = "metric"
    table["direction"] = [METRIC_DIRECTIONS[m] for m in COMPARE_METRICS]
    table.attrs["reference"] = ref
    return table
