"""The Flower transports: a round's clients are Flower nodes, reached through
the server's Grid (``FlowerServer`` keeps track of which node is which client).

``FlowerTransport`` sends the shared weights and gets each node's back (or,
with SecAgg+, only their sum). ``FlowerPFDMTransport`` asks each node to
train its own low-noise denoiser: nothing is sent and nothing comes back but
metrics. Neither holds client state: local parts and ledgers stay on the
nodes, so the checkpoint keeps none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.common import parameters_to_ndarrays

from synthfed.federated.loop import BUDGET_SPENT, ClientParts, RoundOutcome
from synthfed.federated.strategy import FitResult, State
from synthfed.flower.records import no_parameters, parameters_to_state, state_to_parameters, train_ins
from synthfed.progress import Message

if TYPE_CHECKING:
    from synthfed.flower.server import FlowerServer


@dataclass
class FlowerTransport:
    server: "FlowerServer"
    keys: list[str]  # the shared entries, in the order they travel
    like: dict[str, torch.Tensor]  # the shared entries' shapes and dtypes (the server's own model)

    def fit(self, server_round: int, chosen: list[int], shared: State) -> RoundOutcome:
        targets, failures = self.server.targets(chosen)
        parameters = state_to_parameters(self.keys, {k: shared[k] for k in self.keys},
                                         {k: shared[f"ema::{k}"] for k in self.keys})
        if self.server.options.secagg:
            from synthfed.flower.secagg import fit_secagg

            outcome = fit_secagg(self.server, server_round, targets, parameters, self.keys, self.like)
        else:
            outcome = self._fit_plain(server_round, targets, parameters)
        outcome.failures = {**failures, **outcome.failures}
        return outcome

    def _fit_plain(self, server_round: int, targets: dict[int, int], parameters) -> RoundOutcome:
        server = self.server
        ok, failures = server.train(targets, train_ins(parameters, server_round=server_round,
                                                       run_name=server.options.run_name,
                                                       config_json=server.config_json))
        outcome = RoundOutcome(results=[], metrics={}, failures=failures)
        for cid, fitres in sorted(ok.items()):
            if fitres.num_examples == 0:
                outcome.failures[cid] = BUDGET_SPENT
                continue
            state, ema = parameters_to_state(self.keys, fitres.parameters, self.like)
            update = dict(state)
            update.update({f"ema::{k}": v for k, v in ema.items()})
            outcome.results.append(FitResult(client_id=cid, num_examples=fitres.num_examples, shared=update,
                                             metrics=dict(fitres.metrics)))
            outcome.metrics[cid] = dict(fitres.metrics)
        return outcome

    def client_parts(self) -> ClientParts:
        return ClientParts()


@dataclass
class FlowerPFDMTransport:
    server: "FlowerServer"
    t0: int

    def fit(self, server_round: int, chosen: list[int], shared: State) -> RoundOutcome:
        targets, failures = self.server.targets(chosen)
        done, more = ask_nodes(self.server, targets, server_round=server_round, stage="fit", t0=self.t0)
        outcome = RoundOutcome(results=[], metrics={}, failures={**failures, **more})
        for cid, reply in sorted(done.items()):
            if reply.num_examples == 0:
                outcome.failures[cid] = BUDGET_SPENT
            else:
                outcome.metrics[cid] = dict(reply.metrics)
        return outcome

    def client_parts(self) -> ClientParts:
        return ClientParts()


def ask_nodes(server, targets: dict[int, int], *, server_round: int, stage: str, t0: int):
    """A PFDM instruction (``upload`` or ``fit``) to each target: (FitRes by client, failures)."""
    return server.train(targets, train_ins(no_parameters(), server_round=server_round,
                                           run_name=server.options.run_name, config_json=server.config_json,
                                           stage=stage, t0=t0))


def pooled_uploads(server, *, t0: int, min_clients: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every node's PFDM upload, pooled in client order. Asked again on resume:
    a node returns the same release and does not count it twice."""
    got, failures = ask_nodes(server, dict(sorted(server.nodes.items())), server_round=1, stage="upload", t0=t0)
    for cid, why in sorted(failures.items()):
        server.progress(Message(f"upload: client {cid} failed: {why}", "warning"))
    if len(got) < min_clients:
        raise RuntimeError(f"only {len(got)} clients uploaded; fewer than min-clients {min_clients}")
    xs, ys = [], []
    for cid in sorted(got):
        x, y = parameters_to_ndarrays(got[cid].parameters)
        xs.append(torch.from_numpy(np.array(x, copy=True)))
        ys.append(torch.from_numpy(np.array(y, copy=True)))
    return torch.cat(xs), torch.cat(ys)
