"""Tests for synthfed.data.partition."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthfed.data import (
    DataError,
    FederatedData,
    dirichlet_partition,
    iid_partition,
    load_client_folders,
    load_digits,
    partition_dataset,
    partition_stats,
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(split="all", size=None)


def _png(path: Path, *, size=(8, 8), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 100 if mode == "L" else (100, 50, 0)).save(path)


def _mean_tv(labels: np.ndarray, parts, k: int) -> float:
    """Mean total-variation distance between each client's class histogram and the global one."""
    glob = np.bincount(labels, minlength=k) / len(labels)
    tvs = [0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum() for p in parts]
    return float(np.mean(tvs))


def _assert_exact_cover(parts, n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted, no duplicates


# --------------------------------------------------------------------------- IID
def test_iid_partition_covers_and_balances():
    # Execute
    parts = iid_partition(103, num_clients=4, seed=1)
    # Assert
    _assert_exact_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, num_clients=4, seed=1)))
    with pytest.raises(DataError, match="too few samples"):
        iid_partition(3, num_clients=4, seed=0)


# --------------------------------------------------------------------------- Dirichlet
def test_dirichlet_reproducible_by_seed_and_seeds_differ(digits):
    # Execute
    a = dirichlet_partition(digits.labels, num_clients=5, alpha=0.5, seed=7)
    b = dirichlet_partition(digits.labels, num_clients=5, alpha=0.5, seed=7)
    c = dirichlet_partition(digits.labels, num_clients=5, alpha=0.5, seed=8)
    # Assert
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_covers_every_index_once_and_respects_min_size(digits):
    # Execute
    parts = dirichlet_partition(digits.labels, num_clients=10, alpha=0.1, seed=0, min_partition_size=40)
    # Assert
    assert len(parts) == 10
    _assert_exact_cover(parts, len(digits))
    assert min(len(p) for p in parts) >= 40


def test_dirichlet_impossible_requests_raise_explaining_why(digits):
    # Execute / Assert: more demanded than exists
    with pytest.raises(DataError, match="too few samples"):
        dirichlet_partition(digits.labels[:50], num_clients=10, alpha=1.0, seed=0, min_partition_size=10)
    # alpha so small that each class goes to one client: some client always stays tiny
    with pytest.raises(DataError, match="alpha is too small"):
        dirichlet_partition(digits.labels, num_clients=10, alpha=1e-4, seed=0,
                            min_partition_size=150, max_retries=20)
    with pytest.raises(DataError, match="positive"):
        dirichlet_partition(digits.labels, num_clients=2, alpha=0.0, seed=0)


def test_dirichlet_large_alpha_approaches_iid_measured(digits):
    # Prepare
    labels, k = digits.labels, digits.num_classes
    # Execute
    tv_iid_like = _mean_tv(labels, dirichlet_partition(labels, num_clients=10, alpha=1e4, seed=0), k)
    tv_mid = _mean_tv(labels, dirichlet_partition(labels, num_clients=10, alpha=1.0, seed=0), k)
    tv_skewed = _mean_tv(labels, dirichlet_partition(labels, num_clients=10, alpha=0.1, seed=0), k)
    tv_uniform = _mean_tv(labels, iid_partition(len(labels), num_clients=10, seed=0), k)
    # Assert: monotone in alpha; alpha=1e4 is as close to the global histogram as a uniform split
    assert tv_iid_like < 0.05
    assert tv_skewed > 0.3
    assert tv_iid_like < tv_mid < tv_skewed
    assert tv_iid_like < tv_uniform + 0.05


# --------------------------------------------------------------------------- stats / FederatedData
def test_partition_stats_and_federated_data(digits):
    # Execute
    fed = partition_dataset(digits, num_clients=4, alpha=0.5, seed=0)
    parts = dirichlet_partition(digits.labels, num_clients=4, alpha=0.5, seed=0)
    stats = partition_stats(digits.labels, parts, digits.class_names)
    pooled = fed.pooled()
    # Assert
    assert list(stats.index) == ["client_0", "client_1", "client_2", "client_3"]
    assert list(stats.columns) == list(digits.class_names) + ["total"]
    assert stats["total"].sum() == len(digits)
    assert fed.stats().equals(stats)
    assert fed.description == "digits, Dirichlet(alpha=0.5) over 4 clients, seed 0"
    assert len(pooled) == len(digits)
    assert np.array_equal(pooled.class_counts(), digits.class_counts())
    iid = partition_dataset(digits, num_clients=3, scheme="iid", seed=1)
    assert "IID over 3 clients" in iid.description
    with pytest.raises(DataError, match="unknown partition scheme"):
        partition_dataset(digits, num_clients=3, scheme="shards")


def test_federated_data_rejects_mismatched_clients(digits):
    # Prepare
    a = digits.subset(np.arange(20))
    b = digits.subset(np.arange(20, 40)).resized(16)
    # Execute / Assert
    with pytest.raises(DataError, match="image shape"):
        FederatedData(clients=(a, b), class_names=digits.class_names, description="x")


# --------------------------------------------------------------------------- per-client folders
def test_load_client_folders_union_of_classes(tmp_path):
    # Prepare: site_b lacks class "cat"; site_a lacks "fish"
    for client, classes in (("site_a", ("cat", "dog")), ("site_b", ("dog", "fish"))):
        for cls in classes:
            for i in range(2):
                _png(tmp_path / client / cls / f"{i}.png")
    # Execute
    fed = load_client_folders(tmp_path)
    # Assert
    assert fed.class_names == ("cat", "dog", "fish")
    assert fed.client_names == ("site_a", "site_b")
    assert fed.clients[0].class_counts().tolist() == [2, 2, 0]
    assert fed.clients[1].class_counts().tolist() == [0, 2, 2]
    assert fed.clients[0].image_shape == (1, 8, 8)
    assert list(fed.stats().index) == ["site_a", "site_b"]
    assert len(fed.pooled()) == 8


def test_load_client_folders_errors(tmp_path):
    # Prepare
    _png(tmp_path / "empty" / "a" / "cat" / "0.png")
    (tmp_path / "empty" / "b" / "cat").mkdir(parents=True)
    _png(tmp_path / "sizes" / "a" / "cat" / "0.png", size=(8, 8))
    _png(tmp_path / "sizes" / "b" / "cat" / "0.png", size=(16, 16))
    (tmp_path / "none").mkdir()
    # Execute / Assert
    with pytest.raises(DataError, match="client 'b' is empty"):
        load_client_folders(tmp_path / "empty")
    with pytest.raises(DataError, match="clients 'a' and 'b' have different image sizes"):
        load_client_folders(tmp_path / "sizes")
    with pytest.raises(DataError, match="no client sub-folders"):
        load_client_folders(tmp_path / "none")
