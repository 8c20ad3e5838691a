"""DDPM training loss and class-conditional samplers on diffusers schedulers."""

from synthfed.diffusion.ema import ema_decay, ema_update
from synthfed.diffusion.loss import draw_rows, drop_labels, per_example_loss, q_sample, rows_loss
from synthfed.diffusion.sampling import EpsFn, model_eps_fn, pfdm_sample, run_chain, sample, to_uint8
from synthfed.diffusion.schedule import DDPM_VARIANCES, SAMPLERS, ChainSchedule, NoiseSchedule

__all__ = [
    "DDPM_VARIANCES", "SAMPLERS", "ChainSchedule", "EpsFn", "NoiseSchedule", "run_chain", "draw_rows", "drop_labels", "ema_decay",
    "ema_update", "model_eps_fn", "per_example_loss", "pfdm_sample", "q_sample", "rows_loss", "sample", "to_uint8",
]
