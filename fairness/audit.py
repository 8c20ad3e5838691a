"""The audit of a generated dataset: is it useful, even across classes, and private?

``run_audit`` answers the three questions a data owner has before sharing:

* **utility** — train-on-synthetic, test-on-real (TSTR): classifiers are chosen
  on a validation split of the *synthetic* set and tested once on the real test
  split; baselines trained on real data (all clients pooled; each client alone)
  are tested on the same real test split;
* **fairness** — per-class recall, worst class, gap, class-wise bias (DESIGN.md
  §6), label fidelity judged by a CNN trained on real data, class-histogram TV;
* **privacy** — the dataset card's guarantee, the nearest-neighbour
  memorization check, and a loss-threshold membership attack on the model.

The real test split enters in exactly two places: ``predictor.predict`` of
already chosen classifiers, and the privacy hold-out. Selection code never
receives it (``select_and_train`` takes only the training set).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from synthfed.data import DataError, ImageDataset, load_source
from synthfed.fairness.classifiers import DEFAULT_FAMILIES, select_and_train
from synthfed.fairness.metrics import (
    METRIC_DIRECTIONS,
    bias_reduction,
    classification_metrics,
    confusion,
    label_fidelity,
    tv_distance,
)
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

__all__ = ["COMPARE_METRICS", "compare_audits", "headline_metrics", "run_audit"]

VAL_FRACTION = 0.2


# --------------------------------------------------------------------------- helpers
def _metrics_row(name: str, kind: str, selection, test: ImageDataset, train_size: int) -> tuple[dict, np.ndarray]:
    pred = selection.model.predict(test.images)
    row = classification_metrics(test.labels, pred, num_classes=test.num_classes)
    row.update({
        "name": name,
        "kind": kind,
        "train_size": int(train_size),
        "classifier": selection.chosen,
        "selection": selection.log,
        "num_fit": selection.num_fit,
        "num_val": selection.num_val,
    })
    return row, pred


def _requested_counts(card: dict, synthetic: ImageDataset) -> tuple[np.ndarray, str]:
    """The class histogram the user asked for: the card's ``counts`` when present, else the manifest's labels."""
    counts = card.get("counts")
    names = synthetic.class_names
    if isinstance(counts, dict) and counts:
        try:
            return np.array([float(counts.get(n, 0)) for n in names]), "card counts"
        except (TypeError, ValueError):
            pass
    if isinstance(counts, (list, tuple)) and len(counts) == len(names):
        try:
            return np.array([float(c) for c in counts]), "card counts"
        except (TypeError, ValueError):
            pass
    return synthetic.class_counts().astype(float), "manifest labels"


def _align_classes(synthetic: ImageDataset, real: ImageDataset, spec: str) -> ImageDataset:
    if synthetic.class_names == real.class_names:
        return synthetic
    if set(synthetic.class_names) <= set(real.class_names):
        return synthetic.with_class_names(real.class_names)
    raise DataError(
        f"the synthetic classes {list(synthetic.class_names)} are not the classes of --real {spec} "
        f"({list(real.class_names)}); audit against the data the model was trained on"
    )


def _resolve_run(run_dir, card: dict, notes: list[str]) -> Path | None:
    """The run that produced the images: ``run_dir`` if given (must exist), else the card's source."""
    if run_dir is not None:
        path = Path(run_dir)
        if not (path / "run.json").is_file():
            raise FileNotFoundError(f"{path} is not a synthfed run directory (no run.json)")
        return path
    src = (card.get("source") or {}).get("run_dir")
    if not src:
        notes.append("The dataset card names no source run: per-client baselines and the membership attack are skipped "
                     "(pass --run RUN_DIR to add them).")
        return None
    path = Path(src)
    if not (path / "run.json").is_file():
        notes.append(f"The card's source run {src} is not available here: per-client baselines and the membership "
                     "attack are skipped (pass --run RUN_DIR to add them).")
        return None
    return path


def _privacy_card(card: dict) -> dict:
    p = card.get("privacy") or {}
    rows = list(p.get("clients") or [])
    dp = bool(p.get("differentially_private", False))
    eps = [r.get("eps_upper", r.get("eps_estimate")) for r in rows]
    eps = [float(e) for e in eps if e is not None]
    deltas = [float(r["delta"]) for r in rows if r.get("delta") is not None]
    if not p:
        statement = "no privacy statement in the dataset card: treat as NOT differentially private"
    else:
        statement = str(p.get("statement") or ("differentially private" if dp else "NOT differentially private"))
    return {
        "differentially_private": dp,
        "statement": statement,
        "clients": rows,
        "epsilon_max": max(eps) if (dp and eps) else None,
        "delta_max": max(deltas) if (dp and deltas) else None,
        "labels": p.get("labels"),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


LEVELS = ("ok", "warning", "alert")


def _worst(*levels: str) -> str:
    return max(levels, key=LEVELS.index)


def _summaries(report: dict) -> dict:
    """Plain-language headline for each of utility, fairness, privacy, with a level ok/warning/alert."""
    util = report["utility"]
    tstr = util["tstr"]
    names = report["dataset"]["class_names"]
    pooled = next((b for b in util["baselines"] if b["kind"] == "real_pooled"), None)
    text = (f"A classifier trained only on the synthetic images ({tstr['classifier']}, chosen on a synthetic "
            f"validation split) is {_pct(tstr['accuracy'])} accurate on {report['real']['test_size']} real test "
            f"images (balanced accuracy {_pct(tstr['balanced_accuracy'])}).")
    level = "ok"
    if pooled is not None:
        ratio = util.get("utility_ratio")
        text += (f" Trained on the real data instead: {_pct(pooled['accuracy'])}, so the synthetic set keeps "
                 f"{_pct(ratio)} of the real data's utility.")
        if ratio is not None and ratio < 0.7:
            level = "warning"
    if tstr["accuracy"] < 2.0 / max(len(names), 1):
        level = "alert"
    utility = {"level": level, "text": text}

    fair = report["fairness"]
    rec = tstr["per_class_recall"]
    best_k = int(np.nanargmax(rec))
    text = (f"Per-class accuracy ranges from {_pct(tstr['worst_class'])} (class '{names[tstr['worst_class_index']]}') "
            f"to {_pct(rec[best_k])} (class '{names[best_k]}'): gap {_pct(tstr['gap'])}, class-wise bias "
            f"(std) {tstr['bias']:.3f}.")
    red = fair.get("bias_reduction_vs_clients_alone")
    if red is not None and not math.isnan(red):
        text += (f" Each client training alone: mean bias {fair['mean_client_bias']:.3f}, so the synthetic data "
                 f"{'reduces' if red >= 0 else 'increases'} class-wise bias by {_pct(abs(red))}.")
    low = [names[k] for k, v in enumerate(fair["label_fidelity_per_class"]) if v is not None and not math.isnan(v) and v < 0.5]
    text += f" Label fidelity {_pct(fair['label_fidelity'])}"
    if len(low) > 4:
        text += f"; below 50% for {len(low)} of {len(names)} classes."
    elif low:
        text += f"; below 50% for class{'es' if len(low) > 1 else ''} {', '.join(repr(n) for n in low)}."
    else:
        text += "."
    level = "ok"
    if tstr["gap"] > 0.3 or low:
        level = "warning"
    if tstr["worst_class"] < 0.1:
        level = "alert"
    fairness = {"level": level, "text": text}

    priv = report["privacy"]
    mem = priv["memorization"]
    parts, level = [], "ok"
    if priv["differentially_private"] and priv["epsilon_max"] is not None:
        d = priv["delta_max"]
        parts.append(f"Differentially private: every client's records are (ε ≤ {priv['epsilon_max']:.3g}, "
                     f"δ = {d:.1e})-DP." if d is not None else f"Differentially private: ε ≤ {priv['epsilon_max']:.3g}.")
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
        parts.append(f"Membership attack AUC {mia['auc']:.2f} (0.50 = chance), TPR at 1% FPR {_pct(mia['tpr_at_1pct_fpr'])}.")
        if mia["auc"] >= 0.6 or mia["tpr_at_1pct_fpr"] >= 0.05:
            level = _worst(level, "warning")
        if mia["auc"] >= 0.75:
            level = "alert"
    else:
        parts.append("Membership attack not run (" + str(mia.get("skipped", "no source model")) + ").")
    privacy = {"level": level, "text": " ".join(parts)}
    return {"utility": utility, "fairness": fairness, "privacy": privacy}


def _cap(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """A stratified random subset of at most ``limit`` images (all of them when ``limit`` is None)."""
    if limit is None or len(dataset) <= limit:
        return dataset
    from sklearn.model_selection import train_test_split

    counts = np.bincount(dataset.labels)
    stratify = dataset.labels if counts[counts > 0].min() >= 2 else None
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=int(limit), random_state=seed, stratify=stratify)
    return dataset.subset(np.sort(keep))


# --------------------------------------------------------------------------- main entry
def run_audit(
    dataset_dir: str | Path,
    *,
    real: str,
    out_dir: str | Path | None,
    run_dir: str | Path | None = None,
    seed: int = 0,
    families: Sequence[str] = DEFAULT_FAMILIES,
    cnn_epochs: Sequence[int] = (3, 10),
    judge_epochs: int = 10,
    mia: bool = True,
    mia_max_examples: int = 1000,
    max_real_train: int | None = None,
    compare_with: dict[str, dict] | None = None,
    reference: str | None = None,
    name: str | None = None,
    progress: Progress = null_progress,
) -> dict:
    """Audit the generated dataset in ``dataset_dir`` against the real source ``real`` (a ``--data`` spec).

    Writes report.html, report.json and CSV tables into ``out_dir`` (skipped when
    ``out_dir`` is None) and returns the report as a JSON-friendly dict.
    ``run_dir`` overrides the card's source run (needed for per-client baselines
    and the membership attack). ``max_real_train`` caps (stratified) the real
    training sets of the baselines and the judge, for speed on large data; the
    memorization check always uses every training image. ``compare_with`` maps names to other audits'
    reports; the comparison table (with ``direction`` and bias reduction vs
    ``reference``) is added to this report.
    """
    from synthfed.generate import load_generated
    from synthfed.privacy.memorization import nearest_neighbour_audit

    dataset_dir = Path(dataset_dir)
    families = tuple(families)
    steps = ["load", "tstr", "baselines", "fidelity", "memorization", "membership", "report"]
    progress(TaskStarted("audit", f"auditing {dataset_dir.name}", len(steps)))

    def step(label: str) -> None:
        progress(TaskAdvanced("audit", 1, {"done": label}))

    notes: list[str] = []
    synthetic, card = load_generated(dataset_dir)
    c, size, _ = synthetic.image_shape
    real_train = load_source(real, split="train").resized(size)
    real_test = load_source(real, split="test").resized(size)
    if real_train.image_shape != synthetic.image_shape:
        raise DataError(f"--real {real} has {real_train.image_shape[0]} channel(s), the synthetic images "
                        f"{c}: audit against the data the model was trained on")
    synthetic = _align_classes(synthetic, real_train, real)
    k = synthetic.num_classes

    run = _resolve_run(run_dir, card, notes)
    fed = None
    config = None
    if run is not None:
        from synthfed.checkpoint import read_run_file
        from synthfed.config import TrainConfig
        from synthfed.train import load_federated_data

        config = TrainConfig.from_dict(read_run_file(run)["config"])
        fed = load_federated_data(config)
        if fed.class_names != real_train.class_names or fed.clients[0].image_shape[0] != c:
            raise DataError(f"run {run} was trained on {config.data} (classes {list(fed.class_names)}), "
                            f"not on --real {real}")
    train_set = real_train
    if fed is not None:
        pooled = fed.pooled().resized(size)
        train_set = ImageDataset(pooled.images, pooled.labels, pooled.class_names, f"pooled clients of {run}")
    step("load")

    # -- utility: TSTR, selection on the synthetic validation split only
    progress(Message("training downstream classifiers on the synthetic set (selection on a synthetic validation split)"))
    sel = select_and_train(synthetic, val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    tstr, tstr_pred = _metrics_row("synthetic (TSTR)", "synthetic", sel, real_test, len(synthetic))
    step("tstr")

    progress(Message("training real-data baselines"))
    baselines = []
    fit_set = _cap(train_set, max_real_train, seed)
    if len(fit_set) < len(train_set):
        notes.append(f"Speed cap: the pooled real baseline and the label-fidelity judge were trained on a stratified "
                     f"{len(fit_set)} of the {len(train_set)} real training images (--max-real-train).")
    sel_real = select_and_train(fit_set, val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    baselines.append(_metrics_row("real, all clients pooled", "real_pooled", sel_real, real_test, len(fit_set))[0])
    if fed is not None and fed.num_clients > 1:
        for cname, cds in zip(fed.client_names, fed.clients):
            cds = _cap(cds.resized(size), max_real_train, seed)
            try:
                sel_c = select_and_train(cds, val_fraction=VAL_FRACTION, seed=seed, families=families,
                                         cnn_epochs=cnn_epochs)
            except DataError as exc:
                notes.append(f"baseline {cname} alone skipped: {exc}")
                continue
            baselines.append(_metrics_row(f"real, {cname} alone", "real_client", sel_c, real_test, len(cds))[0])
    step("baselines")

    # -- fairness on the generator side
    from synthfed.evaluate.classifier import CNNTraining, cnn_predict, train_cnn

    judge = train_cnn(np.array(fit_set.images), np.array(fit_set.labels), num_classes=k,
                      plan=CNNTraining(epochs=judge_epochs, seed=seed))
    judge_test_acc = float((cnn_predict(judge, np.array(real_test.images)) == real_test.labels).mean())
    judged = cnn_predict(judge, np.array(synthetic.images))
    fid_all, fid_per_class = label_fidelity(judged, synthetic.labels, k)
    requested, requested_from = _requested_counts(card, synthetic)
    generated = synthetic.class_counts().astype(float)
    predicted = np.bincount(judged, minlength=k).astype(float)
    client_biases = [b["bias"] for b in baselines if b["kind"] == "real_client"]
    mean_client_bias = float(np.mean(client_biases)) if client_biases else None
    pooled_row = baselines[0]
    fairness = {
        "bias": tstr["bias"],
        "gap": tstr["gap"],
        "worst_class": tstr["worst_class"],
        "worst_class_name": synthetic.class_names[tstr["worst_class_index"]],
        "mean_client_bias": mean_client_bias,
        "bias_reduction_vs_clients_alone": bias_reduction(tstr["bias"], mean_client_bias) if client_biases else None,
        "bias_reduction_vs_real_pooled": bias_reduction(tstr["bias"], pooled_row["bias"]),
        "label_fidelity": fid_all,
        "label_fidelity_per_class": fid_per_class,
        "worst_class_fidelity": float(np.nanmin(fid_per_class)),
        "judge": {"classifier": f"SmallCNN, {judge_epochs} epochs, trained on {train_set.source or real}",
                  "real_test_accuracy": judge_test_acc},
        "histograms": {
            "requested": requested.tolist(),
            "requested_from": requested_from,
            "generated": generated.tolist(),
            "predicted_by_judge": predicted.tolist(),
            "real_train": train_set.class_counts().astype(float).tolist(),
        },
        "tv_distance": tv_distance(predicted, requested),
        "tv_generated_vs_requested": tv_distance(generated, requested),
        "tv_to_real": tv_distance(generated, train_set.class_counts()),
        "confusion": confusion(real_test.labels, tstr_pred, k).tolist(),
    }
    step("fidelity")

    # -- privacy
    progress(Message("nearest-neighbour memorization check"))
    mem = nearest_neighbour_audit(synthetic.images, train_set.images, real_test.images, seed=seed)
    step("memorization")
    membership: dict
    source = dict(card.get("source") or {})
    if not mia:
        membership = {"skipped": "disabled"}
    elif run is None:
        membership = {"skipped": "the source run is not available"}
    else:
        from synthfed.generate import load_generator
        from synthfed.privacy.membership import loss_threshold_mia

        progress(Message("membership-inference attack on the model"))
        client = source.get("client")
        try:
            gen = load_generator(run, client=client, use_ema=source.get("weights", "ema") != "model")
            members = fed.clients[int(client)] if client is not None else train_set
        except (ValueError, FileNotFoundError, RuntimeError, IndexError) as exc:
            membership = {"skipped": f"cannot load the model that made the images from {run}: {exc}"}
            notes.append(f"Membership attack skipped: {membership['skipped']}")
        else:
            membership = loss_threshold_mia(gen.model, gen.schedule, members.resized(size), real_test, seed=seed,
                                            max_examples=mia_max_examples)
            membership["model"] = dict(gen.source)
            membership["members"] = (f"training images of client {client}" if client is not None
                                     else "all clients' training images")
            membership["non_members"] = f"real test split of {real} ({len(real_test)} images)"
    step("membership")
    privacy = _privacy_card(card)
    privacy["memorization"] = {key: v for key, v in mem.items() if key not in ("dcr_train", "dcr_holdout", "nn_train_index")}
    privacy["memorization"]["dcr_train_quantiles"] = np.quantile(mem["dcr_train"], [0, 0.05, 0.25, 0.5, 0.75, 1]).tolist()
    privacy["memorization"]["dcr_holdout_quantiles"] = np.quantile(mem["dcr_holdout"], [0, 0.05, 0.25, 0.5, 0.75, 1]).tolist()
    privacy["membership"] = membership

    report = {
        "name": name or dataset_dir.name,
        "dataset": {
            "dir": str(dataset_dir),
            "num_images": len(synthetic),
            "image_shape": list(synthetic.image_shape),
            "class_names": list(synthetic.class_names),
            "counts": synthetic.class_counts().tolist(),
            "source": source,
            "card": card,
        },
        "real": {
            "spec": real,
            "train_size": len(train_set),
            "train_source": train_set.source,
            "test_size": len(real_test),
            "test_counts": real_test.class_counts().tolist(),
            "resized_to": size,
        },
        "run_dir": str(run) if run is not None else None,
        "settings": {
            "seed": seed,
            "families": list(families),
            "cnn_epochs": list(cnn_epochs),
            "val_fraction": VAL_FRACTION,
            "selection": "best validation accuracy on a stratified split of each training set; never the real test set",
            "judge_epochs": judge_epochs,
            "max_real_train": max_real_train,
        },
        "utility": {
            "tstr": tstr,
            "baselines": baselines,
            "utility_ratio": tstr["accuracy"] / pooled_row["accuracy"] if pooled_row["accuracy"] > 0 else None,
        },
        "fairness": fairness,
        "privacy": privacy,
        "notes": notes,
    }
    report["summary"] = _summaries(report)
    if compare_with:
        if report["name"] in compare_with:
            raise ValueError(f"a compared dataset is also named {report['name']!r}; names must differ")
        ref = reference or next(iter(compare_with))
        table = compare_audits({report["name"]: report, **compare_with}, reference=ref)
        report["comparison"] = {"reference": ref, "columns": list(table.columns),
                                "table": table.reset_index().to_dict(orient="records")}
    report = _jsonable(report)
    if out_dir is not None:
        from synthfed.fairness.report import write_report

        write_report(report, out_dir, synthetic=synthetic, train=train_set, holdout=real_test)
    step("report")
    progress(TaskFinished("audit"))
    return report


def _jsonable(obj):
    """Numpy scalars/arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
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
    "label_fidelity", "worst_class_fidelity", "tv_distance", "dcr_ratio", "near_copies", "mia_auc",
    "mia_tpr_at_1pct_fpr", "epsilon",
)


def headline_metrics(report: dict) -> dict[str, float]:
    """The summary numbers of one audit report, keyed like :data:`METRIC_DIRECTIONS`."""
    def num(v):
        return float("nan") if v is None else float(v)

    tstr = report["utility"]["tstr"]
    fair = report["fairness"]
    priv = report["privacy"]
    mia = priv.get("membership") or {}
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
