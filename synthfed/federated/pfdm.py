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
from dataclasses import dataclass
from pathlib import Path

import torch

from synthfed.checkpoint import load_round
from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.diffusion.sampling import pfdm_sample  # noqa: F401  (re-exported: the hand-over sampler lives in diffusion/)
from synthfed.federated.client import LocalTraining, client_update
from synthfed.federated.in_process import InProcessTransport
from synthfed.federated.loop import RoundLoop, ServerState, TrainResult
from synthfed.federated.setup import derive_seed, initial_state, model_spec_for, resolve_device
from synthfed.federated.strategy import Strategy
from synthfed.privacy.forward_noise import make_uploads, upload_mechanisms
from synthfed.privacy.ledger import ClientLedger, PrivacyLedger
from synthfed.privacy.noise_keys import NoiseKey, load_or_create_simulation_keys
from synthfed.run_dir import open_in_process_run
from synthfed.privacy.planner import client_delta, pfdm_budget, plan_t0
from synthfed.privacy.releases import inputs_digest, release_attempt
from synthfed.progress import Message, Progress, null_progress

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


class PFDMStrategy(Strategy):
    """PFDM on the one round loop. Each client keeps its whole low-noise model
    and sends nothing back (nothing is aggregated); before the round's clients
    train, the server trains the shared high-noise denoiser on the pooled
    uploads (``server_update``). Client selection is the base class's."""

    name = "pfdm"
    aggregates = False

    def __init__(self, *, clients_per_round: int, shared: "SharedDenoiser") -> None:
        super().__init__(clients_per_round=clients_per_round)
        self.shared = shared

    def is_shared(self, key: str) -> bool:
        return False

    def aggregate_fit(self, *, server_round: int, results, current):
        return current

    def server_update(self, server_round: int, state) -> dict:
        s = self.shared
        update = train_shared(s.model, s.config, server_round, state=state.global_state, ema=state.global_ema,
                              ema_step=state.server_ema_steps.get(SERVER, 0), images=s.images, labels=s.labels,
                              plan=s.plan, high=s.high, device=s.device, progress=s.progress)
        state.global_state, state.global_ema = update.state, update.ema
        state.server_ema_steps[SERVER] = update.ema_step
        return update.metrics


@dataclass
class SharedDenoiser:
    """What the server trains its shared high-noise denoiser with: the pooled uploads."""

    model: torch.nn.Module
    config: TrainConfig
    images: torch.Tensor
    labels: torch.Tensor
    plan: LocalTraining
    high: object  # the sub-chain t0 < t < T (ChainSchedule)
    device: torch.device
    progress: Progress = null_progress


def pfdm_run_parts(config: TrainConfig, *, t0: int, clip: float, acp: torch.Tensor) -> dict:
    """run.json's ``pfdm`` entry."""
    return {"t0": t0, "clip_norm": clip, "upload_noise_std": math.sqrt((1 - float(acp[t0])) / float(acp[t0]))}


def pfdm_strategy(config: TrainConfig, num_clients: int, *, model, images, labels, spec, t0: int, device,
                  progress: Progress = null_progress) -> PFDMStrategy:
    """The strategy, its shared denoiser trained on the pooled uploads ``images``/``labels``."""
    server_plan, _ = pfdm_plans(config, spec.null_label, t0)
    high = config.schedule().sub_chain(start=t0 + 1)
    shared = SharedDenoiser(model=model, config=config, images=images, labels=labels, plan=server_plan, high=high,
                            device=device, progress=progress)
    return PFDMStrategy(clients_per_round=config.clients_per_round(num_clients), shared=shared)


def run_pfdm(
    config: TrainConfig,
    fed: FederatedData,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Progress = null_progress,
    stop_after_round: int | None = None,
) -> TrainResult:
    """The simulation of a PFDM run: plan t0, release each client's uploads
    once, then the one round loop with the in-process transport."""
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    spec = model_spec_for(config, fed)
    acp = config.schedule().alphas_cumprod()
    sizes = {cid: len(data) for cid, data in enumerate(fed.clients)}
    t0, clip = plan_t0(config, list(sizes.values()), fed.clients[0].image_shape, acp)
    sgd = None
    if config.local_epsilon is not None:
        from synthfed.privacy.training import PrivateTraining

        sgd = PrivateTraining.plan(config, fed, epsilon=config.local_epsilon)
    ledger = pfdm_ledger(config, sizes, sgd=sgd, alpha_bar_t0=float(acp[t0]), clip=clip)
    model, init = initial_state(config, spec)
    latest = open_in_process_run(run_dir, resume=resume, config=config.to_dict(), spec=spec.to_dict(), fed=fed,
                                 pfdm=pfdm_run_parts(config, t0=t0, clip=clip, acp=acp))
    state = ServerState(global_state=dict(init), global_ema={k: v.clone() for k, v in init.items()}, history=[],
                        server_ema_steps={SERVER: 0})
    local = {cid: ({k: v.clone() for k, v in init.items()}, {k: v.clone() for k, v in init.items()}, 0)
             for cid in sizes}
    if latest is not None:
        ledger = _restore(state, local, load_round(latest, spec, shared_keys=set(init), local_keys=set(init)))
        if sgd is not None:
            sgd.ledger = ledger
        progress(Message(f"resuming {run_dir} after round {state.next_round - 1}"))
    noise_keys = load_or_create_simulation_keys(run_dir, range(len(fed.clients)), create=latest is None)
    progress(Message(f"PFDM hand-off at t0={t0} of T={config.num_train_timesteps} (clip norm {clip:.3g})"))
    images, labels = _pooled_uploads(config, fed, ledger, noise_keys, t0=t0, clip=clip, alpha_bar_t0=float(acp[t0]))
    transport = InProcessTransport(
        model=model, config=config, plan=pfdm_plans(config, spec.null_label, t0)[1],
        tensors=[c.to_tensor() for c in fed.clients], noise_keys=noise_keys, alphas_cumprod=acp, device=device,
        shared_keys=set(), local_states={c: v[0] for c, v in local.items()},
        local_emas={c: v[1] for c, v in local.items()}, ema_steps={c: v[2] for c, v in local.items()},
        privacy=sgd, ledger=ledger.to_dict, progress=progress)
    strategy = pfdm_strategy(config, len(sizes), model=model, images=images, labels=labels, spec=spec, t0=t0,
                             device=device, progress=progress)
    loop = RoundLoop(strategy=strategy, transport=transport, run_dir=run_dir, spec=spec, num_clients=len(sizes),
                     seed=config.seed, progress=progress)
    last_dir = loop.run(state, rounds=config.rounds, last_round=stop_after_round) or latest
    if last_dir is None:
        raise RuntimeError("no round was completed")
    return TrainResult(run_dir=run_dir, rounds_completed=len(state.history), history=state.history,
                       last_round_dir=last_dir)


def _restore(state, local: dict, ckpt) -> PrivacyLedger:
    """Continue from a checkpoint; its ledger (a PFDM checkpoint without one is refused)."""
    if ckpt.ledger is None:
        raise RuntimeError("the checkpoint of a PFDM run has no privacy ledger; refusing to resume blind")
    state.next_round, state.history = ckpt.server_round + 1, ckpt.history
    state.global_state, state.global_ema = ckpt.global_state, ckpt.global_ema
    state.server_ema_steps[SERVER] = ckpt.ema_steps.get(SERVER, 0)
    for cid in local:
        if cid in ckpt.local_states:
            local[cid] = (ckpt.local_states[cid], ckpt.local_emas[cid], ckpt.ema_steps.get(cid, 0))
    return PrivacyLedger.from_dict(ckpt.ledger)


def _pooled_uploads(config: TrainConfig, fed: FederatedData, ledger: PrivacyLedger, noise_keys, *, t0: int,
                    clip: float, alpha_bar_t0: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's uploads, pooled. Re-created identically on resume (same
    keys, same inputs), so a resumed run makes the same release rather than a
    second one."""
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
    return torch.cat(uploads), torch.cat(upload_labels)
