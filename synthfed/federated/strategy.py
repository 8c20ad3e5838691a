"""The algorithm side of federated training, separate from any engine.

As in Flower's ``Strategy``: ``configure_fit`` picks the round's clients and
``aggregate_fit`` turns their results into the new shared state. State is a
plain ``dict[str, Tensor]``; ``is_shared`` says which entries ever leave a
client (everything else stays in the client's local state, e.g. a
personalized head). Engines (in-process simulation, Flower) call these
methods and nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

State = dict[str, torch.Tensor]


@dataclass
class FitResult:
    """What one client sends back after local training."""

    client_id: int
    num_examples: int
    shared: State
    metrics: dict = field(default_factory=dict)


class Strategy(ABC):
    name: str = "strategy"
    aggregates: bool = True  # False: the clients' results are not merged into the server's state (PFDM)

    def __init__(self, *, clients_per_round: int) -> None:
        if clients_per_round < 1:
            raise ValueError("clients_per_round must be at least 1")
        self.clients_per_round = clients_per_round

    @abstractmethod
    def is_shared(self, key: str) -> bool:
        """Whether the state entry ``key`` is aggregated by the server."""

    def configure_fit(self, *, server_round: int, client_ids: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Uniform sampling without replacement (the seed's partial participation)."""
        k = min(self.clients_per_round, len(client_ids))
        chosen = rng.choice(np.asarray(client_ids), size=k, replace=False)
        return sorted(int(c) for c in chosen)

    @abstractmethod
    def aggregate_fit(self, *, server_round: int, results: Sequence[FitResult], current: State) -> State:
        """The new shared state from this round's results."""

    def server_update(self, server_round: int, state) -> dict | None:
        """The server's own training before the clients' (``state``: the loop's
        ``ServerState``, advanced in place); its metrics, or None when there is
        none (every strategy but PFDM)."""
        return None


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """Σ_k w_k s_k / Σ_k w_k per entry, in float64 so that the average does not
    depend on client order beyond float32 rounding of the result. Non-float
    entries (counters) must agree and are copied."""
    if not states:
        raise ValueError("nothing to average")
    if len(states) != len(weights):
        raise ValueError("one weight per state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    keys = states[0].keys()
    for s in states[1:]:
        if s.keys() != keys:
            raise ValueError("states to average have different entries")
    out: State = {}
    for key in keys:
        first = states[0][key]
        if not first.dtype.is_floating_point:
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for s, w in zip(states, weights):
            acc.add_(s[key].to(torch.float64), alpha=float(w) / total)
        out[key] = acc.to(first.dtype)
    return out
