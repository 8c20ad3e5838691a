"""Run an experiment grid and tabulate it (mean ± std over seeds).

Each cell is one training run, one sampled dataset and one set of metrics::

    <out>/experiment.toml             the config as given (``table`` re-reads it)
    <out>/data/                       stratified subsets as idx files (when the config asks)
    <out>/cells/<cell id>/run/        synthfed.training.train(...) (checkpoints every round)
    <out>/cells/<cell id>/samples/    generate_dataset(...) (written as samples.partial, then renamed)
    <out>/cells/<cell id>/result.json metrics and timings: written atomically, LAST
    <out>/results.csv                 one row per finished cell
    <out>/table.csv, <out>/table.md   one row per grid point: mean ± std over seeds

Resume is the default: a cell with ``result.json`` is done and skipped; a cell
with a partial run continues from its last complete round
(``train(..., resume=True)``); finished samples are reused. A result computed
with other ``[metrics]`` settings is re-measured from its samples, without
retraining.

Metrics per cell (all against the real data the run trained on, "train", and
the real test split, "test"): FID in the feature space of a SmallCNN trained on
the real train set (``fid_*_cnn``), the classifier Inception-style score
(``is_cnn``: the IS formula on that classifier's logits, not ImageNet IS), the
share of samples that classifier labels as their conditioning class
(``label_acc``), optionally k-NN precision/recall and KID in the same space,
and optionally the real-Inception FID on capped sets (``fid_*_inception``).
A ``real data`` row gives the floor: the same metrics for real test images,
as many as the generated set has."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from synthfed.data.idx import write_idx
from synthfed.experiment_config import (
    Cell,
    DataSpec,
    ExperimentConfig,
    ExperimentConfigError,
    expand_grid,
    load_experiment,
    parse_experiment,
)
from synthfed.io import write_bytes_atomic, write_json_atomic
from synthfed.experiment_tables import METRICS, RESULT_FILE, read_result, write_tables
from synthfed.progress import Message, Progress, null_progress

__all__ = [
    "ExperimentConfig",
    "ExperimentConfigError",
    "ExperimentResult",
    "PreparedData",
    "expand_grid",
    "load_experiment",
    "parse_experiment",
    "prepare_data",
    "run_experiment",
    "write_tables",
    "METRICS",
]

# --------------------------------------------------------------------------- data
@dataclass(frozen=True, eq=False)
class PreparedData:
    spec: str  # the --data spec the cells train on
    train: "object"  # ImageDataset at the model's size: exactly what the runs saw
    test: "object"  # ImageDataset at the same size


def prepare_data(data: DataSpec, out_dir: Path) -> PreparedData:
    """The experiment's real data; with ``train_per_class``/``test_per_class``,
    a stratified subset written once to ``<out>/data`` as idx files (class
    names become the label indices there)."""
    from synthfed.data import load_source

    spec = data.source
    if data.subsampled:
        full_train = load_source(data.source, split="train")
        full_test = load_source(data.source, split="test")
        parts = {}
        for split, ds, per_class in (("train", full_train, data.train_per_class), ("test", full_test, data.test_per_class)):
            if per_class is not None:
                ds = ds.sample(per_class=per_class, seed=data.subset_seed + (split == "test"))
            parts[split] = ds
        folder = out_dir / "data"
        paths = {}
        for split, ds in parts.items():
            pixels = ds.images[:, 0] if ds.images.shape[1] == 1 else ds.images.transpose(0, 2, 3, 1)
            if ds.num_classes > 256:
                raise ExperimentConfigError("train_per_class/test_per_class support at most 256 classes")
            for what, arr in (("images", pixels), ("labels", ds.labels)):
                path = folder / f"{split}-{what}.idx"
                blob = write_idx(arr)
                if not path.is_file() or path.read_bytes() != blob:
                    write_bytes_atomic(path, blob)
                paths[f"{split}-{what}"] = str(path.resolve())
        spec = "idx:" + ",".join(paths[k] for k in ("train-images", "train-labels", "test-images", "test-labels"))
    train = load_source(spec, split="train")
    test = load_source(spec, split="test")
    if data.image_size is not None:
        train, test = train.resized(data.image_size), test.resized(data.image_size)
    elif test.image_shape != train.image_shape:
        test = test.resized(train.image_shape[1])
    return PreparedData(spec=spec, train=train, test=test)


# --------------------------------------------------------------------------- metrics
class Judge:
    """The real-data yardsticks of one experiment, built lazily and cached on disk."""

    def __init__(self, config: ExperimentConfig, data: PreparedData, *, progress: Progress = null_progress) -> None:
        from synthfed.evaluate.cache import EvalCache

        self.config = config
        self.spec = config.metrics
        self.data = data
        self.cache = EvalCache(self.spec.cache_dir)
        self.progress = progress
        self._clf = None
        self._inception = None

    @property
    def classifier(self):
        if self._clf is None:
            from synthfed.evaluate.classifier import CNNTraining
            from synthfed.evaluate.fid import ClassifierFeatures

            plan = CNNTraining(epochs=self.spec.classifier_epochs, seed=self.spec.classifier_seed)
            self._clf = ClassifierFeatures.fit(self.data.train, plan=plan, cache=self.cache, progress=self.progress)
            self.train_stats = self.cache.real_stats(self.data.train, self._clf, progress=self.progress)
            self.test_stats = self.cache.real_stats(self.data.test, self._clf, progress=self.progress)
        return self._clf

    @property
    def inception(self):
        if self._inception is None:
            from synthfed.evaluate.fid import InceptionFeatures

            self._inception = InceptionFeatures(batch_size=self.spec.inception_batch_size)
            cap = self.spec.inception_max_images
            # features kept (capped sets: a few MB) so that FID skips the 2048x2048 sqrtm
            self.inc_train = self.cache.real_stats(self.data.train.sample(cap, seed=0), self._inception, progress=self.progress)
            self.inc_test = self.cache.real_stats(self.data.test.sample(cap, seed=0), self._inception, progress=self.progress)
        return self._inception

    def measure(self, images: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> dict:
        from synthfed.evaluate.fid import FeatureStats, fid_between, fid_from_features
        from synthfed.evaluate.scores import (
            classifier_inception_score,
            kernel_inception_distance,
            knn_precision_recall,
            label_agreement,
        )

        clf = self.classifier
        logits, feats = clf.outputs(images)
        stats = FeatureStats.from_features(feats)
        out = {
            "n_generated": int(len(images)),
            "fid_train_cnn": fid_between(stats, self.train_stats),
            "fid_test_cnn": fid_between(stats, self.test_stats),
            "is_cnn": classifier_inception_score(logits)[0],
            "label_acc": label_agreement(logits, labels),
            "classifier": clf.id,
        }
        if self.spec.precision_recall:
            pr = knn_precision_recall(self.train_stats.features, feats, k=self.spec.pr_k, seed=seed)
            out["precision_cnn"], out["recall_cnn"] = pr["precision"], pr["recall"]
        if self.spec.kid:
            out["kid_test_cnn"] = kernel_inception_distance(self.test_stats.features, feats, num_subsets=50, seed=seed)[0]
        if self.spec.inception:
            from synthfed.data import ImageDataset

            inc = self.inception
            names = tuple(str(i) for i in range(int(labels.max()) + 1))
            gen = ImageDataset(images, labels, names).sample(self.spec.inception_max_images, seed=seed)
            g = inc.features(gen.images, progress=self.progress)
            out["fid_train_inception"] = fid_from_features(g, self.inc_train.features)
            out["fid_test_inception"] = fid_from_features(g, self.inc_test.features)
            out["n_inception"] = {"generated": len(gen), "train": self.inc_train.count, "test": self.inc_test.count}
        return out

    def floor(self, n: int) -> dict:
        """The same metrics for ``n`` real images (class-balanced, as generated sets
        are): what a perfect generator would score at this sample size. Scores
        against the train set use test images and scores against the test set
        use train images, so that no image is compared with itself."""
        per_class = max(2, n // self.data.test.num_classes)
        from_test = self.data.test.sample(per_class=per_class, seed=12345)
        from_train = self.data.train.sample(per_class=per_class, seed=12345)
        out = self.measure(from_test.images, from_test.labels)
        other = self.measure(from_train.images, from_train.labels)
        for key in ("fid_test_cnn", "kid_test_cnn", "fid_test_inception"):
            if key in other:
                out[key] = other[key]
        return out


# --------------------------------------------------------------------------- cells
@dataclass
class ExperimentResult:
    out_dir: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)  # cells computed (fully or partly) in this call
    skipped: list[str] = field(default_factory=list)  # cells already done
    complete: bool = True
    wall_seconds: float = 0.0
    table_md: str = ""


def _training_done(run_dir: Path, rounds: int) -> bool:
    from synthfed.checkpoint import latest_round_dir

    if not run_dir.is_dir():
        return False
    latest = latest_round_dir(run_dir)
    return latest is not None and int(latest.name.split("-")[1]) >= rounds


def _generate(cell: Cell, run_dir: Path, samples_dir: Path, config: ExperimentConfig, progress: Progress) -> None:
    """Sample into ``samples.partial`` and rename: a samples/ folder is always complete."""
    from synthfed.federated.setup import resolve_device
    from synthfed.generation import generate_dataset, load_generator

    partial = samples_dir.with_name(samples_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    g = config.generate
    device = resolve_device(cell.config.device)
    kwargs = dict(sampler=g.sampler, num_steps=g.steps, guidance_scale=g.guidance, batch_size=g.batch_size,
                  seed=cell.seed, device=device, progress=progress,
                  # samples made to be measured; a non-private cell's card still says so
                  allow_non_private=True)
    from synthfed.checkpoint import latest_round_dir, read_run_file

    if (latest_round_dir(run_dir) / "clients").is_dir():
        # personalized models (local, fedper, ...): one per client; the samples are
        # their union, about per_class images per class in all
        k = len(read_run_file(run_dir)["clients"])
        per_client = math.ceil(g.per_class / k)
        partial.mkdir(parents=True)
        for client in range(k):
            gen = load_generator(run_dir, client=client)
            generate_dataset(gen, partial / f"client-{client}", per_class=per_client, **kwargs)
    else:
        generate_dataset(load_generator(run_dir), partial, per_class=g.per_class, **kwargs)
    os.replace(partial, samples_dir)


def _load_samples(samples_dir: Path):
    from synthfed.data import concat
    from synthfed.generation import load_generated

    if (samples_dir / "manifest.csv").is_file():
        return load_generated(samples_dir)[0]
    parts = sorted(samples_dir.glob("client-*"), key=lambda p: int(p.name.split("-")[1]))
    return concat([load_generated(p)[0] for p in parts])


def run_cell(cell: Cell, cell_dir: Path, config: ExperimentConfig, data: PreparedData, judge: Judge, *,
             progress: Progress = null_progress) -> dict:
    from synthfed.training import train

    run_dir, samples_dir = cell_dir / "run", cell_dir / "samples"
    cfg = cell.config.replace(data=data.spec)
    timing_path = cell_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if not _training_done(run_dir, cfg.rounds):
        resumed = run_dir.is_dir()
        progress(Message(f"{cell.id}: {'resuming' if resumed else 'training'} ({cfg.rounds} rounds)"))
        t0 = time.perf_counter()
        result = train(cfg, run_dir, resume=resumed, progress=progress)
        timing["train_seconds"] = timing.get("train_seconds", 0.0) + time.perf_counter() - t0
        timing["resumed_training"] = timing.get("resumed_training", False) or resumed
        timing["final_loss"] = result.history[-1].get("mean_loss")
        write_json_atomic(timing_path, timing)
    if not samples_dir.is_dir():
        progress(Message(f"{cell.id}: sampling {config.generate.per_class} images per class"))
        t0 = time.perf_counter()
        _generate(cell, run_dir, samples_dir, config, progress)
        timing["sample_seconds"] = time.perf_counter() - t0
        write_json_atomic(timing_path, timing)
    t0 = time.perf_counter()
    samples = _load_samples(samples_dir)
    metrics = judge.measure(samples.images, samples.labels, seed=cell.seed)
    timing["metrics_seconds"] = time.perf_counter() - t0
    result = {
        "cell": cell.id,
        "axes": cell.axes,
        "seed": cell.seed,
        "train_config": cell.config.to_dict(),
        "data": data.spec,
        "generate": asdict(config.generate),
        "metrics_spec": config.metrics.comparable(),
        "metrics": metrics,
        "timing": timing,
    }
    write_json_atomic(cell_dir / RESULT_FILE, result)  # last: its presence means the cell is done
    return result


def _save_config(config: ExperimentConfig, out_dir: Path) -> None:
    if config.source_text:
        path = out_dir / "experiment.toml"
        if not path.is_file() or path.read_text() != config.source_text:
            write_bytes_atomic(path, config.source_text.encode())
    write_json_atomic(out_dir / "experiment.json", config.to_dict())


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    progress: Progress = null_progress,
    stop_after_cells: int | None = None,
) -> ExperimentResult:
    """Run every cell not yet done, then write the tables. ``stop_after_cells``
    ends the call after that many cells were computed (an interruption, for tests
    and for spreading a grid over several sessions)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_config(config, out_dir)
    cells = expand_grid(config)
    data = prepare_data(config.data, out_dir)
    judge = Judge(config, data, progress=progress)
    result = ExperimentResult(out_dir=out_dir, cells=cells)
    wanted = config.metrics.comparable()
    for i, cell in enumerate(cells, 1):
        cell_dir = out_dir / "cells" / cell.id
        done = read_result(cell_dir)
        if done is not None and done.get("metrics_spec") == wanted:
            result.skipped.append(cell.id)
            continue
        if stop_after_cells is not None and len(result.ran) >= stop_after_cells:
            result.complete = False
            break
        progress(Message(f"cell {i}/{len(cells)}: {cell.id}"))
        t0 = time.perf_counter()
        run_cell(cell, cell_dir, config, data, judge, progress=progress)
        progress(Message(f"cell {i}/{len(cells)} done in {time.perf_counter() - t0:.0f} s"))
        result.ran.append(cell.id)
    floor = None
    if result.complete or any(read_result(out_dir / "cells" / c.id) for c in cells):
        floor_path = out_dir / "real_floor.json"
        n = config.generate.per_class * data.train.num_classes
        floor_spec = {"version": 2, "n": n, "metrics_spec": wanted, "train": data.train.fingerprint(), "test": data.test.fingerprint()}
        floor_saved = json.loads(floor_path.read_text()) if floor_path.is_file() else None
        if floor_saved is not None and floor_saved.get("spec") == floor_spec:
            floor = floor_saved["metrics"]
        else:
            floor = judge.floor(n)
            write_json_atomic(floor_path, {"spec": floor_spec, "metrics": floor})
    result.table_md = write_tables(config, out_dir, floor=floor)
    result.wall_seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- tables
def load_experiment_dir(out_dir: str | Path) -> ExperimentConfig:
    """The config an experiment folder was run with (its experiment.toml)."""
    path = Path(out_dir) / "experiment.toml"
    if not path.is_file():
        raise ExperimentConfigError(f"{out_dir} is not an experiment folder (no experiment.toml)")
    return load_experiment(path)
