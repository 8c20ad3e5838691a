"""From a validated ``TrainConfig`` to a trained run directory.

Loads and splits the data as the config says (the same way on resume, so the
fingerprints in run.json can be checked), builds the privacy plan when
``--epsilon`` is given, and hands over to the simulation engine, holding the
run directory's lock (``synthfed.locking``) throughout."""

from __future__ import annotations

from pathlib import Path


from synthfed.checkpoint import remove_stale_temps
from synthfed.config import TrainConfig
from synthfed.data import FederatedData, ImageDataset, load_client_folders, load_source, partition_dataset
from synthfed.federated.simulation import TrainResult, run_simulation
from synthfed.locking import run_lock
from synthfed.progress import Progress, null_progress


def load_federated_data(config: TrainConfig) -> FederatedData:
    """The clients' datasets for this config (centralized: one pooled client)."""
    if config.partition == "folders":
        fed = load_client_folders(config.data)
    else:
        dataset = load_source(config.data, split="train")
        if config.image_size is not None:
            dataset = dataset.resized(config.image_size)
        fed = partition_dataset(
            dataset,
            num_clients=config.num_clients,
            scheme=config.partition,
            alpha=config.alpha,
            seed=config.seed,
            min_partition_size=config.min_partition_size,
        )
    if config.partition == "folders" and config.image_size is not None:
        fed = FederatedData(
            clients=tuple(c.resized(config.image_size) for c in fed.clients),
            class_names=fed.class_names,
            description=fed.description,
            client_names=fed.client_names,
        )
    if config.max_client_size is not None:
        # A seeded random subset of each client (its own stream per client), so a
        # CPU-sized experiment keeps each client's class mix in expectation.
        fed = FederatedData(
            clients=tuple(cap_client(config, cid, data) for cid, data in enumerate(fed.clients)),
            class_names=fed.class_names,
            description=f"{fed.description}; at most {config.max_client_size} images per client",
            client_names=fed.client_names,
        )
    if config.strategy == "centralized":
        # Same data, same compute (rounds x local epochs), pooled in one place.
        fed = FederatedData(
            clients=(fed.pooled(),),
            class_names=fed.class_names,
            description=f"{fed.description}; pooled (centralized baseline)",
            client_names=("pooled",),
        )
    return fed


def cap_client(config: TrainConfig, cid: int, data: ImageDataset) -> ImageDataset:
    """``--max-client-size``: a seeded random subset of client ``cid`` (its own
    stream), so a CPU-sized experiment keeps each client's class mix in expectation."""
    return data.sample(config.max_client_size, seed=[config.seed, 7919, cid])


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: Progress = null_progress,
    stop_after_round: int | None = None,
) -> TrainResult:
    """Train (or with ``resume`` continue) the run in ``run_dir``, owning it for
    the duration: a second process on the same directory gets ``RunLocked``
    at once, whichever engine either of them runs."""
    with run_lock(run_dir, "synthfed train"):
        # Under the lock, temporary round folders can only be a dead owner's.
        remove_stale_temps(Path(run_dir))
        fed = load_federated_data(config)
        if config.strategy == "pfdm":
            from synthfed.federated.pfdm import run_pfdm

            return run_pfdm(config, fed, run_dir, resume=resume, progress=progress, stop_after_round=stop_after_round)
        privacy = None
        if config.private:
            from synthfed.privacy.training import PrivateTraining

            privacy = PrivateTraining.plan(config, fed)
        return run_simulation(
            config, fed, run_dir, resume=resume, privacy=privacy, progress=progress, stop_after_round=stop_after_round
        )
