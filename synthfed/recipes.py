"""The DP recipe: what ``synthfed train --epsilon`` does unless told otherwise.

Measured in docs/UTILITY.md: on a CPU budget, DP-SGD from random weights gives
samples that are noise at every epsilon tried, while one DP release of each
class's mean and principal directions (``synthfed.privacy.central``), followed
by pretraining on draws of the class Gaussians they define, gives data that
trains classifiers well above chance. So under ``--epsilon`` the run warms up
on DP central images (half of epsilon) and spends the rest on DP-SGD, with the
learning rate the pretraining needs. Options given explicitly always win; the
CLI prints the recipe's choices in one note line.

The values were chosen on sklearn's digits and checked on Fashion-MNIST (the
benchmark data); docs/UTILITY.md says which figures carry that tuning."""

from __future__ import annotations

# TrainConfig field -> value, for the options a user did not give.
DP_RECIPE: dict[str, object] = {"warm_start": "central", "lr": 1e-3}
RECIPE_NAME = "dp-central-warm-start"


def resolve_warm_start(value: str, *, private: bool, strategy: str, engine: str, init_from: bool = False) -> str:
    """``--warm-start auto``: central images for a DP-SGD run in the simulation
    that does not start from public weights (``--init-from``); none otherwise."""
    if value != "auto":
        return value
    return "central" if private and strategy != "pfdm" and engine == "simulation" and not init_from else "none"


def recipe_changes(fields: dict, explicit: set[str]) -> dict:
    """The recipe's values for the fields the user left at their defaults,
    when the run warms up on central images (a DP-SGD run by default)."""
    if fields.get("warm_start") != "central":
        return {}
    return {k: v for k, v in DP_RECIPE.items() if k not in explicit and k != "warm_start" and fields.get(k) != v}
