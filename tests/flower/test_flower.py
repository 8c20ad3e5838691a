"""The Flower ServerApp/ClientApp logic against the in-process simulation.

Messages go through ``LoopbackGrid`` (deep-copied, as over the wire) to the
real ClientApp; ``test_flower_deployment.py`` does the same with SuperLink and
SuperNode processes. Reference: ``synthfed train`` with the same seeds."""

from __future__ import annotations

import glob
import json

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from flower_loopback import LoopbackGrid  # noqa: E402
from shared_keys import give_nodes_simulation_keys  # noqa: E402
from synthfed.config import ConfigError, TrainConfig  # noqa: E402
from synthfed.federated.setup import build_strategy  # noqa: E402
from synthfed.flower.client_app import app as client_app  # noqa: E402
from synthfed.flower.node import NodeError, NodeStore, NodeTrainer, node_dataset  # noqa: E402
from synthfed.flower.run_config import FlowerOptions, from_run_config, to_run_config  # noqa: E402
from synthfed.flower.server import FlowerServer, RoundFailed  # noqa: E402
from synthfed.training import train  # noqa: E402

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            rounds=2, seed=3)


def _weights(round_dir, which="ema"):
    return load_file(f"{round_dir}/global/{which}/diffusion_pytorch_model.safetensors")


def _flower(tmp_path, config, *, secagg=False, min_clients=1, resume=False, grid=None):
    grid = grid or _grid(tmp_path, config.num_clients)
    if (tmp_path / "sim" / "private").is_dir():
        # Compared with a simulation: each node gets that client's secret noise key
        # (as restoring a node's backup would); every other run makes its own.
        give_nodes_simulation_keys(tmp_path / "sim", {cid: tmp_path / f"node{cid}" / "demo"
                                                      for cid in range(config.num_clients)})
    options = FlowerOptions(run_dir=str(tmp_path / "server"), run_name="demo", node_wait=5, secagg=secagg,
                            min_clients=min_clients, resume=resume).validate(config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return grid, FlowerServer(grid, config, options, context=context).run()


def _node_ledger(tmp_path, cid):
    return json.loads((tmp_path / f"node{cid}" / "demo" / "node.json").read_text())["ledger"]["clients"][str(cid)]


def _sim_ledger(result, cid):
    return json.loads((result.last_round_dir / "ledger.json").read_text())["clients"][str(cid)]


def _shared_keys(config, weights):
    strategy = build_strategy(config, config.num_clients, list(weights))
    return [k for k in weights if strategy.is_shared(k)]


def test_flower_run_equals_the_simulation_with_dp_sgd_local_heads_and_the_same_ledgers(tmp_path):
    # Prepare (FedAvg with DP-SGD is also checked across real processes in test_flower_deployment.py)
    config = TrainConfig(**TINY, strategy="fedper", epsilon=8.0).validate()
    sim = train(config, tmp_path / "sim")
    # Execute
    _, result = _flower(tmp_path, config)
    # Assert: shared weights, each node's local head and each ledger are the simulation's, bit for bit
    a, b = _weights(sim.last_round_dir), _weights(result["last_round_dir"])
    for k in _shared_keys(config, a):
        assert torch.equal(a[k], b[k]), k
    for cid in range(2):
        assert _node_ledger(tmp_path, cid) == _sim_ledger(sim, cid)
        sim_local = sim.last_round_dir / "clients" / f"client-{cid:02d}.safetensors"
        if sim_local.exists():
            node_local = load_file(sorted(glob.glob(str(tmp_path / f"node{cid}" / "demo" / "local" / "*")))[-1])
            ref = load_file(str(sim_local))
            assert ref.keys() == node_local.keys() and all(torch.equal(ref[k], node_local[k]) for k in ref)
    info = json.loads((tmp_path / "server" / "run.json").read_text())
    assert info["engine"] == "flower" and [c["n"] for c in info["clients"]] == [c["n"] for c in
                                                                                   json.loads((tmp_path / "sim" / "run.json").read_text())["clients"]]
    assert not (tmp_path / "server" / "rounds" / "round-0002" / "ledger.json").exists()  # ledgers stay on the nodes


def test_pfdm_with_local_dp_sgd_on_flower_equals_the_simulation(tmp_path):
    # Round 1 holds two releases per client (the upload and DP-SGD steps): both must be counted.
    config = TrainConfig(**{**TINY, "num_train_timesteps": 1000}, strategy="pfdm", epsilon=8.0,
                         public_labels=True, local_epsilon=8.0).validate()
    sim = train(config, tmp_path / "sim")
    _, result = _flower(tmp_path, config)
    a, b = _weights(sim.last_round_dir), _weights(result["last_round_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    for cid in range(2):
        assert _node_ledger(tmp_path, cid) == _sim_ledger(sim, cid)
        ref = load_file(str(sim.last_round_dir / "clients" / f"client-{cid:02d}.safetensors"))
        node_local = load_file(sorted(glob.glob(str(tmp_path / f"node{cid}" / "demo" / "local" / "*")))[-1])
        assert all(torch.equal(ref[k], node_local[k]) for k in ref)


def _grid(tmp_path, n=2, extra=None):
    return LoopbackGrid(client_app, {101 + i: {"partition-id": i, "state-dir": str(tmp_path / f"node{i}"),
                                               **(extra or {}).get(i, {})} for i in range(n)})


def test_secagg_average_is_within_its_quantization_step_and_the_server_sees_no_single_update(tmp_path):
    # One round: the average itself, before later training amplifies its rounding.
    config = TrainConfig(**{**TINY, "rounds": 1}, strategy="fedavg").validate()
    sim = train(config, tmp_path / "sim")
    grid = _grid(tmp_path)
    _, result = _flower(tmp_path, config, secagg=True, grid=grid)
    a, b = _weights(sim.last_round_dir), _weights(result["last_round_dir"])
    # Each client's weighted update is rounded to 2*clip/2**22 (clip 8); the
    # sum is then divided by the (quantized) total weight.
    step = 2 * 8.0 / 2**22
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < worst <= 2 * step
    train_replies = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert train_replies and all(
        sum(len(rec) for rec in r.content.array_records.values()) == 0 for r in train_replies)


def test_a_node_failing_mid_run_does_not_stop_the_round_and_its_ledger_counts_what_it_ran(tmp_path):
    config = TrainConfig(**{**TINY, "rounds": 3}, strategy="fedavg", epsilon=8.0).validate()
    grid = _grid(tmp_path)
    grid.fail_rounds[101] = {2, 3}
    _, result = _flower(tmp_path, config, grid=grid)
    history = result["history"]
    assert [h["replied"] for h in history] == [[0, 1], [1], [1]]
    assert "crashed" in history[1]["failed"]["0"]
    assert [e["round"] for e in _node_ledger(tmp_path, 0)["entries"]] == [1]
    assert [e["round"] for e in _node_ledger(tmp_path, 1)["entries"]] == [1, 2, 3]


def test_too_few_replies_stop_the_run_and_resume_neither_spends_twice_nor_forgets(tmp_path):
    config = TrainConfig(**TINY, strategy="fedavg", epsilon=8.0).validate()
    sim = train(config, tmp_path / "sim")
    grid = _grid(tmp_path)
    grid.fail_rounds[101] = {2}  # node 1 trains (and counts) round 2 before the round fails
    with pytest.raises(RoundFailed, match="min-clients 2"):
        _flower(tmp_path, config, min_clients=2, grid=grid)
    assert (tmp_path / "server" / "LATEST").read_text().strip() == "round-0001"
    assert [e["round"] for e in _node_ledger(tmp_path, 1)["entries"]] == [1, 2]
    grid.fail_rounds.clear()
    _, result = _flower(tmp_path, config, min_clients=2, resume=True, grid=grid)
    a, b = _weights(sim.last_round_dir), _weights(result["last_round_dir"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    for cid in range(2):
        assert _node_ledger(tmp_path, cid) == _sim_ledger(sim, cid)


def test_ledgers_published_by_the_nodes_make_the_run_dp_and_a_forgetful_ledger_is_refused(tmp_path):
    from synthfed.flower.ledgers import collect_ledgers
    from synthfed.generation import load_generator

    config = TrainConfig(**{**TINY, "rounds": 1}, strategy="fedavg", epsilon=8.0).validate()
    _flower(tmp_path, config)
    server = tmp_path / "server"
    before = load_generator(server).privacy
    assert not before["differentially_private"] and "held by the Flower nodes" in before["statement"]
    node_file = tmp_path / "node1" / "demo" / "node.json"
    honest = node_file.read_text()
    forgetful = json.loads(honest)
    forgetful["ledger"]["clients"]["1"]["entries"] = []
    node_file.write_text(json.dumps(forgetful))
    with pytest.raises(ValueError, match="misses rounds"):
        collect_ledgers(server, [tmp_path / "node0", tmp_path / "node1"])
    node_file.write_text(honest)
    with pytest.raises(ValueError, match="no ledger for clients"):
        collect_ledgers(server, [tmp_path / "node0"])
    collect_ledgers(server, [tmp_path / "node0", tmp_path / "node1"])
    after = load_generator(server).privacy
    assert after["differentially_private"] and [r["client"] for r in after["clients"]] == ["0", "1"]


def test_a_node_refuses_a_run_above_its_max_epsilon(tmp_path):
    config = TrainConfig(**TINY, strategy="fedavg", epsilon=8.0).validate()
    grid = _grid(tmp_path, extra={0: {"max-epsilon": 4.0}})
    _, result = _flower(tmp_path, config, grid=grid)
    assert all(h["replied"] == [1] for h in result["history"])
    assert all(h["failed"] == {"0": "no node connected"} for h in result["history"])
    assert not (tmp_path / "node0").exists()


def test_a_pfdm_node_refuses_a_t0_that_breaks_its_budget(tmp_path):
    config = TrainConfig(**{**TINY, "num_train_timesteps": 1000}, strategy="pfdm", epsilon=8.0,
                         public_labels=True).validate()
    data = node_dataset(config, partition_id=0)
    with pytest.raises(NodeError, match="refusing to upload"):
        NodeTrainer(config, data, client_id=0, store=NodeStore(tmp_path, "x"), t0=50)
    # An explicit --t0 names no epsilon: the node's cap still bounds what the upload spends.
    by_t0 = config.replace(epsilon=None, t0=50)
    with pytest.raises(NodeError, match="above this node's max-epsilon"):
        NodeTrainer(by_t0, data, client_id=0, store=NodeStore(tmp_path, "y"), t0=50, max_epsilon=8.0)
    NodeTrainer(by_t0.replace(t0=900), data, client_id=0, store=NodeStore(tmp_path, "z"), t0=900, max_epsilon=8.0)


def test_node_state_belongs_to_one_run(tmp_path):
    config = TrainConfig(**TINY, strategy="fedavg").validate()
    data = node_dataset(config, partition_id=0)
    trainer = NodeTrainer(config, data, client_id=0, store=NodeStore(tmp_path, "run"))
    init = {k: trainer.init[k] for k in trainer.shared_keys}
    trainer.train(1, init, init)
    with pytest.raises(NodeError, match="another run"):
        NodeTrainer(config.replace(lr=1e-3), data, client_id=0, store=NodeStore(tmp_path, "run"))


def test_run_config_mirrors_the_train_options():
    config = TrainConfig(**TINY, strategy="fedper", epsilon=8.0).validate()
    options = FlowerOptions(run_dir="/tmp/x", run_name="x")
    back, back_options = from_run_config(to_run_config(config, options))
    assert back == config and back_options == options
    assert from_run_config({"run-dir": "r", "epsilon": 8, "local-epochs": 2})[0].epsilon == 8
    with pytest.raises(ConfigError, match="unknown run-config key"):
        from_run_config({"run-dir": "r", "epsilom": 8})
    with pytest.raises(ConfigError, match="averages nothing"):
        from_run_config({"run-dir": "r", "strategy": "local", "secagg": True})
    with pytest.raises(ConfigError, match="pools the data"):
        from_run_config({"run-dir": "r", "strategy": "centralized"})


def test_flower_app_command_writes_an_app_whose_config_is_the_run(tmp_path):
    import tomllib

    from typer.testing import CliRunner

    from synthfed.cli.app import app, register_subcommands

    register_subcommands()
    runner = CliRunner()
    result = runner.invoke(app, ["flower", "app", "--app-dir", str(tmp_path / "app"), "--out", str(tmp_path / "run"),
                                 "--clients", "3", "--epsilon", "8", "--strategy", "fedper", "--secagg"])
    assert result.exit_code == 0, result.output
    pyproject = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["components"]["serverapp"] == "synthfed.flower.server_app:app"
    config, options = from_run_config(pyproject["tool"]["flwr"]["app"]["config"])
    assert (config.num_clients, config.epsilon, config.strategy) == (3, 8.0, "fedper")
    assert options.secagg and options.run_dir == str((tmp_path / "run").resolve())
    bad = runner.invoke(app, ["flower", "app", "--app-dir", str(tmp_path / "a2"), "--out", "r", "--strategy", "local",
                              "--secagg"])
    assert bad.exit_code == 2 and "averages nothing" in bad.output


def _ask(grid, nid, fitins):
    from flwr.app import Message, MessageType

    from synthfed.flower.records import fitins_to_content

    (reply,) = grid.send_and_receive([Message(fitins_to_content(fitins), dst_node_id=nid,
                                              message_type=MessageType.TRAIN)])
    return reply


def test_a_curious_server_asking_a_round_again_gets_the_same_release_or_a_counted_one(tmp_path):
    # Prepare: one node of a 2-round DP run, the server's round-1 weights, as messages over the loopback
    from synthfed.federated.setup import initial_state, spec_from_shape
    from synthfed.flower.records import content_to_fitres, parameters_to_ndarrays, state_to_parameters, train_ins

    config = TrainConfig(**TINY, strategy="fedavg", epsilon=8.0).validate()
    grid = _grid(tmp_path, 1)
    data = node_dataset(config, partition_id=0)
    _, init = initial_state(config, spec_from_shape(config, data.image_shape, data.class_names))
    keys = sorted(init)
    cfg = json.dumps(config.to_dict())

    def ask(weights):
        ins = train_ins(state_to_parameters(keys, weights, weights), server_round=1, run_name="demo", config_json=cfg)
        return parameters_to_ndarrays(content_to_fitres(_ask(grid, 101, ins).content).parameters)

    # Execute: the same round twice with the same weights, then with other weights
    first, again = ask(init), ask(init)
    entries_after_repeat = len(_node_ledger(tmp_path, 0)["entries"])
    ask({k: v + 0.01 for k, v in init.items()})
    # Assert: the repeat is the same release, uncounted; other weights are a new, counted release
    assert all((a == b).all() for a, b in zip(first, again))
    assert entries_after_repeat == 1
    entries = _node_ledger(tmp_path, 0)["entries"]
    assert len(entries) == 2 and entries[0]["inputs"] != entries[1]["inputs"]


def test_a_curious_server_asking_a_pfdm_upload_again_gets_the_same_one_and_at_another_t0_a_refusal(tmp_path):
    from synthfed.flower.records import content_to_fitres, no_parameters, parameters_to_ndarrays, train_ins
    from synthfed.privacy.planner import plan_t0

    # Prepare
    config = TrainConfig(**{**TINY, "num_train_timesteps": 1000}, strategy="pfdm", epsilon=8.0,
                         public_labels=True).validate()
    grid = _grid(tmp_path, 1)
    data = node_dataset(config, partition_id=0)
    t0, _ = plan_t0(config, [len(data)], data.image_shape, config.schedule().alphas_cumprod())
    cfg = json.dumps(config.to_dict())

    def ask(t):
        return _ask(grid, 101, train_ins(no_parameters(), server_round=1, run_name="demo", config_json=cfg,
                                         stage="upload", t0=t))

    # Execute
    a, b = ask(t0), ask(t0)
    other = ask(t0 + 5)  # a t0 with more noise still meets epsilon alone, but not on top of the first upload
    # Assert
    xa = parameters_to_ndarrays(content_to_fitres(a.content).parameters)
    xb = parameters_to_ndarrays(content_to_fitres(b.content).parameters)
    assert all((u == v).all() for u, v in zip(xa, xb))
    assert other.has_error() and "second upload" in other.error.reason
    assert len(_node_ledger(tmp_path, 0)["entries"]) == 1
