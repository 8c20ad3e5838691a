"""Privacy ledger: what a client spent must survive JSON, crashes and skipped rounds."""

import json
import os

import pytest

from synthfed.privacy.accountant import ADJACENCY, Gaussian, RandomizedResponse, SubsampledGaussian, compute_epsilon
from synthfed.privacy.calibration import analytic_gaussian_epsilon, find_noise_multiplier
from synthfed.privacy.ledger import LEDGER_FORMAT, ClientLedger, PrivacyLedger

DELTA = 1e-5
SIGMA, Q, STEPS_PER_ROUND = 1.2, 0.02, 50


def round_mechanism(steps=STEPS_PER_ROUND, sigma=SIGMA):
    return SubsampledGaussian(noise_multiplier=sigma, sampling_rate=Q, steps=steps)


def make_ledger(rounds_by_client, budget=8.0):
    ledger = PrivacyLedger(clients={
        cid: ClientLedger(client_id=cid, num_records=500, delta=DELTA, epsilon_budget=budget)
        for cid in rounds_by_client
    })
    for cid, rounds in rounds_by_client.items():
        for r in rounds:
            ledger.clients[cid].record(round_mechanism(), round=r, note="DP-SGD local training")
    return ledger


def test_json_round_trip():
    # Prepare
    ledger = make_ledger({"0": [1, 2], "1": [2]})
    ledger.clients["1"].record(Gaussian(4.0), round=2, note="PFDM upload")
    ledger.clients["1"].record(RandomizedResponse(2.0), round=2, note="labels")
    ledger.clients["2"] = ClientLedger(client_id="2", num_records=10, delta=DELTA, epsilon_budget=None)

    # Execute
    stored = json.loads(json.dumps(ledger.to_dict()))
    back = PrivacyLedger.from_dict(stored)

    # Assert
    assert back == ledger
    assert stored["format"] == LEDGER_FORMAT == 2 and stored["adjacency"] == ADJACENCY == "replace-one"
    assert back.clients["1"].spent() == ledger.clients["1"].spent()
    assert back.clients["2"].epsilon_budget is None


def format_1_ledger():
    """A ledger as format 1 wrote it: PFDM's Gaussian noise multiplier was std / (2C), no adjacency field."""
    entries = [
        {"round": 1, "mechanism": {"kind": "subsampled_gaussian", "noise_multiplier": 1.2, "sampling_rate": 0.02,
                                   "steps": 50}, "note": "DP-SGD local training"},
        {"round": 1, "mechanism": {"kind": "gaussian", "noise_multiplier": 2.0, "count": 1}, "note": "PFDM upload"},
        {"round": 1, "mechanism": {"kind": "randomized_response", "epsilon": 1.0, "count": 1}, "note": "labels"},
    ]
    client = {"client_id": "0", "num_records": 500, "delta": DELTA, "epsilon_budget": 10.0, "entries": entries}
    return {"format": 1, "clients": {"0": client}}


def test_format_1_ledger_is_converted_and_re_accounted_under_replace_one():
    # Prepare
    old = format_1_ledger()

    # Execute
    ledger = PrivacyLedger.from_dict(old)
    upload = ledger.clients["0"].entries[1].mechanism
    resaved = ledger.to_dict()

    # Assert: std/(2C) = 2.0 is std/C = 4.0; DP-SGD and labels unchanged; the upload's epsilon is the
    # exact Gaussian at std / distance 2.0, as format 1 meant it
    assert upload == Gaussian(4.0)
    assert ledger.clients["0"].entries[0].mechanism == SubsampledGaussian(1.2, 0.02, 50)
    assert ledger.clients["0"].entries[2].mechanism == RandomizedResponse(1.0)
    exact = analytic_gaussian_epsilon(noise_multiplier=2.0, delta=DELTA)
    assert exact <= compute_epsilon([upload], delta=DELTA).epsilon_upper <= exact + 0.01
    assert resaved["format"] == 2 and resaved["adjacency"] == "replace-one"
    assert resaved["clients"]["0"]["entries"][1]["mechanism"]["noise_multiplier"] == 4.0
    assert PrivacyLedger.from_dict(json.loads(json.dumps(resaved))) == ledger  # no second doubling
    assert old["clients"]["0"]["entries"][1]["mechanism"]["noise_multiplier"] == 2.0  # input left untouched


def test_crash_after_round_two_then_resume_equals_uninterrupted(tmp_path):
    # Prepare
    uninterrupted = make_ledger({"0": [1, 2, 3, 4], "1": [1, 2, 3, 4]})
    before_crash = make_ledger({"0": [1, 2], "1": [1, 2]})
    before_crash.save(tmp_path / "ledger.json")

    # Execute
    resumed = PrivacyLedger.load(tmp_path / "ledger.json")
    for r in (3, 4):
        for cid in ("0", "1"):
            resumed.clients[cid].record(round_mechanism(), round=r, note="DP-SGD local training")

    # Assert
    assert resumed.to_dict() == uninterrupted.to_dict()
    for cid in ("0", "1"):
        assert resumed.clients[cid].spent() == uninterrupted.clients[cid].spent()


def test_partial_participation_spends_only_for_rounds_trained():
    # Prepare
    ledger = make_ledger({"always": [1, 2, 3, 4], "sometimes": [1, 3]})

    # Execute
    always, sometimes = ledger.clients["always"], ledger.clients["sometimes"]

    # Assert
    assert sometimes.rounds_participated() == [1, 3]
    assert sometimes.mechanisms() == [round_mechanism(steps=2 * STEPS_PER_ROUND)]
    assert sometimes.spent() == compute_epsilon([round_mechanism(steps=2 * STEPS_PER_ROUND)], delta=DELTA)
    assert sometimes.spent().epsilon_upper < always.spent().epsilon_upper


def test_same_mechanism_twice_in_a_round_composes():
    # Prepare
    client = ClientLedger(client_id="0", num_records=500, delta=DELTA, epsilon_budget=None)

    # Execute
    client.record(round_mechanism(), round=1)
    client.record(round_mechanism(), round=1)

    # Assert
    assert len(client.entries) == 2
    assert client.mechanisms() == [round_mechanism(steps=2 * STEPS_PER_ROUND)]
    assert client.rounds_participated() == [1]


def test_would_exceed_against_a_calibrated_budget():
    # Prepare: calibrate for 4 rounds, record 3
    budget = 2.0
    sigma = find_noise_multiplier(target_epsilon=budget, delta=DELTA, sampling_rate=Q, steps=4 * STEPS_PER_ROUND)
    client = ClientLedger(client_id="0", num_records=500, delta=DELTA, epsilon_budget=budget)
    for r in (1, 2, 3):
        client.record(round_mechanism(sigma=sigma), round=r)
    unlimited = ClientLedger(client_id="1", num_records=500, delta=DELTA, epsilon_budget=None)

    # Execute
    fourth_fits = not client.would_exceed([round_mechanism(sigma=sigma)])
    client.record(round_mechanism(sigma=sigma), round=4)
    fifth_fits = not client.would_exceed([round_mechanism(sigma=sigma)])

    # Assert
    assert fourth_fits
    assert client.spent().epsilon_upper <= budget
    assert not fifth_fits
    assert not unlimited.would_exceed([round_mechanism(sigma=0.5, steps=10_000)])


def test_atomic_save_leaves_no_temp_files(tmp_path):
    # Prepare
    ledger = make_ledger({"0": [1]})

    # Execute
    ledger.save(tmp_path / "ledger.json")
    ledger.save(tmp_path / "ledger.json")

    # Assert
    assert os.listdir(tmp_path) == ["ledger.json"]
    assert PrivacyLedger.load(tmp_path / "ledger.json") == ledger


def test_crash_during_write_keeps_previous_file(tmp_path, monkeypatch):
    # Prepare
    path = tmp_path / "ledger.json"
    old = make_ledger({"0": [1]})
    old.save(path)
    new = make_ledger({"0": [1, 2]})

    def crash(*args, **kwargs):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)

    # Execute
    with pytest.raises(OSError, match="simulated crash"):
        new.save(path)

    # Assert
    monkeypatch.undo()
    assert PrivacyLedger.load(path) == old
    assert os.listdir(tmp_path) == ["ledger.json"]


def test_table_rows():
    # Prepare
    ledger = make_ledger({"0": [1, 2], "1": []})
    ledger.clients["1"].record(Gaussian(3.0), round=1)

    # Execute
    rows = {row["client"]: row for row in ledger.table()}

    # Assert
    assert rows["0"]["sigma"] == SIGMA and rows["0"]["q"] == Q and rows["0"]["steps"] == 2 * STEPS_PER_ROUND
    assert rows["0"]["eps_upper"] == ledger.clients["0"].spent().epsilon_upper
    assert rows["0"]["budget"] == 8.0 and rows["0"]["delta"] == DELTA and rows["0"]["n"] == 500
    assert rows["1"]["sigma"] is None and rows["1"]["steps"] == 0 and "Gaussian" in rows["1"]["mechanisms"]
    assert rows["0"]["eps_lower"] <= rows["0"]["eps_estimate"] <= rows["0"]["eps_upper"]
    assert rows["0"]["unit"] == rows["1"]["unit"] == "replace-one"
    assert "replace-one" in rows["0"]["accountant"]
    json.dumps(ledger.table())  # cards embed the table


def test_bad_ledger_data_is_refused():
    with pytest.raises(ValueError, match="format 99"):
        PrivacyLedger.from_dict({"format": 99, "adjacency": "replace-one", "clients": {}})
    with pytest.raises(ValueError, match="format None"):  # no format: the unit of its noise is unknown
        PrivacyLedger.from_dict({"clients": {}})
    with pytest.raises(ValueError, match="adjacency 'add/remove'"):
        PrivacyLedger.from_dict({"format": 2, "adjacency": "add/remove", "clients": {}})
    with pytest.raises(ValueError, match="adjacency None"):
        PrivacyLedger.from_dict({"format": 2, "clients": {}})
    entry = {"round": 1, "mechanism": {"kind": "unknown"}, "note": ""}
    client = {"client_id": "0", "num_records": 1, "delta": 0.1, "epsilon_budget": None, "entries": [entry]}
    bad = {"format": 2, "adjacency": "replace-one", "clients": {"0": client}}
    with pytest.raises(ValueError, match="unknown mechanism"):
        PrivacyLedger.from_dict(bad)
    with pytest.raises(TypeError):
        ClientLedger(client_id="0", num_records=1, delta=0.1, epsilon_budget=None).record("sgd", round=1)
