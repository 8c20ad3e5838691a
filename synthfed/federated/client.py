"""One client's local training: the code every engine runs on a client.

``client_update`` takes the model state the client starts from, trains it on
the client's own tensors for a few epochs with Adam, and returns the new state
and EMA. How batches are formed and how a step turns per-example losses into
an update is the ``Stepper``'s business: plain mini-batch Adam here, DP-SGD
(Poisson sampling, per-example clipping, Gaussian noise) in
``synthfed.privacy.dp_sgd``. The loss is always computed per example."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from synthfed.diffusion.ema import ema_decay, ema_update
from synthfed.diffusion.loss import draw_rows, drop_labels, rows_loss
from synthfed.federated.strategy import State
from synthfed.model.presets import add_contiguous_inputs
from synthfed.privacy.noise_keys import NoiseKey
from synthfed.privacy.releases import inputs_digest
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

if TYPE_CHECKING:
    from synthfed.config import TrainConfig

RowsLossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]


@dataclass(frozen=True)
class LocalTraining:
    """What a client does in one round (the same for every client of a run)."""

    epochs: int
    batch_size: int
    lr: float
    label_dropout: float
    null_label: int
    ema_decay: float
    precision: str = "fp32"
    multiplicity: int = 1
    timestep_range: tuple[int, int] | None = None
    # Training phases (name, epochs, trainable parameter names or None = all).
    # None: one phase training everything for ``epochs`` (FedAvg, FedPer).
    # FedRep: (("head", E_h, head), ("body", E, backbone)).
    phases: tuple[tuple[str, int, frozenset[str] | None], ...] | None = None
    # The model's timestep input is t + offset (PFDM's shared model runs on the
    # sub-chain that starts at t0 but is conditioned on the original t).
    timestep_offset: int = 0
    # Steps per phase instead of whole epochs (batches keep being drawn as in
    # epochs; the last pass stops early). None: ``epochs`` full epochs.
    steps: int | None = None

    def phase_list(self) -> tuple[tuple[str, int, frozenset[str] | None], ...]:
        return self.phases if self.phases is not None else (("all", self.epochs, None),)

    def epochs_per_round(self) -> int:
        return sum(epochs for _, epochs, _ in self.phase_list())


@dataclass
class LocalUpdate:
    state: State
    ema: State
    ema_step: int
    num_examples: int
    metrics: dict = field(default_factory=dict)
    mechanisms: list = field(default_factory=list)  # privacy mechanisms that actually ran


class Stepper(Protocol):
    """Forms batches and applies one optimizer step from per-row losses."""

    def steps_per_epoch(self, n: int) -> int: ...

    def batch_indices(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]: ...

    def step(self, rows_loss_fn: RowsLossFn, x: torch.Tensor, y: torch.Tensor) -> float: ...

    def mechanisms(self, steps: int) -> list: ...

    def close(self) -> None: ...


class PlainStepper:
    """Non-private mini-batch Adam over a shuffled epoch (the seed's client)."""

    def __init__(self, model: nn.Module, *, lr: float, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        self._fix_handles = add_contiguous_inputs(model)

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / self.batch_size)

    def batch_indices(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=generator)
        yield from order.split(self.batch_size)

    def step(self, rows_loss_fn: RowsLossFn, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        rows, _ = rows_loss_fn(x, y)
        loss = rows.mean()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def mechanisms(self, steps: int) -> list:
        return []

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for handle in self._fix_handles:
            handle.remove()


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast where asked for; the loss and clipping stay in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def client_update(
    model: nn.Module,
    *,
    state: State,
    ema: State,
    ema_step: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: LocalTraining,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
    stepper_factory: Callable[[nn.Module], Stepper] | None = None,
    progress: Progress = null_progress,
    task_key: str = "epoch",
) -> LocalUpdate:
    """Train ``model`` (loaded with ``state``) on (images, labels) for ``plan.epochs``.

    ``images`` are float in [-1, 1] on any device; batches move to ``device``.
    ``generator`` must live on ``device``: every random draw (batches, t, noise,
    label dropout) comes from it, which makes a round reproducible from its seed.
    The returned tensors are CPU copies, so the working model can be reused
    for the next client at once."""
    model.load_state_dict(state)
    model.to(device).train()
    ema = {k: v.detach().clone().to(device) for k, v in ema.items()}
    make_stepper = stepper_factory or (lambda m: PlainStepper(m, lr=plan.lr, batch_size=plan.batch_size))
    run = _Run(model=model, ema=ema, ema_step=ema_step, images=images, labels=labels, plan=plan, device=device,
               generator=generator, loss_fn=_rows_loss_fn(model, plan, alphas_cumprod.to(device), generator, device),
               progress=progress, task_key=task_key)
    params = dict(model.named_parameters())
    try:
        for phase, epochs, trainable in plan.phase_list():
            for name, p in params.items():
                p.requires_grad_(trainable is None or name in trainable)
            stepper = make_stepper(model)
            try:
                run.phase(stepper, phase, epochs)
            finally:
                stepper.close()
    finally:
        for p in params.values():
            p.requires_grad_(True)
    new_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return LocalUpdate(
        state=new_state,
        ema={k: v.to("cpu") for k, v in run.ema.items()},
        ema_step=run.ema_step,
        num_examples=images.shape[0],
        metrics={"loss": sum(run.losses) / len(run.losses) if run.losses else float("nan"), "steps": run.steps},
        mechanisms=run.mechanisms,
    )


def _rows_loss_fn(model: nn.Module, plan: LocalTraining, acp: torch.Tensor, generator: torch.Generator,
                  device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]]:
    """Per-row losses of a batch: (t, noise) draws, label dropout, then the model."""
    def rows_loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        x_rows, y_rows, t, noise = draw_rows(x, y, num_train_timesteps=acp.numel(), multiplicity=plan.multiplicity,
                                             generator=generator, timestep_range=plan.timestep_range)
        y_rows = drop_labels(y_rows, null_label=plan.null_label, probability=plan.label_dropout, generator=generator)
        with autocast_context(plan.precision, device):
            rows = rows_loss(model, x_rows, y_rows, t, noise, acp, timestep_offset=plan.timestep_offset)
        return rows.float(), plan.multiplicity

    return rows_loss_fn


@dataclass
class _Run:
    """One client_update in progress: what its phases advance."""

    model: nn.Module
    ema: State
    ema_step: int
    images: torch.Tensor
    labels: torch.Tensor
    plan: LocalTraining
    device: torch.device
    generator: torch.Generator
    loss_fn: Callable
    progress: Progress
    task_key: str
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    mechanisms: list = field(default_factory=list)

    def phase(self, stepper: "Stepper", phase: str, epochs: int) -> None:
        """A phase's epochs (or ``plan.steps`` steps), then its mechanisms."""
        n, plan = self.images.shape[0], self.plan
        per_epoch = stepper.steps_per_epoch(n)
        if plan.steps is not None:
            epochs = math.ceil(plan.steps / per_epoch)
        phase_steps = 0
        for epoch in range(epochs):
            label = f"epoch {epoch + 1}/{epochs}" + ("" if phase == "all" else f" ({phase})")
            todo = per_epoch if plan.steps is None else min(per_epoch, plan.steps - phase_steps)
            self.progress(TaskStarted(self.task_key, label, todo))
            for idx in itertools.islice(stepper.batch_indices(n, self.generator), todo):
                self.step(stepper, idx)
                phase_steps += 1
            self.progress(TaskFinished(self.task_key))
        self.mechanisms.extend(stepper.mechanisms(phase_steps))
        self.steps += phase_steps

    def step(self, stepper: "Stepper", idx: torch.Tensor) -> None:
        x = self.images[idx.to(self.images.device)].to(self.device)
        y = self.labels[idx.to(self.labels.device)].to(self.device)
        loss = stepper.step(self.loss_fn, x, y)
        if not math.isnan(loss):
            self.losses.append(loss)
        ema_update(self.ema, self.model.state_dict(), decay=ema_decay(self.plan.ema_decay, self.ema_step))
        self.ema_step += 1
        self.progress(TaskAdvanced(self.task_key, 1, {"loss": loss}))


def client_round(
    model: torch.nn.Module,
    *,
    config: TrainConfig,
    plan: LocalTraining,
    cid: int,
    server_round: int,
    state: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    ema_step: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    device: torch.device,
    noise_key: NoiseKey,
    privacy=None,
    progress: Progress = null_progress,
):
    """Client ``cid``'s training in ``server_round``; None when its privacy
    budget does not allow the round. The same call in every engine is what
    makes a Flower run reproduce the simulation.

    Every draw (Poisson batches, t, noise, label dropout, DP noise) comes from
    the client's secret ``noise_key``, never from the public run seed. Under
    DP the round's inputs are digested: the same inputs again (a redo after a
    crash) reproduce the recorded release and are not counted twice; other
    inputs get fresh noise and a new ledger entry."""
    attempt, released = 0, False
    digest = ""
    stepper_factory = None
    if privacy is not None:
        digest = inputs_digest("client-round", server_round, state, ema, ema_step)
        attempt, released = privacy.release_attempt(cid, server_round=server_round, digest=digest)
        if not released and not privacy.may_train(cid, server_round=server_round):
            return None
    generator = noise_key.generator("client-round", server_round, attempt, device=device)
    if privacy is not None:
        stepper_factory = privacy.stepper_factory(cid, generator)
    update = client_update(
        model,
        state=state,
        ema=ema,
        ema_step=ema_step,
        images=images,
        labels=labels,
        plan=plan,
        alphas_cumprod=alphas_cumprod,
        generator=generator,
        device=device,
        stepper_factory=stepper_factory,
        progress=progress,
    )
    if privacy is not None and not released:
        privacy.record(cid, server_round=server_round, mechanisms=update.mechanisms, inputs=digest)
    return update
