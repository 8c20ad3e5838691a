"""Flower run config <-> ``TrainConfig``: the keys are ``synthfed train``'s options.

``flwr run ... --run-config "epsilon=8 rounds=3"`` sets the same things as
``synthfed train --epsilon 8 --rounds 3``. Options that default to "none" in
``synthfed train`` are simply left out (TOML has no null). Flower-only keys:

- ``run-dir``: the server's run directory (checkpoints, run.json); required;
- ``run-name``: names the run in every node's state directory (default: the
  run directory's name); a resumed run must keep it;
- ``resume``: continue ``run-dir`` from its last complete round;
- ``min-clients``: a round with fewer replies than min(min-clients, chosen)
  fails the run (its last complete round stays on disk; resume later);
- ``round-timeout``: seconds to wait for a round's replies (0: no limit);
- ``node-wait``: seconds to wait for ``clients`` nodes at the start;
- ``secagg``: average with Flower's SecAgg+ so the server sees only the sum;
  ``secagg-shares``, ``secagg-threshold``, ``secagg-clip`` tune it."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from synthfed.config import ConfigError, TrainConfig

# run-config key -> TrainConfig field (the CLI's option names)
TRAIN_KEYS = {
    "data": "data", "strategy": "strategy", "clients": "num_clients", "partition": "partition", "alpha": "alpha",
    "min-partition-size": "min_partition_size", "max-client-size": "max_client_size", "rounds": "rounds",
    "local-epochs": "local_epochs", "participation": "participation", "batch-size": "batch_size", "lr": "lr",
    "ema-decay": "ema_decay", "label-dropout": "label_dropout", "preset": "preset", "image-size": "image_size",
    "timesteps": "num_train_timesteps", "beta-start": "beta_start", "beta-end": "beta_end", "epsilon": "epsilon",
    "delta": "delta", "max-grad-norm": "max_grad_norm", "noise-multiplicity": "noise_multiplicity", "head": "head",
    "head-epochs": "head_epochs", "t0": "t0", "clip-norm": "clip_norm", "upload-copies": "upload_copies",
    "label-epsilon": "label_epsilon", "public-labels": "public_labels", "local-epsilon": "local_epsilon",
    "precision": "precision", "device": "device", "seed": "seed", "physical-batch-size": "physical_batch_size",
}
NONE = ("", "none", "None")


@dataclass(frozen=True)
class FlowerOptions:
    run_dir: str
    run_name: str
    resume: bool = False
    min_clients: int = 1
    round_timeout: float = 0.0  # 0: wait for every reply (Flower reports dead nodes as errors)
    node_wait: float = 120.0
    secagg: bool = False
    secagg_shares: float = 1.0  # a fraction of the round's clients, or a count
    secagg_threshold: float = 0.5
    secagg_clip: float = 8.0

    def validate(self, config: TrainConfig) -> "FlowerOptions":
        if not self.run_dir:
            raise ConfigError("run-dir is required: where the server writes checkpoints")
        if not self.run_name or "/" in self.run_name or self.run_name.startswith("."):
            raise ConfigError(f"run-name {self.run_name!r} must be a plain folder name")
        if self.min_clients < 1:
            raise ConfigError("min-clients must be at least 1")
        if self.round_timeout < 0 or self.node_wait <= 0:
            raise ConfigError("round-timeout must be >= 0 and node-wait > 0")
        if config.strategy == "centralized":
            raise ConfigError("the centralized baseline pools the data in one place; it does not run on Flower")
        if config.warm_start != "none" or config.init_from:
            raise ConfigError("--warm-start and --init-from run in the simulation only (synthfed train); "
                              "Flower nodes start from the seed's weights")
        if self.secagg:
            if config.strategy in ("local", "pfdm"):
                raise ConfigError(f"secagg averages the shared weights; {config.strategy} averages nothing")
            if config.clients_per_round(config.num_clients) < 2:
                raise ConfigError("secagg needs at least 2 clients per round (a sum of one is that client's update)")
            if not 0 < self.secagg_threshold <= 1 and not float(self.secagg_threshold).is_integer():
                raise ConfigError("secagg-threshold is a fraction in (0, 1] or a whole count")
            if self.secagg_clip <= 0:
                raise ConfigError("secagg-clip must be positive")
        return self


def _value(field_name: str, raw):
    if isinstance(raw, str) and raw in NONE:
        return None
    if field_name == "participation":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"participation {raw!r} is not a number") from None
    return raw


def from_run_config(run_config: dict) -> tuple[TrainConfig, FlowerOptions]:
    """Validated (config, options); unknown keys are an error, not ignored."""
    train: dict = {}
    flower: dict = {}
    option_fields = {f.name for f in fields(FlowerOptions)}
    for key, raw in run_config.items():
        if key in TRAIN_KEYS:
            value = _value(TRAIN_KEYS[key], raw)
            if value is not None:
                train[TRAIN_KEYS[key]] = value
        elif key.replace("-", "_") in option_fields:
            flower[key.replace("-", "_")] = raw
        else:
            raise ConfigError(f"unknown run-config key {key!r}")
    for name in ("num_clients", "rounds", "local_epochs", "batch_size", "seed", "head_epochs", "upload_copies",
                 "noise_multiplicity", "min_partition_size", "num_train_timesteps"):
        if name in train:
            train[name] = int(train[name])
    for name in ("max_client_size", "image_size", "t0", "physical_batch_size"):
        if train.get(name) is not None:
            train[name] = int(train[name])
    config = TrainConfig(**train).validate()
    run_dir = str(flower.pop("run_dir", "") or "")
    name = str(flower.pop("run_name", "") or "") or Path(run_dir).name
    for key in ("resume", "secagg"):
        if key in flower:
            flower[key] = str(flower[key]).lower() in ("1", "true", "yes") if isinstance(flower[key], str) else bool(flower[key])
    if "min_clients" in flower:
        flower["min_clients"] = int(flower["min_clients"])
    for key in ("round_timeout", "node_wait", "secagg_shares", "secagg_threshold", "secagg_clip"):
        if key in flower:
            flower[key] = float(flower[key])
    options = FlowerOptions(run_dir=run_dir, run_name=name, **flower).validate(config)
    return config, options


def to_run_config(config: TrainConfig, options: FlowerOptions) -> dict:
    """The run config that makes the ServerApp run ``config`` (None left out)."""
    out: dict = {}
    values = config.to_dict()
    for key, field_name in TRAIN_KEYS.items():
        value = values[field_name]
        if value is not None:
            out[key] = value
    for f in fields(FlowerOptions):
        out[f.name.replace("_", "-")] = getattr(options, f.name)
    return out
