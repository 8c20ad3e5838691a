"""Starting weights better than random: DP central images, or a public model.

``--warm-start central``: every client releases its DP class moments once
(``synthfed.privacy.central``, its ledger's round 0); the server pools them
(noisy sums add up) and pretrains the model on draws of the class-conditional
Gaussians they define. Only released numbers go in, so the pretraining is
post-processing and its randomness may be public (the run seed). Under
``--strategy local`` each client pretrains its own model on its own moments
only: nothing of another client reaches it.

``--init-from DIR``: the weights of a model folder (``synthfed pretrain`` on
public data, or any synthfed model of the same shape) replace the random
initialisation. They cost no budget of this run; the card names them."""

from __future__ import annotations

import functools
import operator
from pathlib import Path

import numpy as np
import torch

from synthfed.config import TrainConfig
from synthfed.errors import UsageError
from synthfed.federated.client import LocalTraining, client_update
from synthfed.model.presets import ModelSpec
from synthfed.privacy.central import CentralStats, ClassGaussians
from synthfed.progress import Message, Progress, null_progress

State = dict[str, torch.Tensor]
# Draws of the class Gaussians held at once; the pretraining cycles over them.
POOL_PER_CLASS = 1000


def pretrain_on_stats(model: torch.nn.Module, *, config: TrainConfig, spec: ModelSpec, state: State,
                      stats: CentralStats, seed: int, device: torch.device,
                      progress: Progress = null_progress) -> tuple[State, State, int]:
    """(weights, EMA, EMA step) after ``config.warm_start_steps`` plain Adam
    steps on draws of the class Gaussians of ``stats``."""
    gaussians = ClassGaussians.from_stats(stats, rank=config.warm_start_rank)
    rng = np.random.default_rng(seed)
    labels = gaussians.draw_labels(POOL_PER_CLASS * spec.num_classes, rng)
    images = torch.from_numpy(gaussians.sample(labels, rng))
    batch = min(config.batch_size, len(labels))
    plan = LocalTraining(epochs=1, steps=config.warm_start_steps, batch_size=batch, lr=config.lr,
                         label_dropout=config.label_dropout, null_label=spec.null_label, ema_decay=config.ema_decay,
                         precision=config.precision)
    generator = torch.Generator(device=device).manual_seed(seed)
    update = client_update(model, state=state, ema=state, ema_step=0, images=images,
                           labels=torch.from_numpy(labels).long(), plan=plan,
                           alphas_cumprod=config.schedule().alphas_cumprod(), generator=generator, device=device,
                           progress=progress, task_key="warm")
    return update.state, update.ema, update.ema_step


def central_warm_start(model: torch.nn.Module, *, config: TrainConfig, spec: ModelSpec, init: State,
                       tensors: list[tuple[torch.Tensor, torch.Tensor]], privacy, noise_keys, personal: bool,
                       seed: int, device: torch.device, progress: Progress = null_progress,
                       ) -> dict[int | None, tuple[State, State, int]]:
    """Pretrained (weights, EMA, EMA step): under key None for everyone, or per
    client id when ``personal`` (each client from its own release only)."""
    stats = {}
    for cid, (images, labels) in enumerate(tensors):
        stats[cid] = privacy.release_central(cid, images, labels, num_classes=spec.num_classes,
                                             noise_key=noise_keys[cid])
    progress(Message(f"central images: {len(stats)} DP release(s) of class moments; pretraining "
                     f"{config.warm_start_steps} steps on their class Gaussians (post-processing)"))
    if personal:
        return {cid: pretrain_on_stats(model, config=config, spec=spec, state=init, stats=s, seed=seed + cid,
                                       device=device, progress=progress) for cid, s in stats.items()}
    pooled = functools.reduce(operator.add, stats.values())  # noisy sums add up exactly
    return {None: pretrain_on_stats(model, config=config, spec=spec, state=init, stats=pooled, seed=seed,
                                    device=device, progress=progress)}


def load_init_weights(directory: str | Path, spec: ModelSpec, init: State) -> State:
    """The weights of the model folder ``directory`` if its model has exactly
    this run's shape (preset, image size, channels, classes); refused otherwise."""
    from synthfed.model.presets import load_model

    try:
        model, other = load_model(directory)
    except FileNotFoundError as exc:
        raise UsageError(f"--init-from: {exc}") from None
    mismatch = [f"{name} {getattr(other, name)} (this run: {getattr(spec, name)})"
                for name in ("preset", "image_size", "channels", "num_classes")
                if getattr(other, name) != getattr(spec, name)]
    if mismatch:
        raise UsageError(f"--init-from {directory}: the model has another shape: {', '.join(mismatch)}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if set(state) != set(init) or any(state[k].shape != init[k].shape for k in init):
        raise UsageError(f"--init-from {directory}: its weights do not fit this run's model")
    return state
