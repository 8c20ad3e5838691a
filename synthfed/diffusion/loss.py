"""The DDPM noise-prediction loss, one value per example.

Per-example values are the unit of everything downstream: DP-SGD clips each
example's gradient, and noise multiplicity (DPDM, Dockhorn et al. 2023)
averages m (t, noise) draws *inside* one example before clipping, which lowers
gradient variance at no privacy cost because the example's sensitivity is
unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
    abar = alphas_cumprod.to(x0.device)[t].float().view(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise


def drop_labels(labels: torch.Tensor, *, null_label: int, probability: float, generator: torch.Generator | None) -> torch.Tensor:
    """Replace labels by the "no label" class with the given probability
    (classifier-free guidance trains the unconditional model alongside)."""
    if probability <= 0.0:
        return labels
    keep = torch.rand(labels.shape, generator=generator, device=labels.device) >= probability
    return torch.where(keep, labels, torch.full_like(labels, null_label))


def rows_loss(
    model: nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    timestep_offset: int = 0,
) -> torch.Tensor:
    """Mean squared error of the predicted noise, one value per row, for given t and noise.

    The model sees timestep ``t + timestep_offset``: a chain that starts at a
    noisy x_{t0} (PFDM's shared model) uses ᾱ_t / ᾱ_{t0} for the noising but
    keeps the original timestep as the model's input."""
    xt = q_sample(x0, t, noise, alphas_cumprod)
    pred = model(xt, t + timestep_offset, class_labels=labels).sample
    return (pred.float() - noise.float()).pow(2).flatten(1).mean(dim=1)


def draw_rows(
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_train_timesteps: int,
    multiplicity: int,
    generator: torch.Generator | None,
    timestep_range: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repeat each example ``multiplicity`` times (rows i*m .. i*m+m-1 belong to
    example i) and draw a timestep and a noise for each row.

    ``timestep_range`` = [low, high) restricts t (the PFDM split trains one model
    on high-noise steps and another on low-noise steps)."""
    low, high = timestep_range if timestep_range is not None else (0, num_train_timesteps)
    x = x0.repeat_interleave(multiplicity, dim=0)
    y = labels.repeat_interleave(multiplicity, dim=0)
    t = torch.randint(low, high, (x.shape[0],), generator=generator, device=x.device)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x, y, t, noise


def per_example_loss(
    model: nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    multiplicity: int = 1,
    generator: torch.Generator | None = None,
    timestep_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Shape (B,): each example's loss averaged over ``multiplicity`` draws."""
    x, y, t, noise = draw_rows(
        x0,
        labels,
        num_train_timesteps=alphas_cumprod.numel(),
        multiplicity=multiplicity,
        generator=generator,
        timestep_range=timestep_range,
    )
    rows = rows_loss(model, x, y, t, noise, alphas_cumprod)
    return rows.view(x0.shape[0], multiplicity).mean(dim=1)
