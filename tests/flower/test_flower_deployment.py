"""A real local Flower deployment: SuperLink + 2 SuperNodes as processes on 127.0.0.1,
over TLS with node authentication (the path a federation across machines takes).

Bounded (tiny model, 2 rounds, timeouts) and loopback only; a round takes
seconds (docs/FLOWER.md, Cost). A killed node is reported by the SuperLink
after two missed heartbeats: the kill test sets them 10 s apart. The attacks
on a deployment are in test_deployment_attacks.py."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # real processes: minutes (pytest -m "not slow" leaves them out)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from synthfed.config import TrainConfig  # noqa: E402
from synthfed.flower.deploy import Deployment, process_tree, write_app  # noqa: E402
from synthfed.flower.run_config import FlowerOptions, to_run_config  # noqa: E402
from shared_keys import give_nodes_simulation_keys  # noqa: E402
from synthfed.training import train  # noqa: E402

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            seed=3, epsilon=8.0, device="cpu")


def _start(tmp_path, config, heartbeat=None):
    deployment = Deployment.with_local_federation(tmp_path / "flower", nodes=config.num_clients)
    deployment.heartbeat = heartbeat
    deployment.start_superlink()
    for cid in range(config.num_clients):
        deployment.start_node(cid, state_dir=tmp_path / f"node{cid}", threads=1)
    options = FlowerOptions(run_dir=str(tmp_path / "server"), run_name="demo", node_wait=60)
    app_dir = write_app(tmp_path / "app", to_run_config(config, options))
    return deployment, app_dir


def _all_stopped(deployment, trees):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in trees if os.path.exists(f"/proc/{p}") and
                 open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _node(tmp_path, cid):
    return json.loads((tmp_path / f"node{cid}" / "demo" / "node.json").read_text())


@pytest.mark.timeout(420)
def test_superlink_and_two_supernodes_reproduce_the_simulation_and_each_node_samples_its_own_model(tmp_path):
    # Prepare: a personalized run (FedPer: shared backbone, local heads) with DP-SGD
    from typer.testing import CliRunner

    from synthfed.cli.app import app, register_subcommands
    from synthfed.privacy.ledger import PrivacyLedger

    config = TrainConfig(**TINY, rounds=2, strategy="fedper").validate()
    sim = train(config, tmp_path / "sim")
    give_nodes_simulation_keys(tmp_path / "sim", {cid: tmp_path / f"node{cid}" / "demo" for cid in range(2)})
    deployment, app_dir = _start(tmp_path, config)
    trees: list[int] = []
    # Execute
    try:
        status = deployment.run(app_dir, timeout=360)
        for pid in deployment.started_pids():
            trees.extend(process_tree(pid))
    finally:
        deployment.stop()
    register_subcommands()
    sampled = CliRunner().invoke(app, ["flower", "generate", "--state-dir", str(tmp_path / "node1"), "--run", "demo",
                                       "--out", str(tmp_path / "node1-data"), "--per-class", "1", "--steps", "2"])
    # Assert: completed, the simulation's shared weights bit for bit, the simulation's ledgers, nothing left running
    assert status["status"] == "finished:completed", status
    last = tmp_path / "server" / "rounds" / "round-0002" / "global" / "ema" / "diffusion_pytorch_model.safetensors"
    a = load_file(str(sim.last_round_dir / "global" / "ema" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(last))
    assert set(b) and all(torch.equal(a[k], b[k]) for k in b)
    sim_ledger = json.loads((sim.last_round_dir / "ledger.json").read_text())["clients"]
    for cid in range(2):
        assert _node(tmp_path, cid)["ledger"]["clients"][str(cid)] == sim_ledger[str(cid)]
    assert _all_stopped(deployment, trees) == []
    # ... and node 1 sampled its own model at home, its card stating node 1's epsilon from its ledger
    assert sampled.exit_code == 0, sampled.output
    card = json.loads((tmp_path / "node1-data" / "card.json").read_text())
    ledger = PrivacyLedger.from_dict(_node(tmp_path, 1)["ledger"]).table()
    assert [r["client"] for r in card["privacy"]["clients"]] == ["1"]
    assert card["privacy"]["clients"][0]["eps_upper"] == ledger[0]["eps_upper"] <= 8.0
    assert len(list((tmp_path / "node1-data" / "images").glob("*.png"))) == 10


@pytest.mark.timeout(480)
def test_killing_a_supernode_mid_run_leaves_the_others_finishing_and_its_ledger_consistent(tmp_path):
    # Prepare
    config = TrainConfig(**TINY, rounds=2).validate()
    deployment, app_dir = _start(tmp_path, config, heartbeat=10)  # a dead node is noticed after ~20 s, not ~60 s
    result: dict = {}
    trees: list[int] = []
    # Execute: kill node 1 (SIGKILL, ClientApp included) as soon as round 1 is on disk,
    # while round 2 is being sent or trained
    try:
        runner = threading.Thread(target=lambda: result.update(deployment.run(app_dir, timeout=420)))
        runner.start()
        latest = tmp_path / "server" / "LATEST"
        deadline = time.monotonic() + 300
        while not latest.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert latest.exists(), "round 1 never completed"
        deployment.kill_node(1)
        runner.join(timeout=430)
        assert not runner.is_alive()
        for pid in deployment.started_pids():
            trees.extend(process_tree(pid))
    finally:
        deployment.stop()
    # Assert: the run finished with node 0 alone after round 1
    assert result["status"] == "finished:completed", result
    history = json.loads((tmp_path / "server" / "rounds" / "round-0002" / "state.json").read_text())["history"]
    assert history[0]["replied"] == [0, 1]
    assert history[1]["replied"] == [0] and "1" in history[1]["failed"]
    # The killed node's ledger counts every round whose update reached the server,
    # and only rounds it finished training (committed with its weights).
    killed = _node(tmp_path, 1)
    ledger_rounds = sorted({e["round"] for e in killed["ledger"]["clients"]["1"]["entries"]})
    released = [h["round"] for h in history if 1 in h["replied"]]
    assert set(released) <= set(ledger_rounds) <= {int(r) for r in killed["rounds"]}
    assert ledger_rounds in ([1], [1, 2])
    assert sorted({e["round"] for e in _node(tmp_path, 0)["ledger"]["clients"]["0"]["entries"]}) == [1, 2]
    assert _all_stopped(deployment, trees) == []
