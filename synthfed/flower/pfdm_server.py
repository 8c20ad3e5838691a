"""PFDM on Flower: the server half of ``synthfed.federated.pfdm``.

Nodes upload their forward-noised images once (each node checks the server's
t0 against its own budget and records the release before it leaves); the
server trains the shared high-noise denoiser on the pooled uploads; chosen
nodes train their private low-noise denoisers at home, and only their loss
comes back. Same seeds and the same functions as ``run_pfdm``, so the shared
model and the nodes' ledgers equal the simulation's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from flwr.common import parameters_to_ndarrays

from synthfed.checkpoint import RoundCheckpoint, latest_round_dir, load_round, save_round
from synthfed.federated.pfdm import SERVER, pfdm_chosen, pfdm_plans, train_shared
from synthfed.privacy.planner import plan_t0
from synthfed.federated.simulation import initial_state, resolve_device
from synthfed.flower.records import no_parameters, train_ins
from synthfed.progress import Message as Note
from synthfed.progress import TaskAdvanced, TaskFinished, TaskStarted


def _ask(server, targets: dict[int, int], *, server_round: int, stage: str, t0: int):
    ok, failures = server.train(targets, train_ins(no_parameters(), server_round=server_round,
                                                   run_name=server.options.run_name,
                                                   config_json=server.config_json, stage=stage, t0=t0))
    for cid, why in sorted(failures.items()):
        server.progress(Note(f"{stage} round {server_round}: client {cid} failed: {why}", "warning"))
    return ok, failures


def run_pfdm_flower(server, spec) -> dict:
    config, options = server.config, server.options
    device = resolve_device(config.device)
    schedule = config.schedule()
    acp = schedule.alphas_cumprod()
    sizes = [int(server.described[c]["num-examples"]) for c in sorted(server.described)]
    if len(sizes) < config.num_clients:
        # t0 is the max over clients' admissible t0; an absent client cannot be planned for.
        raise RuntimeError(f"PFDM plans t0 from every client's size: {len(sizes)} of {config.num_clients} connected")
    t0, clip = plan_t0(config, sizes, (spec.channels, spec.image_size, spec.image_size), acp)
    high = schedule.sub_chain(start=t0 + 1)
    model, init = initial_state(config, spec)
    shared, shared_ema = dict(init), {k: v.clone() for k, v in init.items()}
    ema_step = 0
    run_dir = Path(options.run_dir)
    extra = {"pfdm": {"t0": t0, "clip_norm": clip, "upload_noise_std": math.sqrt((1 - float(acp[t0])) / float(acp[t0])),
                      "local_models": "held by the nodes (state-dir)"}}
    history, start = server.open_run_dir(run_dir, spec, extra)
    if start > 1:
        ckpt = load_round(latest_round_dir(run_dir), spec, shared_keys=set(init), local_keys=set())
        shared, shared_ema, ema_step = ckpt.global_state, ckpt.global_ema, ckpt.ema_steps.get(SERVER, 0)
    server.progress(Note(f"PFDM hand-off at t0={t0} of T={schedule.num_train_timesteps} (clip norm {clip:.3g})"))

    # The uploads: asked again on resume; a node returns the same release and does not count it twice.
    every = dict(sorted(server.nodes.items()))
    got, failures = _ask(server, every, server_round=1, stage="upload", t0=t0)
    if len(got) < min(options.min_clients, config.num_clients):
        raise RuntimeError(f"only {len(got)} clients uploaded; fewer than min-clients {options.min_clients}")
    xs, ys = [], []
    for cid in sorted(got):
        x, y = parameters_to_ndarrays(got[cid].parameters)
        xs.append(torch.from_numpy(np.array(x, copy=True)))
        ys.append(torch.from_numpy(np.array(y, copy=True)))
    pooled_x, pooled_y = torch.cat(xs), torch.cat(ys)
    server_plan, _ = pfdm_plans(config, spec.null_label, t0)

    server.progress(TaskStarted("round", "rounds", config.rounds))
    last_dir = None
    for server_round in range(start, config.rounds + 1):
        update = train_shared(model, config, server_round, state=shared, ema=shared_ema, ema_step=ema_step,
                              images=pooled_x, labels=pooled_y, plan=server_plan, high=high, device=device)
        shared, shared_ema, ema_step = update.state, update.ema, update.ema_step
        chosen = pfdm_chosen(config, config.num_clients, server_round)
        targets, failed = server.targets(chosen)
        done, more = _ask(server, targets, server_round=server_round, stage="fit", t0=t0)
        failed.update(more)
        metrics = {c: dict(r.metrics) for c, r in done.items() if r.num_examples > 0}
        failed.update({c: "skipped: privacy budget spent" for c, r in done.items() if r.num_examples == 0})
        if len(metrics) < min(options.min_clients, len(chosen)):
            from synthfed.flower.server import RoundFailed

            raise RoundFailed(f"round {server_round}: {len(metrics)} of {len(chosen)} clients trained; "
                              f"the run stops after round {server_round - 1} (resume later)")
        losses = [float(m["loss"]) for m in metrics.values() if m.get("loss") == m.get("loss")]
        history.append({"round": server_round, "server": update.metrics, "chosen": chosen, "replied": sorted(metrics),
                        "failed": {str(c): w for c, w in sorted(failed.items())},
                        "clients": {str(c): m for c, m in sorted(metrics.items())},
                        "mean_loss": float(np.mean(losses)) if losses else None})
        last_dir = save_round(run_dir, spec, RoundCheckpoint(
            server_round=server_round, global_state=shared, global_ema=shared_ema, local_states={}, local_emas={},
            ema_steps={SERVER: ema_step}, history=history, ledger=None))
        server.progress(TaskAdvanced("round", 1, {"round": server_round, "loss": history[-1]["mean_loss"]}))
    server.progress(TaskFinished("round"))
    return {"run_dir": str(run_dir), "last_round_dir": str(last_dir), "history": history}
