"""FedAvg against a hand computation, and the engine's checkpoint/resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared_keys import copy_simulation_keys
from synthfed.config import TrainConfig
from synthfed.federated.fedavg import FedAvg
from synthfed.federated.strategy import FitResult, weighted_average
from synthfed.training import train

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=3, alpha=1.0, batch_size=64,
            num_train_timesteps=50, ema_decay=0.9)


def _weights(round_dir, which="model"):
    return load_file(str(round_dir / "global" / which / "diffusion_pytorch_model.safetensors"))


def test_fedavg_equals_the_hand_weighted_mean():
    # Prepare: two clients, 1 and 3 examples
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(4.0)}
    b = {"w": torch.tensor([5.0, 6.0]), "b": torch.tensor(0.0)}
    results = [FitResult(client_id=0, num_examples=1, shared=a), FitResult(client_id=1, num_examples=3, shared=b)]
    # Execute
    new = FedAvg(clients_per_round=2).aggregate_fit(server_round=1, results=results, current={})
    # Assert: (1·a + 3·b) / 4
    torch.testing.assert_close(new["w"], torch.tensor([4.0, 5.0]))
    torch.testing.assert_close(new["b"], torch.tensor(1.0))


def test_weighted_average_rejects_mismatched_states():
    with pytest.raises(ValueError):
        weighted_average([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}], [1, 1])


def test_partial_participation_samples_the_requested_count_reproducibly():
    strategy = FedAvg(clients_per_round=3)
    pick = lambda r: strategy.configure_fit(server_round=r, client_ids=range(10), rng=np.random.default_rng([0, r]))
    assert len(pick(1)) == 3 and pick(1) == pick(1)
    assert len({tuple(pick(r)) for r in range(1, 20)}) > 1


def test_participation_fraction_and_count():
    assert TrainConfig(participation=0.5).clients_per_round(10) == 5
    assert TrainConfig(participation=3).clients_per_round(10) == 3
    assert TrainConfig(participation=0.01).clients_per_round(10) == 1


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    # Prepare
    config = TrainConfig(**TINY, rounds=3, participation=2).validate()
    # Execute: uninterrupted, and crashed after round 1 then resumed
    full = train(config, tmp_path / "full")
    copy_simulation_keys(tmp_path / "full", tmp_path / "crashed")  # the same secret noise, as a backup restores
    train(config, tmp_path / "crashed", stop_after_round=1)
    resumed = train(config, tmp_path / "crashed", resume=True)
    # Assert
    assert resumed.rounds_completed == full.rounds_completed == 3
    for which in ("model", "ema"):
        a, b = _weights(full.last_round_dir, which), _weights(resumed.last_round_dir, which)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert [h["mean_loss"] for h in full.history] == [h["mean_loss"] for h in resumed.history]


def test_a_run_directory_is_not_overwritten_without_resume(tmp_path):
    config = TrainConfig(**TINY, rounds=1).validate()
    train(config, tmp_path / "r")
    with pytest.raises(FileExistsError):
        train(config, tmp_path / "r")


def test_resume_refuses_different_data(tmp_path):
    config = TrainConfig(**TINY, rounds=2).validate()
    train(config, tmp_path / "r", stop_after_round=1)
    with pytest.raises(RuntimeError, match="differs"):
        train(config.replace(seed=1), tmp_path / "r", resume=True)


def test_local_only_keeps_one_model_per_client_and_shares_nothing(tmp_path):
    config = TrainConfig(**{**TINY, "num_clients": 2}, strategy="local", rounds=1).validate()
    result = train(config, tmp_path / "r")
    clients = sorted(p.name for p in (result.last_round_dir / "clients").iterdir())
    assert clients == ["client-00.safetensors", "client-01.safetensors"]
    assert not (result.last_round_dir / "global").exists()
    a = load_file(str(result.last_round_dir / "clients" / clients[0]))
    b = load_file(str(result.last_round_dir / "clients" / clients[1]))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


def test_centralized_pools_the_clients_data(tmp_path):
    config = TrainConfig(**TINY, strategy="centralized", rounds=1).validate()
    result = train(config, tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert len(info["clients"]) == 1
    assert info["clients"][0]["n"] == 1437  # digits train split, all of it
    assert result.rounds_completed == 1


def test_training_lowers_the_loss(tmp_path):
    config = TrainConfig(**{**TINY, "num_clients": 1, "batch_size": 32}, strategy="centralized", rounds=4, lr=2e-3).validate()
    result = train(config, tmp_path / "r")
    losses = [h["mean_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.timeout(240)
def test_kill_9_mid_run_loses_at_most_the_round_in_flight(tmp_path):
    # Prepare: a real process, killed with SIGKILL after its first checkpoint
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "synthfed.cli", "train", "--data", "digits", "--image-size", "8", "--preset", "tiny",
           "--clients", "2", "--rounds", "4", "--timesteps", "50", "--batch-size", "16", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 120
        while not (run / "LATEST").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert (run / "LATEST").exists(), "no checkpoint appeared"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_before = int((run / "LATEST").read_text().split("-")[1])
    # Execute: resume
    config = TrainConfig.from_dict(json.loads((run / "run.json").read_text())["config"])
    result = train(config, run, resume=True)
    # Assert: finished, every round once, nothing half-written left behind
    assert done_before >= 1
    assert [h["round"] for h in result.history] == [1, 2, 3, 4]
    assert not [p for p in (run / "rounds").iterdir() if p.name.startswith(".")]
