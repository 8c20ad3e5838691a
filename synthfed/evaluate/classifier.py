"""A small CNN image classifier: the project's yardstick on real data.

Used three ways: as a downstream classifier trained on synthetic data
(train-on-synthetic, test-on-real), as the real-data classifier that judges
label fidelity of generated images, and as the feature extractor / logits of
the fast FID and the classifier Inception-style score (named so: no ImageNet
Inception logits are available offline). Deterministic for a given seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class SmallCNN(nn.Module):
    """Two conv blocks and a 128-d penultimate layer (the feature space)."""

    def __init__(self, *, channels: int, num_classes: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(2 * width * 16, 128)
        self.head = nn.Linear(128, num_classes)
        self.image_size = image_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2) if x.shape[-1] >= 8 else F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.pool(x).flatten(1)
        return F.relu(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class CNNTraining:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 N×C×H×W to float in [-1, 1] (the diffusion models' range)."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)


def train_cnn(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    plan: CNNTraining = CNNTraining(),
    device: torch.device | str = "cpu",
) -> SmallCNN:
    torch.manual_seed(plan.seed)
    n, c, h, _ = images.shape
    model = SmallCNN(channels=c, num_classes=num_classes, image_size=h).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    x_all = to_float(images)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    gen = torch.Generator().manual_seed(plan.seed)
    model.train()
    for _ in range(plan.epochs):
        for idx in torch.randperm(n, generator=gen).split(plan.batch_size):
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def cnn_outputs(model: SmallCNN, images: np.ndarray, *, batch_size: int = 512, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) as float64 numpy arrays."""
    model = model.to(device).eval()
    logits, feats = [], []
    x_all = to_float(images)
    for x in x_all.split(batch_size):
        f = model.features(x.to(device))
        feats.append(f.double().cpu())
        logits.append(model.head(f).double().cpu())
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def cnn_predict(model: SmallCNN, images: np.ndarray, **kwargs) -> np.ndarray:
    logits, _ = cnn_outputs(model, images, **kwargs)
    return logits.argmax(axis=1)
