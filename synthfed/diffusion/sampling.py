"""Class-conditional sampling loops on diffusers schedulers.

``DDPMPipeline`` does not pass class labels, so the loop is ours; the update
rules are the schedulers' (DDPM ancestral with σ² = β̃ or β, DDIM with η).
The loop takes an ``EpsFn`` rather than a model so that a sampler can hand
over between denoisers by timestep (PFDM: shared model for t > t0, the
client's own model below).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from synthfed.diffusion.schedule import SAMPLERS, NoiseSchedule

EpsFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int], None]


def model_eps_fn(model: nn.Module, *, guidance_scale: float = 0.0, null_label: int | None = None) -> EpsFn:
    """ε(x, t, y) of one model, with classifier-free guidance when scale > 0:
    ε = (1 + w) ε(x, y) − w ε(x, ∅)."""
    if guidance_scale > 0 and null_label is None:
        raise ValueError("classifier-free guidance needs the model's null label")

    def eps(x: torch.Tensor, t: int, labels: torch.Tensor) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if guidance_scale <= 0:
            return model(x, tt, class_labels=labels).sample
        both = model(
            torch.cat([x, x]),
            torch.cat([tt, tt]),
            class_labels=torch.cat([labels, torch.full_like(labels, null_label)]),
        ).sample
        cond, uncond = both.chunk(2)
        return (1 + guidance_scale) * cond - guidance_scale * uncond

    return eps


@torch.no_grad()
def sample(
    eps_fn: EpsFn,
    *,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    num_steps: int = 50,
    eta: float = 0.0,
    ddpm_variance: str = "fixed_small",
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Images in [-1, 1], shape (len(labels), *image_shape).

    ``num_steps`` for DDPM may be below T (diffusers then strides the chain);
    the seed's ancestral sampler is ``sampler="ddpm", num_steps=T``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not 1 <= num_steps <= schedule.num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {schedule.num_train_timesteps}]")
    scheduler = schedule.ddim() if sampler == "ddim" else schedule.ddpm(variance_type=ddpm_variance)
    x = torch.randn((labels.shape[0], *image_shape), generator=generator, device=labels.device)
    x = run_chain(eps_fn, x, scheduler=scheduler, labels=labels, num_steps=num_steps, eta=eta, generator=generator,
                  on_step=on_step)
    return x.clamp(-1.0, 1.0)


@torch.no_grad()
def run_chain(
    eps_fn: EpsFn,
    x: torch.Tensor,
    *,
    scheduler,
    labels: torch.Tensor,
    num_steps: int,
    eta: float = 0.0,
    timestep_offset: int = 0,
    generator: torch.Generator | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run a diffusers scheduler from its noisiest step to its end, starting at
    ``x``; the denoiser sees timestep t + ``timestep_offset``."""
    scheduler.set_timesteps(num_steps)
    is_ddim = type(scheduler).__name__.startswith("DDIM")
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        eps = eps_fn(x, int(t) + timestep_offset, labels).float()
        if is_ddim:
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 pixels."""
    return ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def pfdm_sample(
    shared_eps: EpsFn,
    client_eps: EpsFn,
    *,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    schedule: NoiseSchedule,
    t0: int,
    sampler: str = "ddim",
    num_steps: int = 50,
    ddpm_variance: str = "fixed_small",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The shared model from T down to t0 (its sub-chain ends at x_{t0}), then
    the client's model from t0 to 0. Steps are split in proportion to the
    two stretches of the timeline."""
    T = schedule.num_train_timesteps
    high_len = T - t0 - 1
    high_steps = max(1, min(high_len, round(num_steps * high_len / T)))
    low_steps = max(1, min(t0 + 1, num_steps - high_steps))
    x = torch.randn((labels.shape[0], *image_shape), generator=generator, device=labels.device)
    high = schedule.sub_chain(start=t0 + 1)
    # x_{t0} is a noisy image, not in [-1, 1]: no clipping of the sub-chain's "x0".
    x = run_chain(shared_eps, x, scheduler=high.scheduler(sampler, clip_sample=False, variance_type=ddpm_variance),
                  labels=labels, num_steps=high_steps, timestep_offset=high.offset, generator=generator)
    low = schedule.sub_chain(start=0, stop=t0 + 1)
    x = run_chain(client_eps, x, scheduler=low.scheduler(sampler, clip_sample=True, variance_type=ddpm_variance),
                  labels=labels, num_steps=low_steps, generator=generator)
    return x.clamp(-1.0, 1.0)
