"""The steps of the audit after its classifiers are chosen: the label-fidelity
judge and the fairness section, the membership attack, the privacy section and
the report's assembly (``audit.run_audit`` runs them in order).

Selection and the real-data baselines stay in ``audit``: tests replace that
module's ``select_and_train`` and ``load_source`` to check that selection never
sees the real test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from synthfed.data import ImageDataset
from synthfed.fairness.audit_inputs import AuditInputs, stamp_real_warning
from synthfed.fairness.comparison import compare_audits, jsonable
from synthfed.fairness.metrics import bias_reduction, confusion, label_fidelity, tv_distance
from synthfed.fairness.privacy_report import privacy_card
from synthfed.fairness.release import public_source, public_spec, scrub_local_paths
from synthfed.fairness.verdict import area_summaries
from synthfed.progress import Message, Progress

# The quantiles of the distances to closest record kept in the report (the per-image arrays are not).
DCR_QUANTILES = [0, 0.05, 0.25, 0.5, 0.75, 1]


def requested_counts(card: dict, synthetic: ImageDataset) -> tuple[np.ndarray, str]:
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


def train_source(train_set: ImageDataset, real: str) -> str:
    """Where the real training images came from, without local paths."""
    if str(train_set.source).startswith("pooled clients of run "):
        return str(train_set.source)
    return f"the training split of {public_spec(real)}"


# --------------------------------------------------------------------------- fairness
def train_judge(fit_set: ImageDataset, inputs: AuditInputs, *, real: str, epochs: int, seed: int):
    """The label-fidelity judge, a SmallCNN trained on real data: returns it, its labels for the synthetic
    images and its description for the report."""
    from synthfed.evaluate.classifier import CNNTraining, cnn_predict, train_cnn

    real_test = inputs.real_test
    judge = train_cnn(np.array(fit_set.images), np.array(fit_set.labels), num_classes=inputs.synthetic.num_classes,
                      plan=CNNTraining(epochs=epochs, seed=seed))
    test_accuracy = float((cnn_predict(judge, np.array(real_test.images)) == real_test.labels).mean())
    judged = cnn_predict(judge, np.array(inputs.synthetic.images))
    info = {"classifier": f"SmallCNN, {epochs} epochs, trained on {train_source(inputs.train_set, real)}",
            "real_test_accuracy": test_accuracy}
    return judge, judged, info


def fairness_section(inputs: AuditInputs, tstr: dict, tstr_pred: np.ndarray, baselines: list[dict],
                     judged: np.ndarray, judge_info: dict, *, include_real_images: bool) -> dict:
    """Class-wise bias against the baselines, label fidelity by the judge (``judged``: its labels for the
    synthetic images), and the class histograms."""
    synthetic, train_set, k = inputs.synthetic, inputs.train_set, inputs.synthetic.num_classes
    fid_all, fid_per_class = label_fidelity(judged, synthetic.labels, k)
    requested, requested_from = requested_counts(inputs.card, synthetic)
    generated = synthetic.class_counts().astype(float)
    predicted = np.bincount(judged, minlength=k).astype(float)
    pooled_bias = next(b["bias"] for b in baselines if b["kind"] == "real_pooled")
    client_biases = [b["bias"] for b in baselines if b["kind"] == "real_client"]
    mean_client_bias = float(np.mean(client_biases)) if client_biases else None
    return {
        "bias": tstr["bias"],
        "gap": tstr["gap"],
        "worst_class": tstr["worst_class"],
        "worst_class_name": synthetic.class_names[tstr["worst_class_index"]],
        "mean_client_bias": mean_client_bias,
        "bias_reduction_vs_clients_alone": bias_reduction(tstr["bias"], mean_client_bias) if client_biases else None,
        "bias_reduction_vs_real_pooled": bias_reduction(tstr["bias"], pooled_bias),
        "label_fidelity": fid_all,
        "label_fidelity_per_class": fid_per_class,
        "worst_class_fidelity": float(np.nanmin(fid_per_class)),
        "judge": judge_info,
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
        "confusion": confusion(inputs.real_test.labels, tstr_pred, k).tolist(),
    }


# --------------------------------------------------------------------------- privacy
def membership_attack(inputs: AuditInputs, *, real: str, enabled: bool, max_examples: int, seed: int,
                      notes: list[str], progress: Progress) -> dict:
    """The loss-threshold membership attack on the model that made the images, or why it was skipped."""
    run, fed = inputs.run, inputs.fed
    if not enabled:
        return {"skipped": "disabled"}
    if run is None:
        return {"skipped": "the source run is not available"}
    if fed is None:
        return {"skipped": "the run's training data is not available"}
    from synthfed.generation import load_generator
    from synthfed.privacy.membership import loss_threshold_mia

    progress(Message("membership-inference attack on the model"))
    source = dict(inputs.card.get("source") or {})
    client = source.get("client")
    try:
        gen = load_generator(run, client=client, use_ema=source.get("weights", "ema") != "model")
        members = fed.clients[int(client)] if client is not None else inputs.train_set
    except (ValueError, FileNotFoundError, RuntimeError, IndexError) as exc:
        skipped = {"skipped": f"cannot load the model that made the images from {run}: {exc}"}
        notes.append(f"Membership attack skipped: {skipped['skipped']}")
        return skipped
    size = inputs.synthetic.image_shape[1]
    membership = loss_threshold_mia(gen.model, gen.schedule, members.resized(size), inputs.real_test, seed=seed,
                                    max_examples=max_examples)
    membership["model"] = public_source(gen.source)
    membership["members"] = (f"training images of client {client}" if client is not None
                             else "all clients' training images")
    membership["non_members"] = f"real test split of {public_spec(real)} ({len(inputs.real_test)} images)"
    return membership


def privacy_section(card: dict, memorization: dict, membership: dict) -> dict:
    """The card's guarantee, the memorization check (quantiles instead of per-image arrays) and the attack."""
    privacy = privacy_card(card)
    per_image = ("dcr_train", "dcr_holdout", "nn_train_index")
    privacy["memorization"] = {key: v for key, v in memorization.items() if key not in per_image}
    privacy["memorization"]["dcr_train_quantiles"] = np.quantile(memorization["dcr_train"], DCR_QUANTILES).tolist()
    privacy["memorization"]["dcr_holdout_quantiles"] = np.quantile(memorization["dcr_holdout"], DCR_QUANTILES).tolist()
    privacy["membership"] = membership
    return privacy


# --------------------------------------------------------------------------- the report
def dataset_section(dataset_dir: Path, inputs: AuditInputs) -> dict:
    """The audited dataset: its shape, counts and card (its source without local paths)."""
    synthetic, card = inputs.synthetic, inputs.card
    source = dict(card.get("source") or {})
    return {
        "dir": dataset_dir.resolve().name,
        "num_images": len(synthetic),
        "image_shape": list(synthetic.image_shape),
        "class_names": list(synthetic.class_names),
        "counts": synthetic.class_counts().tolist(),
        "source": public_source(source),
        "card": {**card, "source": public_source(source)},
    }


def real_section(inputs: AuditInputs, real: str) -> dict:
    """The real data the audit measured against: sizes, provenance and whether it is the run's training data."""
    return {
        "spec": public_spec(real),
        "train_size": len(inputs.train_set),
        "train_source": train_source(inputs.train_set, real),
        "test_size": len(inputs.real_test),
        "test_counts": inputs.real_test.class_counts().tolist(),
        "resized_to": inputs.synthetic.image_shape[1],
        "resized_from": list(inputs.real_size),
        "matches_training_data": None if inputs.run is None else inputs.real_warning is None,
    }


def utility_section(tstr: dict, baselines: list[dict]) -> dict:
    """TSTR, the baselines, and TSTR accuracy as a share of the pooled real baseline's."""
    pooled = next(b for b in baselines if b["kind"] == "real_pooled")
    return {
        "tstr": tstr,
        "baselines": baselines,
        "utility_ratio": tstr["accuracy"] / pooled["accuracy"] if pooled["accuracy"] > 0 else None,
    }


def finish_report(report: dict, inputs: AuditInputs, *, compare_with: dict[str, dict] | None,
                  reference: str | None, local: list) -> dict:
    """Add the verdicts, the real-data warning and the comparison; return the report as scrubbed JSON data."""
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
    return json.loads(scrub_local_paths(json.dumps(jsonable(report), ensure_ascii=False), local))
