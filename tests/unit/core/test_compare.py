"""The comparison's per-strategy configs (synthfed/compare.py): same budget, one change each."""

import pytest

from synthfed.compare import strategy_config
from synthfed.config import TrainConfig
from synthfed.errors import UsageError

BASE = TrainConfig(data="digits", num_clients=4, rounds=3, local_epochs=2, batch_size=16, lr=1e-3, seed=5)


@pytest.mark.parametrize("strategy", ["centralized", "local", "fedavg", "fedper"])
def test_each_strategy_changes_only_the_strategy(strategy):
    config = strategy_config(BASE, strategy, pfdm_epsilon=None)
    assert config == BASE.replace(strategy=strategy)


def test_pfdm_gets_its_upload_epsilon_public_labels_and_no_warm_start():
    dp = BASE.replace(epsilon=8.0, warm_start="central").validate()
    config = strategy_config(dp, "pfdm", pfdm_epsilon=10.0)
    assert (config.strategy, config.epsilon, config.local_epsilon) == ("pfdm", 10.0, 8.0)
    assert config.public_labels and config.warm_start == "none"
    assert (config.rounds, config.local_epochs, config.batch_size, config.seed) == (3, 2, 16, 5)


def test_pfdm_without_any_epsilon_is_refused_in_one_line():
    with pytest.raises(UsageError, match="pfdm needs --pfdm-epsilon"):
        strategy_config(BASE, "pfdm", pfdm_epsilon=None)
