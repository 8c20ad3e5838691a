"""Loss-threshold membership inference against a diffusion model.

The attacker sees the model and a candidate image and guesses "member" (the
image was in the training data) when the model's denoising loss on it is low
(Yeom et al. 2018; Carlini et al. 2023 and SecMI apply it to diffusion). For a
fair comparison every image is scored with the same timesteps and seeded
noise draws, and the loss is averaged over them. The attack's quality is
summarised by the ROC AUC (0.5 = chance; DP bounds how far above 0.5 any attack
can get) and by the true-positive rate at a 1 % false-positive rate, which is
what matters for a few confidently exposed records. The ROC curve itself
(``roc_points``) is kept in the result, for the report's log-log chart (Carlini
et al. 2022, "Membership inference attacks from first principles": read an
attack at low FPR, on log axes), with the TPR at FPR 1e-2 and 1e-3 stated.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from synthfed.data import ImageDataset
from synthfed.diffusion import NoiseSchedule, rows_loss

__all__ = ["DEFAULT_TIMESTEP_FRACTIONS", "ROC_FPR_TARGETS", "loss_threshold_mia", "per_example_losses", "roc_points",
           "tpr_at_fpr"]

# Low-to-mid noise levels: where a denoiser's loss separates seen from unseen
# images most (at large t the input is nearly pure noise for every image).
DEFAULT_TIMESTEP_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.3)
# The false-positive rates at which the report states the attack's TPR.
ROC_FPR_TARGETS = (1e-2, 1e-3)


def roc_points(member_scores, non_member_scores, *, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC of the attack "member if score ≥ threshold": ``(fpr, tpr, thresholds)``.

    One point per distinct score (highest first), preceded by (0, 0) at
    threshold +inf, as ``sklearn.metrics.roc_curve``; ``drop_intermediate``
    removes the points that lie on a straight line between their neighbours
    (the same rule as scikit-learn, so the corners of the curve stay).
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(non_member_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("an ROC needs member and non-member scores")
    scores = np.concatenate([pos, neg])
    is_member = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_member = scores[order], is_member[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the last index of each distinct score
    tps = np.cumsum(is_member)[last]
    fps = (last + 1) - tps
    if drop_intermediate and tps.size > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        tps, fps, last = tps[keep], fps[keep], last[keep]
    fpr = np.r_[0.0, fps / neg.size]
    tpr = np.r_[0.0, tps / pos.size]
    return fpr, tpr, np.r_[np.inf, scores[last]]


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """The highest TPR among ROC points with FPR ≤ ``target`` (0 when none)."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def _default_timesteps(schedule: NoiseSchedule) -> tuple[int, ...]:
    T = schedule.num_train_timesteps
    return tuple(sorted({min(T - 1, max(0, int(round(f * T)))) for f in DEFAULT_TIMESTEP_FRACTIONS}))


@torch.no_grad()
def per_example_losses(
    model: nn.Module,
    schedule: NoiseSchedule,
    dataset: ImageDataset,
    *,
    timesteps: tuple[int, ...],
    draws: int,
    seed: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Each image's noise-prediction MSE averaged over ``timesteps`` × ``draws``.

    The noise for image i, timestep t and draw d depends only on (seed, i, t, d)
    through one generator per (t, d) walked over the data in order, so two
    datasets of equal size get identical noise: members and non-members face
    the same draws.
    """
    model = model.eval()
    device = next(model.parameters()).device
    abar = schedule.alphas_cumprod().to(device)
    x_all, y_all = dataset.to_tensor()
    total = torch.zeros(len(dataset), dtype=torch.float64)
    for ti, t in enumerate(timesteps):
        for d in range(draws):
            gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + ti * 1009 + d)
            for start in range(0, len(dataset), batch_size):
                x = x_all[start : start + batch_size]
                y = y_all[start : start + batch_size]
                noise = torch.randn(x.shape, generator=gen)
                tt = torch.full((len(x),), int(t), dtype=torch.long)
                loss = rows_loss(model, x.to(device), y.to(device), tt.to(device), noise.to(device), abar)
                total[start : start + len(x)] += loss.double().cpu()
    return (total / (len(timesteps) * draws)).numpy()


def loss_threshold_mia(
    model: nn.Module,
    schedule: NoiseSchedule,
    members: ImageDataset,
    non_members: ImageDataset,
    *,
    timesteps: tuple[int, ...] | None = None,
    draws: int = 2,
    seed: int = 0,
    max_examples: int = 1000,
    batch_size: int = 256,
) -> dict:
    """ROC AUC, TPR at 1 % (and 0.1 %) FPR and the ROC curve of the attack "member if loss is low".

    ``members``: images the model was trained on; ``non_members``: real images
    it never saw (a hold-out). Both are subsampled (seeded) to at most
    ``min(max_examples, len(members), len(non_members))`` so the two groups
    are equally large. ``timesteps`` default to 2, 5, 10, 20, 30 % of T.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    if draws < 1:
        raise ValueError("draws must be at least 1")
    if len(members) == 0 or len(non_members) == 0:
        raise ValueError("membership inference needs members and non-members")
    if members.image_shape != non_members.image_shape:
        raise ValueError(f"members {members.image_shape} and non-members {non_members.image_shape} differ in shape")
    steps = tuple(int(t) for t in (timesteps if timesteps is not None else _default_timesteps(schedule)))
    if not steps or min(steps) < 0 or max(steps) >= schedule.num_train_timesteps:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_train_timesteps})")
    n = min(int(max_examples), len(members), len(non_members))
    mem = members.sample(n, seed=seed)
    non = non_members.sample(n, seed=seed + 1)
    kw = dict(timesteps=steps, draws=draws, seed=seed, batch_size=batch_size)
    loss_in = per_example_losses(model, schedule, mem, **kw)
    loss_out = per_example_losses(model, schedule, non, **kw)
    is_member = np.concatenate([np.ones(len(loss_in)), np.zeros(len(loss_out))])
    score = -np.concatenate([loss_in, loss_out])  # lower loss => more likely a member
    auc = float(roc_auc_score(is_member, score))
    fpr, tpr, _ = roc_curve(is_member, score)
    tpr_at_1 = float(tpr[fpr <= 0.01].max()) if np.any(fpr <= 0.01) else 0.0
    roc_fpr, roc_tpr, _ = roc_points(score[: len(loss_in)], score[len(loss_in):])
    return {
        "attack": "loss threshold (lower denoising loss => member)",
        "auc": auc,
        "tpr_at_1pct_fpr": tpr_at_1,
        "advantage": float(np.max(tpr - fpr)),
        # TPR at FPR ≤ each target; a target below 1/num_non_members is read at zero false positives
        "tpr_at_fpr": {f"{t:g}": tpr_at_fpr(roc_fpr, roc_tpr, t) for t in ROC_FPR_TARGETS},
        "fpr_resolution": 1.0 / len(loss_out),
        "roc": {"fpr": roc_fpr.tolist(), "tpr": roc_tpr.tolist()},
        "num_members": int(len(loss_in)),
        "num_non_members": int(len(loss_out)),
        "member_loss_mean": float(loss_in.mean()),
        "non_member_loss_mean": float(loss_out.mean()),
        "timesteps": list(steps),
        "draws": int(draws),
        "seed": int(seed),
    }
