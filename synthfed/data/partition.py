"""Split one dataset over simulated clients, or load real per-client folders.

Simulation needs controllable heterogeneity: the per-class Dirichlet split
(Hsu et al. 2019; Flower Datasets' ``DirichletPartitioner``) is the standard
knob, small alpha = each client sees few classes, large alpha = IID. Splits are
reproducible from the seed alone so an experiment can be rerun exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import DataError, ImageDataset, concat
from .images import check_sizes, check_square, choose_channels, decode, scan_headers
from .labels import check_folder_names
from .loaders import scan_class_folders, subdirs

__all__ = [
    "iid_partition",
    "dirichlet_partition",
    "partition_stats",
    "FederatedData",
    "partition_dataset",
    "load_client_folders",
]


def _check_clients(num_samples: int, num_clients: int, min_partition_size: int) -> None:
    if int(num_clients) < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if min_partition_size < 0:
        raise DataError(f"min_partition_size must be >= 0, got {min_partition_size}")
    need = max(num_clients * min_partition_size, num_clients)
    if num_samples < need:
        raise DataError(
            f"too few samples: {num_samples} cannot give {num_clients} clients at least "
            f"{max(min_partition_size, 1)} each (need {need}); use fewer clients or a smaller "
            "min_partition_size"
        )


def iid_partition(num_samples: int, *, num_clients: int, seed: int) -> list[np.ndarray]:
    """Uniformly random split into near-equal parts (sizes differ by at most 1)."""
    _check_clients(int(num_samples), int(num_clients), 1)
    perm = np.random.default_rng(seed).permutation(int(num_samples))
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, int(num_clients))]


def dirichlet_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    seed: int,
    min_partition_size: int = 10,
    max_retries: int = 1000,
) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) split; every index lands in exactly one client.

    For each class a proportion vector ``p ~ Dir(alpha * 1_K)`` cuts that
    class's shuffled indices into K pieces. The whole draw is repeated until
    every client holds at least ``min_partition_size`` samples (clients with
    a handful of images cannot train anything and break DP sampling rates).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {labels.shape}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise DataError(f"Dirichlet alpha must be a positive number, got {alpha}")
    num_clients = int(num_clients)
    _check_clients(len(labels), num_clients, int(min_partition_size))
    rng = np.random.default_rng(seed)
    class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    smallest = 0
    for _ in range(max(int(max_retries), 1)):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in class_indices:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
            for k, piece in enumerate(np.split(idx, cuts)):
                parts[k].append(piece)
        merged = [np.sort(np.concatenate(ps)).astype(np.int64) for ps in parts]
        smallest = min(len(m) for m in merged)
        if smallest >= min_partition_size:
            return merged
    raise DataError(
        f"Dirichlet(alpha={alpha}) could not give all {num_clients} clients at least "
        f"{min_partition_size} of {len(labels)} samples in {max_retries} draws (smallest client got "
        f"{smallest}): alpha is too small for this many clients; increase alpha, use fewer "
        "clients or lower min_partition_size"
    )


def partition_stats(labels: np.ndarray, parts: Sequence[np.ndarray], class_names: Sequence[str]):
    """Per-client class counts as a DataFrame: rows client_i, columns classes + "total"."""

    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(f"labels out of range [0, {k}) for class names {list(class_names)}")
    counts = np.stack([np.bincount(labels[np.asarray(p, dtype=np.int64)], minlength=k)
                       for p in parts]) if len(parts) else np.zeros((0, k), np.int64)
    return _counts_frame(counts, [f"client_{i}" for i in range(len(parts))], class_names)


def _counts_frame(counts: np.ndarray, index: Sequence[str], class_names: Sequence[str]):
    import pandas as pd

    df = pd.DataFrame(counts.astype(np.int64), index=list(index), columns=[str(c) for c in class_names])
    df["total"] = df.sum(axis=1)
    return df


@dataclass(frozen=True)
class FederatedData:
    """Each client's own dataset (same classes and image shape), plus provenance.

    ``client_names`` defaults to client_0..client_{K-1}; real per-client
    folders keep their folder names so reports point at the right site.
    """

    clients: tuple[ImageDataset, ...]
    class_names: tuple[str, ...]
    description: str
    client_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        clients = tuple(self.clients)
        names = tuple(str(c) for c in self.class_names)
        if not clients:
            raise DataError(f"no clients ({self.description})")
        cnames = tuple(self.client_names) or tuple(f"client_{i}" for i in range(len(clients)))
        if len(cnames) != len(clients):
            raise DataError(f"{len(cnames)} client names for {len(clients)} clients")
        shape = clients[0].image_shape
        for name, c in zip(cnames, clients):
            if c.class_names != names:
                raise DataError(f"client {name}: class names {c.class_names} differ from {names}")
            if c.image_shape != shape:
                raise DataError(
                    f"client {name}: image shape {c.image_shape} differs from {cnames[0]}'s {shape}"
                )
        object.__setattr__(self, "clients", clients)
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "client_names", cnames)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def stats(self):
        """Per-client class counts (DataFrame: rows clients, columns classes + "total")."""
        counts = np.stack([c.class_counts() for c in self.clients])
        return _counts_frame(counts, self.client_names, self.class_names)

    def pooled(self) -> ImageDataset:
        """All clients' data in one dataset: the centralized (non-federated) baseline."""
        pooled = concat(self.clients)
        return ImageDataset(pooled.images, pooled.labels, self.class_names, f"pooled: {self.description}")


def partition_dataset(
    dataset: ImageDataset,
    *,
    num_clients: int,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    seed: int = 0,
    min_partition_size: int = 10,
) -> FederatedData:
    """Simulate a federation by splitting ``dataset`` with ``scheme`` in {"dirichlet", "iid"}."""
    name = dataset.source or "dataset"
    if scheme == "dirichlet":
        parts = dirichlet_partition(dataset.labels, num_clients=num_clients, alpha=alpha, seed=seed,
                                    min_partition_size=min_partition_size)
        how = f"Dirichlet(alpha={alpha:g})"
    elif scheme == "iid":
        _check_clients(len(dataset), int(num_clients), int(min_partition_size))
        parts = iid_partition(len(dataset), num_clients=num_clients, seed=seed)
        how = "IID"
    else:
        raise DataError(f"unknown partition scheme {scheme!r}; use 'dirichlet' or 'iid'")
    clients = []
    for i, p in enumerate(parts):
        sub = dataset.subset(p)
        clients.append(ImageDataset(sub.images, sub.labels, sub.class_names, f"{name} client_{i}"))
    return FederatedData(
        clients=tuple(clients),
        class_names=dataset.class_names,
        description=f"{name}, {how} over {len(parts)} clients, seed {seed}",
    )


def _union_classes(path: Path, scans: dict[str, dict[str, list[Path]]]) -> tuple[str, ...]:
    """The sorted union of class folder names; DataError for a class with no image in any
    client (it would be generated, never trained) or names of mixed kinds."""
    first_seen: dict[str, Path] = {}
    held: set[str] = set()
    for client, classes in scans.items():
        for cls, files in classes.items():
            first_seen.setdefault(cls, path / client / cls)
            if files:
                held.add(cls)
    for cls, folder in first_seen.items():
        if cls not in held:
            raise DataError(f"class folder {folder} has no image, nor does class {cls!r} in any other client: a "
                            "class without images would be generated but never trained; add images or remove it")
    names = sorted(held)
    check_folder_names(names, lambda cls: first_seen[cls])
    return tuple(names)


def load_client_folders(path, *, grayscale: bool | None = None) -> FederatedData:
    """The real federated layout ``path/<client>/<class>/*.png``.

    Class names are the sorted union over clients (a client may lack a class,
    or hold an empty folder for it); labels index that union so every client
    shares one label space. A class folder with no image in any client is a
    DataError, as are class names of mixed kinds (see :mod:`.labels`) and
    non-square images. Channels are chosen over all clients together
    (grayscale only if every image is; a DataNote counts the conversions).
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"client folders {path}: not a directory")
    client_dirs = subdirs(path)
    if not client_dirs:
        raise DataError(f"client folders {path}: no client sub-folders "
                        "(expected path/<client>/<class>/*.png)")
    scans = {}
    for d in client_dirs:
        try:
            scans[d.name] = scan_class_folders(d, what="client")
        except DataError:
            raise DataError(
                f"client {d.name!r} is empty: no images in per-class sub-folders of {d}"
            ) from None
    class_names = _union_classes(path, scans)
    lookup = {c: i for i, c in enumerate(class_names)}
    per_client = {}
    sizes: dict[tuple[int, int], str] = {}
    all_files, all_headers = [], []
    for name, classes in scans.items():
        files = [f for fs in classes.values() for f in fs]
        labels = [lookup[c] for c, fs in classes.items() for _ in fs]
        headers = scan_headers(files)
        size = check_sizes(files, headers, what=f"client {name!r}")
        if sizes and size not in sizes:
            other_size, other = next(iter(sizes.items()))
            raise DataError(
                f"clients {other!r} and {name!r} have different image sizes "
                f"({other_size[0]}x{other_size[1]} vs {size[0]}x{size[1]}); resize them to one size first"
            )
        sizes.setdefault(size, name)
        all_files.extend(files)
        all_headers.extend(headers)
        per_client[name] = (files, labels)
    check_square(next(iter(sizes)), len(all_files), all_files[0], what=f"client folders {path}")
    channels = choose_channels(all_files, all_headers, grayscale, what=f"client folders {path}")
    clients = tuple(
        ImageDataset(decode(files, channels), np.asarray(labels, np.int64), class_names,
                     str(path / name))
        for name, (files, labels) in per_client.items()
    )
    return FederatedData(
        clients=clients,
        class_names=class_names,
        description=f"client folders {path} ({len(clients)} clients)",
        client_names=tuple(per_client),
    )
