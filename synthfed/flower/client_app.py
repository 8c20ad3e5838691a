"""The ClientApp: one institution's side of a synthfed run on Flower.

It answers three kinds of message from the ServerApp:

- ``query``: load this node's data for the run's configuration and say what
  the server may know (client id, size, image shape, class names);
- ``train``: train one round with ``NodeTrainer`` (FedAvg, local heads, DP-SGD
  with the ledger in node-local storage) or, for PFDM, make the one-time
  forward-noised upload / train the private low-noise denoiser;
- ``query.deliver``: at the end of a personalized run, keep the run's final
  shared weights in the node's state, for ``synthfed flower generate``.

Node configuration (``flower-supernode --node-config``):

- ``partition-id`` (int, required): this node's client id in the run;
- ``state-dir`` (str): node-local directory for local weights and the privacy
  ledger (default ``./synthfed-node-<partition-id>``); it is never sent;
- ``data`` (str): the node's own data (folder:DIR, csv:FILE, idx:...); without
  it the node takes partition ``partition-id`` of the run's ``data`` split;
- ``max-epsilon`` (float): refuse any run that would let this node spend more
  (a non-private run included);
- ``threads`` (int): torch CPU threads.

The optional SecAgg+ mod masks the train reply when the server runs the
SecAgg+ workflow; plain rounds pass through it untouched."""

from __future__ import annotations

import functools
import json
import math

import torch
from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from synthfed.config import TrainConfig
from synthfed.flower.node import NodeError, NodeStore, NodeTrainer, describe, node_dataset, receive_final
from synthfed.flower.records import (
    DELIVER,
    content_to_fitins,
    delivery_reply,
    description_content,
    fitres_content,
    parameters_to_state,
    read_delivery,
    read_query,
    state_to_parameters,
)


def optional_secaggplus_mod(msg: Message, ctxt: Context, call_next):
    """SecAgg+ when the server speaks it (its config record is present)."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp(mods=[optional_secaggplus_mod])


def _node_options(node_config: dict) -> dict:
    if "partition-id" not in node_config:
        raise NodeError("this SuperNode has no partition-id in its --node-config")
    pid = int(node_config["partition-id"])
    threads = node_config.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    return {
        "partition_id": pid,
        "state_dir": str(node_config.get("state-dir") or f"synthfed-node-{pid}"),
        "data": str(node_config.get("data") or "") or None,
        "max_epsilon": None if node_config.get("max-epsilon") in (None, "") else float(node_config["max-epsilon"]),
    }


def _config(config_json: str, options: dict) -> TrainConfig:
    config = TrainConfig.from_dict(json.loads(config_json)).validate()
    cap = options["max_epsilon"]
    if cap is not None:
        asked = [e for e in (config.epsilon, config.local_epsilon) if e is not None]
        # PFDM's uploads are a DP release even without --epsilon (an explicit --t0):
        # the node checks their planned epsilon against its cap in NodeTrainer.
        if not asked and config.strategy != "pfdm":
            raise NodeError(f"this node accepts only differentially private runs (max-epsilon={cap})")
        if any(e > cap for e in asked):
            raise NodeError(f"the run asks for epsilon {max(asked)}, above this node's max-epsilon {cap}")
    return config


@functools.lru_cache(maxsize=2)
def _dataset(config_json: str, partition_id: int, data: str | None):
    return node_dataset(TrainConfig.from_dict(json.loads(config_json)), partition_id=partition_id, data=data)


@app.query()
def query(msg: Message, context: Context) -> Message:
    _, config_json = read_query(msg.content)
    options = _node_options(dict(context.node_config))
    _config(config_json, options)
    data = _dataset(config_json, options["partition_id"], options["data"])
    return Message(description_content(describe(data, options["partition_id"])), reply_to=msg)


@app.query(DELIVER)
def deliver(msg: Message, context: Context) -> Message:
    """The final shared weights of a personalized run: checked, then kept."""
    d = read_delivery(msg.content)
    options = _node_options(dict(context.node_config))
    config = _config(d["config_json"], options)
    data = _dataset(d["config_json"], options["partition_id"], options["data"])
    stored = receive_final(config, data, NodeStore(options["state_dir"], d["run_name"]),
                           client_id=options["partition_id"], server_round=d["round"], state=d["state"],
                           ema=d["ema"], t0=d["t0"])
    return Message(delivery_reply(stored), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    fitins = content_to_fitins(msg.content)
    cfg = fitins.config
    options = _node_options(dict(context.node_config))
    config_json = str(cfg["config"])
    config = _config(config_json, options)
    data = _dataset(config_json, options["partition_id"], options["data"])
    store = NodeStore(options["state_dir"], str(cfg["run-name"]))
    server_round = int(cfg["round"])
    stage = str(cfg["stage"])
    if stage not in ("fit", "upload") or (stage == "upload" and config.strategy != "pfdm"):
        raise NodeError(f"train stage {stage!r} does not belong to a {config.strategy} run")
    t0 = int(cfg["t0"]) if "t0" in cfg else None
    trainer = NodeTrainer(config, data, client_id=options["partition_id"], store=store, t0=t0,
                          max_epsilon=options["max_epsilon"])
    if stage == "upload":  # PFDM's one-time release
        x, y = trainer.upload()
        params = ndarrays_to_parameters([x.numpy(), y.numpy()])
        return Message(fitres_content(params, num_examples=int(x.shape[0]), metrics={}), reply_to=msg)
    like = {k: trainer.init[k] for k in trainer.shared_keys}
    shared, shared_ema = parameters_to_state(trainer.shared_keys, fitins.parameters, like)
    reply = trainer.train(server_round, shared, shared_ema)
    if reply is None:
        # Budget spent: zeros with weight 0 (SecAgg+ still needs a vector).
        zeros = {k: torch.zeros_like(v) for k, v in shared.items()}
        return Message(fitres_content(state_to_parameters(trainer.shared_keys, zeros, zeros), num_examples=0,
                                      metrics={"skipped": 1, "loss": math.nan}), reply_to=msg)
    metrics = {"loss": float(reply["metrics"]["loss"]), "steps": int(reply["metrics"]["steps"])}
    params = state_to_parameters(trainer.shared_keys, reply["state"], reply["ema"])
    return Message(fitres_content(params, num_examples=reply["num_examples"], metrics=metrics), reply_to=msg)
