"""``make demo``: the main job end to end on the embedded default data.

Federated training (FedAvg, 4 non-IID clients) of a class-conditional DDPM on
scikit-learn's digits, then a sampled dataset and a sample grid. Sized to run
in a few minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from rich.console import Console

from synthfed.cli.render import RichProgress
from synthfed.config import TrainConfig
from synthfed.generate import generate_dataset, load_generator
from synthfed.train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-run"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args(argv)
    console = Console()
    if args.out.exists():
        shutil.rmtree(args.out)
    config = TrainConfig(
        data="digits",
        image_size=8,  # the digits' native size: 4x cheaper than 16x16, same information
        num_clients=4,
        alpha=0.5,
        strategy="fedavg",
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=32,
        lr=1e-3,
        ema_decay=0.995,
        preset="small",
        num_train_timesteps=1000,
        seed=0,
    ).validate()
    console.print(f"[bold]synthfed demo[/bold]: FedAvg over {config.num_clients} clients, digits, {config.rounds} rounds")
    start = time.time()
    with RichProgress() as progress:
        result = train(config, args.out / "run", progress=progress)
        gen = load_generator(result.run_dir)
        samples = generate_dataset(
            gen, args.out / "samples", per_class=args.per_class, sampler="ddim", num_steps=50, progress=progress,
            allow_non_private=True,  # the demo trains without DP; the card and manifest say so
        )
    console.print(f"model (diffusers folder, safetensors): {result.last_round_dir / 'global' / 'ema'}")
    console.print(f"samples and manifest.csv: {samples}")
    console.print(f"sample grid PNG: {samples / 'grid.png'}")
    console.print(f"privacy: {gen.privacy['statement']}")
    console.print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
