"""Fairness across groups beyond the class: per site (client) and per attribute.

Computed with Fairlearn's ``MetricFrame`` (accuracy and count per group; the
accuracy's ``difference()`` = max − min over groups and ``ratio()`` = min /
max), for the classifier trained on the synthetic set (TSTR):

* **per site** — on each client's own real records (the run's partition, as
  the per-client baselines use), at most :data:`SITE_MAX_IMAGES` per site
  (seeded sample). Those records trained the generator, never the classifier;
  a site served badly is one whose data the synthetic set represents badly;
* **per attribute** — on the real test split, for every column of a ``csv:``
  source besides ``path`` and ``label`` (e.g. ``site``, ``sex``, ``age_band``),
  next to the classifier trained on the pooled real data (is a gap inherited
  from the real data, or made by the generator?). A column with more than
  :data:`MAX_GROUPS` distinct values (an id, free text) is not a grouping and
  is skipped, as is a column with one value; an empty cell is the group
  ``(missing)``.

Group counts are of the real *test* split and of whole sites, never a
per-client class histogram, so the report stays shareable.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from synthfed.data import FederatedData, ImageDataset

__all__ = ["MAX_GROUPS", "MIN_GROUP_SIZE", "SITE_MAX_IMAGES", "attribute_groups", "audit_groups", "group_summary",
           "group_verdict", "site_groups"]

MAX_GROUPS = 20
MIN_GROUP_SIZE = 20  # groups smaller than this are reported but left out of the verdict (too noisy)
SITE_MAX_IMAGES = 2000
GAP_WARNING = 0.3  # the class gap's threshold, applied to groups
MISSING = "(missing)"


def group_summary(y_true, y_pred, groups, *, feature: str, order: Sequence[str] | None = None) -> dict:
    """Accuracy and count per group via Fairlearn's ``MetricFrame``, with the
    overall values and the accuracy's ``difference()`` (max − min) and ``ratio()``
    (min / max; None when every group scores 0). ``order`` fixes the row order
    (default: sorted group names)."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    groups = pd.Series(np.asarray(groups, dtype=str), name=feature)
    frame = MetricFrame(metrics={"accuracy": accuracy_score, "count": count}, y_true=np.asarray(y_true),
                        y_pred=np.asarray(y_pred), sensitive_features=groups)
    by = frame.by_group
    names = [str(g) for g in by.index]
    if order is not None:
        names = [g for g in order if g in names] + [g for g in names if g not in order]
    rows = [{"group": g, "count": int(by.loc[g, "count"]), "accuracy": float(by.loc[g, "accuracy"])} for g in names]
    acc = by["accuracy"].astype(float)
    ratio = float(frame.ratio()["accuracy"])
    return {
        "groups": rows,
        "overall": {"count": int(frame.overall["count"]), "accuracy": float(frame.overall["accuracy"])},
        "difference": float(frame.difference()["accuracy"]),
        "ratio": ratio if np.isfinite(ratio) else None,
        "worst_group": str(acc.idxmin()),
        "best_group": str(acc.idxmax()),
    }


def site_groups(predict: Callable[[np.ndarray], np.ndarray], fed: FederatedData, *, size: int, seed: int,
                max_per_site: int | None = SITE_MAX_IMAGES, classifier: str = "synthetic (TSTR)") -> dict:
    """The classifier ``predict`` on each client's real records, grouped by site."""
    y_true, y_pred, site = [], [], []
    rng = np.random.default_rng(seed)
    for name, client in zip(fed.client_names, fed.clients):
        if max_per_site is not None and len(client) > max_per_site:
            client = client.subset(np.sort(rng.choice(len(client), max_per_site, replace=False)))
        client = client.resized(size)
        y_true.append(client.labels)
        y_pred.append(predict(np.array(client.images)))
        site += [name] * len(client)
    summary = group_summary(np.concatenate(y_true), np.concatenate(y_pred), site, feature="site",
                            order=list(fed.client_names))
    return {
        "feature": "site",
        "kind": "site",
        "evaluated_on": "each client's own real training records (they trained the generator, not the classifier)",
        "max_per_group": max_per_site,
        "by_classifier": {"synthetic": {"classifier": classifier, **summary}},
    }


def _grouping(values: np.ndarray, column: str) -> tuple[np.ndarray | None, str | None]:
    """The column's values as groups, or None and why it is not a grouping."""
    values = np.where(np.char.strip(values.astype(str)) == "", MISSING, values.astype(str))
    distinct = np.unique(values)
    if len(distinct) < 2:
        return None, f"attribute {column!r} skipped: a single value"
    if len(distinct) > MAX_GROUPS:
        return None, f"attribute {column!r} skipped: {len(distinct)} distinct values (more than {MAX_GROUPS})"
    return values, None


def attribute_groups(real_test: ImageDataset, predictions: dict[str, tuple[str, np.ndarray]],
                     skipped: list[str]) -> list[dict]:
    """One table per attribute column of ``real_test``; ``predictions`` maps a
    classifier kind (``synthetic``, ``real_pooled``) to (its name, its
    predictions on ``real_test``). Columns that are no grouping go to ``skipped``."""
    tables = []
    for column, raw in (real_test.attributes or {}).items():
        values, why = _grouping(np.asarray(raw), column)
        if values is None:
            skipped.append(why)
            continue
        by = {kind: {"classifier": name, **group_summary(real_test.labels, pred, values, feature=column)}
              for kind, (name, pred) in predictions.items()}
        tables.append({"feature": column, "kind": "attribute", "evaluated_on": "the real test split",
                       "max_per_group": None, "by_classifier": by})
    return tables


def _large(summary: dict) -> list[dict]:
    return [g for g in summary["groups"] if g["count"] >= MIN_GROUP_SIZE]


def group_verdict(groups: dict | None) -> tuple[str, str]:
    """(sentence, level) on the synthetic-trained classifier across every group
    table: "warning" when, among groups of at least :data:`MIN_GROUP_SIZE`
    records, accuracy differs by more than :data:`GAP_WARNING`."""
    if not groups or not groups.get("tables"):
        return "", "ok"
    parts, level = [], "ok"
    for table in groups["tables"]:
        summary = table["by_classifier"]["synthetic"]
        large = _large(summary)
        what = "sites" if table["kind"] == "site" else f"'{table['feature']}' groups"
        if len(large) < 2:
            parts.append(f"Across {what}: fewer than two groups of {MIN_GROUP_SIZE}+ records.")
            continue
        lo = min(large, key=lambda g: g["accuracy"])
        hi = max(large, key=lambda g: g["accuracy"])
        gap = hi["accuracy"] - lo["accuracy"]
        parts.append(f"Across {what}: accuracy from {100 * lo['accuracy']:.0f}% ('{lo['group']}') to "
                     f"{100 * hi['accuracy']:.0f}% ('{hi['group']}'), difference {100 * gap:.0f} points.")
        if gap > GAP_WARNING:
            level = "warning"
    return " ".join(parts), level


def audit_groups(*, tstr: tuple[str, Callable[[np.ndarray], np.ndarray], np.ndarray],
                 real_pooled: tuple[str, np.ndarray] | None, real_test: ImageDataset, fed: FederatedData | None,
                 size: int, seed: int) -> dict:
    """The audit's ``groups`` section: per site (when the run's clients are
    available and there are at least two) and per attribute column of the real
    test split. ``tstr`` is (name, predict, predictions on ``real_test``);
    ``real_pooled`` (name, predictions on ``real_test``) of the pooled-real baseline."""
    name, predict, tstr_pred = tstr
    tables, skipped = [], []
    if fed is None:
        skipped.append("per site: the run's clients are not available")
    elif fed.num_clients < 2:
        skipped.append("per site: the run has a single client")
    else:
        tables.append(site_groups(predict, fed, size=size, seed=seed, classifier=name))
    predictions = {"synthetic": (name, tstr_pred)}
    if real_pooled is not None:
        predictions["real_pooled"] = real_pooled
    if real_test.attributes:
        tables += attribute_groups(real_test, predictions, skipped)
    else:
        skipped.append("per attribute: the real data has no attribute columns (a csv: source's extra columns)")
    return {"metric": "accuracy", "engine": "fairlearn.metrics.MetricFrame", "min_group_size": MIN_GROUP_SIZE,
            "max_groups": MAX_GROUPS, "tables": tables, "skipped": skipped}
