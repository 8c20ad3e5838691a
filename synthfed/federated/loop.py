"""The one round loop, over a ``Transport``.

Every engine runs federated training through ``run_rounds``: it owns client
selection (the strategy's ``configure_fit`` with the public per-round seed),
the strategy's server-side step (PFDM trains its shared denoiser there),
sending through the transport, the minimum-replies rule, aggregation in
client-id order, the round's history record, the ledger hand-off and the
checkpoint. What differs between engines is only how a round reaches its
clients:

* ``synthfed.federated.in_process.InProcessTransport``: clients run one after
  another in this process (the simulation);
* ``synthfed.flower.transport.FlowerTransport``: each client is a Flower node
  reached through the Grid (with SecAgg+ behind it when asked).

Same seeds, same client code, same order of aggregation: a Flower run gives the
simulation's weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from synthfed.checkpoint import RoundCheckpoint, save_round
from synthfed.federated.strategy import FitResult, State, Strategy
from synthfed.model.presets import ModelSpec
from synthfed.progress import Message, Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

BUDGET_SPENT = "skipped: its privacy budget is spent"


class RoundFailed(RuntimeError):
    """Too few clients replied; the last complete round is kept."""


@dataclass
class TrainResult:
    """What a training run left: its directory, the rounds done, one dict per
    round (chosen, replied, failed, per-client metrics, mean loss), and the
    latest checkpoint (whose ``ledger.json`` holds the privacy spent by a DP run)."""

    run_dir: Path
    rounds_completed: int
    history: list[dict]
    last_round_dir: Path


@dataclass
class RoundOutcome:
    """What came back from a round: results to aggregate (one per client, or
    one secure sum under SecAgg+), per-client metrics of those that trained,
    and why each other chosen client did not."""

    results: list[FitResult]
    metrics: dict[int, dict]
    failures: dict[int, str] = field(default_factory=dict)


@dataclass
class ClientParts:
    """What the checkpoint keeps of the clients held in this process (nothing
    for Flower: local parts and ledgers stay on the nodes)."""

    local_states: dict[int, State] = field(default_factory=dict)
    local_emas: dict[int, State] = field(default_factory=dict)
    ema_steps: dict[int, int] = field(default_factory=dict)
    ledger: dict | None = None


class Transport(Protocol):
    def fit(self, server_round: int, chosen: list[int], shared: State) -> RoundOutcome:
        """Train the ``chosen`` clients from the ``shared`` state (entries and
        their ``ema::`` twins); failures are reported, not raised."""

    def client_parts(self) -> ClientParts:
        """The clients' state to checkpoint after the round."""


@dataclass
class ServerState:
    """The server's side of a run, as the loop advances it."""

    global_state: State
    global_ema: State
    history: list[dict]
    next_round: int = 1
    server_ema_steps: dict[int, int] = field(default_factory=dict)  # PFDM's shared denoiser


@dataclass
class RoundLoop:
    strategy: Strategy
    transport: Transport
    run_dir: Path
    spec: ModelSpec
    num_clients: int
    seed: int
    min_clients: int = 0  # a round with fewer replies than min(this, chosen) fails the run
    progress: Progress = null_progress

    def run(self, state: ServerState, *, rounds: int, last_round: int | None = None) -> Path | None:
        """Rounds ``state.next_round`` .. ``last_round`` (default ``rounds``);
        the last checkpoint written (None when no round ran)."""
        last_round = rounds if last_round is None else min(rounds, last_round)
        self.progress(TaskStarted("round", "rounds", rounds))
        if state.next_round > 1:
            self.progress(TaskAdvanced("round", state.next_round - 1))
        last_dir = None
        for server_round in range(state.next_round, last_round + 1):
            last_dir = self.run_round(state, server_round)
            self.progress(TaskAdvanced("round", 1, {"round": server_round, "loss": state.history[-1]["mean_loss"]}))
        self.progress(TaskFinished("round"))
        return last_dir

    def run_round(self, state: ServerState, server_round: int) -> Path:
        record: dict = {"round": server_round}
        server_metrics = self.strategy.server_update(server_round, state)
        if server_metrics is not None:
            record["server"] = server_metrics
        rng = np.random.default_rng([self.seed, server_round])
        chosen = self.strategy.configure_fit(server_round=server_round, client_ids=range(self.num_clients), rng=rng)
        outcome = self.transport.fit(server_round, chosen, _shared(state))
        self._report_failures(server_round, chosen, outcome)
        results = sorted(outcome.results, key=lambda r: r.client_id)
        if results and state.global_state and self.strategy.aggregates:
            merged = self.strategy.aggregate_fit(server_round=server_round, results=results, current=_shared(state))
            state.global_state = {k: merged[k] for k in state.global_state}
            state.global_ema = {k: merged[f"ema::{k}"] for k in state.global_ema}
        record.update(_round_record(chosen, outcome))
        state.history.append(record)
        state.next_round = server_round + 1
        return self._save(state, server_round, trained=set(outcome.metrics))

    def _report_failures(self, server_round: int, chosen: list[int], outcome: RoundOutcome) -> None:
        for cid, why in sorted(outcome.failures.items()):
            verb = "" if why.startswith("skipped") else "failed: "
            self.progress(Message(f"round {server_round}: client {cid} {verb}{why}", "warning"))
        need = min(self.min_clients, len(chosen))
        if len(outcome.metrics) < need:
            raise RoundFailed(f"round {server_round}: {len(outcome.metrics)} of {len(chosen)} clients replied, fewer "
                              f"than min-clients {need}; the run stops after round {server_round - 1} (resume later)")

    def _save(self, state: ServerState, server_round: int, *, trained: set[int]) -> Path:
        parts = self.transport.client_parts()
        return save_round(self.run_dir, self.spec, RoundCheckpoint(
            server_round=server_round, global_state=state.global_state, global_ema=state.global_ema,
            local_states=parts.local_states, local_emas=parts.local_emas,
            ema_steps={**parts.ema_steps, **state.server_ema_steps}, history=state.history, ledger=parts.ledger,
            unchanged_clients=frozenset(parts.local_states) - trained))


def _shared(state: ServerState) -> State:
    return {**state.global_state, **{f"ema::{k}": v for k, v in state.global_ema.items()}}


def _round_record(chosen: list[int], outcome: RoundOutcome) -> dict:
    losses = [float(m["loss"]) for m in outcome.metrics.values() if m.get("loss") == m.get("loss")]
    return {
        "chosen": list(chosen),
        "replied": sorted(outcome.metrics),
        "failed": {str(c): w for c, w in sorted(outcome.failures.items())},
        "clients": {str(c): m for c, m in sorted(outcome.metrics.items())},
        "mean_loss": float(np.mean(losses)) if losses else None,
    }
