"""DP central images: each class's mean image and principal directions, released once.

Why: a diffusion loss's per-example gradients point in nearly random
directions, so DP-SGD on a CPU budget adds noise far larger than the signal
(docs/UTILITY.md). A class's mean image and covariance are the opposite: one
sum over all of a client's records, so the Gaussian noise is divided by the
class count (thousands) instead of the batch size. DP-FETA (Li et al. 2025)
warms a diffusion model up on such DP "central images" before DP-SGD; we
release the first and second moments, and the model is pretrained on draws of
the class-conditional Gaussian they define (post-processing: no budget).

The mechanism: record (x, y) contributes the vector
``[x ⊗ e_y, (x xᵀ / C) ⊗ e_y, C e_y]`` (image sum, second moment, count, all in
y's slot) with x clipped to L2 norm C. Its norm is at most √3·C, so one
Gaussian release of the summed vector with std σ·√3·C is a ``Gaussian(σ)``
in the ledger's convention (noise std / per-record bound; a replacement moves
the sum by up to 2·√3·C, which the accountant models). With ``moments="mean"``
the second moment is left out (bound √2·C): for large images whose D×D
covariance would not fit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthfed.privacy.mechanisms import Gaussian

CENTRAL_NOTE = "central images (class moments)"
MOMENTS = ("cov", "mean")
# Largest image (pixels x channels) whose D x D second moment per class is released.
MAX_COV_DIM = 1024


def default_moments(dim: int) -> str:
    return "cov" if dim <= MAX_COV_DIM else "mean"


@dataclass(frozen=True)
class CentralStats:
    """Noisy per-class sums as released (sufficient for means and covariances).

    ``sums`` (K, D), ``second`` (K, D, D) or None, ``counts`` (K,): the released
    noisy values themselves, so stats of several clients add up exactly."""

    sums: np.ndarray
    second: np.ndarray | None
    counts: np.ndarray
    image_shape: tuple[int, int, int]

    def __add__(self, other: "CentralStats") -> "CentralStats":
        second = None if self.second is None or other.second is None else self.second + other.second
        return CentralStats(self.sums + other.sums, second, self.counts + other.counts, self.image_shape)


def clip_rows(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Scale each row to L2 norm at most ``clip`` (rows shorter stay as they are)."""
    norms = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x * torch.clamp(clip / norms, max=1.0)


def per_record_bound(clip: float, moments: str) -> float:
    return math.sqrt(3.0 if moments == "cov" else 2.0) * clip


def release_central_stats(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, clip: float,
                          noise_multiplier: float, moments: str, generator: torch.Generator) -> CentralStats:
    """One Gaussian release of the per-class sums (``Gaussian(noise_multiplier)``).

    ``images`` (n, C, H, W) in [-1, 1], ``labels`` (n,). ``generator`` must be
    the party's secret stream: the noise is what protects the records."""
    if moments not in MOMENTS:
        raise ValueError(f"moments must be one of {MOMENTS}")
    x = clip_rows(images.reshape(images.shape[0], -1).double(), clip)
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).double()
    std = noise_multiplier * per_record_bound(clip, moments)
    dim = x.shape[1]

    def noisy(total: torch.Tensor) -> np.ndarray:
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64, device=generator.device)
        return (total + std * noise.to(total.device)).numpy()

    sums = noisy(onehot.T @ x)
    counts = noisy(onehot.sum(0) * clip) / clip
    second = None
    if moments == "cov":
        total = torch.stack([(x[labels == k].T @ x[labels == k]) / clip for k in range(num_classes)])
        second = noisy(total) * clip
        second = (second + second.transpose(0, 2, 1)) / 2  # post-processing: a symmetric matrix
    c, h, w = images.shape[1:]
    assert sums.shape == (num_classes, dim)
    return CentralStats(sums=sums, second=second, counts=counts, image_shape=(int(c), int(h), int(w)))


def central_mechanism(noise_multiplier: float) -> Gaussian:
    return Gaussian(noise_multiplier=noise_multiplier, count=1)


@dataclass(frozen=True)
class ClassGaussians:
    """The class-conditional Gaussians the stats define: post-processing only."""

    means: np.ndarray  # (K, D)
    factors: list[np.ndarray]  # per class (D, r): Σ_k ≈ F Fᵀ (top-r eigenpairs, negatives dropped)
    weights: np.ndarray  # (K,) class weights for drawing labels (noisy counts, clamped at 0)
    image_shape: tuple[int, int, int]

    @classmethod
    def from_stats(cls, stats: CentralStats, *, rank: int) -> "ClassGaussians":
        counts = np.maximum(stats.counts, 1.0)  # a noisy count can be <= 0 for an absent class
        means = np.clip(stats.sums / counts[:, None], -1.0, 1.0)
        factors = []
        for k in range(means.shape[0]):
            if stats.second is None:
                factors.append(np.zeros((means.shape[1], 0)))
                continue
            cov = stats.second[k] / counts[k] - np.outer(means[k], means[k])
            w, v = np.linalg.eigh(cov)
            top = np.argsort(w)[::-1][:rank]
            w, v = np.clip(w[top], 0.0, None), v[:, top]
            factors.append(v * np.sqrt(w)[None, :])
        return cls(means=means, factors=factors, weights=np.maximum(stats.counts, 0.0), image_shape=stats.image_shape)

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Images (n, C, H, W) in [-1, 1] drawn for ``labels``."""
        out = np.empty((len(labels), self.means.shape[1]), dtype=np.float32)
        for k in np.unique(labels):
            rows = np.flatnonzero(labels == k)
            f = self.factors[k]
            z = rng.standard_normal((len(rows), f.shape[1]))
            out[rows] = np.clip(self.means[k] + z @ f.T, -1.0, 1.0)
        return out.reshape(len(labels), *self.image_shape)

    def draw_labels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Labels in proportion to the noisy class counts: a class a client
        (nearly) lacks has a mean that is mostly noise, and gets (nearly) no
        draws rather than an equal share."""
        weights = self.weights if self.weights.sum() > 0 else np.ones_like(self.weights)
        return rng.choice(len(weights), size=n, p=weights / weights.sum())
