"""The in-process transport: a round's clients train one after another here.

It holds what a Flower node would hold for each client (its data, its secret
noise key, its local model part, its EMA step count) and the privacy ledger,
and calls ``client_round``, the same function a Flower node calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from synthfed.config import TrainConfig
from synthfed.federated.client import LocalTraining, client_round
from synthfed.federated.loop import BUDGET_SPENT, ClientParts, RoundOutcome
from synthfed.federated.strategy import FitResult, State
from synthfed.privacy.noise_keys import NoiseKey
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress


@dataclass
class InProcessTransport:
    model: torch.nn.Module  # the one working copy every client trains in turn
    config: TrainConfig
    plan: LocalTraining
    tensors: list[tuple[torch.Tensor, torch.Tensor]]  # each client's (images, labels)
    noise_keys: dict[int, NoiseKey]
    alphas_cumprod: torch.Tensor
    device: torch.device
    shared_keys: set[str]  # entries a client receives from the server and sends back
    local_states: dict[int, State]  # each client's entries that never leave it
    local_emas: dict[int, State]
    ema_steps: dict[int, int]
    privacy: object | None = None  # PrivateTraining: DP-SGD steps and the ledger
    ledger: Callable[[], dict | None] = field(default=lambda: None)
    progress: Progress = null_progress

    def fit(self, server_round: int, chosen: list[int], shared: State) -> RoundOutcome:
        global_state = {k: shared[k] for k in self.shared_keys}
        global_ema = {k: shared[f"ema::{k}"] for k in self.shared_keys}
        outcome = RoundOutcome(results=[], metrics={})
        self.progress(TaskStarted("client", f"round {server_round}: clients", len(chosen)))
        for cid in chosen:
            result = self._train(cid, server_round, global_state, global_ema)
            if result is None:
                outcome.failures[cid] = BUDGET_SPENT
                self.progress(TaskAdvanced("client"))
                continue
            outcome.results.append(result)
            outcome.metrics[cid] = result.metrics
            self.progress(TaskAdvanced("client", 1, {"client": cid, **result.metrics}))
        self.progress(TaskFinished("client"))
        return outcome

    def _train(self, cid: int, server_round: int, global_state: State, global_ema: State) -> FitResult | None:
        images, labels = self.tensors[cid]
        update = client_round(
            self.model, config=self.config, plan=self.plan, cid=cid, server_round=server_round,
            state={**global_state, **self.local_states[cid]}, ema={**global_ema, **self.local_emas[cid]},
            ema_step=self.ema_steps[cid], images=images, labels=labels, alphas_cumprod=self.alphas_cumprod,
            device=self.device, noise_key=self.noise_keys[cid], privacy=self.privacy, progress=self.progress)
        if update is None:
            return None
        local_keys = self.local_states[cid].keys()
        self.local_states[cid] = {k: update.state[k] for k in local_keys}
        self.local_emas[cid] = {k: update.ema[k] for k in local_keys}
        self.ema_steps[cid] = update.ema_step
        shared = {k: update.state[k] for k in self.shared_keys}
        shared.update({f"ema::{k}": update.ema[k] for k in self.shared_keys})
        return FitResult(client_id=cid, num_examples=update.num_examples, shared=shared, metrics=update.metrics)

    def client_parts(self) -> ClientParts:
        has_local = any(self.local_states.values())
        return ClientParts(local_states=self.local_states if has_local else {},
                           local_emas=self.local_emas if has_local else {},
                           ema_steps=dict(self.ema_steps), ledger=self.ledger())
