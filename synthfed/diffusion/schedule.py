"""The forward-diffusion noise schedule, on diffusers schedulers.

One ``NoiseSchedule`` describes q(x_t | x_0) for training; samplers are built
from the same numbers so that training and sampling can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from synthfed.choices import DDPM_VARIANCES, SAMPLERS  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class NoiseSchedule:
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError("num_train_timesteps must be at least 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError("need 0 < beta_start < beta_end < 1")

    def to_dict(self) -> dict:
        return asdict(self)

    def ddpm(self, *, variance_type: str = "fixed_small") -> DDPMScheduler:
        if variance_type not in DDPM_VARIANCES:
            raise ValueError(f"variance_type must be one of {DDPM_VARIANCES}")
        return DDPMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            variance_type=variance_type,
            clip_sample=True,
            prediction_type="epsilon",
        )

    def ddim(self) -> DDIMScheduler:
        return DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            beta_schedule=self.beta_schedule,
            clip_sample=True,
            set_alpha_to_one=True,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )

    def betas(self) -> torch.Tensor:
        return self.ddpm().betas.clone()

    def sub_chain(self, *, start: int, stop: int | None = None) -> "ChainSchedule":
        """The forward chain over original steps start..stop-1, as a schedule of
        its own: a chain that starts from x_{start-1} (not x_0) has
        ᾱ'_s = ᾱ_{start+s} / ᾱ_{start-1} (PFDM's shared high-noise model)."""
        betas = self.betas()[start:stop]
        return ChainSchedule(betas=tuple(float(b) for b in betas), offset=start)

    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t for t = 0..T-1 (float64 is not needed: diffusers keeps float32)."""
        return self.ddpm().alphas_cumprod.clone()


@dataclass(frozen=True)
class ChainSchedule:
    """A piece of the forward chain with its own betas; ``offset`` is the
    original timestep of its first step (the model's timestep input is
    s + offset)."""

    betas: tuple[float, ...]
    offset: int = 0

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - torch.tensor(self.betas, dtype=torch.float64), 0).float()

    def scheduler(self, sampler: str, *, clip_sample: bool, variance_type: str = "fixed_small"):
        common = dict(num_train_timesteps=len(self.betas), trained_betas=list(self.betas), clip_sample=clip_sample,
                      prediction_type="epsilon")
        if sampler == "ddim":
            return DDIMScheduler(**common, set_alpha_to_one=True, timestep_spacing="trailing")
        return DDPMScheduler(**common, variance_type=variance_type)
