"""Local-only baseline: each client trains alone, nothing is shared.

Expressed as a strategy whose state is entirely local, so the same engine,
checkpoints and ledger serve it."""

from __future__ import annotations

from collections.abc import Sequence

from synthfed.federated.strategy import FitResult, State, Strategy


class LocalOnly(Strategy):
    name = "local"

    def is_shared(self, key: str) -> bool:
        return False

    def aggregate_fit(self, *, server_round: int, results: Sequence[FitResult], current: State) -> State:
        return current
