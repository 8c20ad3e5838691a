"""``make demo``: the main job end to end on the embedded default data.

Differentially private federated training (FedAvg, 4 non-IID clients, each
client's records (10, delta)-DP under the DP recipe: DP central images as a
warm start, then DP-SGD) of a class-conditional DDPM on scikit-learn's digits;
a sampled dataset with its card; the audit (classifiers trained on the
synthetic images, tested on real held-out digits). Prints the epsilon each
client spent and the audit's TSTR accuracy. Sized to run in a few minutes on
2 CPU cores.

The demo starts from an empty ``--out`` folder. It clears a folder only when a
previous demo made it (it holds the ``.synthfed-demo`` marker): ``--out`` is
typed by hand, and a typo must never delete someone's files."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console

from synthfed.cli.render import RichProgress
from synthfed.config import TrainConfig
from synthfed.errors import UsageError
from synthfed.fairness.audit import run_audit
from synthfed.generation import generate_dataset, load_generator
from synthfed.recipes import DP_RECIPE
from synthfed.training import train


MARKER = ".synthfed-demo"


def prepare_out_dir(out: Path) -> None:
    """An empty ``out`` with the demo's marker in it: created, or a previous
    demo's folder cleared; anything else is refused (a usage error)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; choose a new folder for the demo")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UsageError(f"--out {out} is not empty and was not made by the demo (no {MARKER} in it); "
                             "choose a new or empty folder")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `python -m synthfed.cli.demo`; a later demo may clear this folder\n")


def main(argv: list[str] | None = None) -> int:
    """The demo inside the CLI's error boundary: one line and an exit code on failure."""
    from synthfed.cli.errors import run_guarded

    return run_guarded(lambda: demo(argv), debug=argv if argv is not None else sys.argv[1:])


def demo(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-run"))
    parser.add_argument("--epsilon", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--warm-start-steps", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--debug", action="store_true", help="On an error, show the full traceback.")
    args = parser.parse_args(argv)
    console = Console()
    prepare_out_dir(args.out)
    config = TrainConfig(
        data="digits",
        image_size=8,  # the digits' native size: 4x cheaper than 16x16, same information
        num_clients=4,
        alpha=0.5,
        strategy="fedavg",
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=64,
        lr=DP_RECIPE["lr"],
        preset="small",
        num_train_timesteps=1000,
        epsilon=args.epsilon,
        warm_start=DP_RECIPE["warm_start"],
        warm_start_steps=args.warm_start_steps,
        seed=0,
    ).validate()
    console.print(f"[bold]synthfed demo[/bold]: DP FedAvg over {config.num_clients} clients on digits, "
                  f"epsilon {config.epsilon:g} per client (recipe: DP central images, then {config.rounds} rounds "
                  f"of DP-SGD)")
    start = time.time()
    with RichProgress() as progress:
        result = train(config, args.out / "run", progress=progress)
        gen = load_generator(result.run_dir)
        samples = generate_dataset(gen, args.out / "samples", per_class=args.per_class, sampler="ddim", num_steps=50,
                                   progress=progress)
        report = run_audit(samples, real="digits", out_dir=args.out / "audit", families=("logreg", "cnn"),
                           mia=False, progress=progress)
    tstr = report["utility"]["tstr"]
    console.print(f"model (diffusers folder, safetensors): {result.last_round_dir / 'global' / 'ema'}")
    console.print(f"synthetic dataset, manifest and card: {samples} (README.md card, grid.png)")
    console.print(f"audit report: {args.out / 'audit' / 'report.html'}")
    console.print(f"privacy: {gen.privacy['statement']}")
    spent = max(r["eps_upper"] for r in gen.privacy["clients"])
    console.print(f"epsilon spent (accountant, replace-one, largest over clients): {spent:.3g} of {config.epsilon:g}")
    console.print(f"TSTR accuracy (trained on synthetic, tested on real digits): {tstr['accuracy']:.3f} "
                  f"(chance 0.10; worst class {tstr['worst_class']:.3f}); docs/UTILITY.md has the figures "
                  "without DP and on Fashion-MNIST")
    console.print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
