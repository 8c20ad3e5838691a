"""In-process simulation engine: clients run one after another on one machine.

The engine owns the loop, the single working model, checkpoints and resume;
the algorithm is the ``Strategy`` and the client code is ``client_update``,
exactly what a Flower deployment calls. Public draws (initialisation, client
selection) come from the run seed; a client's draws come from its secret key
(``synthfed.privacy.noise_keys``, kept in ``<run>/private/``), so a run
resumed after round r continues exactly as the uninterrupted run would, and
a server that knows the seed still cannot predict the noise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthfed.checkpoint import (
    RoundCheckpoint,
    latest_round_dir,
    load_round,
    read_run_file,
    save_round,
    write_run_file,
)
from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.federated.client import LocalTraining, client_update
from synthfed.federated.backbone_head import BackboneHead
from synthfed.federated.fedavg import FedAvg
from synthfed.federated.split import split_parameters
from synthfed.federated.warm_start import central_warm_start
from synthfed.federated.local import LocalOnly
from synthfed.federated.strategy import FitResult, Strategy
from synthfed.model.presets import ModelSpec, build_unet
from synthfed.privacy.noise_keys import NoiseKey, load_or_create_simulation_keys
from synthfed.privacy.releases import inputs_digest
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress


@dataclass
class TrainResult:
    """What a training run left: its directory, the rounds done, one dict per
    round (mean loss, clients, time), and the latest checkpoint (whose
    ``ledger.json`` holds the privacy spent by a DP run)."""

    run_dir: Path
    rounds_completed: int
    history: list[dict]
    last_round_dir: Path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def build_strategy(config: TrainConfig, num_clients: int, keys: list[str]) -> Strategy:
    per_round = config.clients_per_round(num_clients)
    if config.strategy in ("fedavg", "centralized"):
        return FedAvg(clients_per_round=per_round)
    if config.strategy == "local":
        return LocalOnly(clients_per_round=per_round)
    if config.strategy in ("fedper", "fedrep"):
        split = split_parameters(keys, config.head)
        return BackboneHead(clients_per_round=per_round, split=split, name=config.strategy)
    raise ValueError(f"strategy {config.strategy!r} does not run on the FedAvg-style engine")


def local_training(config: TrainConfig, spec: ModelSpec, strategy: Strategy) -> LocalTraining:
    phases = None
    if config.strategy == "fedrep":
        assert isinstance(strategy, BackboneHead)
        phases = (
            ("head", config.head_epochs, frozenset(strategy.split.local)),
            ("body", config.local_epochs, frozenset(strategy.split.shared)),
        )
    return LocalTraining(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        label_dropout=config.label_dropout,
        null_label=spec.null_label,
        ema_decay=config.ema_decay,
        precision=config.precision,
        multiplicity=config.noise_multiplicity,
        phases=phases,
        steps=config.local_steps,
    )


def model_spec_for(config: TrainConfig, fed: FederatedData) -> ModelSpec:
    return spec_from_shape(config, fed.clients[0].image_shape, fed.class_names)


def spec_from_shape(config: TrainConfig, image_shape: tuple[int, int, int], class_names) -> ModelSpec:
    c, h, _ = image_shape
    return ModelSpec(
        preset=config.preset,
        image_size=h,
        channels=c,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        schedule=config.schedule().to_dict(),
    )


def initial_state(config: TrainConfig, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The run's starting weights: every engine and every node builds the same
    ones from the seed (or ``--init-from``'s folder), so the local parts never
    need to be sent."""
    torch.manual_seed(config.seed)
    model = build_unet(spec)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if config.init_from:
        from synthfed.federated.warm_start import load_init_weights

        init = load_init_weights(config.init_from, spec, init)
    return model, init


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


def _run_info(config: TrainConfig, fed: FederatedData, spec: ModelSpec) -> dict:
    return {
        "format": 1,
        "config": config.to_dict(),
        "model": spec.to_dict(),
        "data": fed.description,
        "clients": [
            {"id": i, "n": len(c), "fingerprint": c.fingerprint(), "class_counts": c.class_counts().tolist()}
            for i, c in enumerate(fed.clients)
        ],
    }


def _check_same_data(info: dict, fed: FederatedData) -> None:
    saved = info["clients"]
    if len(saved) != len(fed.clients) or any(
        s["fingerprint"] != c.fingerprint() for s, c in zip(saved, fed.clients)
    ):
        raise RuntimeError(
            "the data given to resume differs from the data the run started with "
            "(client sizes or contents changed); resume with the same data and seed"
        )


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
    keys = list(init)
    strategy = build_strategy(config, len(fed.clients), keys)
    shared_keys = {k for k in keys if strategy.is_shared(k)}
    local_keys = set(keys) - shared_keys

    start_round = 1
    history: list[dict] = []
    global_state = {k: init[k] for k in shared_keys}
    global_ema = {k: init[k].clone() for k in shared_keys}
    local_states = {cid: {k: init[k].clone() for k in local_keys} for cid in range(len(fed.clients))}
    local_emas = {cid: {k: init[k].clone() for k in local_keys} for cid in range(len(fed.clients))}
    ema_steps = {cid: 0 for cid in range(len(fed.clients))}

    latest = latest_round_dir(run_dir) if run_dir.exists() else None
    if latest is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and latest is not None:
        _check_same_data(read_run_file(run_dir), fed)
        ckpt = load_round(latest, spec, shared_keys=shared_keys, local_keys=local_keys)
        start_round = ckpt.server_round + 1
        history = ckpt.history
        global_state, global_ema = ckpt.global_state or global_state, ckpt.global_ema or global_ema
        local_states.update(ckpt.local_states)
        local_emas.update(ckpt.local_emas)
        ema_steps.update(ckpt.ema_steps)
        if privacy is not None:
            privacy.restore(ckpt.ledger)
        progress(Message(f"resuming {run_dir} after round {ckpt.server_round}"))
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(run_dir, _run_info(config, fed, spec))
    noise_keys = load_or_create_simulation_keys(run_dir, range(len(fed.clients)), create=start_round == 1)

    plan = local_training(config, spec, strategy)
    tensors = [c.to_tensor() for c in fed.clients]
    if start_round == 1 and config.warm_start == "central":
        # Before the first checkpoint: a restart redoes it from the same key
        # streams, so the release is the same one and is not counted again.
        warm = central_warm_start(model, config=config, spec=spec, init=init, tensors=tensors, privacy=privacy,
                                  noise_keys=noise_keys, personal=not shared_keys, seed=derive_seed(config.seed, 7),
                                  device=device, progress=progress)
        for cid in range(len(fed.clients)):
            state, ema, step = warm[cid] if cid in warm else warm[None]
            local_states[cid] = {k: state[k] for k in local_keys}
            local_emas[cid] = {k: ema[k] for k in local_keys}
            ema_steps[cid] = step
        if None in warm:
            state, ema, _ = warm[None]
            global_state = {k: state[k] for k in shared_keys}
            global_ema = {k: ema[k] for k in shared_keys}
    alphas_cumprod = config.schedule().alphas_cumprod()
    last_round = config.rounds if stop_after_round is None else min(config.rounds, stop_after_round)
    last_dir = latest
    progress(TaskStarted("round", "rounds", config.rounds))
    if start_round > 1:
        progress(TaskAdvanced("round", start_round - 1))
    for server_round in range(start_round, last_round + 1):
        rng = np.random.default_rng([config.seed, server_round])
        chosen = strategy.configure_fit(server_round=server_round, client_ids=range(len(fed.clients)), rng=rng)
        results: list[FitResult] = []
        round_metrics: dict = {"round": server_round, "clients": {}}
        progress(TaskStarted("client", f"round {server_round}: clients", len(chosen)))
        for cid in chosen:
            images, labels = tensors[cid]
            update = client_round(
                model,
                config=config,
                plan=plan,
                cid=cid,
                server_round=server_round,
                state={**global_state, **local_states[cid]},
                ema={**global_ema, **local_emas[cid]},
                ema_step=ema_steps[cid],
                images=images,
                labels=labels,
                alphas_cumprod=alphas_cumprod,
                device=device,
                noise_key=noise_keys[cid],
                privacy=privacy,
                progress=progress,
            )
            if update is None:
                progress(Message(f"client {cid} skipped in round {server_round}: its privacy budget is spent", "warning"))
                progress(TaskAdvanced("client"))
                continue
            local_states[cid] = {k: update.state[k] for k in local_keys}
            local_emas[cid] = {k: update.ema[k] for k in local_keys}
            ema_steps[cid] = update.ema_step
            shared = {k: update.state[k] for k in shared_keys}
            shared.update({f"ema::{k}": update.ema[k] for k in shared_keys})
            results.append(FitResult(client_id=cid, num_examples=update.num_examples, shared=shared, metrics=update.metrics))
            round_metrics["clients"][str(cid)] = update.metrics
            progress(TaskAdvanced("client", 1, {"client": cid, **update.metrics}))
        progress(TaskFinished("client"))
        if results and shared_keys:
            current = {**global_state, **{f"ema::{k}": v for k, v in global_ema.items()}}
            merged = strategy.aggregate_fit(server_round=server_round, results=results, current=current)
            global_state = {k: merged[k] for k in shared_keys}
            global_ema = {k: merged[f"ema::{k}"] for k in shared_keys}
        losses = [r.metrics["loss"] for r in results if r.metrics["loss"] == r.metrics["loss"]]
        round_metrics["mean_loss"] = float(np.mean(losses)) if losses else None
        history.append(round_metrics)
        last_dir = save_round(
            run_dir,
            spec,
            RoundCheckpoint(
                server_round=server_round,
                global_state=global_state,
                global_ema=global_ema,
                local_states=local_states if local_keys else {},
                local_emas=local_emas if local_keys else {},
                ema_steps=ema_steps,
                history=history,
                ledger=privacy.ledger_dict() if privacy is not None else None,
            ),
        )
        progress(TaskAdvanced("round", 1, {"round": server_round, "loss": round_metrics["mean_loss"]}))
    progress(TaskFinished("round"))
    if last_dir is None:
        raise RuntimeError("no round was completed")
    return TrainResult(run_dir=run_dir, rounds_completed=len(history), history=history, last_round_dir=last_dir)
