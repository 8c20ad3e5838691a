"""The audit's verdicts in words: utility, fairness and privacy, each marked
ok / warning / alert, written from the measured report (never typed in).

The report page shows the levels as OK / CHECK / ALERT; ``synthfed audit
--fail-on check|alert`` gates on them (:func:`overall_level`, :func:`fails`)."""

from __future__ import annotations

import math

import numpy as np

from synthfed.card import MODERATE_MAX_EPSILON
from synthfed.fairness.groups import group_verdict


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


LEVELS = ("ok", "warning", "alert")
# --fail-on's words (as the page shows the levels) -> the lowest level that fails.
FAIL_ON = {"check": "warning", "warning": "warning", "alert": "alert"}


def _worst(*levels: str) -> str:
    return max(levels, key=LEVELS.index)


def overall_level(report: dict) -> str:
    """The worst of the report's utility, fairness and privacy levels."""
    return _worst(*(report["summary"][key]["level"] for key in ("utility", "fairness", "privacy")))


def fails(report: dict, fail_on: str | None) -> bool:
    """Whether the report's verdict reaches ``fail_on`` ("check" = warning or worse, "alert"; None never fails)."""
    if fail_on is None:
        return False
    if fail_on not in FAIL_ON:
        raise ValueError(f"fail_on must be one of {', '.join(FAIL_ON)}, got {fail_on!r}")
    return LEVELS.index(overall_level(report)) >= LEVELS.index(FAIL_ON[fail_on])


def area_summaries(report: dict) -> dict:
    """Plain-language headline for each of utility, fairness, privacy, with a level ok/warning/alert."""
    return {"utility": _utility_summary(report), "fairness": _fairness_summary(report),
            "privacy": _privacy_summary(report)}


def _utility_summary(report: dict) -> dict:
    """TSTR accuracy, and the share of the real data's utility it keeps."""
    util = report["utility"]
    tstr = util["tstr"]
    names = report["dataset"]["class_names"]
    pooled = next((b for b in util["baselines"] if b["kind"] == "real_pooled"), None)
    text = (f"A classifier trained only on the synthetic images ({tstr['classifier']}, chosen on a synthetic "
            f"validation split) is {fmt_pct(tstr['accuracy'])} accurate on {report['real']['test_size']} real test "
            f"images (balanced accuracy {fmt_pct(tstr['balanced_accuracy'])}).")
    level = "ok"
    if pooled is not None:
        ratio = util.get("utility_ratio")
        text += (f" Trained on the real data instead: {fmt_pct(pooled['accuracy'])}, so the synthetic set keeps "
                 f"{fmt_pct(ratio)} of the real data's utility.")
        if ratio is not None and ratio < 0.7:
            level = "warning"
    if tstr["accuracy"] < 2.0 / max(len(names), 1):
        level = "alert"
    return {"level": level, "text": text}


def _fairness_summary(report: dict) -> dict:
    """Per-class accuracy, bias against clients alone, label fidelity, and accuracy across groups."""
    tstr = report["utility"]["tstr"]
    names = report["dataset"]["class_names"]
    fair = report["fairness"]
    rec = tstr["per_class_recall"]
    best_k = int(np.nanargmax(rec))
    text = (f"Per-class accuracy ranges from {fmt_pct(tstr['worst_class'])} (class '{names[tstr['worst_class_index']]}') "
            f"to {fmt_pct(rec[best_k])} (class '{names[best_k]}'): gap {fmt_pct(tstr['gap'])}, class-wise bias "
            f"(std) {tstr['bias']:.3f}.")
    red = fair.get("bias_reduction_vs_clients_alone")
    if red is not None and not math.isnan(red):
        text += (f" Each client training alone: mean bias {fair['mean_client_bias']:.3f}, so the synthetic data "
                 f"{'reduces' if red >= 0 else 'increases'} class-wise bias by {fmt_pct(abs(red))}.")
    low = [names[k] for k, v in enumerate(fair["label_fidelity_per_class"]) if v is not None and not math.isnan(v) and v < 0.5]
    text += f" Label fidelity {fmt_pct(fair['label_fidelity'])}"
    if len(low) > 4:
        text += f"; below 50% for {len(low)} of {len(names)} classes."
    elif low:
        text += f"; below 50% for class{'es' if len(low) > 1 else ''} {', '.join(repr(n) for n in low)}."
    else:
        text += "."
    level = "ok"
    if tstr["gap"] > 0.3 or low:
        level = "warning"
    group_text, group_level = group_verdict(report.get("groups"))  # sites, attribute columns
    if group_text:
        text += " " + group_text
    level = _worst(level, group_level)
    if tstr["worst_class"] < 0.1:
        level = "alert"
    return {"level": level, "text": text}


def _privacy_summary(report: dict) -> dict:
    """The formal guarantee, near copies and the DCR ratio, and the membership attack."""
    priv = report["privacy"]
    mem = priv["memorization"]
    parts, level = [], "ok"
    if priv["differentially_private"] and priv["epsilon_max"] is not None:
        d = priv["delta_max"]
        parts.append(f"Differentially private: every client's records are (ε ≤ {priv['epsilon_max']:.3g}, "
                     f"δ = {d:.1e})-DP." if d is not None else f"Differentially private: ε ≤ {priv['epsilon_max']:.3g}.")
        strength = priv.get("guarantee_strength")
        if strength == "weak":  # formally DP, in practice close to no protection
            parts.append(f"WEAK guarantee: formally DP, but ε > {MODERATE_MAX_EPSILON:g} gives little practical protection.")
            level = "warning"
        elif strength:
            parts.append(f"That is a {strength} guarantee.")
    elif priv["differentially_private"]:
        parts.append(f"Differentially private ({priv['statement']}).")
    else:
        parts.append("NOT differentially private: no formal guarantee for the training images.")
        level = "warning"
    if mem["near_copies"]:
        parts.append(f"{mem['near_copies']} synthetic image(s) are near-exact copies of training images "
                     "(see the closest pairs): do not share as is.")
        level = "alert"
    else:
        parts.append(f"No training image is reproduced: the closest synthetic image differs from every training "
                     f"image by {mem['min_rms']:.3f} RMS per pixel (copy threshold {mem['copy_rms']:.3f}).")
    ratio = mem["dcr_ratio"]
    parts.append(f"Synthetic images are {'as close to unseen real images as to training images' if ratio >= 0.9 else 'closer to training images than to unseen real images'} "
                 f"(DCR ratio {ratio:.2f}; 1 = no memorization).")
    if ratio < 0.9:
        level = _worst(level, "warning")
    mia = priv.get("membership") or {}
    if "auc" in mia:
        parts.append(f"Membership attack AUC {mia['auc']:.2f} (0.50 = chance), TPR at 1% FPR {fmt_pct(mia['tpr_at_1pct_fpr'])}.")
        if mia["auc"] >= 0.6 or mia["tpr_at_1pct_fpr"] >= 0.05:
            level = _worst(level, "warning")
        if mia["auc"] >= 0.75:
            level = "alert"
    else:
        parts.append("Membership attack not run (" + str(mia.get("skipped", "no source model")) + ").")
    return {"level": level, "text": " ".join(parts)}
