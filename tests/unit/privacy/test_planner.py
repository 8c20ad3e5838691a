"""One privacy planner: `privacy calibrate` answers for exactly the plan `train` runs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from synthfed.cli.app import app, register_subcommands
from synthfed.config import TrainConfig
from synthfed.privacy.planner import plan_dp_sgd
from synthfed.training import load_federated_data, train

PLAN = dict(data="digits", image_size=8, preset="tiny", num_clients=3, num_train_timesteps=20, batch_size=32,
            rounds=2, seed=5, max_client_size=150, strategy="fedrep", head_epochs=2, epsilon=6.0)


def _calibrate(*args: str):
    """``synthfed privacy calibrate`` with a wide terminal (every column shown in full)."""
    register_subcommands()
    return CliRunner().invoke(app, ["privacy", "calibrate", *args], terminal_width=250)


def test_calibrate_prints_the_noise_train_runs_with_head_epochs_and_client_caps(tmp_path):
    # Prepare: a FedRep run (head epochs are DP-SGD steps too) on capped clients
    config = TrainConfig(**PLAN).validate()
    run = train(config, tmp_path / "run")
    ledger = json.loads((run.last_round_dir / "ledger.json").read_text())["clients"]
    # Execute: calibrate with the same plan options
    result = _calibrate(
        "--epsilon", "6", "--data", "digits", "--image-size", "8", "--clients", "3",
        "--seed", "5", "--batch-size", "32", "--rounds", "2", "--max-client-size", "150", "--strategy", "fedrep",
        "--head-epochs", "2", "--warm-start", "none")
    # Assert: each client's sigma and planned steps are the ones its ledger recorded
    assert result.exit_code == 0, result.output
    for client in ledger.values():
        sigma = client["entries"][0]["mechanism"]["noise_multiplier"]
        steps = sum(e["mechanism"]["steps"] for e in client["entries"])
        assert f"{sigma:.5g}" in result.output
        assert f" {steps} " in result.output  # every planned step ran (2 rounds x (2 head + 1 body) epochs)
    plans = plan_dp_sgd(config, {i: len(c) for i, c in enumerate(load_federated_data(config).clients)})
    assert all(p.num_records == 150 and p.steps_per_round == 3 * 5 for p in plans.values())



def test_calibrate_prints_the_central_and_dp_sgd_noise_a_warm_started_train_records(tmp_path):
    # Prepare: a run warm-started on central images (their release and DP-SGD share epsilon)
    config = TrainConfig(data="digits", image_size=8, preset="tiny", num_clients=2, alpha=1.0, batch_size=64,
                         max_client_size=200, num_train_timesteps=50, rounds=1, local_steps=2, epsilon=8.0,
                         warm_start="central", warm_start_steps=3).validate()
    run = train(config, tmp_path / "run")
    ledger = json.loads((run.last_round_dir / "ledger.json").read_text())["clients"]
    # Execute: calibrate's default is train's recipe under --epsilon
    result = _calibrate("--epsilon", "8", "--data", "digits", "--image-size", "8", "--clients", "2", "--alpha", "1.0",
                        "--batch-size", "64", "--rounds", "1", "--max-client-size", "200", "--local-steps", "2")
    # Assert: the central release's sigma and DP-SGD's, as the ledger recorded them
    assert result.exit_code == 0, result.output
    for client in ledger.values():
        for entry in client["entries"]:
            assert f"{entry['mechanism']['noise_multiplier']:.5g}" in result.output


def test_calibrate_refuses_a_plan_train_would_refuse_with_one_line():
    register_subcommands()
    result = CliRunner().invoke(app, ["privacy", "calibrate", "--epsilon", "6", "--n", "20", "--batch-size", "64"])
    assert result.exit_code == 2
    assert "fewer than --batch-size 64" in result.output
