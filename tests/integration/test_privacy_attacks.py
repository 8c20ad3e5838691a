"""Tests an adversary would run: a curious server that knows the run's
configuration, its seed and every message; another client; a holder of the
run's shared files. Each attack must fail; where it helps, a control with the
secret in hand shows the same attack succeeding, so the test could fail."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthfed.config import TrainConfig
from synthfed.federated.setup import build_strategy, derive_seed, initial_state, local_training
from synthfed.federated.client import client_round
from synthfed.flower.node import NodeError, NodeStore, NodeTrainer, describe, node_dataset
from synthfed.privacy.forward_noise import clip_images
from synthfed.privacy.noise_keys import NODE_KEY_FILE, NoiseKey, simulation_keys_path
from synthfed.privacy.training import PrivateTraining
from synthfed.training import load_federated_data, train

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            rounds=1, seed=3)
PFDM = dict(TINY, num_train_timesteps=1000, strategy="pfdm", epsilon=1.0)


def _node(tmp_path, config, *, name="run", t0=None, max_epsilon=None):
    data = node_dataset(config, partition_id=0)
    return NodeTrainer(config, data, client_id=0, store=NodeStore(tmp_path, name), t0=t0, max_epsilon=max_epsilon), data


def _pfdm_t0(config) -> int:
    from synthfed.privacy.planner import plan_t0

    fed = load_federated_data(config)
    return plan_t0(config, [len(c) for c in fed.clients], fed.clients[0].image_shape,
                   config.schedule().alphas_cumprod())[0]


def _reconstruct(upload, noise, alpha_bar):
    return (upload - math.sqrt(1 - alpha_bar) * noise) / math.sqrt(alpha_bar)


def test_a_server_knowing_the_seed_cannot_undo_the_noise_of_a_pfdm_upload(tmp_path):
    # Prepare: a node uploads at epsilon=1; the server knows config, seed, t0 and the upload
    config = TrainConfig(**PFDM, public_labels=True).validate()
    t0 = _pfdm_t0(config)
    node, data = _node(tmp_path, config, t0=t0)
    upload, _ = node.upload()
    images, _ = data.to_tensor()
    truth = clip_images(images, node.clip)
    alpha_bar = node.alpha_bar_t0
    noise_std = math.sqrt((1 - alpha_bar) / alpha_bar)
    # Execute: the server regenerates "the" noise every way the public seed allows
    guesses = [torch.Generator().manual_seed(derive_seed(config.seed, 0, 0)),
               torch.Generator().manual_seed(config.seed), torch.Generator().manual_seed(0)]
    errors = [(_reconstruct(upload, torch.randn(upload.shape, generator=g), alpha_bar) - truth).pow(2).mean().sqrt()
              for g in guesses]
    # Assert: every reconstruction is off by the order of the noise std (sqrt 2 of it: two independent draws)
    assert noise_std > 10
    for err in errors:
        assert 0.5 * noise_std < float(err) < 2.0 * noise_std
    # Control: with the node's secret key the same attack is exact, so the test above can fail
    key = node.noise_key
    exact = _reconstruct(upload, torch.randn(upload.shape, generator=key.generator("pfdm-upload", 0)), alpha_bar)
    assert float((exact - truth).abs().max()) < 1e-3


def test_randomized_response_labels_are_recovered_no_better_than_the_keep_rate(tmp_path):
    # Prepare: labels protected by k-ary randomized response at epsilon_label = 0.5 (k = 10)
    config = TrainConfig(**{**PFDM, "epsilon": 2.0}, label_epsilon=0.5).validate()
    t0 = _pfdm_t0(config)
    node, data = _node(tmp_path, config, t0=t0)
    _, reported = node.upload()
    _, labels = data.to_tensor()
    keep = math.exp(0.5) / (math.exp(0.5) + 9)
    # Execute: the server replays the RR coins from the public seed and inverts them
    gen = torch.Generator().manual_seed(derive_seed(config.seed, 0, 0))
    torch.randn((len(labels), 1, 8, 8), generator=gen)  # the noise drawn before the coins
    kept = torch.rand(labels.shape, generator=gen) < keep
    shift = torch.randint(1, 10, labels.shape, generator=gen)
    guess = torch.where(kept, reported, (reported - shift) % 10)
    # Assert: the replayed guess and the plain reported label are both at the keep rate (4 sd)
    n = len(labels)
    sd = math.sqrt(keep * (1 - keep) / n)
    for attempt in (guess, reported):
        assert float((attempt == labels).float().mean()) < keep + 4 * sd


def test_two_dp_runs_with_the_same_seed_release_different_weights(tmp_path):
    # Prepare
    config = TrainConfig(**TINY, epsilon=8.0).validate()
    # Execute
    a, b = train(config, tmp_path / "a"), train(config, tmp_path / "b")
    # Assert: same public seed, different secret keys, different released weights
    wa = load_file(str(a.last_round_dir / "global/model/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(b.last_round_dir / "global/model/diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    assert simulation_keys_path(a.run_dir).read_bytes() != simulation_keys_path(b.run_dir).read_bytes()


def _key_needles(keys: list[NoiseKey]) -> list[bytes]:
    return [n for k in keys for n in (k.hex().encode(), bytes.fromhex(k.hex()), k.hex().upper().encode())]


def _files_holding(root: Path, needles: list[bytes], *, skip: Path | None = None) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and (skip is None or skip not in path.parents):
            blob = path.read_bytes()
            if any(n in blob for n in needles):
                hits.append(path)
    return hits


def test_no_key_bytes_outside_the_private_state_and_the_key_file_is_owner_only(tmp_path):
    # Prepare: a DP run, a dataset generated from it
    from synthfed.generation import generate_dataset, load_generator
    from synthfed.privacy.noise_keys import load_or_create_simulation_keys

    config = TrainConfig(**TINY, epsilon=8.0).validate()
    run = train(config, tmp_path / "run")
    dataset = generate_dataset(load_generator(run.run_dir), tmp_path / "data", per_class=1, num_steps=2)
    keys = list(load_or_create_simulation_keys(run.run_dir, range(2), create=False).values())
    private = simulation_keys_path(run.run_dir).parent
    # Execute: scan every shared file of the run and every released file
    hits = _files_holding(run.run_dir, _key_needles(keys), skip=private) + _files_holding(dataset, _key_needles(keys))
    # Assert
    assert hits == []
    assert _files_holding(private, _key_needles(keys)) != []  # the scan finds a key where one is
    assert simulation_keys_path(run.run_dir).stat().st_mode & 0o777 == 0o600
    assert private.stat().st_mode & 0o777 == 0o700
    assert not any("key" in k for k in json.loads((run.run_dir / "run.json").read_text())["config"])


def test_flower_messages_carry_no_key_and_no_hash_of_the_data(tmp_path):
    pytest.importorskip("flwr")
    from flower_loopback import LoopbackGrid
    from flwr.app import Context, RecordDict

    from synthfed.flower.client_app import app as client_app
    from synthfed.flower.run_config import FlowerOptions
    from synthfed.flower.server import FlowerServer

    # Prepare
    config = TrainConfig(**TINY, epsilon=8.0).validate()
    grid = LoopbackGrid(client_app, {101 + i: {"partition-id": i, "state-dir": str(tmp_path / f"node{i}")}
                                     for i in range(2)})
    options = FlowerOptions(run_dir=str(tmp_path / "server"), run_name="demo", node_wait=5).validate(config)
    # Execute
    FlowerServer(grid, config, options, context=Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                        run_config={})).run()
    # Assert: no message in either direction holds a node key or its data's hash
    keys = [NoiseKey(bytes.fromhex(json.loads((tmp_path / f"node{i}" / "demo" / NODE_KEY_FILE).read_text())["key"]))
            for i in range(2)]
    fingerprints = [node_dataset(config, partition_id=i).fingerprint() for i in range(2)]
    needles = _key_needles(keys) + [f.encode() for f in fingerprints]
    for msg in grid.sent + grid.replies:
        blob = repr(msg.content).encode()
        for arrays in msg.content.array_records.values():
            blob += b"".join(bytes(a.data) for a in arrays.values())
        assert not any(n in blob for n in needles)
    assert _files_holding(tmp_path / "server", needles) == []
    assert set(describe(node_dataset(config, partition_id=0), 0)) == {
        "client-id", "num-examples", "channels", "height", "width", "class-names"}


def _one_round_epsilon(ledger) -> float:
    from synthfed.privacy.accountant import compute_epsilon

    return compute_epsilon([ledger.entries[0].mechanism], delta=ledger.delta).epsilon_upper


def test_a_dp_sgd_round_asked_again_is_the_same_release_or_a_counted_one(tmp_path):
    # Prepare: a node planned for 2 rounds, and the server's weights for round 1
    config = TrainConfig(**{**TINY, "rounds": 2}, epsilon=8.0).validate()
    node, _ = _node(tmp_path, config)
    init = {k: node.init[k] for k in node.shared_keys}
    ledger = node.ledger
    # Execute: the same request twice, then the same round with other weights
    first = node.train(1, init, init)
    again = node.train(1, init, init)
    entries_after_repeat = len(ledger.entries)
    other = {k: v + 0.01 for k, v in init.items()}
    third = node.train(1, other, other)
    # Assert: a repeat is the same release and not counted; other inputs are a new, counted release
    assert all(torch.equal(first["state"][k], again["state"][k]) for k in first["state"])
    assert entries_after_repeat == 1
    assert len(ledger.entries) == 2 and ledger.entries[0].inputs != ledger.entries[1].inputs
    assert third is not None and ledger.spent().epsilon_upper > _one_round_epsilon(ledger)
    # and a fresh node object (a restarted process) counts what the first one committed
    restarted, _ = _node(tmp_path, config)
    assert len(restarted.ledger.entries) == 2


def test_a_pfdm_upload_asked_again_is_the_same_and_asked_at_another_t0_is_refused(tmp_path):
    # Prepare
    config = TrainConfig(**PFDM, public_labels=True).validate()
    t0 = _pfdm_t0(config)
    node, _ = _node(tmp_path, config, t0=t0)
    # Execute
    a, _ = node.upload()
    b, _ = _node(tmp_path, config, t0=t0)[0].upload()  # a restarted node asked again
    # Assert: the same tensors, recorded once
    assert torch.equal(a, b)
    assert len(_node(tmp_path, config, t0=t0)[0].ledger.entries) == 1
    # A server asking the same node for an upload at another t0 gets a refusal: two uploads of
    # the same images with independent noise would exceed the node's epsilon
    later = config.replace(epsilon=None, t0=t0 - 50)
    store_dir = tmp_path / "run"
    raw = json.loads((store_dir / "node.json").read_text())
    raw["config"] = later.to_dict()  # the node serves the re-configured run from the same state
    (store_dir / "node.json").write_text(json.dumps(raw))
    with pytest.raises(NodeError, match="second upload"):
        _node(tmp_path, later, t0=t0 - 50)[0].upload()


def test_in_the_simulation_a_round_redone_with_other_inputs_gets_fresh_noise_and_is_counted(tmp_path):
    # Prepare: the simulation's client code for client 0, round 1 of 2
    config = TrainConfig(**{**TINY, "rounds": 2}, epsilon=8.0).validate()
    fed = load_federated_data(config)
    privacy = PrivateTraining.plan(config, fed)
    from synthfed.federated.setup import model_spec_for

    spec = model_spec_for(config, fed)
    model, init = initial_state(config, spec)
    plan = local_training(config, spec, build_strategy(config, 2, list(init)))
    images, labels = fed.clients[0].to_tensor()
    key = NoiseKey.generate()

    def run(state):
        return client_round(model, config=config, plan=plan, cid=0, server_round=1, state=state, ema=state,
                            ema_step=0, images=images, labels=labels, alphas_cumprod=config.schedule().alphas_cumprod(),
                            device=torch.device("cpu"), noise_key=key, privacy=privacy)

    # Execute
    a, b = run(init), run(init)
    c = run({k: v + 0.01 for k, v in init.items()})
    # Assert
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    entries = privacy.ledger.clients["0"].entries
    assert c is not None and len(entries) == 2 and len({e.inputs for e in entries}) == 2
    # a third release would exceed the 2-round budget: refused, not released
    assert run({k: v + 0.02 for k, v in init.items()}) is None and len(entries) == 2


def test_every_printed_epsilon_is_an_independent_replace_one_recomputation(tmp_path):
    # Prepare: a DP run; the ledger's figures, the card's and `privacy report --json`
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from typer.testing import CliRunner

    from synthfed.cli.app import app, register_subcommands
    from synthfed.generation import generate_dataset, load_generator
    from synthfed.privacy.accountant import ADJACENCY

    config = TrainConfig(**TINY, epsilon=8.0).validate()
    run = train(config, tmp_path / "run")
    ledger = json.loads((run.last_round_dir / "ledger.json").read_text())
    dataset = generate_dataset(load_generator(run.run_dir), tmp_path / "data", per_class=1, num_steps=2)
    card = json.loads((dataset / "card.json").read_text())
    register_subcommands()
    report = CliRunner().invoke(app, ["privacy", "report", str(run.run_dir), "--json"])
    assert report.exit_code == 0, report.output
    printed = {str(r["client"]): r["eps_upper"] for r in json.loads(report.output)}
    # Execute: dp-accounting's own accountant, replace-one, from the ledger entries
    for cid, client in ledger["clients"].items():
        acc = pld_privacy_accountant.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE,
                                                   value_discretization_interval=1e-4)
        for e in client["entries"]:
            m = e["mechanism"]
            acc.compose(dp_accounting.PoissonSampledDpEvent(m["sampling_rate"],
                                                            dp_accounting.GaussianDpEvent(m["noise_multiplier"])),
                        m["steps"])
        independent = acc.get_epsilon(client["delta"])
        # Assert: the report and the card state that figure (up to the discretization) under replace-one
        assert printed[cid] == pytest.approx(independent, rel=0.02, abs=0.02)
        assert printed[cid] >= independent - 1e-3  # an upper bound, never below the fine figure
        card_row = next(r for r in card["privacy"]["clients"] if str(r["client"]) == cid)
        assert card_row["eps_upper"] == pytest.approx(printed[cid])
    assert ledger.get("adjacency") == ADJACENCY == "replace-one"
    assert "replace-one" in report.output or "replace-one" in json.dumps(card)
