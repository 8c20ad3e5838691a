"""FedAvg (McMahan et al. 2017) as used by Tun et al. 2023: every parameter is
shared, the server averages client models weighted by their sample counts."""

from __future__ import annotations

from collections.abc import Sequence

from synthfed.federated.strategy import FitResult, State, Strategy, weighted_average


class FedAvg(Strategy):
    name = "fedavg"

    def is_shared(self, key: str) -> bool:
        return True

    def aggregate_fit(self, *, server_round: int, results: Sequence[FitResult], current: State) -> State:
        if not results:
            return current
        return weighted_average([r.shared for r in results], [r.num_examples for r in results])
