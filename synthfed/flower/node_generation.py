"""Sampling a personalized Flower run where its model lives: at the node.

A personalized run (fedper, fedrep, local, pfdm) leaves each institution's own
part (local head, local model, PFDM's low-noise denoiser) in the node's state
directory (``synthfed.flower.node``); at the end of the run the server
delivers the final shared weights there too. ``load_node_generator`` builds
from those files the same ``LoadedGenerator`` that
``synthfed.generation.load_generator(run, client=i)`` builds for an
in-process run, so ``generate_dataset`` writes the same dataset folder and card.
Nothing is read from, or sent to, anywhere else.

The privacy statement is this node's own ledger, as its ``node.json`` holds
it: it covers this node's records (in its local part and in its updates to
the shared part). The shared part also learned from the other institutions'
records; their guarantees are in their own ledgers, which are not here."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from synthfed.card import privacy_status
from synthfed.config import PERSONALIZED_STRATEGIES
from synthfed.diffusion import NoiseSchedule
from synthfed.errors import InputError, UsageError
from synthfed.flower.node import NODE_FILE, NodeError, NodeState, NodeStore
from synthfed.generation import LoadedGenerator
from synthfed.model.presets import ModelSpec, build_unet

NO_FINAL = ("node state for run {run!r} has no final shared weights yet: the run did not finish or this node was "
            "down at its end (resume the finished run on the server to send them again)")


def load_node_generator(state_dir: str | Path, run_name: str, *, use_ema: bool = True) -> LoadedGenerator:
    """This node's personalized model of run ``run_name``: its local part of
    its last committed round with the run's final shared weights."""
    store, state = _open(Path(state_dir), run_name)
    config = state.config
    strategy = config.get("strategy")
    if strategy not in PERSONALIZED_STRATEGIES:
        raise UsageError(f"run {run_name!r} is a {strategy} run: this node holds no model of its own, only its "
                         "ledger; sample the global model on the server with `synthfed generate RUN_DIR`")
    final = None if state.final is None or state.spec is None else int(state.final["round"])
    if final is None or any(r > final for r in state.rounds):
        raise InputError(NO_FINAL.format(run=run_name))
    local_round = max((r for r in state.rounds if r <= final), default=None)
    if local_round is None:
        raise InputError(f"node state for run {run_name!r} holds no local model: this node trained no round of it")
    which = "ema" if use_ema else "model"
    spec = ModelSpec.from_dict(state.spec)
    shared = _weights(store.shared_file(final), which)
    local = _weights(store.local_file(local_round), which)
    source = {"kind": "flower node", "run": run_name, "round": final, "weights": which, "client": state.client_id,
              "local_round": local_round}
    handover = None
    if strategy == "pfdm":
        t0 = int(state.final["t0"])
        model, shared_model = _model(spec, local), _model(spec, shared)
        handover = (shared_model.eval(), t0)
        source.update(strategy="pfdm", t0=t0)
    else:
        model = _model(spec, {**shared, **local})
    return LoadedGenerator(model=model.eval(), spec=spec, schedule=NoiseSchedule(**spec.schedule), source=source,
                           privacy=node_privacy(state), handover=handover, config=config)


def _open(state_dir: Path, run_name: str) -> tuple[NodeStore, NodeState]:
    if not state_dir.is_dir():
        raise InputError(f"no node state directory {state_dir}")
    try:
        store = NodeStore(state_dir, run_name)
    except NodeError as exc:
        raise UsageError(f"--run: {exc}") from None
    try:
        state = store.load()
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{store.dir / NODE_FILE} is not a readable node state ({exc})") from exc
    if state is None:
        runs = sorted(p.parent.name for p in state_dir.glob(f"*/{NODE_FILE}"))
        known = f" (runs there: {', '.join(runs)})" if runs else ""
        raise InputError(f"no node state for run {run_name!r} in {state_dir}{known}")
    return store, state


def _weights(path: Path, which: str) -> dict[str, torch.Tensor]:
    """One part's ``which`` ("ema" or "model") entries of a node file."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise InputError(f"the node state lacks {path.parent.name}/{path.name}, which its node.json names") from None
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path} cannot be read as weights ({exc})") from exc
    prefix = f"{which}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _model(spec: ModelSpec, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_unet(spec)
    try:
        model.load_state_dict(weights)  # strict: the parts together are the whole model
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"the node's weights do not make this run's model ({first})") from exc
    return model


def node_privacy(state: NodeState) -> dict:
    """The guarantee of this node's own ledger, and what it does not cover."""
    config, cid = state.config, state.client_id
    ledger = None if state.ledger is None else state.ledger.to_dict()
    private = any(config.get(k) is not None for k in ("epsilon", "local_epsilon")) or config.get("strategy") == "pfdm"
    if ledger is None and private:
        raise InputError(f"the node state of client {cid} has no privacy ledger although its run is differentially "
                         "private; refusing to sample it as if it were not")
    if ledger is not None and set(ledger.get("clients") or {}) != {str(cid)}:
        raise InputError(f"the node's ledger is not client {cid}'s alone; refusing to use it")
    status = privacy_status(ledger, config, cid)
    # Only this node's ledger is here: the statement is about its records.
    base = status["statement"].replace("each client's records are", f"client {cid}'s records are", 1)
    status["statement"] = f"{base}. {_whose(config, cid, ledger is not None, status['differentially_private'])}"
    status["ledger_of"] = cid
    return status


def _whose(config: dict, cid: int, has_ledger: bool, dp: bool) -> str:
    """Which part of the model is whose, and which ledger covers it."""
    mine = f"Client {cid}'s node holds no privacy ledger for this run: no DP guarantee."
    if has_ledger:
        covers = "they cover its records in every part" if dp else "they cover only the mechanisms they list"
        mine = f"The figures listed are this node's own ledger (client {cid}): {covers}."
    if config.get("strategy") == "local":
        return f"Sampled at client {cid}'s node: nothing was shared; the model learned from its records only. {mine}"
    shared = ("the shared high-noise denoiser (t > t0) from every institution's forward-noised uploads"
              if config.get("strategy") == "pfdm" else "the shared backbone from every institution's records")
    return (f"Sampled at client {cid}'s node with the run's final shared weights: its local part learned from its "
            f"records only, {shared}. {mine} The other institutions' guarantees are in their own ledgers, held by "
            "their nodes, not here.")
