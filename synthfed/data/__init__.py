"""Data: loading real images from disk and splitting them over clients.

Every loader returns an :class:`ImageDataset`; every user-data problem is a
:class:`DataError` naming the file or client at fault.
"""
from .dataset import DataError, ImageDataset, SourceSpecError, concat
from .loaders import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_EXTENSIONS,
    load_csv,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    load_source,
)
from .partition import (
    FederatedData,
    dirichlet_partition,
    iid_partition,
    load_client_folders,
    partition_dataset,
    partition_stats,
)

__all__ = [
    "DataError",
    "SourceSpecError",
    "ImageDataset",
    "concat",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "load_csv",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_image_folder",
    "load_source",
    "FederatedData",
    "dirichlet_partition",
    "iid_partition",
    "load_client_folders",
    "partition_dataset",
    "partition_stats",
]
