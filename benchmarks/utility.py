"""Quality per compute: train under a wall-clock budget, sample, audit; one row per setting.

    python benchmarks/utility.py --data fashion-mnist --image-size 16 --minutes 60 \\
        --rows nonprivate:centralized,10:centralized,10:fedavg,1:centralized --out runs/utility

Each row ``EPSILON:STRATEGY`` (``nonprivate`` for no DP) is planned to fit the
budget: a short probe measures seconds per training step on this machine, and
``--local-steps`` is the most whose planned steps fit ``--minutes`` (DP-SGD
needs its step count before training: the accountant turns epsilon into noise
for exactly those steps). With ``--warm-start central`` (DP rows only) the
pretraining on the DP central images comes out of the same budget, timed by
a probe of plain steps. The step count is fixed before training, so a machine
that gets busier only lengthens the wall time; the quality figures hold. Then ``synthfed generate`` samples
``--per-class`` images per class and the project's own audit trains
classifiers on them (selection on a synthetic validation split, never the real
test set) and tests on the real test split. Printed side by side: TSTR accuracy,
worst class, class-wise bias, classifier-feature FID against the real test set,
epsilon spent (from the ledger, replace-one), steps, training images/s, wall
times. Rows go to ``OUT/results.jsonl`` as they finish.

Run one at a time on a quiet machine: a figure measured under load misleads."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

PROBE_STEPS = 16


def parse_rows(text: str) -> list[tuple[float | None, str]]:
    rows = []
    for item in text.split(","):
        eps, _, strategy = item.strip().partition(":")
        rows.append((None if eps == "nonprivate" else float(eps), strategy or "centralized"))
    return rows


def base_config(args, epsilon: float | None, strategy: str, *, local_steps: int | None = None, max_client_size=None):
    from synthfed.config import TrainConfig

    private = epsilon is not None
    warm = args.warm_start if private else "none"
    return TrainConfig(
        data=args.data, image_size=args.image_size, preset=args.preset, strategy=strategy,
        num_clients=1 if strategy == "centralized" else args.clients, alpha=args.alpha,
        partition="iid" if strategy == "centralized" else "dirichlet",
        rounds=args.rounds, local_steps=local_steps, batch_size=args.batch_size, lr=args.lr,
        ema_decay=args.ema_decay, precision=args.precision, epsilon=epsilon,
        noise_multiplicity=args.noise_multiplicity if private else 1, max_grad_norm=args.max_grad_norm,
        physical_batch_size=args.physical_batch_size if private else None, warm_start=warm,
        warm_start_share=args.warm_start_share, warm_start_steps=args.warm_start_steps,
        warm_start_rank=args.warm_start_rank,
        max_client_size=max_client_size or args.max_client_size, num_train_timesteps=args.timesteps,
        device=args.device, seed=args.seed,
    ).validate()


def seconds_per_step(args, epsilon, strategy, work: Path) -> float:
    """Seconds per step of the same model and mechanism: the difference of two
    short runs (PROBE_STEPS and PROBE_STEPS // 4 steps), so loading the data,
    calibrating and checkpointing (fixed costs) do not count as step time."""
    from synthfed.training import train

    def timed(steps: int, folder: str) -> float:
        probe = base_config(args, epsilon, strategy, local_steps=steps).replace(
            rounds=1, num_clients=1, strategy="centralized", partition="iid", warm_start="none",
            max_client_size=max(args.batch_size * 4, 1000))
        start = time.perf_counter()
        train(probe, work / folder)
        return time.perf_counter() - start

    short = PROBE_STEPS // 4
    return max(1e-3, (timed(PROBE_STEPS, "long") - timed(short, "short")) / (PROBE_STEPS - short))


def plan_steps(args, epsilon, strategy, work: Path) -> tuple[int, float, float]:
    """(local steps per client per round, DP-SGD s/step, warm-start s/step) fitting ``--minutes``.

    The warm start (plain steps on draws of the DP class Gaussians) comes out
    of the same budget; what is left goes to the (DP-)SGD steps."""
    from synthfed.training import load_federated_data

    sps = seconds_per_step(args, epsilon, strategy, work / "probe")
    warm_sps, budget = 0.0, args.minutes * 60
    if epsilon is not None and args.warm_start == "central":
        warm_sps = seconds_per_step(args, None, strategy, work / "probe-warm")
        personal = strategy == "local"
        budget -= warm_sps * args.warm_start_steps * (args.clients if personal else 1)
    clients = len(load_federated_data(base_config(args, epsilon, strategy)).clients)
    steps = int(budget / (sps * clients * args.rounds))
    if steps < 1:
        raise SystemExit(f"--minutes {args.minutes}: the warm start alone takes the budget; fewer --warm-start-steps")
    return steps, sps, warm_sps


def classifier_fid(args, dataset: Path) -> float:
    from synthfed.data import load_source
    from synthfed.evaluate.cache import EvalCache
    from synthfed.evaluate.fid import ClassifierFeatures, FeatureStats, fid_between
    from synthfed.generation import load_generated

    real_train, real_test = (load_source(args.data, split=s).resized(args.image_size) for s in ("train", "test"))
    features = ClassifierFeatures.fit(real_train, cache=EvalCache())
    _, test_feats = features.outputs(np.array(real_test.images))
    synthetic, _ = load_generated(dataset)
    _, feats = features.outputs(np.array(synthetic.images))
    return fid_between(FeatureStats.from_features(feats, keep_features=False),
                       FeatureStats.from_features(test_feats, keep_features=False))


def run_row(args, epsilon, strategy, out: Path) -> dict:
    from synthfed.fairness.audit import run_audit
    from synthfed.generation import generate_dataset, load_generator
    from synthfed.training import train

    name = f"{'nonprivate' if epsilon is None else f'eps{epsilon:g}'}-{strategy}"
    work = out / name
    local_steps, sps, warm_sps = plan_steps(args, epsilon, strategy, work)
    config = base_config(args, epsilon, strategy, local_steps=local_steps)
    steps = local_steps * args.rounds * (1 if strategy == "centralized" else args.clients)
    start = time.perf_counter()
    result = train(config, work / "run")
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    gen = load_generator(result.run_dir)
    dataset = generate_dataset(gen, work / "data", per_class=args.per_class, num_steps=args.sample_steps,
                               guidance_scale=args.guidance, allow_non_private=epsilon is None, seed=args.seed)
    sample_s = time.perf_counter() - start
    report = run_audit(dataset, real=args.data, out_dir=work / "audit", families=tuple(args.classifiers.split(",")),
                       mia=False, max_real_train=args.max_real_train)
    tstr = report["utility"]["tstr"]
    eps_spent = max((r["eps_upper"] for r in gen.privacy.get("clients", [])), default=None)
    return {
        "row": name, "epsilon_target": epsilon, "strategy": strategy, "epsilon_spent_max": eps_spent,
        "tstr_accuracy": tstr["accuracy"], "worst_class": tstr["worst_class"], "bias": tstr["bias"],
        "fid_classifier": classifier_fid(args, dataset), "local_steps": local_steps, "planned_steps": steps,
        "train_images_per_s": steps * args.batch_size / train_s, "train_s": train_s, "sample_s": sample_s,
        "seconds_per_step_probe": sps, "warm_seconds_per_step_probe": warm_sps, "command": vars(args),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--preset", default="small")
    p.add_argument("--rows", default="nonprivate:centralized,10:centralized,1:centralized")
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per row (sampling and audit extra)")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=1, help="rounds (FedAvg averages after each)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--noise-multiplicity", type=int, default=1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--physical-batch-size", type=int, default=None)
    p.add_argument("--warm-start", default="none", choices=("none", "central"))
    p.add_argument("--warm-start-share", type=float, default=0.5)
    p.add_argument("--warm-start-steps", type=int, default=1000)
    p.add_argument("--warm-start-rank", type=int, default=10)
    p.add_argument("--max-client-size", type=int, default=None)
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--classifiers", default="logreg,cnn")
    p.add_argument("--max-real-train", type=int, default=5000)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/utility"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    header = f"{'row':<24}{'TSTR':>7}{'worst':>7}{'bias':>7}{'FID':>8}{'eps':>8}{'steps':>7}{'img/s':>8}{'train s':>9}"
    print(header)
    for epsilon, strategy in parse_rows(args.rows):
        row = run_row(args, epsilon, strategy, args.out)
        with open(args.out / "results.jsonl", "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
        eps = "-" if row["epsilon_spent_max"] is None else f"{row['epsilon_spent_max']:.3g}"
        print(f"{row['row']:<24}{row['tstr_accuracy']:>7.3f}{row['worst_class']:>7.3f}{row['bias']:>7.3f}"
              f"{row['fid_classifier']:>8.2f}{eps:>8}{row['planned_steps']:>7}{row['train_images_per_s']:>8.1f}"
              f"{row['train_s']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
