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
    training_data,
)
from synthfed.fairness.audit_steps import (
    dataset_section,
    fairness_section,
    finish_report,
    membership_attack,
    privacy_section,
    real_section,
    train_judge,
    utility_section,
)
from synthfed.fairness.classifiers import DEFAULT_FAMILIES, select_and_train
from synthfed.fairness.metrics import classification_metrics
from synthfed.fairness.comparison import COMPARE_METRICS, compare_audits, headline_metrics
from synthfed.fairness.distribution import check_fid_features, choose_features, distribution_fidelity
from synthfed.fairness.groups import audit_groups
from synthfed.fairness.release import check_report_dir
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

__all__ = ["COMPARE_METRICS", "REAL_MISMATCH_FLAG", "compare_audits", "headline_metrics", "run_audit"]

VAL_FRACTION = 0.2
# The audit's steps as its progress bar counts them.
STEPS = ("load", "tstr", "baselines", "fidelity", "distribution", "groups", "memorization", "membership",
         "report")


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


# --------------------------------------------------------------------------- utility
# (Here, not in audit_steps: tests swap this module's ``select_and_train`` to watch selection.)
def _tstr(synthetic: ImageDataset, real_test: ImageDataset, *, seed: int, families, cnn_epochs,
          progress: Progress) -> tuple[object, dict, np.ndarray]:
    """Train-on-synthetic, test-on-real: (the chosen model, its metrics row, its real-test predictions)."""
    progress(Message("training downstream classifiers on the synthetic set (selection on a synthetic validation split)"))
    sel = select_and_train(synthetic, val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    row, pred = _metrics_row("synthetic (TSTR)", "synthetic", sel, real_test, len(synthetic))
    return sel.model, row, pred


def _real_baselines(inputs: AuditInputs, *, max_real_train, seed: int, families, cnn_epochs, notes: list[str],
                    progress: Progress) -> tuple[ImageDataset, list[dict], np.ndarray]:
    """Classifiers trained on real data, tested on the real test split: all clients pooled (first row), then
    each client alone. Returns the (capped) pooled training set, the rows and the pooled model's predictions."""
    progress(Message("training real-data baselines"))
    train_set, real_test, fed = inputs.train_set, inputs.real_test, inputs.fed
    choice = dict(val_fraction=VAL_FRACTION, seed=seed, families=families, cnn_epochs=cnn_epochs)
    fit_set = train_set.sample(max_real_train, seed=seed, stratified=True)
    if len(fit_set) < len(train_set):
        notes.append(f"Speed cap: the pooled real baseline and the label-fidelity judge were trained on a stratified "
                     f"{len(fit_set)} of the {len(train_set)} real training images (--max-real-train).")
    sel_real = select_and_train(fit_set, **choice)
    pooled_row, pooled_pred = _metrics_row("real, all clients pooled", "real_pooled", sel_real, real_test, len(fit_set))
    baselines = [pooled_row]
    if fed is not None and fed.num_clients > 1:
        for cname, cds in zip(fed.client_names, fed.clients):
            cds = cds.resized(inputs.synthetic.image_shape[1]).sample(max_real_train, seed=seed, stratified=True)
            try:
                sel_c = select_and_train(cds, **choice)
            except DataError as exc:
                notes.append(f"baseline {cname} alone skipped: {exc}")
                continue
            baselines.append(_metrics_row(f"real, {cname} alone", "real_client", sel_c, real_test, len(cds))[0])
    return fit_set, baselines, pooled_pred


def _distribution(inputs: AuditInputs, fid_features: str, *, judge, judge_set: ImageDataset, judge_epochs: int,
                  max_images, seed: int, notes: list[str], progress: Progress) -> dict:
    """Distribution fidelity (FID, precision/recall) in the chosen feature space, or why it was skipped."""
    space = choose_features(fid_features, judge=judge, judge_set=judge_set, judge_epochs=judge_epochs, seed=seed,
                            notes=notes)
    if space is None:
        return {"skipped": "disabled"}
    return distribution_fidelity(inputs.synthetic, inputs.real_test, space, max_images=max_images, seed=seed,
                                 progress=progress)


def _settings(*, seed: int, families, cnn_epochs, judge_epochs: int, max_real_train, fid_features: str) -> dict:
    """The audit's settings as the report records them."""
    return {
        "seed": seed,
        "families": list(families),
        "cnn_epochs": list(cnn_epochs),
        "val_fraction": VAL_FRACTION,
        "selection": "best validation accuracy on a stratified split of each training set; never the real test set",
        "judge_epochs": judge_epochs,
        "max_real_train": max_real_train,
        "fid_features": fid_features,
    }


def _write(report: dict, out_dir, inputs: AuditInputs, *, include_real_images: bool) -> None:
    """report.html, report.json and the CSV tables (nothing when ``out_dir`` is None)."""
    if out_dir is not None:
        from synthfed.fairness.report import write_report

        write_report(report, out_dir, synthetic=inputs.synthetic,
                     train=inputs.train_set if include_real_images else None, holdout=inputs.real_test)


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

    progress(TaskStarted("audit", f"auditing {dataset_dir.name}", len(STEPS)))

    def step(label: str) -> None:
        progress(TaskAdvanced("audit", 1, {"done": label}))

    notes: list[str] = []
    inputs = _load_inputs(dataset_dir, real, run_dir, allow_real_mismatch, notes)
    synthetic, real_test, size = inputs.synthetic, inputs.real_test, inputs.synthetic.image_shape[1]
    step("load")
    choice = dict(seed=seed, families=families, cnn_epochs=cnn_epochs)
    tstr_model, tstr, tstr_pred = _tstr(synthetic, real_test, progress=progress, **choice)
    step("tstr")
    fit_set, baselines, pooled_pred = _real_baselines(inputs, max_real_train=max_real_train, notes=notes,
                                                      progress=progress, **choice)
    step("baselines")
    judge, judged, judge_info = train_judge(fit_set, inputs, real=real, epochs=judge_epochs, seed=seed)
    fairness = fairness_section(inputs, tstr, tstr_pred, baselines, judged, judge_info,
                                include_real_images=include_real_images)
    step("fidelity")
    distribution = _distribution(inputs, fid_features, judge=judge, judge_set=fit_set, judge_epochs=judge_epochs,
                                 max_images=fid_max_images, seed=seed, notes=notes, progress=progress)
    step("distribution")
    # fairness across sites and attribute groups
    groups = audit_groups(tstr=(tstr["name"], tstr_model.predict, tstr_pred), real_test=real_test, fed=inputs.fed,
                          real_pooled=(baselines[0]["name"], pooled_pred), size=size, seed=seed)
    step("groups")
    progress(Message("nearest-neighbour memorization check"))
    mem = nearest_neighbour_audit(synthetic.images, inputs.train_set.images, real_test.images, seed=seed)
    step("memorization")
    membership = membership_attack(inputs, real=real, enabled=mia, max_examples=mia_max_examples, seed=seed,
                                   notes=notes, progress=progress)
    step("membership")
    report = {
        "name": name or dataset_dir.name,
        "contains_personal_data": bool(include_real_images),
        "dataset": dataset_section(dataset_dir, inputs),
        "real": real_section(inputs, real),
        "run": inputs.run.resolve().name if inputs.run is not None else None,
        "settings": _settings(seed=seed, families=families, cnn_epochs=cnn_epochs, judge_epochs=judge_epochs,
                              max_real_train=max_real_train, fid_features=fid_features),
        "utility": utility_section(tstr, baselines),
        "fairness": fairness,
        "groups": groups,
        "distribution": distribution,
        "privacy": privacy_section(inputs.card, mem, membership),
        "notes": notes,
    }
    report = finish_report(report, inputs, compare_with=compare_with, reference=reference,
                           local=[dataset_dir, inputs.run, out_dir, Path.cwd()])
    _write(report, out_dir, inputs, include_real_images=include_real_images)
    step("report")
    progress(TaskFinished("audit"))
    return report
