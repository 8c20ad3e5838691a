"""Shared backbone, local head (FedPer, Arivazhagan et al. 2019; FedRep,
Collins et al. 2021): the server averages only the backbone, weighted by
sample counts; each client keeps its head between rounds.

FedPer trains head and backbone jointly on the client; FedRep first trains the
head with the backbone frozen, then the backbone with the head frozen. The
difference is the client's schedule (``LocalTraining.phases``); aggregation is
the same."""

from __future__ import annotations

from collections.abc import Sequence

from synthfed.federated.split import ParameterSplit
from synthfed.federated.strategy import FitResult, State, Strategy, weighted_average


class BackboneHead(Strategy):
    def __init__(self, *, clients_per_round: int, split: ParameterSplit, name: str = "fedper") -> None:
        super().__init__(clients_per_round=clients_per_round)
        self.split = split
        self.name = name

    def is_shared(self, key: str) -> bool:
        return self.split.is_shared(key)

    def aggregate_fit(self, *, server_round: int, results: Sequence[FitResult], current: State) -> State:
        if not results:
            return current
        for r in results:
            leaked = [k for k in r.shared if k.split("::")[-1] in self.split.local]
            if leaked:
                raise RuntimeError(f"client {r.client_id} sent head parameters {leaked[:3]}; heads never leave a client")
        return weighted_average([r.shared for r in results], [r.num_examples for r in results])
