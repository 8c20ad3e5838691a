"""DP-SGD training end to end: the ledger states what ran, survives resume, and stops clients at their budget."""

import json

import pytest
import torch
from opacus.accountants import PRVAccountant as OpacusPRV
from safetensors.torch import load_file

from shared_keys import copy_simulation_keys
from synthfed.config import TrainConfig
from synthfed.federated.simulation import run_simulation
from synthfed.privacy.accountant import compute_epsilon
from synthfed.privacy.ledger import PrivacyLedger
from synthfed.privacy.training import PrivateTraining
from synthfed.progress import RecordingProgress
from synthfed.training import load_federated_data, train

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=3, alpha=1.0, batch_size=64, max_client_size=250,
            num_train_timesteps=50, epsilon=8.0)


def _ledger(round_dir):
    return PrivacyLedger.from_dict(json.loads((round_dir / "ledger.json").read_text()))


def test_full_participation_spends_the_calibrated_budget_exactly(tmp_path):
    # Prepare
    config = TrainConfig(**TINY, rounds=2).validate()
    # Execute
    result = train(config, tmp_path / "r")
    ledger = _ledger(result.last_round_dir)
    # Assert: each client took every planned step; the accountant's upper bound is
    # at most the target and within the accountant's error of it
    for cid, client in ledger.clients.items():
        (mech,) = client.mechanisms()
        n = client.num_records
        assert mech.sampling_rate == pytest.approx(64 / n)
        assert mech.steps == 2 * -(-n // 64)
        spent = client.spent()
        assert spent.epsilon_upper <= 8.0
        assert spent.epsilon_upper > 8.0 - 0.1
        assert client.delta == pytest.approx(1 / (10 * n))
        # the ledger's figure is the replace-one accountant on the recorded mechanism, and it never
        # undercuts the add/remove figure of an independent accountant (Opacus's PRV) for it
        direct = compute_epsilon([mech], delta=client.delta)
        assert direct.epsilon_upper == pytest.approx(spent.epsilon_upper)
        assert "replace-one" in spent.accountant
        add_remove = OpacusPRV()
        add_remove.history = [(mech.noise_multiplier, mech.sampling_rate, mech.steps)]
        assert add_remove.get_epsilon(delta=client.delta, eps_error=0.01) < spent.epsilon_estimate


def test_ledger_after_resume_equals_the_uninterrupted_ledger(tmp_path):
    config = TrainConfig(**TINY, rounds=3, participation=2).validate()
    full = train(config, tmp_path / "full")
    copy_simulation_keys(tmp_path / "full", tmp_path / "crash")  # the same secret noise, as a backup restores
    train(config, tmp_path / "crash", stop_after_round=1)
    resumed = train(config, tmp_path / "crash", resume=True)
    a, b = _ledger(full.last_round_dir), _ledger(resumed.last_round_dir)
    assert a.to_dict() == b.to_dict()
    wa = load_file(str(full.last_round_dir / "global/model/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(resumed.last_round_dir / "global/model/diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_partial_participation_spends_only_on_rounds_trained(tmp_path):
    config = TrainConfig(**TINY, rounds=3, participation=0.34).validate()  # one client a round
    result = train(config, tmp_path / "r")
    ledger = _ledger(result.last_round_dir)
    for cid, client in ledger.clients.items():
        trained = [h["round"] for h in result.history if cid in h["clients"]]
        assert client.rounds_participated() == trained
        steps = sum(m.steps for m in client.mechanisms())
        assert steps == len(trained) * -(-client.num_records // 64)
    assert any(c.spent().epsilon_upper < 7.0 for c in ledger.clients.values())


def test_a_client_stops_before_a_round_that_would_exceed_its_budget(tmp_path):
    # Prepare: noise calibrated for 1 round, then the run is extended to 2
    config = TrainConfig(**TINY, rounds=1).validate()
    fed = load_federated_data(config)
    privacy = PrivateTraining.plan(config, fed)
    run_simulation(config, fed, tmp_path / "r", privacy=privacy)
    progress = RecordingProgress()
    # Execute
    result = run_simulation(config.replace(rounds=2), fed, tmp_path / "r", resume=True, privacy=privacy, progress=progress)
    # Assert: nobody trained in round 2, each client said so, spending unchanged
    assert result.history[-1]["clients"] == {}
    assert sum("privacy budget is spent" in m for m in progress.messages()) == 3
    for client in _ledger(result.last_round_dir).clients.values():
        assert client.rounds_participated() == [1]
        assert client.spent().epsilon_upper <= 8.0


def test_noise_multiplicity_trains_and_is_free_in_privacy(tmp_path):
    base = TrainConfig(**{**TINY, "num_clients": 1}, strategy="centralized", rounds=1).validate()
    one = _ledger(train(base, tmp_path / "m1").last_round_dir)
    four = _ledger(train(base.replace(noise_multiplicity=4), tmp_path / "m4").last_round_dir)
    assert one.to_dict() == four.to_dict()


def test_resume_of_a_private_run_without_ledger_is_refused(tmp_path):
    config = TrainConfig(**TINY, rounds=2).validate()
    result = train(config, tmp_path / "r", stop_after_round=1)
    (result.last_round_dir / "ledger.json").unlink()
    with pytest.raises(RuntimeError, match="ledger"):
        train(config, tmp_path / "r", resume=True)


def test_generated_dataset_states_the_ledger_epsilon(tmp_path):
    from synthfed.generation import generate_dataset, load_generator

    result = train(TrainConfig(**TINY, rounds=1).validate(), tmp_path / "r")
    gen = load_generator(result.run_dir)
    out = generate_dataset(gen, tmp_path / "g", per_class=1, num_steps=2)
    card = json.loads((out / "card.json").read_text())
    assert card["privacy"]["differentially_private"] is True
    ledger = _ledger(result.last_round_dir)
    assert [r["eps_upper"] for r in card["privacy"]["clients"]] == [c.spent().epsilon_upper for c in ledger.clients.values()]


def test_a_model_folder_inside_a_private_run_keeps_its_guarantee(tmp_path):
    from synthfed.generation import load_generator

    result = train(TrainConfig(**TINY, rounds=1).validate(), tmp_path / "r")
    gen = load_generator(result.last_round_dir / "global" / "ema")
    assert gen.privacy["differentially_private"] is True
    assert len(gen.privacy["clients"]) == 3
