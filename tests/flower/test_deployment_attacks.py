"""The attacker's side of a real local Flower deployment (processes on 127.0.0.1,
TLS with node authentication): nodes without an allowed key or trust in the
CA, a foreign app submitted through Flower's open Control API, and a node an
attacker registered there. test_flower_deployment.py trains; this file attacks."""

from __future__ import annotations

import json
import os
import time

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.slow  # real processes: minutes (pytest -m "not slow" leaves them out)

from synthfed.config import TrainConfig  # noqa: E402
from synthfed.flower.certs import make_federation  # noqa: E402
from synthfed.flower.deploy import Deployment, write_app  # noqa: E402
from synthfed.flower.run_config import FlowerOptions, to_run_config  # noqa: E402

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, num_train_timesteps=20, batch_size=64,
            seed=3, epsilon=8.0, device="cpu")


def _exited(proc, seconds=60):
    try:
        return proc.wait(timeout=seconds)
    except Exception:  # still running: it was let in
        return None


def _online_nodes(deployment):
    import subprocess

    from synthfed.flower.deploy import CONNECTION, flower_command, flower_env

    out = subprocess.run([flower_command("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
                         cwd=deployment.root, env=flower_env(deployment.home), capture_output=True, text=True, timeout=60)
    nodes = json.loads(out.stdout)["nodes"]
    return {str(n["node-id"]) for n in nodes if n.get("status") == "online"}


@pytest.mark.timeout(180)
def test_only_allowed_nodes_that_trust_the_ca_get_in(tmp_path):
    """The attacker's side: a node whose key is not on the allow-list, a node with
    no key, a client that does not trust the federation's CA (a man in the middle's
    certificate looks the same to it), and a plain-HTTP client: all refused.
    The allowed node, with the right CA and key, gets in."""
    # Prepare: a federation of 2 keys of which only node 0's is allowed; another CA
    deployment = Deployment.with_local_federation(tmp_path / "flower", nodes=2)
    deployment.node_keys = deployment.node_keys[:1]
    stranger = make_federation(tmp_path / "stranger", nodes=1)
    try:
        deployment.start_superlink()
        allowed = deployment.start_node(0, state_dir=tmp_path / "n0")
        unlisted = deployment.start_node(1, state_dir=tmp_path / "n1")
        other_key = deployment.start_node(2, state_dir=tmp_path / "n2", auth_key=stranger.node_key(0))
        no_key = deployment.start_node(3, state_dir=tmp_path / "n3")  # no key for partition 3
        deployment.ca_cert = stranger.ca_cert  # this node trusts another CA
        wrong_ca = deployment.start_node(4, state_dir=tmp_path / "n4", auth_key=deployment.node_auth_keys[0])
        deployment.ca_cert = None  # and this one speaks plain HTTP
        plain = deployment.start_node(5, state_dir=tmp_path / "n5")
        # Execute
        codes = {name: _exited(proc) for name, proc in
                 dict(unlisted=unlisted, other_key=other_key, no_key=no_key, wrong_ca=wrong_ca).items()}
        deployment.ca_cert = deployment.server_cert.parent.parent / "ca.crt"
        online = _online_nodes(deployment)
        allowed_running = allowed.poll() is None
    finally:
        deployment.stop()
    # Assert: every intruder's SuperNode exited with an error; only the allowed node is online
    assert all(code not in (None, 0) for code in codes.values()), codes
    assert allowed_running and online == set(deployment.registered), (online, deployment.registered)
    assert plain.poll() is not None  # stopped by us: it kept failing to connect, never online
    logs = {i: (deployment.logs / f"node-{i}.log").read_text() for i in range(6)}
    assert "Failed to activate SuperNode" in logs[1] and "Failed to activate SuperNode" in logs[2]
    assert "must be registered" in logs[3]
    assert "CERTIFICATE_VERIFY_FAILED" in logs[4]
    assert "Connection attempt failed" in logs[5] and "SuperNode ID" not in logs[5]


EVIL_SERVER = '''
import time
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    nodes = []
    for _ in range(60):
        nodes = list(grid.get_node_ids())
        if nodes:
            break
        time.sleep(0.5)
    msgs = [Message(RecordDict({"x": ConfigRecord({"x": 1})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=90))
    with open({report!r}, "w") as fh:
        fh.write(",".join("error" if r.has_error() else "ok" for r in replies))
'''

EVIL_CLIENT = '''
from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg, context):
    with open({marker!r}, "w") as fh:
        fh.write("ran on the node: " + str(dict(context.node_config)))
    return Message(RecordDict(), reply_to=msg)
'''


def _submit_foreign_app(tmp_path, deployment):
    """What anyone who reaches the SuperLink's port can do: Flower's Control API
    (no account authentication in Flower's community edition) takes any app."""
    import subprocess

    from synthfed.flower.deploy import CONNECTION, flower_command, flower_env

    app_dir = tmp_path / "evil-app"
    app_dir.mkdir()
    report, marker = tmp_path / "server-report.txt", tmp_path / "node-marker.txt"
    (app_dir / "evil_server.py").write_text(EVIL_SERVER.replace("{report!r}", repr(str(report))))
    (app_dir / "evil_client.py").write_text(EVIL_CLIENT.replace("{marker!r}", repr(str(marker))))
    (app_dir / "pyproject.toml").write_text('''[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "evil-app"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "evil_server:app"
clientapp = "evil_client:app"
''')
    subprocess.run([flower_command("flwr"), "run", str(app_dir), CONNECTION, "--format", "json"], cwd=deployment.root,
                   env=flower_env(deployment.home), capture_output=True, text=True, timeout=120, check=True)
    deadline = time.monotonic() + 150
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return report, marker


@pytest.mark.timeout(420)
@pytest.mark.parametrize("warm", [True, False], ids=["synthfed-executor", "flower-executor"])
def test_a_foreign_app_submitted_to_the_superlink_never_runs_on_a_node(tmp_path, warm):
    """The attack is real: with Flower's own executor the foreign ClientApp runs
    on the node, next to its private data. synthfed's executor refuses it."""
    deployment = Deployment.with_local_federation(tmp_path / "flower", nodes=1)
    deployment.warm = warm
    try:
        deployment.start_superlink()
        deployment.start_node(0, state_dir=tmp_path / "n0")
        report, marker = _submit_foreign_app(tmp_path, deployment)
    finally:
        deployment.stop()
    assert report.exists(), "the foreign ServerApp did not finish"
    if warm:
        assert not marker.exists() and report.read_text() == "error"
        assert "refused by synthfed's node" in (deployment.logs / "node-0-exec.log").read_text()
    else:
        assert marker.exists() and report.read_text() == "ok"


@pytest.mark.timeout(300)
def test_a_node_registered_through_the_open_control_api_gets_no_message(tmp_path):
    """The attacker registers a key of their own (Flower's Control API takes it
    from anyone who reaches the port) and joins as client 1 with their own data.
    The server addresses only the nodes the operator registered."""
    config = TrainConfig(**TINY, rounds=1).validate()
    deployment = Deployment.with_local_federation(tmp_path / "flower", nodes=2)
    mallory = make_federation(tmp_path / "mallory", nodes=1)
    try:
        deployment.start_superlink()
        operators = " ".join(deployment.registered)
        mallory_id = deployment.register_node(mallory.node_public_key(0))
        # Mallory's node claims partition 1, as if it were the operator's client 1
        deployment.start_node(1, state_dir=tmp_path / "mallory-state", auth_key=mallory.node_key(0))
        deployment.nodes[7] = deployment.nodes.pop(1)  # kept to be stopped with the rest
        deployment.executors[7] = deployment.executors.pop(1)
        for log in ("node-1.log", "node-1-exec.log"):  # its processes keep writing to the renamed files
            os.rename(deployment.logs / log, deployment.logs / log.replace("node-1", "mallory"))
        deadline = time.monotonic() + 60
        while mallory_id not in _online_nodes(deployment) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert mallory_id in _online_nodes(deployment), "the attacker's node never came online"
        for cid in range(2):
            deployment.start_node(cid, state_dir=tmp_path / f"node{cid}", threads=1)
        options = FlowerOptions(run_dir=str(tmp_path / "server"), run_name="demo", node_wait=60,
                                allowed_nodes=operators)
        status = deployment.run(write_app(tmp_path / "app", to_run_config(config, options)), timeout=240)
    finally:
        deployment.stop()
    # Assert: the run completed with the operator's nodes; the attacker's node never got a message
    assert status["status"] == "finished:completed", status
    history = json.loads((tmp_path / "server" / "rounds" / "round-0001" / "state.json").read_text())["history"]
    assert history[0]["replied"] == [0, 1]
    assert not (tmp_path / "mallory-state").exists() or not any((tmp_path / "mallory-state").rglob("node.json"))
    assert "Receiving" not in (deployment.logs / "mallory.log").read_text()
    assert "ClientApp" not in (deployment.logs / "mallory-exec.log").read_text()
    assert options.allowed_node_ids == {int(n) for n in operators.split()}
