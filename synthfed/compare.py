"""Strategy comparison on one partition, one compute budget, one seed.

Trains local-only, FedAvg, backbone/head and PFDM (and the centralized
baseline) with the same data split, rounds, local epochs and seed; samples
every client's model (or the one global model) with the same sampler and
counts; scores each sample set by FID in the feature space of a classifier
trained on the real training data and by label agreement (the classifier's
accuracy w.r.t. the conditioning labels), against the real test set. Every
cell resumes: a finished run or sample set is reused, a partial run resumes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from synthfed.checkpoint import latest_round_dir, read_run_file
from synthfed.config import PERSONALIZED_STRATEGIES, TrainConfig
from synthfed.data import load_source
from synthfed.evaluate.cache import EvalCache
from synthfed.evaluate.fid import ClassifierFeatures, FeatureStats, fid_between
from synthfed.evaluate.scores import label_agreement
from synthfed.generation import generate_dataset, load_generated, load_generator
from synthfed.io import write_json_atomic
from synthfed.progress import Message, Progress, null_progress
from synthfed.training import train
from synthfed.errors import UsageError

COMPARABLE = ("centralized", "local", "fedavg", "fedper", "fedrep", "pfdm")


@dataclass(frozen=True)
class SamplingPlan:
    per_class: int = 10
    sampler: str = "ddim"
    steps: int = 25
    seed: int = 0


def strategy_config(base: TrainConfig, strategy: str, *, pfdm_epsilon: float | None) -> TrainConfig:
    if strategy == "pfdm":
        if pfdm_epsilon is None and base.epsilon is None:
            raise UsageError("pfdm needs --pfdm-epsilon (or --epsilon) so the accountant can pick t0")
        # PFDM's shared model learns from its own uploads: no warm start from the central images.
        return base.replace(strategy="pfdm", epsilon=pfdm_epsilon or base.epsilon, public_labels=True, warm_start="none",
                            local_epsilon=base.epsilon if base.epsilon is not None else None).validate()
    return base.replace(strategy=strategy).validate()


def _train_cell(config: TrainConfig, run_dir: Path, progress: Progress) -> float:
    """Train (or resume, or reuse) one strategy's run; returns the wall time spent now."""
    start = time.time()
    latest = latest_round_dir(run_dir) if run_dir.exists() else None
    if latest is not None and int(latest.name.split("-")[1]) >= config.rounds:
        return 0.0
    train(config, run_dir, resume=latest is not None, progress=progress)
    return time.time() - start


def _sample_sets(strategy: str, run_dir: Path, out: Path, plan: SamplingPlan, num_clients: int, progress) -> list[Path]:
    targets = [(c, out / f"client-{c:02d}") for c in range(num_clients)] if strategy in PERSONALIZED_STRATEGIES else [(None, out / "global")]
    done = []
    for client, folder in targets:
        if not (folder / "manifest.csv").is_file():
            gen = load_generator(run_dir, client=client)
            # Scoring samples, not sharing them: non-DP outputs are written stamped as such.
            generate_dataset(gen, folder, per_class=plan.per_class, sampler=plan.sampler, num_steps=plan.steps,
                             seed=plan.seed, allow_non_private=True, progress=progress)
        done.append(folder)
    return done


def run_comparison(
    base: TrainConfig,
    out_dir: str | Path,
    *,
    strategies: tuple[str, ...] = COMPARABLE,
    sampling: SamplingPlan = SamplingPlan(),
    pfdm_epsilon: float | None = None,
    progress: Progress = null_progress,
) -> pd.DataFrame:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    real_train = load_source(base.data, split="train")
    real_test = load_source(base.data, split="test")
    if base.image_size is not None:
        real_train, real_test = real_train.resized(base.image_size), real_test.resized(base.image_size)
    # The shared evaluation cache (SYNTHFED_CACHE_DIR): every comparison on the same
    # real data reuses one classifier.
    features = ClassifierFeatures.fit(real_train, cache=EvalCache(), progress=progress)
    test_logits, test_feats = features.outputs(np.array(real_test.images))
    test_stats = FeatureStats.from_features(test_feats, keep_features=False)
    real_accuracy = label_agreement(test_logits, np.array(real_test.labels))
    rows = []
    for strategy in strategies:
        config = strategy_config(base, strategy, pfdm_epsilon=pfdm_epsilon)
        run_dir = out_dir / "runs" / strategy
        progress(Message(f"[{strategy}] training"))
        seconds = _train_cell(config, run_dir, progress)
        num_clients = len(read_run_file(run_dir)["clients"])
        progress(Message(f"[{strategy}] sampling"))
        sets = _sample_sets(strategy, run_dir, out_dir / "samples" / strategy, sampling, num_clients, progress)
        fids, agreements, private = [], [], []
        for folder in sets:
            synthetic, card = load_generated(folder)
            logits, feats = features.outputs(np.array(synthetic.images))
            fids.append(fid_between(FeatureStats.from_features(feats, keep_features=False), test_stats))
            agreements.append(label_agreement(logits, np.array(synthetic.labels)))
            private.append(bool(card.get("privacy", {}).get("differentially_private")))
        rows.append({
            "strategy": strategy,
            "models": len(sets),
            "fid_mean": float(np.mean(fids)),
            "fid_std": float(np.std(fids)),
            "fid_worst": float(np.max(fids)),
            "label_agreement": float(np.mean(agreements)),
            "dp": "yes" if all(private) else "no",
            "train_seconds_this_call": round(seconds, 1),
        })
        write_json_atomic(out_dir / "samples" / strategy / "scores.json", {"fid": fids, "label_agreement": agreements})
    table = pd.DataFrame(rows)
    if "centralized" in set(table["strategy"]):
        ref = float(table.loc[table["strategy"] == "centralized", "fid_mean"].iloc[0])
        table["fid_vs_centralized"] = table["fid_mean"] / ref
    table.to_csv(out_dir / "compare.csv", index=False)
    meta = {"config": base.to_dict(), "sampling": sampling.__dict__, "pfdm_epsilon": pfdm_epsilon,
            "real_test_label_agreement": real_accuracy, "feature_extractor": features.id}
    write_json_atomic(out_dir / "compare.json", {"meta": meta, "rows": rows})
    (out_dir / "compare.md").write_text(_markdown(table, meta))
    return table


def _markdown(table: pd.DataFrame, meta: dict) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    lines.append("")
    lines.append(f"FID in the feature space of a CNN trained on the real training set (id {meta['feature_extractor'][:12]}), "
                 f"against the real test set; that CNN's accuracy on the real test set: {meta['real_test_label_agreement']:.3f}.")
    return "\n".join(lines) + "\n"
