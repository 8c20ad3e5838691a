"""``synthfed compare``: local-only vs FedAvg vs backbone/head vs PFDM on one split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def compare(
    data: str = typer.Option("digits", help="Data source (needs a test split: digits, fashion-mnist, idx with 4 paths...)."),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for runs, samples and compare.csv/.md (resumable)."),
    strategies: str = typer.Option("centralized,local,fedavg,fedper,pfdm", help="Comma-separated strategies to compare."),
    clients: int = typer.Option(10, help="Clients K."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration."),
    max_client_size: Optional[int] = typer.Option(None, help="At most this many images per client."),
    rounds: int = typer.Option(5, help="Rounds (every strategy gets the same)."),
    local_epochs: int = typer.Option(1, help="Local epochs per round."),
    batch_size: int = typer.Option(32, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    preset: str = typer.Option("small", help="Model preset."),
    image_size: Optional[int] = typer.Option(None, help="Resize images (default: the data's size)."),
    head: str = typer.Option("up", help="fedper/fedrep head."),
    epsilon: Optional[float] = typer.Option(None, help="DP-SGD epsilon for every strategy (pfdm: its local denoisers)."),
    pfdm_epsilon: Optional[float] = typer.Option(None, help="pfdm upload epsilon (the accountant picks t0 from it)."),
    per_class: int = typer.Option(10, help="Images per class per model."),
    steps: int = typer.Option(25, help="DDIM steps."),
    seed: int = typer.Option(0, help="Seed of the split, the training and the sampling."),
) -> None:
    """Train each strategy on the same split with the same compute and tabulate classifier-feature FID."""
    from synthfed.compare import COMPARABLE, SamplingPlan, run_comparison
    from synthfed.cli.render import RichProgress
    from synthfed.config import TrainConfig
    from synthfed.errors import UsageError

    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    unknown = [s for s in chosen if s not in COMPARABLE]
    if unknown or not chosen:
        raise UsageError(f"--strategies takes {', '.join(COMPARABLE)}; got {', '.join(unknown) or 'nothing'}")
    if "pfdm" in chosen and pfdm_epsilon is None and epsilon is None:
        raise UsageError("pfdm needs --pfdm-epsilon (or --epsilon) so the accountant can pick t0")
    base = TrainConfig(data=data, num_clients=clients, alpha=alpha, max_client_size=max_client_size, rounds=rounds,
                       local_epochs=local_epochs, batch_size=batch_size, lr=lr, preset=preset, image_size=image_size,
                       head=head, epsilon=epsilon, seed=seed, ema_decay=0.995).validate()
    with RichProgress(err) as progress:
        table = run_comparison(base, out_dir, strategies=chosen, pfdm_epsilon=pfdm_epsilon,
                               sampling=SamplingPlan(per_class=per_class, steps=steps, seed=seed), progress=progress)
    view = Table(title=f"strategies on {data}, K={clients}, alpha={alpha}")
    for col in table.columns:
        view.add_column(str(col), justify="right")
    for _, row in table.iterrows():
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    out.print(view)
    out.print(f"table: {out_dir / 'compare.md'} and {out_dir / 'compare.csv'}; samples and grids: {out_dir / 'samples'}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
