"""PFDM (Patel et al. 2025): split the diffusion timeline at t0.

Each client uploads forward-noised copies of its clipped images at t0 once
(a Gaussian mechanism, see ``synthfed.privacy.forward_noise``). The server
trains the *shared* high-noise denoiser on the pooled uploads over the
sub-chain t0 < t < T (post-processing: no further privacy cost); each client
trains its *own* low-noise denoiser on its raw images for t ≤ t0, which never
leaves it (DP-SGD optional, ``--local-epsilon``). Sampling runs the shared
model from T down to t0 and hands over to the client's model.

The loop reuses ``client_update`` for both kinds of training and the
checkpoint format of the FedAvg-style engine: global = shared model, each
client's local state = its whole low-noise model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from synthfed.checkpoint import RoundCheckpoint, latest_round_dir, load_round, read_run_file, save_round, write_run_file
from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.diffusion.sampling import EpsFn, run_chain
from synthfed.diffusion.schedule import NoiseSchedule
from synthfed.federated.client import LocalTraining, client_update
from synthfed.federated.simulation import (
    TrainResult,
    _check_same_data,
    _run_info,
    client_round,
    derive_seed,
    model_spec_for,
    resolve_device,
)
from synthfed.model.presets import build_unet
from synthfed.privacy.forward_noise import make_uploads, upload_mechanisms
from synthfed.privacy.ledger import ClientLedger, PrivacyLedger
from synthfed.privacy.noise_keys import NoiseKey, load_or_create_simulation_keys
from synthfed.privacy.planner import client_delta, pfdm_budget, plan_t0
from synthfed.privacy.releases import inputs_digest, release_attempt
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

SERVER = -1  # seed stream of the server's training


def pfdm_ledger(config: TrainConfig, sizes: dict[int, int], *, sgd, alpha_bar_t0: float, clip: float) -> PrivacyLedger:
    """The clients' ledgers, each with its budget: the planned composition of
    its uploads plus its DP-SGD steps (if ``--local-epsilon``)."""
    if sgd is not None:
        ledger = sgd.ledger
    else:
        ledger = PrivacyLedger(clients={
            str(cid): ClientLedger(client_id=str(cid), num_records=n, delta=client_delta(config, n),
                                   epsilon_budget=None, entries=[])
            for cid, n in sizes.items()})
    for cid, n in sizes.items():
        ledger.clients[str(cid)].epsilon_budget = pfdm_budget(
            config, n, alpha_bar_t0=alpha_bar_t0, clip=clip, sgd=None if sgd is None else sgd.noise[cid])
    return ledger


UPLOAD_NOTE = "forward-noise upload"


def upload_digest(config: TrainConfig, *, t0: int, clip: float) -> str:
    """What an upload is made from, besides the client's images: a request for
    the upload with other values is another release (``synthfed.privacy.releases``)."""
    return inputs_digest("pfdm-upload", t0, clip, config.upload_copies, config.label_epsilon,
                         config.num_train_timesteps)


def upload_attempt(ledger: ClientLedger, config: TrainConfig, *, t0: int, clip: float) -> tuple[int, bool]:
    return release_attempt(ledger, round=1, digest=upload_digest(config, t0=t0, clip=clip),
                           is_kind=lambda note: note.startswith(UPLOAD_NOTE))


def client_uploads(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor, *, t0: int, clip: float,
                   alpha_bar_t0: float, num_classes: int, noise_key: NoiseKey, attempt: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's upload, drawn from its secret key's upload stream (attempt k):
    the same key and attempt re-create the same release (resume, or a node
    asked again); the server, knowing only the run seed, cannot."""
    gen = noise_key.generator("pfdm-upload", attempt)
    return make_uploads(images, labels, alpha_bar=alpha_bar_t0, clip_norm=clip, copies=config.upload_copies,
                        num_classes=num_classes, label_epsilon=config.label_epsilon, generator=gen)


def record_uploads(ledger: ClientLedger, config: TrainConfig, *, t0: int, clip: float, alpha_bar_t0: float) -> None:
    digest = upload_digest(config, t0=t0, clip=clip)
    for m in upload_mechanisms(alpha_bar_t0, clip_norm=clip, copies=config.upload_copies,
                               label_epsilon=config.label_epsilon):
        ledger.record(m, round=1, note=f"{UPLOAD_NOTE} at t0={t0}", inputs=digest)


def pfdm_plans(config: TrainConfig, null_label: int, t0: int) -> tuple[LocalTraining, LocalTraining]:
    """(server plan: the shared model on t0 < t < T, conditioned on the original
    t; client plan: the local model on t <= t0)."""
    def plan(timestep_range, offset):
        return LocalTraining(epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr,
                             label_dropout=config.label_dropout, null_label=null_label, ema_decay=config.ema_decay,
                             precision=config.precision, multiplicity=config.noise_multiplicity,
                             timestep_range=timestep_range, timestep_offset=offset)

    return plan(None, t0 + 1), plan((0, t0 + 1), 0)


def train_shared(model, config: TrainConfig, server_round: int, *, state, ema, ema_step: int, images, labels,
                 plan: LocalTraining, high, device: torch.device, progress: Progress = null_progress):
    """The server's round: the shared high-noise denoiser on the pooled uploads
    (post-processing of released data: no privacy cost), its own seed stream."""
    gen = torch.Generator(device=device).manual_seed(derive_seed(config.seed, server_round, 10**6))
    return client_update(model, state=state, ema=ema, ema_step=ema_step, images=images, labels=labels, plan=plan,
                         alphas_cumprod=high.alphas_cumprod(), generator=gen, device=device, progress=progress)


def pfdm_chosen(config: TrainConfig, num_clients: int, server_round: int) -> list[int]:
    rng = np.random.default_rng([config.seed, server_round])
    k = config.clients_per_round(num_clients)
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def run_pfdm(
    config: TrainConfig,
    fed: FederatedData,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Progress = null_progress,
    stop_after_round: int | None = None,
) -> TrainResult:
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    spec = model_spec_for(config, fed)
    schedule = config.schedule()
    acp = schedule.alphas_cumprod()
    sizes = {cid: len(data) for cid, data in enumerate(fed.clients)}
    t0, clip = plan_t0(config, list(sizes.values()), fed.clients[0].image_shape, acp)
    alpha_bar_t0 = float(acp[t0])
    high = schedule.sub_chain(start=t0 + 1)
    sgd = None
    if config.local_epsilon is not None:
        from synthfed.privacy.training import PrivateTraining

        sgd = PrivateTraining.plan(config, fed, epsilon=config.local_epsilon)
    ledger = pfdm_ledger(config, sizes, sgd=sgd, alpha_bar_t0=alpha_bar_t0, clip=clip)

    torch.manual_seed(config.seed)
    model = build_unet(spec)
    keys = list(model.state_dict())
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shared, shared_ema = dict(init), {k: v.clone() for k, v in init.items()}
    local = {cid: {k: v.clone() for k, v in init.items()} for cid in range(len(fed.clients))}
    local_ema = {cid: {k: v.clone() for k, v in init.items()} for cid in range(len(fed.clients))}
    ema_steps = {cid: 0 for cid in [SERVER, *range(len(fed.clients))]}
    history: list[dict] = []
    start_round = 1
    latest = latest_round_dir(run_dir) if run_dir.exists() else None
    if latest is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and latest is not None:
        _check_same_data(read_run_file(run_dir), fed)
        ckpt = load_round(latest, spec, shared_keys=set(keys), local_keys=set(keys))
        start_round, history = ckpt.server_round + 1, ckpt.history
        shared, shared_ema = ckpt.global_state, ckpt.global_ema
        local.update(ckpt.local_states)
        local_ema.update(ckpt.local_emas)
        ema_steps.update(ckpt.ema_steps)
        if ckpt.ledger is None:
            raise RuntimeError("the checkpoint of a PFDM run has no privacy ledger; refusing to resume blind")
        ledger = PrivacyLedger.from_dict(ckpt.ledger)
        if sgd is not None:
            sgd.ledger = ledger
        progress(Message(f"resuming {run_dir} after round {ckpt.server_round}"))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        info = _run_info(config, fed, spec)
        info["pfdm"] = {"t0": t0, "clip_norm": clip, "upload_noise_std": math.sqrt((1 - float(acp[t0])) / float(acp[t0]))}
        write_run_file(run_dir, info)
    noise_keys = load_or_create_simulation_keys(run_dir, range(len(fed.clients)), create=start_round == 1)
    progress(Message(f"PFDM hand-off at t0={t0} of T={schedule.num_train_timesteps} (clip norm {clip:.3g})"))

    # The uploads: re-created identically on resume (same keys, same inputs),
    # so a resumed run makes the same release rather than a second one.
    uploads, upload_labels = [], []
    for cid, data in enumerate(fed.clients):
        images, labels = data.to_tensor()
        client_ledger = ledger.clients[str(cid)]
        attempt, recorded = upload_attempt(client_ledger, config, t0=t0, clip=clip)
        x, y = client_uploads(config, images, labels, t0=t0, clip=clip, alpha_bar_t0=alpha_bar_t0,
                              num_classes=len(fed.class_names), noise_key=noise_keys[cid], attempt=attempt)
        uploads.append(x)
        upload_labels.append(y)
        if not recorded:
            record_uploads(client_ledger, config, t0=t0, clip=clip, alpha_bar_t0=alpha_bar_t0)
    pooled_x, pooled_y = torch.cat(uploads), torch.cat(upload_labels)
    server_plan, client_plan = pfdm_plans(config, spec.null_label, t0)
    tensors = [c.to_tensor() for c in fed.clients]
    last_round = config.rounds if stop_after_round is None else min(config.rounds, stop_after_round)
    last_dir = latest
    progress(TaskStarted("round", "rounds", config.rounds))
    if start_round > 1:
        progress(TaskAdvanced("round", start_round - 1))
    for server_round in range(start_round, last_round + 1):
        metrics: dict = {"round": server_round, "clients": {}}
        update = train_shared(model, config, server_round, state=shared, ema=shared_ema, ema_step=ema_steps[SERVER],
                              images=pooled_x, labels=pooled_y, plan=server_plan, high=high, device=device,
                              progress=progress)
        shared, shared_ema, ema_steps[SERVER] = update.state, update.ema, update.ema_step
        metrics["server"] = update.metrics
        chosen = pfdm_chosen(config, len(fed.clients), server_round)
        progress(TaskStarted("client", f"round {server_round}: clients", len(chosen)))
        for cid in chosen:
            images, labels = tensors[cid]
            upd = client_round(model, config=config, plan=client_plan, cid=cid, server_round=server_round,
                               state=local[cid], ema=local_ema[cid], ema_step=ema_steps[cid], images=images,
                               labels=labels, alphas_cumprod=acp, device=device, noise_key=noise_keys[cid], privacy=sgd,
                               progress=progress)
            if upd is None:
                progress(Message(f"client {cid} skipped in round {server_round}: its privacy budget is spent", "warning"))
                continue
            local[cid], local_ema[cid], ema_steps[cid] = upd.state, upd.ema, upd.ema_step
            metrics["clients"][str(cid)] = upd.metrics
            progress(TaskAdvanced("client", 1, {"client": cid, **upd.metrics}))
        progress(TaskFinished("client"))
        losses = [m["loss"] for m in metrics["clients"].values()]
        metrics["mean_loss"] = float(np.mean(losses)) if losses else None
        history.append(metrics)
        last_dir = save_round(run_dir, spec, RoundCheckpoint(
            server_round=server_round, global_state=shared, global_ema=shared_ema, local_states=local,
            local_emas=local_ema, ema_steps=ema_steps, history=history, ledger=ledger.to_dict()))
        progress(TaskAdvanced("round", 1, {"round": server_round, "loss": metrics["mean_loss"]}))
    progress(TaskFinished("round"))
    if last_dir is None:
        raise RuntimeError("no round was completed")
    return TrainResult(run_dir=run_dir, rounds_completed=len(history), history=history, last_round_dir=last_dir)


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
