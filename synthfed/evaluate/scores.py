"""Scores beside FID: classifier Inception-style score, KID, k-NN precision/recall.

``classifier_inception_score`` is the Inception Score formula applied to the
logits of the project's real-data classifier, not to ImageNet Inception logits
(the FID Inception file has no classifier head, and nothing can be downloaded
here). Its range is [1, number of classes]; it is comparable only between sets
judged by the same classifier. Always report it under that name.

``kernel_inception_distance`` (KID, Bińkowski et al. 2018) and
``knn_precision_recall`` (Kynkäänniemi et al. 2019) work in any feature space:
pass Inception or classifier features, and say which."""

from __future__ import annotations

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def classifier_inception_score(logits: np.ndarray, *, splits: int = 1) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) from a classifier's logits: (mean, std over ``splits``).

    High when each image is confidently one class and the classes are balanced."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must be (N, num_classes) with N >= 1, got {logits.shape}")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must be in [1, {logits.shape[0]}], got {splits}")
    probs = _softmax(logits)
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def label_agreement(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of generated images the real-data classifier assigns to their conditioning class."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError("need one non-empty label per row of logits")
    return float((logits.argmax(axis=1) == labels).mean())


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def kernel_inception_distance(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Unbiased MMD² with the cubic polynomial kernel, averaged over random subsets:
    (mean, std). Unbiased, so it can be slightly negative for matching sets."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two feature arrays (N, d) of the same d, got {real.shape} and {fake.shape}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(float(sxx + syy - 2.0 * kxy.mean()))
    return float(np.mean(values)), float(np.std(values))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = _sq_dists(x, x)
    # column 0 of the sorted row is the point itself (distance 0)
    return np.partition(d, k, axis=1)[:, k]


def knn_precision_recall(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    k: int = 3,
    max_samples: int | None = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """k-NN manifold precision (share of generated samples inside the real
    manifold) and recall (share of real samples inside the generated manifold).

    Each manifold is the union of balls around its points reaching the k-th
    nearest neighbour. Sets larger than ``max_samples`` are subsampled (seeded)."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need two feature arrays (N, d) of the same d, got {real.shape} and {fake.shape}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples in each set")
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        if len(real) > max_samples:
            real = real[rng.choice(len(real), max_samples, replace=False)]
        if len(fake) > max_samples:
            fake = fake[rng.choice(len(fake), max_samples, replace=False)]
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _sq_dists(fake, real)  # (n_fake, n_real)
    precision = float((d <= r_real[None, :]).any(axis=1).mean())
    recall = float((d.T <= r_fake[None, :]).any(axis=1).mean())
    return {"precision": precision, "recall": recall}
