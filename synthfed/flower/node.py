"""What a Flower node does, without Flower: its data, its private state, its ledger.

A node (one institution) holds its own records and, in a directory that never
leaves it, everything it must remember between rounds:

    <state-dir>/<run-name>/
        node.json                       commit point: client id, the run's config,
                                        EMA step per round, the privacy ledger and
                                        the fingerprint of the node's data
        noise-key.json                  the node's secret noise key (mode 0600)
        local/round-0003.safetensors    the local (never shared) weights after round 3
        shared/round-0005.safetensors   personalized runs, once finished: the run's final
                                        shared weights, as the server delivered them

A round is committed in that order (weights file, then ``node.json``, each
atomically) *before* the reply leaves the node, so a node killed at any moment
has a ledger that counts every round whose update could have been released.
A round that is asked for again with the same inputs (the server resumed
after a crash) starts from the node's state before that round and uses the
same key stream, so it is the same release: trained again, not counted twice.
Asked with other inputs, it is a new release: fresh noise, counted.

When a personalized run finishes, the server delivers its final shared
weights (``receive_final``): stored atomically, then recorded in ``node.json``
(``final``: round, PFDM's t0; ``spec``: the model), so that the node can
sample its own model (``synthfed.flower.node_generation``). Receiving them
spends nothing and changes no ledger.

The training itself is ``synthfed.federated.simulation.client_round``: the
exact call the in-process engine makes, so a Flower run reproduces it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from synthfed.config import PERSONALIZED_STRATEGIES, TrainConfig
from synthfed.data import ImageDataset, load_source
from synthfed.errors import SynthfedError
from synthfed.federated.setup import build_strategy, initial_state, local_training, resolve_device, spec_from_shape
from synthfed.federated.client import client_round
from synthfed.io import write_bytes_atomic, write_json_atomic
from synthfed.model.presets import ModelSpec, build_unet
from synthfed.privacy.ledger import ClientLedger, PrivacyLedger
from synthfed.privacy.noise_keys import load_or_create_node_key

NODE_FILE = "node.json"
KEEP_LOCAL_ROUNDS = 2


class NodeError(SynthfedError, RuntimeError):
    """The node cannot serve this request (wrong run, wrong data, bad config)."""


def node_dataset(config: TrainConfig, *, partition_id: int, data: str | None = None) -> ImageDataset:
    """This node's records: its own source (``data``, a folder/CSV/idx the
    institution holds) or, for demos and tests, partition ``partition_id`` of
    the run's data split exactly as ``synthfed train`` splits it."""
    from synthfed.training import cap_client, load_federated_data

    if config.strategy == "centralized":
        raise NodeError("the centralized baseline pools the data in one place; it does not run on Flower")
    if not 0 <= partition_id < config.num_clients:
        raise NodeError(f"partition-id {partition_id} is outside 0..{config.num_clients - 1} (the run has "
                        f"{config.num_clients} clients)")
    if data:
        # A site may lack a class and keep the federation's class list with an empty folder.
        own = load_source(data, split="train", allow_empty_classes=True)
        if config.image_size is not None:
            own = own.resized(config.image_size)
        return cap_client(config, partition_id, own)
    return load_federated_data(config).clients[partition_id]


def describe(data: ImageDataset, partition_id: int) -> dict:
    """What the server may learn about a node: sizes and shapes, never records
    nor any function of them beyond the size (no hash of the data: with a
    candidate dataset in hand, a hash confirms it). The node checks for itself
    that its data did not change between rounds (``NodeState.fingerprint``)."""
    c, h, w = data.image_shape
    return {"client-id": partition_id, "num-examples": len(data), "channels": c, "height": h, "width": w,
            "class-names": json.dumps(list(data.class_names))}


@dataclass
class NodeState:
    client_id: int
    config: dict
    rounds: dict[int, int]  # round -> EMA step after it
    ledger: PrivacyLedger | None
    fingerprint: str = ""  # of the node's own data; private state, never sent
    final: dict | None = None  # {"round", "t0"} of the final shared weights, once delivered
    spec: dict | None = None  # the model's ModelSpec, recorded with them


class NodeStore:
    """The node-local directory of one run."""

    def __init__(self, root: str | Path, run_name: str) -> None:
        if not run_name or "/" in run_name or run_name.startswith("."):
            raise NodeError(f"run name {run_name!r} is not a plain folder name")
        self.dir = Path(root) / run_name

    def load(self) -> NodeState | None:
        path = self.dir / NODE_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        return NodeState(
            client_id=int(raw["client_id"]),
            config=raw["config"],
            rounds={int(r): int(s) for r, s in raw["rounds"].items()},
            ledger=None if raw.get("ledger") is None else PrivacyLedger.from_dict(raw["ledger"]),
            fingerprint=str(raw.get("fingerprint", "")),
            final=raw.get("final"),
            spec=raw.get("spec"),
        )

    def local_file(self, server_round: int) -> Path:
        return self.dir / "local" / f"round-{server_round:04d}.safetensors"

    def load_local(self, server_round: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.local_file(server_round)))

    def shared_file(self, server_round: int) -> Path:
        return self.dir / "shared" / f"round-{server_round:04d}.safetensors"

    def commit_final(self, state: NodeState, server_round: int, tensors: dict[str, torch.Tensor]) -> None:
        """The final shared weights, then the commit point (``state.final``
        names them); any other round's shared file removed last."""
        path = self.shared_file(server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        self.commit_state(state)
        for old in path.parent.glob("round-*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)

    def commit(self, state: NodeState, server_round: int, tensors: dict[str, torch.Tensor]) -> None:
        """Weights first, then the commit point; old rounds pruned last."""
        path = self.local_file(server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        # save() gives bytes for the atomic write: no temp name of our own to collide.
        write_bytes_atomic(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        self.commit_state(state)
        for old in sorted(state.rounds)[:-KEEP_LOCAL_ROUNDS]:
            if old < server_round:
                self.local_file(old).unlink(missing_ok=True)

    def commit_state(self, state: NodeState) -> None:
        write_json_atomic(self.dir / NODE_FILE, {
            "format": 1,
            "client_id": state.client_id,
            "config": state.config,
            "rounds": {str(r): s for r, s in sorted(state.rounds.items())},
            "ledger": None if state.ledger is None else state.ledger.to_dict(),
            "fingerprint": state.fingerprint,
            "final": state.final,
            "spec": state.spec,
        })


def shared_entries(config: TrainConfig, keys) -> list[str]:
    """The entries whose final values the server delivers, sorted: the
    strategy's shared ones (none for ``local``); PFDM: the whole shared denoiser."""
    if config.strategy == "pfdm":
        return sorted(keys)
    strategy = build_strategy(config, config.num_clients, list(keys))
    return sorted(k for k in keys if strategy.is_shared(k))


def receive_final(config: TrainConfig, data: ImageDataset, store: NodeStore, *, client_id: int, server_round: int,
                  state: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], t0: int | None) -> int:
    """Check and keep a personalized run's final shared weights (sent again
    on a resume: stored again). Returns the round stored."""
    saved = store.load()
    if config.strategy not in PERSONALIZED_STRATEGIES:
        raise NodeError(f"a {config.strategy} run has no personalized model: nothing to deliver")
    if saved is None:
        raise NodeError(f"this node holds no state for run {store.dir.name} (it trained no round of it)")
    if saved.client_id != client_id or saved.config != config.to_dict():
        raise NodeError(f"{store.dir} holds another run (other client id or configuration)")
    if saved.fingerprint and saved.fingerprint != data.fingerprint():
        raise NodeError(f"this node's data changed since {store.dir} started the run")
    if config.strategy == "pfdm" and t0 is None:
        raise NodeError("a PFDM delivery without the hand-off timestep t0")
    if saved.rounds and max(saved.rounds) > server_round:
        raise NodeError(f"the server says the run ended at round {server_round}, but this node trained round "
                        f"{max(saved.rounds)}")
    spec = spec_from_shape(config, data.image_shape, data.class_names)
    model = build_unet(spec).state_dict()
    keys = shared_entries(config, model)
    tensors = {}
    for prefix, part in (("model.", state), ("ema.", ema)):
        if sorted(part) != keys or any(part[k].shape != model[k].shape for k in keys):
            raise NodeError("the server's final weights are not this run's shared entries (other names or shapes)")
        tensors.update({prefix + k: part[k].to(model[k].dtype) for k in keys})
    saved.final = {"round": server_round, "t0": t0}
    saved.spec = spec.to_dict()
    store.commit_final(saved, server_round, tensors)
    return server_round


class NodeTrainer:
    """One node's side of a run: FedAvg-style (fedavg, local, fedper, fedrep:
    shared entries in, shared entries out) or PFDM (a one-time forward-noised
    upload, then the node's own low-noise denoiser, which never leaves it)."""

    def __init__(self, config: TrainConfig, data: ImageDataset, *, client_id: int, store: NodeStore,
                 t0: int | None = None, max_epsilon: float | None = None) -> None:
        self.config = config
        self.data = data
        self.cid = client_id
        self.store = store
        self.spec: ModelSpec = spec_from_shape(config, data.image_shape, data.class_names)
        self.model, self.init = initial_state(config, self.spec)
        self.state = self._open()
        self._noise_key = None
        self.privacy = None
        if config.strategy == "pfdm":
            self._setup_pfdm(t0, max_epsilon)
            return
        strategy = build_strategy(config, config.num_clients, list(self.init))
        self.plan = local_training(config, self.spec, strategy)
        self.shared_keys = shared_entries(config, self.init)
        self.local_keys = sorted(set(self.init) - set(self.shared_keys))
        if config.private:
            from synthfed.privacy.training import PrivateTraining

            self.privacy = PrivateTraining.plan_clients(config, {client_id: len(data)})
            if self.state.ledger is not None:
                self.privacy.restore(self.state.ledger.to_dict())
            self.state.ledger = self.privacy.ledger

    def _setup_pfdm(self, t0: int | None, max_epsilon: float | None) -> None:
        from synthfed.federated.pfdm import pfdm_ledger, pfdm_plans
        from synthfed.privacy.planner import client_delta, resolve_clip_norm
        from synthfed.privacy.forward_noise import upload_epsilon

        config = self.config
        if t0 is None:
            raise NodeError("a PFDM message without the hand-off timestep t0")
        acp = config.schedule().alphas_cumprod()
        self.t0, self.clip = t0, resolve_clip_norm(config, self.data.image_shape)
        self.alpha_bar_t0 = float(acp[t0])
        n = len(self.data)
        delta = client_delta(config, n)
        if config.epsilon is not None:
            # The server picks t0 for everyone; the node checks it meets its own (ε, δ).
            report = upload_epsilon(acp, t0, delta=delta, clip_norm=self.clip, copies=config.upload_copies,
                                    label_epsilon=config.label_epsilon)
            if report.epsilon_upper > config.epsilon:
                raise NodeError(f"t0={t0} gives this client epsilon {report.epsilon_upper:.3f} > {config.epsilon}; "
                                "refusing to upload")
        self.shared_keys, self.local_keys = [], sorted(self.init)
        self.plan = pfdm_plans(config, self.spec.null_label, t0)[1]
        if config.local_epsilon is not None:
            from synthfed.privacy.training import PrivateTraining

            self.privacy = PrivateTraining.plan_clients(config, {self.cid: n}, epsilon=config.local_epsilon)
        ledger = pfdm_ledger(config, {self.cid: n}, sgd=self.privacy, alpha_bar_t0=self.alpha_bar_t0, clip=self.clip)
        if self.state.ledger is not None:
            if self.privacy is not None:
                self.privacy.restore(self.state.ledger.to_dict())
                ledger = self.privacy.ledger
            else:
                ledger = self.state.ledger
        self.state.ledger = ledger
        # The node's cap covers the whole planned composition (upload at the
        # server's t0, labels, local DP-SGD), however the run was specified
        # (an explicit --t0 names no epsilon at all).
        budget = ledger.clients[str(self.cid)].epsilon_budget
        if max_epsilon is not None and not budget <= max_epsilon:
            raise NodeError(f"this run would let client {self.cid} spend epsilon {budget:.3f}, above this node's "
                            f"max-epsilon {max_epsilon}; refusing to upload")

    def upload(self) -> tuple[torch.Tensor, torch.Tensor]:
        """PFDM's one release: the forward-noised images at t0 (and labels),
        recorded before it leaves. Asked again with the same t0 and clip: the
        same tensors, not counted again. Asked with other values: a new release
        with fresh noise, counted, and refused if it would exceed the budget."""
        from synthfed.federated.pfdm import client_uploads, record_uploads, upload_attempt
        from synthfed.privacy.forward_noise import upload_mechanisms

        ledger = self.ledger
        attempt, recorded = upload_attempt(ledger, self.config, t0=self.t0, clip=self.clip)
        if not recorded:
            if attempt > 0 and ledger.would_exceed(upload_mechanisms(
                    self.alpha_bar_t0, clip_norm=self.clip, copies=self.config.upload_copies,
                    label_epsilon=self.config.label_epsilon)):
                raise NodeError(f"the server asks for a second upload (t0={self.t0}) after this node uploaded at "
                                "another t0; the two would exceed its privacy budget: refusing")
            record_uploads(ledger, self.config, t0=self.t0, clip=self.clip, alpha_bar_t0=self.alpha_bar_t0)
            self.store.commit_state(self.state)
        images, labels = self.data.to_tensor()
        return client_uploads(self.config, images, labels, t0=self.t0, clip=self.clip, alpha_bar_t0=self.alpha_bar_t0,
                              num_classes=len(self.spec.class_names), noise_key=self.noise_key, attempt=attempt)

    def _open(self) -> NodeState:
        saved = self.store.load()
        fingerprint = self.data.fingerprint()
        if saved is None:
            return NodeState(client_id=self.cid, config=self.config.to_dict(), rounds={}, ledger=None,
                             fingerprint=fingerprint)
        if saved.client_id != self.cid or saved.config != self.config.to_dict():
            raise NodeError(f"{self.store.dir} holds another run (other client id or configuration); "
                            "use another run name or state directory")
        if saved.fingerprint and saved.fingerprint != fingerprint:
            raise NodeError(f"this node's data changed since {self.store.dir} started the run; "
                            "serve the run with the data it started with")
        saved.fingerprint = saved.fingerprint or fingerprint
        return saved

    @property
    def noise_key(self):
        """The node's secret key, made the first time it adds noise (a node that
        refuses the run at set-up leaves nothing behind)."""
        if self._noise_key is None:
            self._noise_key = load_or_create_node_key(self.store.dir)
        return self._noise_key

    @property
    def ledger(self) -> ClientLedger | None:
        return None if self.state.ledger is None else self.state.ledger.clients[str(self.cid)]

    def _start(self, server_round: int) -> tuple[dict, dict, int]:
        """Local weights, local EMA and EMA step from the last round before this one."""
        before = [r for r in self.state.rounds if r < server_round]
        if not before:
            local = {k: self.init[k].clone() for k in self.local_keys}
            return local, {k: v.clone() for k, v in local.items()}, 0
        last = max(before)
        saved = self.store.load_local(last)
        local = {k: saved[f"model.{k}"] for k in self.local_keys}
        ema = {k: saved[f"ema.{k}"] for k in self.local_keys}
        return local, ema, self.state.rounds[last]

    def train(self, server_round: int, shared: dict[str, torch.Tensor], shared_ema: dict[str, torch.Tensor],
              *, progress=None) -> dict | None:
        """Train round ``server_round`` from the server's shared weights. Returns
        the reply {state, ema, num_examples, metrics} with only shared entries,
        or None when this client's privacy budget does not allow the round."""
        missing = set(self.shared_keys) - set(shared)
        if missing or set(shared) - set(self.shared_keys):
            raise NodeError(f"the server sent other shared entries than this run's strategy shares "
                            f"({len(missing)} missing)")
        local, local_ema, ema_step = self._start(server_round)
        # A round asked again with the same inputs is the same release (not
        # counted twice); with other inputs it is a new one: client_round.
        images, labels = self.data.to_tensor()
        kwargs = {} if progress is None else {"progress": progress}
        update = client_round(
            self.model, config=self.config, plan=self.plan, cid=self.cid,
            server_round=server_round, state={**shared, **local}, ema={**shared_ema, **local_ema}, ema_step=ema_step,
            images=images, labels=labels, alphas_cumprod=self.config.schedule().alphas_cumprod(),
            device=resolve_device(self.config.device), noise_key=self.noise_key, privacy=self.privacy, **kwargs)
        if update is None:
            return None
        self.state.rounds[server_round] = update.ema_step
        tensors = {f"model.{k}": update.state[k] for k in self.local_keys}
        tensors.update({f"ema.{k}": update.ema[k] for k in self.local_keys})
        self.store.commit(self.state, server_round, tensors)
        return {
            "state": {k: update.state[k] for k in self.shared_keys},
            "ema": {k: update.ema[k] for k in self.shared_keys},
            "num_examples": update.num_examples,
            "metrics": update.metrics,
        }
