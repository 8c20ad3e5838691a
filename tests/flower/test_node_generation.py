"""Generation at the node: a personalized Flower run sampled where its model lives.

The runs go through ``LoopbackGrid`` (messages deep-copied to the real
ClientApp, as in ``test_flower.py``); the nodes hold the simulation's secret
noise keys, so their models, and the images sampled from them, are the
simulation's ``generate --client i``, bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Context, Message, RecordDict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from flower_loopback import LoopbackGrid  # noqa: E402
from shared_keys import give_nodes_simulation_keys  # noqa: E402
from synthfed.card import NonPrivateOutputRefused  # noqa: E402
from synthfed.config import TrainConfig  # noqa: E402
from synthfed.dataset_folder import load_generated  # noqa: E402
from synthfed.errors import InputError, UsageError  # noqa: E402
from synthfed.flower.client_app import app as client_app  # noqa: E402
from synthfed.flower.node_generation import load_node_generator  # noqa: E402
from synthfed.flower.records import DELIVER_TYPE, delivery_content  # noqa: E402
from synthfed.flower.run_config import FlowerOptions  # noqa: E402
from synthfed.flower.server import FlowerServer  # noqa: E402
from synthfed.generation import generate_dataset, load_generator  # noqa: E402
from synthfed.privacy.ledger import PrivacyLedger  # noqa: E402
from synthfed.training import train  # noqa: E402

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            rounds=2, seed=3)
SAMPLE = dict(per_class=2, num_steps=3, seed=5, batch_size=64)


class DeliveryGrid(LoopbackGrid):
    """A loopback grid whose ``down_at_delivery`` nodes are dead when the final weights go out."""

    down_at_delivery: set[int] = set()

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and all(m.metadata.message_type == DELIVER_TYPE for m in messages):
            self.dead |= self.down_at_delivery
        try:
            return super().send_and_receive(messages, timeout=timeout)
        finally:
            self.dead -= self.down_at_delivery


def _grid(root: Path, n: int = 2) -> DeliveryGrid:
    return DeliveryGrid(client_app, {101 + i: {"partition-id": i, "state-dir": str(root / f"node{i}")}
                                     for i in range(n)})


def _flower(root: Path, config: TrainConfig, grid, *, resume: bool = False) -> tuple[dict, list]:
    notes: list = []
    options = FlowerOptions(run_dir=str(root / "server"), run_name="demo", node_wait=5, resume=resume).validate(config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    result = FlowerServer(grid, config, options, context=context, progress=notes.append).run()
    return result, notes


def _simulation_twin(root: Path, config: TrainConfig):
    """The simulation, and the nodes given its clients' noise keys (as restoring a backup would)."""
    sim = train(config, root / "sim")
    give_nodes_simulation_keys(root / "sim", {cid: root / f"node{cid}" / "demo" for cid in range(config.num_clients)})
    return sim


def _node_json(root: Path, cid: int) -> dict:
    return json.loads((root / f"node{cid}" / "demo" / "node.json").read_text())


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _images(folder: Path) -> np.ndarray:
    dataset, _ = load_generated(folder)
    return dataset.images


@pytest.fixture(scope="module")
def fedper(tmp_path_factory):
    """FedPer with DP-SGD, simulated and on Flower (node 1 is down when the final weights go out)."""
    root = tmp_path_factory.mktemp("fedper")
    config = TrainConfig(**TINY, strategy="fedper", epsilon=8.0).validate()
    sim = _simulation_twin(root, config)
    grid = _grid(root)
    grid.down_at_delivery = {102}
    result, notes = _flower(root, config, grid)
    return root, config, sim, result, notes


def test_fedper_node_samples_the_simulations_client_model_with_its_own_epsilon(fedper, tmp_path):
    # Prepare: the simulation's dataset of client 0, and everything on disk before the node samples
    root, config, sim, result, _ = fedper
    generate_dataset(load_generator(sim.run_dir, client=0), tmp_path / "sim-data", **SAMPLE)
    generate_dataset(load_generator(sim.run_dir, client=1), tmp_path / "sim-data-1", **SAMPLE)
    before = _tree(root)
    # Execute
    out = tmp_path / "node-data"
    generate_dataset(load_node_generator(root / "node0", "demo"), out, **SAMPLE)
    # Assert: the same images as the simulation's generate --client 0, in the same dataset layout
    assert np.array_equal(_images(out), _images(tmp_path / "sim-data"))
    assert not np.array_equal(_images(out), _images(tmp_path / "sim-data-1"))  # client 1's own model differs
    assert len(_images(out)) == 2 * 10 and (out / "README.md").is_file() and (out / "grid.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "sim-data").iterdir())
    # ... the card carries node 0's epsilon from its own ledger, and no other client's
    card = json.loads((out / "card.json").read_text())
    ledger = PrivacyLedger.from_dict(_node_json(root, 0)["ledger"]).table()
    assert [r["client"] for r in card["privacy"]["clients"]] == ["0"]
    assert card["privacy"]["clients"][0]["eps_upper"] == ledger[0]["eps_upper"] <= 8.0
    assert card["privacy"]["clients"][0]["delta"] == ledger[0]["delta"]
    assert card["differentially_private"] and "client 0, by its own ledger" in card["label"]
    assert card["privacy"]["statement"].startswith("client 0's records are (epsilon, delta)-DP as listed")
    readme = (out / "README.md").read_text()
    assert "their own ledgers, held by their nodes, not here" in readme and "client 0" in card["source_text"]
    assert str(root) not in readme and str(root) not in (out / "card.json").read_text()
    # ... and nothing was written anywhere but --out: not even into the node's own state
    assert _tree(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-data", "sim-data", "sim-data-1"]


def test_delivery_is_the_servers_final_round_and_changes_no_ledger_nor_result(fedper):
    root, config, sim, result, notes = fedper
    final = Path(result["last_round_dir"])
    delivered = load_file(str(root / "node0" / "demo" / "shared" / "round-0002.safetensors"))
    for which in ("model", "ema"):
        server = load_file(str(final / "global" / which / "diffusion_pytorch_model.safetensors"))
        mine = {k[len(which) + 1:]: v for k, v in delivered.items() if k.startswith(f"{which}.")}
        assert mine and all(torch.equal(v, server[k]) for k, v in mine.items())
        # the shared part only: the head stays local
        assert set(mine) < set(server)
    assert _node_json(root, 0)["final"] == {"round": 2, "t0": None}
    for cid in range(2):
        sim_ledger = json.loads((sim.last_round_dir / "ledger.json").read_text())["clients"][str(cid)]
        assert _node_json(root, cid)["ledger"]["clients"][str(cid)] == sim_ledger
    a = load_file(str(sim.last_round_dir / "global" / "ema" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(final / "global" / "ema" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(b[k], a[k]) for k in mine)
    # node 1 was down at the end: noted, not fatal
    assert [h["replied"] for h in result["history"]] == [[0, 1], [0, 1]]
    assert any("client 1 did not store them" in getattr(n, "text", "") for n in notes)


def test_a_node_down_at_the_end_cannot_sample_until_a_resume_sends_the_weights_again(fedper, tmp_path):
    # Prepare: a copy of the finished run and of both nodes' state
    root = tmp_path / "copy"
    shutil.copytree(fedper[0], root, ignore=shutil.ignore_patterns("sim"))
    config = fedper[1]
    with pytest.raises(InputError, match="no final shared weights yet: the run did not finish or this node was down"):
        load_node_generator(root / "node1", "demo")
    shared0 = (root / "node0" / "demo" / "shared" / "round-0002.safetensors").read_bytes()
    ledgers = [_node_json(root, cid)["ledger"] for cid in range(2)]
    # Execute: the finished run resumed, both nodes up
    result, _ = _flower(root, config, _grid(root), resume=True)
    # Assert: no round ran again, node 1 now holds the final weights, node 0 the same ones as before
    assert len(result["history"]) == 2
    assert (root / "node0" / "demo" / "shared" / "round-0002.safetensors").read_bytes() == shared0
    assert (root / "node1" / "demo" / "shared" / "round-0002.safetensors").read_bytes() == shared0
    assert [_node_json(root, cid)["ledger"] for cid in range(2)] == ledgers
    gen = load_node_generator(root / "node1", "demo")
    assert gen.source["client"] == 1 and [r["client"] for r in gen.privacy["clients"]] == ["1"]


def test_a_node_refuses_final_weights_that_are_not_its_runs(fedper, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fedper[0], root, ignore=shutil.ignore_patterns("sim", "server"))
    config_json = json.dumps(fedper[1].to_dict())
    good = load_file(str(root / "node0" / "demo" / "shared" / "round-0002.safetensors"))
    state = {k[6:]: v for k, v in good.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in good.items() if k.startswith("ema.")}
    grid = _grid(root)
    before = _tree(root)

    def deliver(**kwargs):
        args = dict(run_name="demo", config_json=config_json, server_round=2, state=state, ema=ema)
        msg = Message(delivery_content(**{**args, **kwargs}), dst_node_id=101, message_type=DELIVER_TYPE)
        (reply,) = grid.send_and_receive([msg])
        return reply

    some = sorted(state)[0]
    extra = {**state, "head.extra": torch.zeros(1)}
    cases = [  # (what is wrong, the node's reason)
        (dict(state=extra, ema=extra), "not this run's shared entries"),
        (dict(state={**state, some: torch.zeros(3)}), "not this run's shared entries"),
        (dict(run_name="other"), "holds no state for run other"),
        (dict(config_json=json.dumps({**fedper[1].to_dict(), "lr": 0.5})), "holds another run"),
        (dict(server_round=1), "but this node trained round 2"),
    ]
    for kwargs, reason in cases:
        reply = deliver(**kwargs)
        assert reply.has_error() and reason in reply.error.reason, (kwargs.keys(), reply)
    assert _tree(root) == before  # nothing stored, nothing changed
    assert not deliver().has_error()  # the right weights are taken (again: the same file)
    assert (root / "node0" / "demo" / "shared" / "round-0002.safetensors").read_bytes() == \
        (fedper[0] / "node0" / "demo" / "shared" / "round-0002.safetensors").read_bytes()


def test_the_errors_of_flower_generate_are_one_line_each(fedper, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(fedper[0] / "node0", root / "node0")
    with pytest.raises(InputError, match="no node state directory"):
        load_node_generator(tmp_path / "absent", "demo")
    with pytest.raises(InputError, match=r"no node state for run 'nope' .* \(runs there: demo\)"):
        load_node_generator(root / "node0", "nope")
    with pytest.raises(UsageError, match="plain folder name"):
        load_node_generator(root / "node0", "../node0")
    node_json = root / "node0" / "demo" / "node.json"
    honest = json.loads(node_json.read_text())
    # A FedAvg run: the node holds no model of its own
    node_json.write_text(json.dumps({**honest, "config": {**honest["config"], "strategy": "fedavg"}}))
    with pytest.raises(UsageError, match="synthfed generate RUN_DIR"):
        load_node_generator(root / "node0", "demo")
    # A DP run whose ledger is gone is never sampled as non-private
    node_json.write_text(json.dumps({**honest, "ledger": None}))
    with pytest.raises(InputError, match="no privacy ledger"):
        load_node_generator(root / "node0", "demo")
    # A ledger that is not this node's alone is not presented as its own
    other = json.loads((fedper[0] / "node1" / "demo" / "node.json").read_text())["ledger"]["clients"]
    both = {**honest["ledger"], "clients": {**honest["ledger"]["clients"], **other}}
    node_json.write_text(json.dumps({**honest, "ledger": both}))
    with pytest.raises(InputError, match="not client 0's alone"):
        load_node_generator(root / "node0", "demo")
    node_json.write_text(json.dumps(honest))
    (root / "node0" / "demo" / "shared" / "round-0002.safetensors").unlink()
    with pytest.raises(InputError, match="lacks shared/round-0002.safetensors"):
        load_node_generator(root / "node0", "demo")


def test_a_non_private_local_run_needs_allow_non_private_and_says_not_dp(tmp_path):
    # Prepare: strategy local, no DP, on Flower (nothing is shared; the delivery says the run finished)
    config = TrainConfig(**{**TINY, "rounds": 1}, strategy="local").validate()
    _flower(tmp_path, config, _grid(tmp_path))
    assert _node_json(tmp_path, 0)["final"] == {"round": 1, "t0": None}
    gen = load_node_generator(tmp_path / "node0", "demo")
    # Execute / Assert
    with pytest.raises(NonPrivateOutputRefused, match="--allow-non-private"):
        generate_dataset(gen, tmp_path / "refused", **SAMPLE)
    assert not (tmp_path / "refused").exists()
    out = generate_dataset(gen, tmp_path / "data", allow_non_private=True, **SAMPLE)
    card = json.loads((out / "card.json").read_text())
    assert not card["differentially_private"] and card["label"].startswith("NOT differentially private")
    assert "nothing was shared" in card["privacy"]["statement"]


def test_pfdm_node_samples_the_simulations_client_model_with_its_own_ledger(tmp_path):
    # Prepare: PFDM with local DP-SGD, simulated and on Flower
    config = TrainConfig(**{**TINY, "num_train_timesteps": 1000, "rounds": 1}, strategy="pfdm", epsilon=8.0,
                         public_labels=True, local_epsilon=8.0).validate()
    sim = _simulation_twin(tmp_path, config)
    _flower(tmp_path, config, _grid(tmp_path))
    generate_dataset(load_generator(sim.run_dir, client=1), tmp_path / "sim-data", **SAMPLE)
    # Execute
    gen = load_node_generator(tmp_path / "node1", "demo")
    out = generate_dataset(gen, tmp_path / "node-data", **SAMPLE)
    # Assert: the shared high-noise denoiser hands over at the run's t0 to node 1's own denoiser
    t0 = json.loads((tmp_path / "server" / "run.json").read_text())["pfdm"]["t0"]
    assert gen.handover[1] == t0 == gen.source["t0"]
    assert np.array_equal(_images(out), _images(tmp_path / "sim-data"))
    card = json.loads((out / "card.json").read_text())
    ledger = PrivacyLedger.from_dict(_node_json(tmp_path, 1)["ledger"]).table()
    assert [r["client"] for r in card["privacy"]["clients"]] == ["1"]
    assert card["privacy"]["clients"][0]["eps_upper"] == ledger[0]["eps_upper"]
    assert card["differentially_private"] and "forward-noised uploads" in card["privacy"]["statement"]


def test_flower_generate_on_the_command_line(fedper, tmp_path):
    from typer.testing import CliRunner

    from synthfed.cli.app import app, register_subcommands

    register_subcommands()
    runner = CliRunner()
    root = fedper[0]
    ok = runner.invoke(app, ["flower", "generate", "--state-dir", str(root / "node0"), "--run", "demo",
                             "--out", str(tmp_path / "data"), "--per-class", "1", "--steps", "2",
                             "--layout", "class-folders"], env={"COLUMNS": "250"})
    assert ok.exit_code == 0, ok.output
    assert "wrote 10 images" in ok.output and "client 0, by its own ledger" in ok.output
    assert (tmp_path / "data" / "images" / "0-0").is_dir()
    missing = runner.invoke(app, ["flower", "generate", "--state-dir", str(root / "node0"), "--run", "nope",
                                  "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1, missing.output
    # On the server's run, generate --client points at the node
    server = runner.invoke(app, ["generate", str(root / "server"), "--client", "0", "--out", str(tmp_path / "y")],
                           env={"COLUMNS": "250"})
    assert server.exit_code == 2 and "synthfed flower generate --state-dir" in server.output, server.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
