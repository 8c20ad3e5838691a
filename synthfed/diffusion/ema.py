"""Exponential moving average of weights, as a plain state dict.

Kept as tensors rather than a module so that federated strategies can average
it exactly like the weights it shadows (it is post-processing of the weights,
so it costs nothing in privacy)."""

from __future__ import annotations

import torch


def ema_decay(decay: float, step: int) -> float:
    """Warm-up (as in diffusers' EMAModel): early averages would otherwise be
    dominated by the random initialisation."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], params: dict[str, torch.Tensor], *, decay: float) -> None:
    for name, value in params.items():
        shadow = ema[name]
        if shadow.dtype.is_floating_point:
            shadow.mul_(decay).add_(value.detach().to(shadow.dtype), alpha=1.0 - decay)
        else:
            shadow.copy_(value)
