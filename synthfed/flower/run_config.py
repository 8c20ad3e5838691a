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
  ``secagg-shares``, ``secagg-threshold``, ``secagg-clip`` tune it;
- ``allowed-nodes``: the Flower node ids (space-separated) the server may
  address, those whose keys the operator registered; other nodes get no
  message, whoever registered them (empty: every node)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from synthfed.config import ConfigError, TrainConfig
from synthfed.settings import BY_FIELD, SETTINGS

# run-config key -> TrainConfig field: the settings' one public names (synthfed.settings)
TRAIN_KEYS = {s.name: s.field for s in SETTINGS}
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
    allowed_nodes: str = ""  # space-separated Flower node ids; "" = any registered node

    @property
    def allowed_node_ids(self) -> set[int] | None:
        return {int(n) for n in self.allowed_nodes.split()} if self.allowed_nodes.strip() else None

    def validate(self, config: TrainConfig) -> "FlowerOptions":
        if not self.run_dir:
            raise ConfigError("run-dir is required: where the server writes checkpoints")
        if not self.run_name or "/" in self.run_name or self.run_name.startswith("."):
            raise ConfigError(f"run-name {self.run_name!r} must be a plain folder name")
        if self.min_clients < 1:
            raise ConfigError("min-clients must be at least 1")
        if any(not n.isdigit() for n in self.allowed_nodes.split()):
            raise ConfigError(f"allowed-nodes must be Flower node ids separated by spaces, not {self.allowed_nodes!r}")
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
    for name, value in train.items():  # the CLI's --run-config "rounds=3" may hand over 3.0 or "3"
        kind, _ = BY_FIELD[name].kind
        if kind == "int" and value is not None:
            train[name] = int(value)
    config = TrainConfig(**train).validate()
    run_dir = str(flower.pop("run_dir", "") or "")
    name = str(flower.pop("run_name", "") or "") or Path(run_dir).name
    for key in ("resume", "secagg"):
        if key in flower:
            flower[key] = str(flower[key]).lower() in ("1", "true", "yes") if isinstance(flower[key], str) else bool(flower[key])
    if "allowed_nodes" in flower:
        flower["allowed_nodes"] = str(flower["allowed_nodes"])
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
