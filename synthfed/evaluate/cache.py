"""On-disk cache of what evaluation recomputes otherwise: real-set feature
statistics and the real-data classifiers.

Layout under the cache root (``SYNTHFED_CACHE_DIR``, else
``$XDG_CACHE_HOME/synthfed``, else ``~/.cache/synthfed``)::

    stats/<extractor id>/<dataset fingerprint>.npz   mu, sigma, features (float arrays only)
    stats/<extractor id>/<dataset fingerprint>.json  provenance (informational)
    classifiers/<key>.safetensors                    SmallCNN weights; shape in the metadata

Keys are content hashes: the dataset's ``fingerprint()`` (pixels, labels,
shape, class names) and the extractor's ``id`` (for a classifier, a hash of the
data it was trained on and its plan). A changed dataset therefore has another
key and is recomputed; nothing is ever looked up by file name or path. Files
are written atomically and read with ``allow_pickle=False``; a file that cannot
be read or does not match is treated as missing and rewritten."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthfed.evaluate.classifier import SmallCNN
from synthfed.evaluate.fid import FeatureExtractor, FeatureStats
from synthfed.io import write_bytes_atomic, write_json_atomic
from synthfed.progress import Message, Progress, null_progress

if TYPE_CHECKING:
    from synthfed.data import ImageDataset

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def default_cache_dir() -> Path:
    env = os.environ.get("SYNTHFED_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "synthfed"


def _safe(name: str, what: str) -> str:
    if not _SAFE.match(name):
        raise ValueError(f"{what} {name!r} cannot be used as a cache file name")
    return name


class EvalCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"EvalCache({str(self.root)!r})"

    # ------------------------------------------------------------------ real-set statistics
    def stats_path(self, extractor_id: str, fingerprint: str) -> Path:
        return self.root / "stats" / _safe(extractor_id, "extractor id") / f"{_safe(fingerprint, 'fingerprint')}.npz"

    def load_stats(self, extractor_id: str, fingerprint: str, *, dim: int | None = None) -> FeatureStats | None:
        path = self.stats_path(extractor_id, fingerprint)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: np.asarray(npz[k]) for k in npz.files}
            if any(a.dtype.kind != "f" for a in arrays.values()):
                return None
            stats = FeatureStats(
                mu=arrays["mu"],
                sigma=arrays["sigma"],
                count=int(arrays["count"]),
                features=arrays.get("features"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or foreign: recompute and overwrite
        if dim is not None and stats.dim != dim:
            return None
        if stats.features is not None and stats.features.shape[0] != stats.count:
            return None
        return stats

    def save_stats(self, extractor_id: str, fingerprint: str, stats: FeatureStats, *, info: dict | None = None) -> Path:
        path = self.stats_path(extractor_id, fingerprint)
        arrays = {"mu": stats.mu, "sigma": stats.sigma, "count": np.asarray(float(stats.count))}
        if stats.features is not None:
            arrays["features"] = stats.features.astype(np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(path, buf.getvalue())
        write_json_atomic(
            path.with_suffix(".json"),
            {"extractor": extractor_id, "fingerprint": fingerprint, "count": stats.count, "dim": stats.dim, **(info or {})},
        )
        return path

    def real_stats(
        self,
        dataset: "ImageDataset",
        extractor: FeatureExtractor,
        *,
        keep_features: bool = True,
        progress: Progress = null_progress,
    ) -> FeatureStats:
        """Statistics of ``dataset`` in ``extractor``'s space: from the cache when
        this exact data (fingerprint) was seen by this exact extractor, else computed and stored."""
        fingerprint = dataset.fingerprint()
        cached = self.load_stats(extractor.id, fingerprint, dim=extractor.dim)
        if cached is not None and (cached.features is not None or not keep_features):
            self.hits += 1
            return cached
        self.misses += 1
        progress(Message(f"computing real-set statistics of {dataset.source or 'dataset'} ({len(dataset)} images, {extractor.id})"))
        stats = FeatureStats.from_features(extractor.features(dataset.images, progress=progress), keep_features=keep_features)
        self.save_stats(extractor.id, fingerprint, stats, info={"source": dataset.source, "n": len(dataset)})
        return stats

    # ------------------------------------------------------------------ classifiers
    def classifier_path(self, key: str) -> Path:
        return self.root / "classifiers" / f"{_safe(key, 'classifier key')}.safetensors"

    def load_classifier(self, key: str) -> SmallCNN | None:
        from safetensors import safe_open

        path = self.classifier_path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["synthfed"])
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            model = SmallCNN(
                channels=int(meta["channels"]),
                num_classes=int(meta["num_classes"]),
                image_size=int(meta["image_size"]),
                width=int(meta["width"]),
            )
            model.load_state_dict(tensors)
        except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError):
            return None
        self.hits += 1
        return model.eval()

    def save_classifier(self, key: str, model: SmallCNN, *, info: dict | None = None) -> Path:
        from safetensors.torch import save

        meta = {
            "channels": model.conv1.in_channels,
            "num_classes": model.head.out_features,
            "image_size": model.image_size,
            "width": model.conv1.out_channels,
            **(info or {}),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        path = self.classifier_path(key)
        write_bytes_atomic(path, save(tensors, metadata={"synthfed": json.dumps(meta, sort_keys=True)}))
        self.misses += 1
        return path

