"""Evaluation: classifiers, FID and related scores."""

from synthfed.evaluate.cache import EvalCache, default_cache_dir
from synthfed.evaluate.fid import (
    ClassifierFeatures,
    FeatureExtractor,
    FeatureStats,
    FIDError,
    InceptionFeatures,
    InceptionUnavailable,
    fid_between,
    fid_from_features,
    frechet_distance,
    inception_available,
    inception_preprocess,
    inception_weights_path,
)
from synthfed.evaluate.scores import (
    classifier_inception_score,
    kernel_inception_distance,
    knn_precision_recall,
    label_agreement,
)

__all__ = [
    "EvalCache",
    "default_cache_dir",
    "ClassifierFeatures",
    "FeatureExtractor",
    "FeatureStats",
    "FIDError",
    "InceptionFeatures",
    "InceptionUnavailable",
    "fid_between",
    "fid_from_features",
    "frechet_distance",
    "inception_available",
    "inception_preprocess",
    "inception_weights_path",
    "classifier_inception_score",
    "kernel_inception_distance",
    "knn_precision_recall",
    "label_agreement",
]
