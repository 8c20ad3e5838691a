"""``synthfed pretrain``: a model trained on public data, to start a private run from.

Public-data pretraining (PDP-Diffusion, PrivImage) costs no privacy budget of
the private run as long as the data really is public; ``train --init-from``
then starts from these weights, and the private run's card names the folder.
It helps most where the public data resembles the private data, and it must
have the same number of classes (the class embedding is part of the model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from synthfed.config import TrainConfig
from synthfed.errors import UsageError
from synthfed.progress import Progress, null_progress
from synthfed.training import train

PRETRAINED_FILE = "pretrained.json"


def pretrain(config: TrainConfig, out_dir: str | Path, *, progress: Progress = null_progress) -> Path:
    """Train ``config`` centrally without DP into ``out_dir/run`` and write its
    EMA weights as the model folder ``out_dir/model``; returns that folder."""
    if config.private or config.warm_start != "none":
        raise UsageError("pretrain trains on public data without DP: leave out --epsilon and --warm-start")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"--out {out_dir} is not empty; choose a new folder")
    config = config.replace(strategy="centralized", num_clients=1, partition="iid").validate()
    result = train(config, out_dir / "run", progress=progress)
    model_dir = out_dir / "model"
    tmp = out_dir / ".model.tmp"
    shutil.copytree(result.last_round_dir / "global" / "ema", tmp)
    (tmp / PRETRAINED_FILE).write_text(json.dumps({
        "format": 1, "public_data": config.data if "/" not in config.data else Path(config.data).name,
        "image_size": config.image_size, "preset": config.preset, "rounds": config.rounds,
        "local_epochs": config.local_epochs, "note": "trained without DP on data declared public",
    }, indent=2))
    tmp.rename(model_dir)  # a complete folder or none
    return model_dir
