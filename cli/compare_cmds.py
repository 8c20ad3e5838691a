"""``synthfed compare``: local-only vs FedAvg vs backbone/head vs PFDM on one split."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from synthfed.cli.options import train_config, with_settings
from synthfed.settings import SETTINGS

out = Console()
err = Console(stderr=True)


# The settings compare shares with train: the same names and the same defaults.
SHARED = ["data", "clients", "alpha", "max-client-size", "rounds", "local-epochs", "local-steps", "batch-size", "lr",
          "ema-decay", "preset", "image-size", "timesteps", "head", "epsilon", "delta", "warm-start", "device", "seed"]


@with_settings(SHARED)
def compare(
    ctx: typer.Context,
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for runs, samples and compare.csv/.md (resumable)."),
    strategies: str = typer.Option("centralized,local,fedavg,fedper,pfdm", help="Comma-separated strategies to compare."),
    pfdm_epsilon: Optional[float] = typer.Option(None, help="pfdm upload epsilon (the accountant picks t0 from it)."),
    per_class: int = typer.Option(10, help="Images per class per model."),
    steps: int = typer.Option(25, help="DDIM steps."),
    **settings,
) -> None:
    """Train each strategy on the same split with the same compute and tabulate classifier-feature FID.

    Takes train's options under the same names and defaults (and, under
    --epsilon, the same DP recipe); --epsilon is every strategy's DP-SGD
    epsilon (pfdm: its local denoisers)."""
    from synthfed.cli.render import RichProgress
    from synthfed.cli.resume import given_fields
    from synthfed.compare import COMPARABLE, SamplingPlan, run_comparison
    from synthfed.errors import UsageError

    chosen = tuple(s.strip() for s in strategies.split(",") if s.strip())
    unknown = [s for s in chosen if s not in COMPARABLE]
    if unknown or not chosen:
        raise UsageError(f"--strategies takes {', '.join(COMPARABLE)}; got {', '.join(unknown) or 'nothing'}")
    if "pfdm" in chosen and pfdm_epsilon is None and settings["epsilon"] is None:
        raise UsageError("pfdm needs --pfdm-epsilon (or --epsilon) so the accountant can pick t0")
    defaults = {s.field: s.default for s in SETTINGS}
    base = train_config({**defaults, "warm_start": "auto", **settings, "strategy": "fedavg", "participation": "1.0"},
                        explicit=given_fields(ctx))
    with RichProgress(err) as progress:
        table = run_comparison(base, out_dir, strategies=chosen, pfdm_epsilon=pfdm_epsilon,
                               sampling=SamplingPlan(per_class=per_class, steps=steps, seed=base.seed), progress=progress)
    view = Table(title=f"strategies on {base.data}, K={base.num_clients}, alpha={base.alpha}")
    for col in table.columns:
        view.add_column(str(col), justify="right")
    for _, row in table.iterrows():
        view.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    out.print(view)
    out.print(f"table: {out_dir / 'compare.md'} and {out_dir / 'compare.csv'}; samples and grids: {out_dir / 'samples'}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
