"""In-process simulation engine: clients run one after another on one machine.

The engine sets a run up (its directory, resume, the warm start) and hands the
rounds to the one round loop (``synthfed.federated.loop``) with the in-process
transport; the algorithm is the ``Strategy`` and the client code is
``client_round``, exactly what a Flower deployment calls. Public draws
(initialisation, client selection) come from the run seed; a client's draws
come from its secret key (``synthfed.privacy.noise_keys``, kept in
``<run>/private/``), so a run resumed after round r continues exactly as the
uninterrupted run would, and a server that knows the seed still cannot predict
the noise."""

from __future__ import annotations

from pathlib import Path

import torch

from synthfed.checkpoint import load_round
from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.federated.client import LocalTraining
from synthfed.federated.in_process import InProcessTransport
from synthfed.federated.loop import RoundLoop, ServerState, TrainResult
from synthfed.federated.setup import build_strategy, derive_seed, initial_state, local_training, model_spec_for, resolve_device
from synthfed.federated.strategy import State
from synthfed.federated.warm_start import central_warm_start
from synthfed.model.presets import ModelSpec
from synthfed.privacy.noise_keys import load_or_create_simulation_keys
from synthfed.progress import Message, Progress, null_progress
from synthfed.run_dir import open_in_process_run

__all__ = ["TrainResult", "run_simulation"]


def run_simulation(
    config: TrainConfig,
    fed: FederatedData,
    run_dir: str | Path,
    *,
    resume: bool = False,
    privacy=None,
    progress: Progress = null_progress,
    stop_after_round: int | None = None,
) -> TrainResult:
    """Train ``config.rounds`` rounds (or until ``stop_after_round``, for tests
    that simulate a crash) and checkpoint after each one.

    ``privacy`` (``synthfed.privacy.training.PrivateTraining``) turns every
    client's steps into DP-SGD and keeps the ledger; None trains non-privately."""
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    spec = model_spec_for(config, fed)
    model, init = initial_state(config, spec)
    strategy = build_strategy(config, len(fed.clients), list(init))
    shared_keys = {k for k in init if strategy.is_shared(k)}
    latest = open_in_process_run(run_dir, resume=resume, config=config.to_dict(), spec=spec.to_dict(), fed=fed)
    state, transport = _start_state(config, fed, init, shared_keys, model=model, device=device,
                                    plan=local_training(config, spec, strategy), privacy=privacy, progress=progress)
    if latest is not None:
        _restore(state, transport, load_round(latest, spec, shared_keys=shared_keys, local_keys=set(init) - shared_keys),
                 privacy)
        progress(Message(f"resuming {run_dir} after round {state.next_round - 1}"))
    transport.noise_keys = load_or_create_simulation_keys(run_dir, range(len(fed.clients)), create=latest is None)
    if latest is None and config.warm_start == "central":
        # Before the first checkpoint: a restart redoes it from the same key
        # streams, so the release is the same one and is not counted again.
        _warm_start(state, transport, config=config, spec=spec, init=init, privacy=privacy, device=device,
                    progress=progress)
    loop = RoundLoop(strategy=strategy, transport=transport, run_dir=run_dir, spec=spec,
                     num_clients=len(fed.clients), seed=config.seed, progress=progress)
    last_dir = loop.run(state, rounds=config.rounds, last_round=stop_after_round) or latest
    if last_dir is None:
        raise RuntimeError("no round was completed")
    return TrainResult(run_dir=run_dir, rounds_completed=len(state.history), history=state.history,
                       last_round_dir=last_dir)


def _start_state(config: TrainConfig, fed: FederatedData, init: State, shared_keys: set[str], *, model, device,
                 plan: LocalTraining, privacy, progress: Progress) -> tuple[ServerState, InProcessTransport]:
    """Round 1's server state and the clients' parts, all from the initial weights."""
    local_keys = set(init) - shared_keys
    n = len(fed.clients)
    state = ServerState(global_state={k: init[k] for k in shared_keys},
                        global_ema={k: init[k].clone() for k in shared_keys}, history=[])
    transport = InProcessTransport(
        model=model, config=config, plan=plan,
        tensors=[c.to_tensor() for c in fed.clients], noise_keys={}, device=device,
        alphas_cumprod=config.schedule().alphas_cumprod(), shared_keys=shared_keys,
        local_states={cid: {k: init[k].clone() for k in local_keys} for cid in range(n)},
        local_emas={cid: {k: init[k].clone() for k in local_keys} for cid in range(n)},
        ema_steps={cid: 0 for cid in range(n)}, privacy=privacy,
        ledger=(privacy.ledger_dict if privacy is not None else (lambda: None)), progress=progress)
    return state, transport


def _restore(state: ServerState, transport: InProcessTransport, ckpt, privacy) -> None:
    state.next_round, state.history = ckpt.server_round + 1, ckpt.history
    state.global_state = ckpt.global_state or state.global_state
    state.global_ema = ckpt.global_ema or state.global_ema
    transport.local_states.update(ckpt.local_states)
    transport.local_emas.update(ckpt.local_emas)
    transport.ema_steps.update(ckpt.ema_steps)
    if privacy is not None:
        privacy.restore(ckpt.ledger)


def _warm_start(state: ServerState, transport: InProcessTransport, *, config: TrainConfig, spec: ModelSpec,
                init: State, privacy, device: torch.device, progress: Progress) -> None:
    """Pretrain on the DP central images: pooled into the shared model, or per
    client when nothing is shared (``local``)."""
    shared_keys = transport.shared_keys
    warm = central_warm_start(transport.model, config=config, spec=spec, init=init, tensors=transport.tensors,
                              privacy=privacy, noise_keys=transport.noise_keys, personal=not shared_keys,
                              seed=derive_seed(config.seed, 7), device=device, progress=progress)
    for cid in transport.local_states:
        model_state, ema, step = warm[cid] if cid in warm else warm[None]
        local_keys = transport.local_states[cid].keys()
        transport.local_states[cid] = {k: model_state[k] for k in local_keys}
        transport.local_emas[cid] = {k: ema[k] for k in local_keys}
        transport.ema_steps[cid] = step
    if None in warm:
        model_state, ema, _ = warm[None]
        state.global_state = {k: model_state[k] for k in shared_keys}
        state.global_ema = {k: ema[k] for k in shared_keys}
