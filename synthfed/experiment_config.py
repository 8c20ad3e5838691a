"""Experiment configs: a TOML file validated once into frozen dataclasses.

A config names the data, a base ``TrainConfig`` (``[train]``), a grid of
``TrainConfig`` fields to sweep (``[grid]``, every value a list), the seeds,
how to sample (``[generate]``) and what to measure (``[metrics]``)::

    name = "fmnist-table1"
    seeds = [0, 1]

    [data]
    source = "fashion-mnist"
    image_size = 16
    train_per_class = 600     # optional stratified subsample of the train split
    test_per_class = 200      # ... and of the test split

    [train]                   # any TrainConfig field except data, image_size, seed
    preset = "small"
    rounds = 6

    [grid]                    # the cartesian product of these lists, times seeds
    strategy = ["centralized", "fedavg"]
    alpha = [0.1, 0.5]
    epsilon = ["none", 10.0]  # TOML has no null: "none" means not private

    [generate]
    per_class = 50
    steps = 25

    [metrics]
    inception = false

Every problem raises ``ExperimentConfigError`` naming the file, the table and
the key. ``expand_grid`` turns a config into cells; a cell's id is readable
(the swept values and the seed) plus a hash of everything that determines its
samples, so two configs that share a cell share its id."""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from synthfed.config import ConfigError, TrainConfig
from synthfed.settings import BY_FIELD, coerce, coerce_value, setting_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Grid axes in the order tables show them.
AXIS_ORDER = (
    "strategy", "alpha", "num_clients", "participation", "local_epochs", "epsilon", "partition", "rounds",
    "batch_size", "lr", "preset", "noise_multiplicity",
)
AXIS_LABELS = {
    "strategy": "strategy",
    "alpha": "alpha",
    "num_clients": "K",
    "participation": "participation",
    "local_epochs": "E",
    "epsilon": "epsilon",
    "partition": "partition",
    "rounds": "R",
    "batch_size": "batch",
    "lr": "lr",
    "preset": "preset",
    "noise_multiplicity": "m",
}
# A centralized run pools every client's data: these change nothing about it, so
# centralized cells are collapsed to the base value and shown as "-".
NOT_CENTRALIZED = ("alpha", "num_clients", "participation", "partition", "min_partition_size")
_NOT_IN_TRAIN = ("data", "image_size", "seed")
SAMPLERS = ("ddim", "ddpm")


class ExperimentConfigError(ConfigError):
    """A config file that cannot describe an experiment; the message names the file and key."""


def _coerce(value, annotation: str, where: str):
    try:
        return coerce_value(value, annotation, where)
    except ConfigError as exc:
        raise ExperimentConfigError(str(exc)) from None


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ExperimentConfigError(f"{where}: [{key}] must be a table")
    return value


def _build(cls, raw: dict, where: str, *, skip: tuple[str, ...] = ()):
    """A frozen dataclass from a TOML table: unknown keys and wrong types are errors."""
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: _coerce(v, known[k].type, f"{where} {k}") for k, v in raw.items()})


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"  # any --data spec except per-client folders
    image_size: int | None = None  # None: the source's own size (digits: 16)
    train_per_class: int | None = None  # stratified subsample of the train split (None: all of it)
    test_per_class: int | None = None  # ... of the test split
    subset_seed: int = 0

    def validate(self, where: str) -> "DataSpec":
        if not self.source.strip():
            raise ExperimentConfigError(f"{where} source: must not be empty")
        if self.image_size is not None and self.image_size < 4:
            raise ExperimentConfigError(f"{where} image_size: must be at least 4")
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            if value is not None and value < 2:
                raise ExperimentConfigError(f"{where} {key}: must be at least 2")
        return self

    @property
    def subsampled(self) -> bool:
        return self.train_per_class is not None or self.test_per_class is not None


@dataclass(frozen=True)
class GenerateSpec:
    per_class: int = 20
    sampler: str = "ddim"
    steps: int = 25
    guidance: float = 0.0
    batch_size: int = 100

    def validate(self, where: str, *, timesteps: int) -> "GenerateSpec":
        if self.per_class < 2:
            raise ExperimentConfigError(f"{where} per_class: must be at least 2 (FID needs a covariance)")
        if self.sampler not in SAMPLERS:
            raise ExperimentConfigError(f"{where} sampler: must be one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= timesteps:
            raise ExperimentConfigError(f"{where} steps: must be in [1, num_train_timesteps = {timesteps}]")
        if self.guidance < 0:
            raise ExperimentConfigError(f"{where} guidance: must be non-negative")
        if self.batch_size < 1:
            raise ExperimentConfigError(f"{where} batch_size: must be at least 1")
        return self


@dataclass(frozen=True)
class MetricsSpec:
    classifier_epochs: int = 10  # the real-data SmallCNN (feature space of the fast FID and the IS)
    classifier_seed: int = 0
    precision_recall: bool = True  # k-NN precision/recall in the classifier's feature space
    pr_k: int = 3
    kid: bool = False  # KID (classifier features) against the real test set
    inception: bool = False  # real-Inception FID (needs the fid extra; ≈0.26 s/image on CPU)
    inception_max_images: int = 500  # cap on each set given to Inception (seeded subset)
    inception_batch_size: int = 32
    cache_dir: str | None = None  # None: SYNTHFED_CACHE_DIR or ~/.cache/synthfed

    def validate(self, where: str) -> "MetricsSpec":
        if self.classifier_epochs < 1:
            raise ExperimentConfigError(f"{where} classifier_epochs: must be at least 1")
        if self.pr_k < 1:
            raise ExperimentConfigError(f"{where} pr_k: must be at least 1")
        if self.inception_max_images < 2 or self.inception_batch_size < 1:
            raise ExperimentConfigError(f"{where} inception_max_images must be >= 2 and inception_batch_size >= 1")
        return self

    def comparable(self) -> dict:
        """What a stored result depends on (the cache location does not count)."""
        d = asdict(self)
        d.pop("cache_dir")
        return d


@dataclass(frozen=True)
class Cell:
    id: str
    config: TrainConfig  # data = the declared source; the runner substitutes the prepared data
    axes: dict  # swept axis -> value shown in tables (None where it does not apply)
    seed: int

    @property
    def group(self) -> tuple:
        """Cells differing only in seed share a group (one table row)."""
        return tuple(sorted((k, repr(v)) for k, v in self.axes.items()))


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    seeds: tuple[int, ...]
    data: DataSpec
    train: TrainConfig  # base values (data, image_size, seed are set per cell)
    grid: tuple[tuple[str, tuple], ...]
    generate: GenerateSpec = GenerateSpec()
    metrics: MetricsSpec = MetricsSpec()
    description: str = ""
    budget: str = ""  # free text: the compute budget the config is sized for
    source_text: str = field(default="", compare=False, repr=False)  # the TOML it came from

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "budget": self.budget,
            "seeds": list(self.seeds),
            "data": asdict(self.data),
            "train": self.train.to_dict(),
            "grid": {k: list(v) for k, v in self.grid},
            "generate": asdict(self.generate),
            "metrics": asdict(self.metrics),
        }


def _setting_value(value, field_name: str, where: str):
    try:
        return coerce(value, BY_FIELD[field_name], where)
    except ConfigError as exc:
        raise ExperimentConfigError(str(exc)) from None


def _fields(table: dict, where: str) -> dict:
    """A [train] or [grid] table re-keyed by TrainConfig field; its keys are the
    settings' public names (synthfed.settings), as on the command line."""
    out = {}
    for key, value in table.items():
        try:
            out[setting_for(key, where).field] = value
        except ConfigError as exc:
            raise ExperimentConfigError(str(exc)) from None
    return out


def _check_top_level(raw: dict, where: str) -> tuple[str, list]:
    """The top-level keys: none unknown, a name, distinct integer seeds, string description and budget."""
    top_keys = {"name", "description", "budget", "seeds", "data", "train", "grid", "generate", "metrics"}
    unknown = sorted(set(raw) - top_keys)
    if unknown:
        raise ExperimentConfigError(f"{where}: unknown top-level key(s) {unknown}; known: {sorted(top_keys)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ExperimentConfigError(f"{where}: name must be a non-empty string")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ExperimentConfigError(f"{where}: seeds must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ExperimentConfigError(f"{where}: seeds must not repeat")
    for key in ("description", "budget"):
        if not isinstance(raw.get(key, ""), str):
            raise ExperimentConfigError(f"{where}: {key} must be a string")
    return name, seeds


def _base_train(raw: dict, data: DataSpec, where: str) -> TrainConfig:
    """The [train] table as the base TrainConfig of every cell (data and image size from [data])."""
    train_raw = _fields(_table(raw, "train", where), f"{where} [train]")
    for key in _NOT_IN_TRAIN:
        if key in train_raw:
            hint = {"data": "[data] source", "image_size": "[data] image_size", "seed": "seeds"}[key]
            raise ExperimentConfigError(f"{where} [train] {BY_FIELD[key].name}: set it as {hint}")
    base_values = {k: _setting_value(v, k, f"{where} [train] {BY_FIELD[k].name}") for k, v in train_raw.items()}
    try:
        base = TrainConfig(data=data.source, image_size=data.image_size, **base_values).validate()
    except ConfigError as exc:
        raise ExperimentConfigError(f"{where} [train]: {exc}") from None
    if base.partition == "folders":
        raise ExperimentConfigError(f"{where} [train] partition: experiments split one source; 'folders' is not supported")
    return base


def parse_experiment(raw: dict, *, where: str = "config", source_text: str = "") -> ExperimentConfig:
    name, seeds = _check_top_level(raw, where)
    data = _build(DataSpec, _table(raw, "data", where), f"{where} [data]").validate(f"{where} [data]")
    base = _base_train(raw, data, where)

    grid_raw = _fields(_table(raw, "grid", where), f"{where} [grid]")
    grid = []
    for key, values in grid_raw.items():
        label = BY_FIELD[key].name  # the setting's public name, as the user wrote it
        if key in _NOT_IN_TRAIN:
            raise ExperimentConfigError(f"{where} [grid] {label}: cannot be swept here (seeds: use seeds; data: one source per config)")
        if not isinstance(values, list) or not values:
            raise ExperimentConfigError(f"{where} [grid] {label}: must be a non-empty list")
        coerced = tuple(_setting_value(v, key, f"{where} [grid] {label}") for v in values)
        if len(set(coerced)) != len(coerced):
            raise ExperimentConfigError(f"{where} [grid] {label}: values must not repeat")
        grid.append((key, coerced))
    grid.sort(key=lambda kv: AXIS_ORDER.index(kv[0]) if kv[0] in AXIS_ORDER else len(AXIS_ORDER))
    if not any(k == "strategy" for k, _ in grid):
        grid.insert(0, ("strategy", (base.strategy,)))

    generate = _build(GenerateSpec, _table(raw, "generate", where), f"{where} [generate]").validate(
        f"{where} [generate]", timesteps=base.num_train_timesteps
    )
    metrics = _build(MetricsSpec, _table(raw, "metrics", where), f"{where} [metrics]").validate(f"{where} [metrics]")
    config = ExperimentConfig(
        name=name.strip(),
        seeds=tuple(seeds),
        data=data,
        train=base,
        grid=tuple(grid),
        generate=generate,
        metrics=metrics,
        description=raw.get("description", ""),
        budget=raw.get("budget", ""),
        source_text=source_text,
    )
    expand_grid(config, where=where)  # every cell must validate now, not hours into the run
    return config


def load_experiment(path: str | Path) -> ExperimentConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ExperimentConfigError(f"cannot read experiment config {path}: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_experiment(raw, where=str(path), source_text=text)


def _fmt_value(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def cell_hash(config: TrainConfig, data: DataSpec, generate: GenerateSpec) -> str:
    """Everything that determines a cell's samples (not where its data was written)."""
    train = config.to_dict()
    train.pop("data")
    blob = json.dumps({"train": train, "data": asdict(data), "generate": asdict(generate)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def expand_grid(config: ExperimentConfig, *, where: str = "config") -> list[Cell]:
    """The grid's cells, seeds innermost; centralized duplicates collapsed."""
    keys = [k for k, _ in config.grid]
    cells: list[Cell] = []
    seen: set[str] = set()
    for combo in itertools.product(*(v for _, v in config.grid)):
        changes = dict(zip(keys, combo))
        axes = dict(changes)
        if changes.get("strategy") == "centralized":
            for key in NOT_CENTRALIZED:
                if key in changes:
                    changes[key] = getattr(config.train, key)
                    axes[key] = None
        for seed in config.seeds:
            try:
                cfg = config.train.replace(**changes, seed=seed).validate()
            except ConfigError as exc:
                shown = ", ".join(f"{k}={_fmt_value(v)}" for k, v in changes.items())
                raise ExperimentConfigError(f"{where}: grid cell ({shown}, seed={seed}): {exc}") from None
            readable = "_".join(
                f"{AXIS_LABELS.get(k, k) if k != 'strategy' else ''}{_fmt_value(v)}"
                for k, v in axes.items()
                if v is not None and (k == "strategy" or len(dict(config.grid)[k]) > 1)
            )
            cell_id = f"{readable}_s{seed}_{cell_hash(cfg, config.data, config.generate)}".replace("/", "-")
            if cell_id in seen:
                continue
            seen.add(cell_id)
            cells.append(Cell(id=cell_id, config=cfg, axes=axes, seed=seed))
    return cells
