"""PFDM on Flower: the server half of ``synthfed.federated.pfdm``.

Nodes upload their forward-noised images once (each node checks the server's
t0 against its own budget and records the release before it leaves); the
server trains the shared high-noise denoiser on the pooled uploads; chosen
nodes train their private low-noise denoisers at home, and only their loss
comes back. Same seeds and the same functions as ``run_pfdm``, so the shared
model and the nodes' ledgers equal the simulation's."""

from __future__ import annotations

from pathlib import Path

from synthfed.checkpoint import latest_round_dir, load_round
from synthfed.federated.loop import ServerState
from synthfed.federated.pfdm import SERVER, pfdm_run_parts, pfdm_strategy
from synthfed.federated.setup import initial_state, resolve_device
from synthfed.flower.transport import FlowerPFDMTransport, pooled_uploads
from synthfed.privacy.planner import plan_t0
from synthfed.progress import Message as Note


def run_pfdm_flower(server, spec) -> dict:
    """Plan t0 from every node's size, pool the uploads, then the one round
    loop with ``PFDMStrategy`` over the nodes."""
    config, options = server.config, server.options
    acp = config.schedule().alphas_cumprod()
    sizes = [int(server.described[c]["num-examples"]) for c in sorted(server.described)]
    if len(sizes) < config.num_clients:
        # t0 is the max over clients' admissible t0; an absent client cannot be planned for.
        raise RuntimeError(f"PFDM plans t0 from every client's size: {len(sizes)} of {config.num_clients} connected")
    t0, clip = plan_t0(config, sizes, (spec.channels, spec.image_size, spec.image_size), acp)
    model, init = initial_state(config, spec)
    state = ServerState(global_state=dict(init), global_ema={k: v.clone() for k, v in init.items()}, history=[],
                        server_ema_steps={SERVER: 0})
    run_dir = Path(options.run_dir)
    extra = {"pfdm": {**pfdm_run_parts(config, t0=t0, clip=clip, acp=acp),
                      "local_models": "held by the nodes (state-dir)"}}
    state.history, state.next_round = server.open_run_dir(run_dir, spec, extra)
    if state.next_round > 1:
        ckpt = load_round(latest_round_dir(run_dir), spec, shared_keys=set(init), local_keys=set())
        state.global_state, state.global_ema = ckpt.global_state, ckpt.global_ema
        state.server_ema_steps[SERVER] = ckpt.ema_steps.get(SERVER, 0)
    server.progress(Note(f"PFDM hand-off at t0={t0} of T={config.num_train_timesteps} (clip norm {clip:.3g})"))
    images, labels = pooled_uploads(server, t0=t0, min_clients=min(options.min_clients, config.num_clients))
    strategy = pfdm_strategy(config, config.num_clients, model=model, images=images, labels=labels, spec=spec, t0=t0,
                             device=resolve_device(config.device))
    return server.run_loop(strategy, FlowerPFDMTransport(server, t0=t0), state, run_dir, spec, t0=t0)
