"""Downstream classifiers for train-on-synthetic, test-on-real (TSTR).

:func:`select_and_train` receives **one** dataset, the training data (the
synthetic set in TSTR, or a real training set for a baseline). It splits that
dataset, stratified, into fit/validation parts, picks the candidate with the
best validation accuracy, and refits it on the whole dataset. The real test set
is never an argument, so model and hyper-parameter selection cannot see it
(DPImageBench: choosing on the test set leaks and inflates utility); the caller
only uses it afterwards, through :meth:`FittedClassifier.predict`.

Candidates are deliberately cheap on a CPU: scikit-learn logistic regression
and MLPs on flattened pixels scaled to [0, 1], and the project's SmallCNN for a
couple of epoch budgets.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from synthfed.data import DataError, ImageDataset

__all__ = [
    "DEFAULT_FAMILIES",
    "FAMILIES",
    "Candidate",
    "FittedClassifier",
    "Selection",
    "candidates",
    "select_and_train",
]

FAMILIES = ("logreg", "mlp", "cnn")
DEFAULT_FAMILIES = FAMILIES


def _flat(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C*H*W) in [0, 1]."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0


@dataclass(frozen=True)
class FittedClassifier:
    """A trained candidate: ``predict(uint8 images) -> int labels``."""

    name: str
    family: str
    params: dict
    _predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(np.asarray(images)), dtype=np.int64)


@dataclass(frozen=True)
class Candidate:
    """One model family with one hyper-parameter setting."""

    name: str
    family: str
    params: dict

    def fit(self, images: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int) -> FittedClassifier:
        labels = np.array(labels, dtype=np.int64)  # writable copy (torch warns on read-only views)
        if self.family == "cnn":
            from synthfed.evaluate.classifier import CNNTraining, cnn_predict, train_cnn

            plan = CNNTraining(epochs=int(self.params["epochs"]), seed=seed)
            # A writable copy: torch warns on the read-only views ImageDataset hands out.
            model = train_cnn(np.array(images), labels, num_classes=num_classes, plan=plan)
            return FittedClassifier(self.name, self.family, dict(self.params), lambda x: cnn_predict(model, np.array(x)))
        model = self._sklearn(seed)
        with warnings.catch_warnings():
            # A small iteration budget is a deliberate speed choice, not an error.
            from sklearn.exceptions import ConvergenceWarning

            warnings.simplefilter("ignore", ConvergenceWarning)
            if len(np.unique(labels)) == 1:  # sklearn refuses one-class fits
                only = int(labels[0])
                return FittedClassifier(self.name, self.family, dict(self.params),
                                        lambda x: np.full(len(x), only, dtype=np.int64))
            model.fit(_flat(images), labels)
        return FittedClassifier(self.name, self.family, dict(self.params), lambda x: model.predict(_flat(x)))

    def _sklearn(self, seed: int):
        if self.family == "logreg":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=float(self.params["C"]), max_iter=300)
        if self.family == "mlp":
            from sklearn.neural_network import MLPClassifier

            return MLPClassifier(
                hidden_layer_sizes=tuple(self.params["hidden"]),
                alpha=float(self.params["alpha"]),
                max_iter=int(self.params.get("max_iter", 200)),
                random_state=seed,
            )
        raise ValueError(f"unknown classifier family {self.family!r}")


def candidates(families: Sequence[str] = DEFAULT_FAMILIES, *, cnn_epochs: Sequence[int] = (3, 10)) -> list[Candidate]:
    """The search grid: logreg C ∈ {0.01, 0.1, 1}, MLP (128,) × alpha ∈ {1e-4, 1e-2}, CNN epochs."""
    families = tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"classifier families must be a non-empty subset of {FAMILIES}, got {list(families)}")
    out: list[Candidate] = []
    if "logreg" in families:
        out += [Candidate(f"logreg C={c:g}", "logreg", {"C": c}) for c in (0.01, 0.1, 1.0)]
    if "mlp" in families:
        out += [Candidate(f"mlp 128 alpha={a:g}", "mlp", {"hidden": [128], "alpha": a}) for a in (1e-4, 1e-2)]
    if "cnn" in families:
        out += [Candidate(f"cnn {e} epochs", "cnn", {"epochs": int(e)}) for e in cnn_epochs]
    return out


@dataclass(frozen=True)
class Selection:
    """The refitted winner and the validation score of every candidate."""

    model: FittedClassifier
    log: list[dict]  # one row per candidate: name, family, params, val_accuracy, fit_seconds, chosen
    num_fit: int
    num_val: int

    @property
    def chosen(self) -> str:
        return self.model.name


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fit/validation indices; falls back to a plain random split
    when a class has a single example (stratification is then impossible)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    n_val = max(int(round(val_fraction * len(labels))), len(np.unique(labels)) if stratify is not None else 1)
    if n_val >= len(labels):
        raise DataError(f"{len(labels)} images are too few to hold out a validation split")
    fit_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(fit_idx), np.sort(val_idx)


def select_and_train(
    train_ds: ImageDataset,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    families: Sequence[str] = DEFAULT_FAMILIES,
    cnn_epochs: Sequence[int] = (3, 10),
) -> Selection:
    """Pick the best candidate on a held-out part of ``train_ds``, refit it on all of ``train_ds``.

    ``train_ds`` is the only data this function sees: the validation split is
    carved out of it (stratified by class, fixed by ``seed``), so selection can
    never use a real test set. Ties on validation accuracy go to the earlier,
    simpler candidate (logreg before MLP before CNN).
    """
    if not isinstance(train_ds, ImageDataset):
        raise TypeError(f"train_ds must be an ImageDataset, got {type(train_ds).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(train_ds) < 4:
        raise DataError(f"{train_ds.source or 'training set'}: {len(train_ds)} images are too few to train a classifier")
    grid = candidates(families, cnn_epochs=cnn_epochs)
    images, labels, k = train_ds.images, train_ds.labels, train_ds.num_classes
    fit_idx, val_idx = _split(labels, val_fraction, seed)
    log: list[dict] = []
    for cand in grid:
        start = time.perf_counter()
        fitted = cand.fit(images[fit_idx], labels[fit_idx], num_classes=k, seed=seed)
        val_acc = float((fitted.predict(images[val_idx]) == labels[val_idx]).mean())
        log.append({
            "candidate": cand.name,
            "family": cand.family,
            "params": dict(cand.params),
            "val_accuracy": val_acc,
            "fit_seconds": round(time.perf_counter() - start, 3),
            "chosen": False,
        })
    best = max(range(len(grid)), key=lambda i: (log[i]["val_accuracy"], -i))
    log[best]["chosen"] = True
    model = grid[best].fit(images, labels, num_classes=k, seed=seed)
    return Selection(model=model, log=log, num_fit=int(len(fit_idx)), num_val=int(len(val_idx)))
