"""synthfed: federated, differentially private diffusion models for shareable synthetic data.

From Python::

    from synthfed import TrainConfig, train, generate, audit, export

(``synthfed.api`` documents each.) The names load on first use, so that
``import synthfed`` (and the command line's start) does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TrainConfig", "audit", "export", "generate", "train", "__version__"]

if TYPE_CHECKING:
    from synthfed.api import audit, export, generate, train
    from synthfed.config import TrainConfig

_API = ("audit", "export", "generate", "train")


def __getattr__(name: str) -> Any:  # PEP 562
    if name == "TrainConfig":
        from synthfed.config import TrainConfig

        return TrainConfig
    if name in _API:
        from synthfed import api

        return getattr(api, name)
    raise AttributeError(f"module 'synthfed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
