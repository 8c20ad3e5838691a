"""The run settings, declared once: one public name per setting.

Each ``Setting`` names one ``TrainConfig`` field the way every surface spells
it: ``synthfed train --local-epochs 2``, ``local-epochs = 2`` (or
``local_epochs``) in a ``train --config`` file and in an experiment's
``[train]``/``[grid]`` tables, and ``local-epochs=2`` in a Flower run config.
The CLI's train options (``synthfed.cli.options``), the TOML readers and the
Flower run config are all generated from ``SETTINGS``; the defaults are the
dataclass's own. This module imports nothing heavy: the CLI reads it at
start-up."""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, fields

from synthfed.config import (DEVICES, PARTITIONS, PRECISIONS, STRATEGIES, WARM_STARTS, ConfigError,
                             TrainConfig)
from synthfed.model.presets import PRESETS


@dataclass(frozen=True)
class Setting:
    name: str  # the one public name (kebab-case); files may write it with underscores
    field: str  # the TrainConfig field it sets
    help: str
    choices: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return f"--{self.name}"

    @property
    def kind(self) -> tuple[str, bool]:
        """("int" | "float" | "str" | "bool", nullable), from the dataclass annotation."""
        return type_of(_FIELD_TYPES[self.field])

    @property
    def default(self):
        f = _FIELDS[self.field]
        return f.default if f.default is not MISSING else None


def _s(name: str, help: str, field: str | None = None, choices: tuple[str, ...] = ()) -> Setting:
    return Setting(name=name, field=field or name.replace("-", "_"), help=help, choices=choices)


# In the order ``synthfed train --help`` lists them.
SETTINGS: tuple[Setting, ...] = (
    _s("data", "Data source: digits | fashion-mnist[:DIR] | idx:IMAGES,LABELS | folder:DIR | csv:FILE; with "
               "--partition folders, a folder of per-client folders."),
    _s("strategy", "fedavg | centralized (pooled data, same compute) | local (each client alone) | fedper | fedrep "
                   "(shared backbone, local head) | pfdm (timestep split).", choices=STRATEGIES),
    _s("clients", "Number of clients K to split the data over.", field="num_clients"),
    _s("partition", "dirichlet | iid | folders (DATA holds one folder per client).", choices=PARTITIONS),
    _s("alpha", "Dirichlet concentration: small = very non-IID."),
    _s("min-partition-size", "Smallest number of images a client may get."),
    _s("max-client-size", "Keep at most this many images per client (seeded subset; CPU-scale experiments)."),
    _s("rounds", "Federated rounds R."),
    _s("local-epochs", "Local epochs E per round."),
    _s("local-steps", "Local steps per round instead of whole epochs (DP-SGD on a CPU budget: fewer, larger steps)."),
    _s("participation", "Clients per round: a fraction in (0, 1] (1 = all) or a count >= 2; one client a round is "
                        "the fraction 1/K."),
    _s("batch-size", "Batch size (expected batch size under DP-SGD)."),
    _s("lr", "Adam learning rate."),
    _s("ema-decay", "EMA decay of the weights (0 turns it off)."),
    _s("label-dropout", "Probability of dropping the label (classifier-free guidance)."),
    _s("preset", "Model size: tiny | small | paper.", choices=tuple(PRESETS)),
    _s("image-size", "Resize images to this square size (default: the data's own; digits: 16)."),
    _s("timesteps", "Diffusion steps T of the linear beta schedule.", field="num_train_timesteps"),
    _s("beta-start", "First beta of the linear schedule."),
    _s("beta-end", "Last beta of the linear schedule."),
    _s("epsilon", "Each client's records are (epsilon, delta)-DP: DP-SGD noise (pfdm: the upload's t0) "
                  "calibrated to it."),
    _s("delta", "DP delta per client (default 1/(10 n_k))."),
    _s("max-grad-norm", "DP-SGD per-example clipping norm C."),
    _s("noise-multiplicity", "DP-SGD: (t, noise) draws averaged per example before clipping."),
    _s("physical-batch-size", "DP-SGD: process each logical (Poisson) batch in chunks of this size (memory); the "
                              "privacy plan is the logical batch's."),
    _s("warm-start", "auto (under --epsilon: central) | central (pretrain on one DP release of each class's mean "
                     "and principal directions) | none.", choices=("auto", *WARM_STARTS)),
    _s("warm-start-share", "Part of --epsilon the central images get on their own; DP-SGD is calibrated to the "
                           "rest of the composition."),
    _s("warm-start-steps", "Pretraining steps on draws of the DP class Gaussians (post-processing, no budget)."),
    _s("warm-start-rank", "Principal directions kept per class (0: class means only)."),
    _s("warm-start-clip", "L2 clip of each image before the central release (default sqrt(#pixels): no image "
                          "changes)."),
    _s("init-from", "Start from this model folder's weights (e.g. synthfed pretrain on public data); costs no "
                    "budget, the card names it."),
    _s("head", "fedper/fedrep: the local head: up | out | class-embedding, or glob patterns like "
               "'up_blocks.1.*,conv_out.*'."),
    _s("head-epochs", "fedrep: head-only epochs before the body epochs."),
    _s("t0", "pfdm: hand-off timestep (default: the accountant picks it from --epsilon)."),
    _s("clip-norm", "pfdm: L2 clip of each image before upload (default sqrt(#pixels): no image changes)."),
    _s("upload-copies", "pfdm: noised copies uploaded per image (they compose)."),
    _s("label-epsilon", "pfdm: protect uploaded labels by randomized response with this epsilon."),
    _s("public-labels", "pfdm: declare labels public (uploaded as they are)."),
    _s("local-epsilon", "pfdm: also train the local low-noise denoisers with DP-SGD at this epsilon."),
    _s("precision", "fp32 | bf16 (autocast; clipping stays fp32).", choices=PRECISIONS),
    _s("device", "auto | cpu | cuda.", choices=DEVICES),
    _s("seed", "Seed of the partition, initialisation and every draw."),
)

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_FIELD_TYPES = {name: str(f.type) for name, f in _FIELDS.items()}
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
BY_FIELD: dict[str, Setting] = {s.field: s for s in SETTINGS}
assert set(BY_FIELD) == set(_FIELDS), "every TrainConfig field has exactly one setting"


def type_of(annotation: str) -> tuple[str, bool]:
    """("int" | "float" | "str" | "bool", nullable) from a dataclass annotation string."""
    nullable = "None" in annotation
    for name in ("bool", "float", "int", "str"):
        if name in annotation:
            return name, nullable
    raise TypeError(f"unsupported annotation {annotation!r}")


def setting_for(key: str, where: str) -> Setting:
    """The setting a file key names (``local-epochs`` or ``local_epochs``); an
    unknown key is refused with the nearest name."""
    name = key.replace("_", "-")
    if name in BY_NAME:
        return BY_NAME[name]
    hint = ""
    if key in BY_FIELD:  # a field name that differs from its public name (num_clients)
        hint = f"; the setting is called {BY_FIELD[key].name!r} (as {BY_FIELD[key].option})"
    else:
        close = difflib.get_close_matches(name, list(BY_NAME), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def coerce_value(value, annotation: str, where: str):
    """A TOML value as the dataclass annotation's type (TOML has no null:
    "none" is None for a nullable field); anything else is refused, named."""
    kind, nullable = type_of(str(annotation))
    if nullable and (value is None or (isinstance(value, str) and value.strip().lower() == "none")):
        return None
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    expected = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[kind]
    if nullable:
        expected += ' or "none"'
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def coerce(value, setting: Setting, where: str):
    """A file value as the setting's type."""
    return coerce_value(value, _FIELD_TYPES[setting.field], where)


def fields_from_table(table: dict, where: str) -> dict:
    """``{TrainConfig field: value}`` of a TOML table keyed by setting names."""
    out: dict = {}
    for key, value in table.items():
        setting = setting_for(key, where)
        if setting.field in out:
            raise ConfigError(f"{where}: {setting.name!r} is given twice")
        out[setting.field] = coerce(value, setting, f"{where} {key}")
    return out
