"""What every engine and every node builds the same way from a ``TrainConfig``.

The model spec, the initial weights, the strategy, the local training plan,
the device and the derived public seeds: a Flower node, the Flower server and
the in-process simulation call these same functions, which is what lets a
Flower run reproduce the simulation bit for bit. No engine owns them."""

from __future__ import annotations

import numpy as np
import torch

from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.federated.backbone_head import BackboneHead
from synthfed.federated.client import LocalTraining
from synthfed.federated.fedavg import FedAvg
from synthfed.federated.local import LocalOnly
from synthfed.federated.split import split_parameters
from synthfed.federated.strategy import Strategy
from synthfed.model.presets import ModelSpec, build_unet


def resolve_device(name: str) -> torch.device:
    """``--device``: auto picks CUDA when present; cuda without it is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def derive_seed(*parts: int) -> int:
    """A public seed derived from the run seed and labels (never a client's secret draws)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def build_strategy(config: TrainConfig, num_clients: int, keys: list[str]) -> Strategy:
    """The FedAvg-style strategy of ``config.strategy`` over the model's parameter ``keys``."""
    per_round = config.clients_per_round(num_clients)
    if config.strategy in ("fedavg", "centralized"):
        return FedAvg(clients_per_round=per_round)
    if config.strategy == "local":
        return LocalOnly(clients_per_round=per_round)
    if config.strategy in ("fedper", "fedrep"):
        split = split_parameters(keys, config.head)
        return BackboneHead(clients_per_round=per_round, split=split, name=config.strategy)
    raise ValueError(f"strategy {config.strategy!r} does not run on the FedAvg-style engine")


def local_training(config: TrainConfig, spec: ModelSpec, strategy: Strategy) -> LocalTraining:
    """A client's local plan per round (FedRep: a head phase, then a body phase)."""
    phases = None
    if config.strategy == "fedrep":
        assert isinstance(strategy, BackboneHead)
        phases = (
            ("head", config.head_epochs, frozenset(strategy.split.local)),
            ("body", config.local_epochs, frozenset(strategy.split.shared)),
        )
    return LocalTraining(
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        label_dropout=config.label_dropout,
        null_label=spec.null_label,
        ema_decay=config.ema_decay,
        precision=config.precision,
        multiplicity=config.noise_multiplicity,
        phases=phases,
        steps=config.local_steps,
    )


def model_spec_for(config: TrainConfig, fed: FederatedData) -> ModelSpec:
    """The model spec of ``config`` on ``fed``'s image shape and classes."""
    return spec_from_shape(config, fed.clients[0].image_shape, fed.class_names)


def spec_from_shape(config: TrainConfig, image_shape: tuple[int, int, int], class_names) -> ModelSpec:
    """The model spec from a shape and class names (a Flower server knows only what nodes told it)."""
    c, h, _ = image_shape
    return ModelSpec(
        preset=config.preset,
        image_size=h,
        channels=c,
        num_classes=len(class_names),
        class_names=tuple(class_names),
        schedule=config.schedule().to_dict(),
    )


def initial_state(config: TrainConfig, spec: ModelSpec) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The run's starting weights: every engine and every node builds the same
    ones from the seed (or ``--init-from``'s folder), so the local parts never
    need to be sent."""
    torch.manual_seed(config.seed)
    model = build_unet(spec)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if config.init_from:
        from synthfed.federated.warm_start import load_init_weights

        init = load_init_weights(config.init_from, spec, init)
    return model, init
