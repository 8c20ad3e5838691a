"""The audit of a generated dataset: is it useful, even across classes, and private?

``run_audit`` answers the three questions a data owner has before sharing:

* **utility** — train-on-synthetic, test-on-real (TSTR): classifiers are chosen
  on a validation split of the *synthetic* set and tested once on the real test
  split; baselines trained on real data (all clients pooled; each client alone)
  are tested on the same real test split;
* **fairness** — per-class recall, worst class, gap, class-wise bias (DESIGN.md
  §6), label fidelity judged by a CNN trained on real data, class-histogram TV;
  accuracy per site and per attribute group (``groups.py``, Fairlearn);
* **distribution** — FID and k-NN precision/recall against the real test split
  (``distribution.py``: InceptionV3 when installed, else the judge's features);
* **privacy** — the dataset card's guarantee, the nearest-neighbour
  memorization check, and a loss-threshold membership attack on the model
  (AUC, TPR at low FPR, ROC curve).

The real test split enters only after selection: ``predictor.predict`` of
already chosen classifiers, the FID reference and the privacy hold-out.
Selection code never receives it (``select_and_train`` takes only the training set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from synthfed.data import DataError, ImageDataset, load_source
from synthfed.fairness.audit_inputs import (
    REAL_MISMATCH_FLAG,
    AuditInputs,
    align_classes,
    audit_output,
    note_real_resized,
    resolve_run,
    stamp_real_warning,
    training_data,
)
from synthfed.fairness.classifiers import DEFAULT_FAMILIES, select_and_train
from synthfed.fairness.metrics import (
    bias_reduction,
    classification_metrics,
    confusion,
    label_fidelity,
    tv_distance,
)
from synthfed.fairness.comparison import COMPARE_METRICS, jsonable, compare_audits, headline_metrics
from synthfed.fairness.distribution import check_fid_features, choose_features, distribution_fidelity
from synthfed.fairness.groups import audit_groups
from synthfed.fairness.privacy_report import privacy_card
from synthfed.fairness.release import check_report_dir, public_source, public_spec, scrub_local_paths
from synthfed.fairness.verdict import area_summaries
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

__all__ = ["COMPARE_METRICS", "REAL_MISMATCH_FLAG", "compare_audits", "headline_metrics", "run_audit"]

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


def _train_source(train_set: ImageDataset, real: str) -> str:
    """Where the real training images came from, without local paths."""
    if str(train_set.source).startswith("pooled clients of run "):
        return str(train_set.source)
    return f"the training split of {public_spec(real)}"


def _load_inputs(dataset_dir: Path, real: str, run_dir, allow_real_mismatch: bool, notes: list[str]) -> AuditInputs:
    """Load and check everything before the long work: a refusal here costs seconds.
    (Here, not in audit_inputs, so tests can swap this module's ``load_source``.)"""
    from synthfed.generation import load_generated

    synthetic, card = load_generated(dataset_dir)
    c, size, _ = synthetic.image_shape
    real_native = load_source(real, split="train")
    note_real_resized(real, real_native, size)
    real_train = real_native.resized(size)
    real_test = load_source(real, split="test").resized(size)
    if real_train.image_shape != synthetic.image_shape:
        raise DataError(f"--data {real} has {real_train.image_shape[0]} channel(s), the synthetic images "
                        f"{c}: audit against the data the model was trained on")
    synthetic = align_classes(synthetic, real_train, real)
    run = resolve_run(run_dir, card, dataset_dir, notes)
    fed, warning = None, None
    if run is not None:
        from synthfed.checkpoint import read_run_file
        from synthfed.config import TrainConfig

        info = read_run_file(run)
        config = TrainConfig.from_dict(info["config"])
        fed, warning = training_data(real, real_train, size, run, info, config, allow_mismatch=allow_real_mismatch)
        if fed is None:
            notes.append(f"The training data of run {run.name} is not available here: the baselines and the "
                         "memorization check use the training split of --data, and the membership attack is skipped.")
        elif fed.class_names != real_train.class_names or fed.clients[0].image_shape[0] != c:
            raise DataError(f"run {run} was trained on {config.data} (classes {list(fed.class_names)}), "
                            f"not on --data {real}")
    train_set = real_train
    if fed is not None:
        pooled = fed.pooled().resized(size)
        train_set = ImageDataset(pooled.images, pooled.labels, pooled.class_names,
                                 f"pooled clients of run {run.resolve().name}")
    return AuditInputs(synthetic, card, real_test, train_set, run, fed, warning, real_native.image_shape[1:])


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
    include_real_images: bool = False,
    allow_real_mismatch: bool = False,
    fid_features: str = "auto",
    fid_max_images: int | None = None,
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
    ``reference``) is added to this report. The report holds no real training
    image and no real class histogram of the training data unless
    ``include_real_images``; then it is marked ``contains_personal_data``.
    ``out_dir`` may not lie inside the dataset folder or a run directory; it is
    created and probed before the long work (InputError if unwritable), and a
    failed audit removes what it created there.

    With a run, ``real`` must be the data it was trained on (its spec, or data
    that rebuilds the clients recorded in run.json): otherwise UsageError,
    unless ``allow_real_mismatch``, which stamps the report with
    ``real_data_warning`` and a banner. Resizing ``real`` to the synthetic
    size is announced as a DataNote.
    ``fid_features`` (auto, inception, classifier, none): the feature space of FID and
    precision/recall; ``fid_max_images`` caps each side (default 500 Inception, 2000 classifier).
    """
    dataset_dir = Path(dataset_dir)
    check_fid_features(fid_features)  # a missing optional weights file fails now, not after the long work
    if out_dir is not None:  # before any long work
        check_report_dir(out_dir, datasets=[dataset_dir], run=run_dir)
    with audit_output(out_dir):
        return _audit(dataset_dir, real=real, out_dir=out_dir, run_dir=run_dir, seed=seed, families=tuple(families),
                      cnn_epochs=cnn_epochs, judge_epochs=judge_epochs, mia=mia, mia_max_examples=mia_max_examples,
                      max_real_train=max_real_train, compare_with=compare_with, reference=reference, name=name,
                      include_real_images=include_real_images, allow_real_mismatch=allow_real_mismatch,
                      fid_features=fid_features, fid_max_images=fid_max_images, progress=progress)


def _audit(dataset_dir: Path, *, real, out_dir, run_dir, seed, families, cnn_epochs, judge_epochs, mia,
           mia_max_examples, max_real_train, compare_with, reference, name, include_real_images,
           allow_real_mismatch, fid_features, fid_max_images, progress) -> dict:
    """The audit itself (``run_audit`` has checked ``out_dir`` and cleans up after a failure)."""
    from synthfed.privacy.memorization import nearest_neighbour_audit

    steps = ["load", "tstr", "baselines", "fidelity", "distribution", "groups", "memorization", "membership", "report"]
    progress(TaskStarted("audit", f"auditing {dataset_dir.name}", len(steps)))

    def step(label: str) -> None:
        progress(TaskAdvanced("audit", 1, {"done": label}))

    notes: list[str] = []
    inputs = _load_inputs(dataset_dir, real, run_dir, allow_real_mismatch, notes)
    synthetic, card, real_test, train_set = inputs.synthetic, inputs.card, inputs.real_test, inputs.train_set
    run, fed = inputs.run, inputs.fed
    size, k = synthetic.image_shape[1], synthetic.num_classes
    step("load")

    # -- utility: TSTR, selection on the synthetic validation split only
    progress(Message("training downstream classifiers on the synthetic set (selection on a synthetic validation split)"))
    sel = select_and_train(synthetic, val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    tstr, tstr_pred = _metrics_row("synthetic (TSTR)", "synthetic", sel, real_test, len(synthetic))
    step("tstr")

    progress(Message("training real-data baselines"))
    baselines = []
    fit_set = train_set.sample(max_real_train, seed=seed, stratified=True)
    if len(fit_set) < len(train_set):
        notes.append(f"Speed cap: the pooled real baseline and the label-fidelity judge were trained on a stratified "
                     f"{len(fit_set)} of the {len(train_set)} real training images (--max-real-train).")
    sel_real = select_and_train(fit_set, val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    pooled_row, pooled_pred = _metrics_row("real, all clients pooled", "real_pooled", sel_real, real_test, len(fit_set))
    baselines.append(pooled_row)
    if fed is not None and fed.num_clients > 1:
        for cname, cds in zip(fed.client_names, fed.clients):
            cds = cds.resized(size).sample(max_real_train, seed=seed, stratified=True)
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
        "judge": {"classifier": f"SmallCNN, {judge_epochs} epochs, trained on {_train_source(train_set, real)}",
                  "real_test_accuracy": judge_test_acc},
        "histograms": {
            "requested": requested.tolist(),
            "requested_from": requested_from,
            "generated": generated.tolist(),
            "predicted_by_judge": predicted.tolist(),
            # The training data's real class histogram is personal data (per client it is in run.json only).
            "real_train": train_set.class_counts().astype(float).tolist() if include_real_images else None,
        },
        "tv_distance": tv_distance(predicted, requested),
        "tv_generated_vs_requested": tv_distance(generated, requested),
        "tv_to_real": tv_distance(generated, train_set.class_counts()),
        "confusion": confusion(real_test.labels, tstr_pred, k).tolist(),
    }
    step("fidelity")

    # -- distribution fidelity (FID, precision/recall) and fairness across sites and attribute groups
    space = choose_features(fid_features, judge=judge, judge_set=fit_set, judge_epochs=judge_epochs, seed=seed,
                            notes=notes)
    distribution = ({"skipped": "disabled"} if space is None else
                    distribution_fidelity(synthetic, real_test, space, max_images=fid_max_images, seed=seed,
                                          progress=progress))
    step("distribution")
    groups = audit_groups(tstr=(tstr["name"], sel.model.predict, tstr_pred), real_test=real_test, fed=fed,
                          real_pooled=(pooled_row["name"], pooled_pred), size=size, seed=seed)
    step("groups")

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
    elif fed is None:
        membership = {"skipped": "the run's training data is not available"}
    else:
        from synthfed.generation import load_generator
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
            membership["model"] = public_source(gen.source)
            membership["members"] = (f"training images of client {client}" if client is not None
                                     else "all clients' training images")
            membership["non_members"] = f"real test split of {public_spec(real)} ({len(real_test)} images)"
    step("membership")
    privacy = privacy_card(card)
    privacy["memorization"] = {key: v for key, v in mem.items() if key not in ("dcr_train", "dcr_holdout", "nn_train_index")}
    privacy["memorization"]["dcr_train_quantiles"] = np.quantile(mem["dcr_train"], [0, 0.05, 0.25, 0.5, 0.75, 1]).tolist()
    privacy["memorization"]["dcr_holdout_quantiles"] = np.quantile(mem["dcr_holdout"], [0, 0.05, 0.25, 0.5, 0.75, 1]).tolist()
    privacy["membership"] = membership

    report = {
        "name": name or dataset_dir.name,
        "contains_personal_data": bool(include_real_images),
        "dataset": {
            "dir": dataset_dir.resolve().name,
            "num_images": len(synthetic),
            "image_shape": list(synthetic.image_shape),
            "class_names": list(synthetic.class_names),
            "counts": synthetic.class_counts().tolist(),
            "source": public_source(source),
            "card": {**card, "source": public_source(source)},
        },
        "real": {
            "spec": public_spec(real),
            "train_size": len(train_set),
            "train_source": _train_source(train_set, real),
            "test_size": len(real_test),
            "test_counts": real_test.class_counts().tolist(),
            "resized_to": size,
            "resized_from": list(inputs.real_size),
            "matches_training_data": None if run is None else inputs.real_warning is None,
        },
        "run": run.resolve().name if run is not None else None,
        "settings": {
            "seed": seed,
            "families": list(families),
            "cnn_epochs": list(cnn_epochs),
            "val_fraction": VAL_FRACTION,
            "selection": "best validation accuracy on a stratified split of each training set; never the real test set",
            "judge_epochs": judge_epochs,
            "max_real_train": max_real_train,
            "fid_features": fid_features,
        },
        "utility": {
            "tstr": tstr,
            "baselines": baselines,
            "utility_ratio": tstr["accuracy"] / pooled_row["accuracy"] if pooled_row["accuracy"] > 0 else None,
        },
        "fairness": fairness,
        "groups": groups,
        "distribution": distribution,
        "privacy": privacy,
        "notes": notes,
    }
    report["summary"] = area_summaries(report)
    stamp_real_warning(report, inputs.real_warning)
    if compare_with:
        if report["name"] in compare_with:
            raise ValueError(f"a compared dataset is also named {report['name']!r}; names must differ")
        ref = reference or next(iter(compare_with))
        table = compare_audits({report["name"]: report, **compare_with}, reference=ref)
        report["comparison"] = {"reference": ref, "columns": list(table.columns),
                                "table": table.reset_index().to_dict(orient="records")}
    # Free text (notes, error messages) may quote local paths: cut them to names.
    local = [dataset_dir, run, out_dir, Path.cwd()]
    report = json.loads(scrub_local_paths(json.dumps(jsonable(report), ensure_ascii=False), local))
    if out_dir is not None:
        from synthfed.fairness.report import write_report

        write_report(report, out_dir, synthetic=synthetic, train=train_set if include_real_images else None,
                     holdout=real_test)
    step("report")
    progress(TaskFinished("audit"))
    return report
