"""Privacy audits: the nearest-neighbour check flags copies; the membership attack separates memorized images."""

import numpy as np
import pytest
import torch
from torch import nn

from synthfed.data import ImageDataset
from synthfed.diffusion import NoiseSchedule
from synthfed.privacy.membership import loss_threshold_mia
from synthfed.privacy.memorization import DEFAULT_COPY_RMS, nearest_neighbour_audit, nearest_neighbours


def _images(rng, n, hw=8):
    return rng.integers(0, 256, size=(n, 1, hw, hw), dtype=np.uint8)


def test_nearest_neighbours_match_brute_force():
    # Prepare
    rng = np.random.default_rng(0)
    queries, reference = _images(rng, 37), _images(rng, 101)
    q = queries.reshape(37, -1) / 255.0
    r = reference.reshape(101, -1) / 255.0
    brute = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    # Execute
    dist, idx = nearest_neighbours(queries, reference, batch_size=16)
    # Assert
    np.testing.assert_array_equal(idx, brute.argmin(axis=1))
    np.testing.assert_allclose(dist, brute.min(axis=1), rtol=1e-6)  # float32 pixels


def test_planted_copies_are_flagged_and_shown_first():
    # Prepare: fresh synthetic images, plus an exact copy of train[17] at index 5 and a
    # copy of train[3] re-quantised by one grey level at index 9
    rng = np.random.default_rng(1)
    train, holdout, synthetic = _images(rng, 200), _images(rng, 100), _images(rng, 60)
    synthetic[5] = train[17]
    nudged = train[3].astype(np.int16) + rng.choice([-1, 1], size=train[3].shape)
    synthetic[9] = np.clip(nudged, 0, 255).astype(np.uint8)
    # Execute
    audit = nearest_neighbour_audit(synthetic, train, holdout, k_pairs=4)
    # Assert
    assert audit["near_copies"] == 2
    assert audit["near_copy_indices"] == [5, 9]
    first = audit["closest_pairs"][0]
    assert (first["synthetic_index"], first["train_index"], first["distance"]) == (5, 17, 0.0)
    assert first["near_copy"] is True
    assert audit["closest_pairs"][1]["synthetic_index"] == 9 and audit["closest_pairs"][1]["train_index"] == 3
    assert audit["closest_pairs"][2]["near_copy"] is False
    assert audit["min_distance"] == 0.0
    assert audit["copy_threshold"] == pytest.approx(DEFAULT_COPY_RMS * 8)  # sqrt(64 pixels)
    assert audit["holdout_near_copies"] == 0


def test_dcr_ratio_is_near_one_without_copying_and_low_for_a_memorizer():
    # Prepare: train and hold-out from one distribution; one generator draws fresh
    # images, the other returns training images with faint noise
    rng = np.random.default_rng(2)
    train, holdout = _images(rng, 150), _images(rng, 150)
    fresh = _images(rng, 80)
    noisy = np.clip(train[:80].astype(np.int16) + rng.integers(-6, 7, size=train[:80].shape), 0, 255).astype(np.uint8)
    # Execute
    honest = nearest_neighbour_audit(fresh, train, holdout)
    copier = nearest_neighbour_audit(noisy, train, holdout)
    # Assert
    assert 0.9 < honest["dcr_ratio"] < 1.1
    assert 0.3 < honest["share_closer_to_train"] < 0.7
    assert honest["near_copies"] == 0
    assert copier["dcr_ratio"] < 0.2
    assert copier["share_closer_to_train"] == 1.0
    assert copier["near_copies"] == 0  # noisy, not exact: only the ratio exposes it


def test_mismatched_shapes_are_rejected():
    # Prepare
    rng = np.random.default_rng(3)
    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        nearest_neighbour_audit(_images(rng, 4, hw=8), _images(rng, 4, hw=6), _images(rng, 4, hw=8))


# --------------------------------------------------------------------------- membership inference
class _Out:
    def __init__(self, sample):
        self.sample = sample


class Memorizer(nn.Module):
    """Predicts the noise exactly for the images it stored (the worst case of memorization)."""

    def __init__(self, stored: torch.Tensor, schedule: NoiseSchedule):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.stored = stored.flatten(1)
        self.abar = schedule.alphas_cumprod()

    def forward(self, xt, t, class_labels=None):
        a = self.abar[t].view(-1, 1)
        flat = xt.flatten(1)
        # the stored image that best explains x_t, and the noise it implies
        cand = (flat[:, None, :] - a.sqrt()[:, None] * self.stored[None]) / (1 - a).sqrt()[:, None]
        best = cand.pow(2).sum(-1).argmin(dim=1)
        return _Out(cand[torch.arange(len(flat)), best].view_as(xt))


class Blind(nn.Module):
    """Predicts zero noise whatever the input: knows nothing about any image."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, xt, t, class_labels=None):
        return _Out(torch.zeros_like(xt))


def _dataset(rng, n):
    return ImageDataset(_images(rng, n), rng.integers(0, 3, size=n), ("a", "b", "c"))


def test_loss_threshold_attack_detects_a_memorizing_model():
    # Prepare
    rng = np.random.default_rng(4)
    schedule = NoiseSchedule(num_train_timesteps=100)
    members, non_members = _dataset(rng, 120), _dataset(rng, 120)
    model = Memorizer(members.to_tensor()[0], schedule)
    # Execute
    result = loss_threshold_mia(model, schedule, members, non_members, timesteps=(5, 10, 20), draws=1, seed=0)
    # Assert
    assert result["auc"] > 0.95
    assert result["tpr_at_1pct_fpr"] > 0.5
    assert result["member_loss_mean"] < result["non_member_loss_mean"]
    assert result["num_members"] == result["num_non_members"] == 120


def test_attack_on_a_model_that_ignores_the_data_is_at_chance():
    # Prepare: paired noise draws give members and non-members identical losses
    rng = np.random.default_rng(5)
    schedule = NoiseSchedule(num_train_timesteps=100)
    members, non_members = _dataset(rng, 150), _dataset(rng, 90)
    # Execute
    result = loss_threshold_mia(Blind(), schedule, members, non_members, draws=2, seed=1)
    # Assert
    assert result["auc"] == pytest.approx(0.5)
    assert result["num_members"] == result["num_non_members"] == 90  # balanced by subsampling
    assert result["timesteps"] == [2, 5, 10, 20, 30]
