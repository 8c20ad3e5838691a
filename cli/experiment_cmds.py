"""``synthfed experiment ...``: run a grid from a TOML config, and tabulate it.

The grid, the resume logic and the metrics live in ``synthfed.experiment``;
this module parses options and renders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

experiment_app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="Experiment grids from TOML configs: run (resumable) and tabulate mean ± std over seeds.",
)
out = Console()
err = Console(stderr=True)


@experiment_app.command("run")
def run(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="Experiment config (TOML), e.g. configs/digits-quick.toml."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Experiment folder (default: experiments/<name>). Re-running resumes it."),
    max_cells: Optional[int] = typer.Option(None, help="Stop after computing this many cells (the rest run next time)."),
    list_only: bool = typer.Option(False, "--list", help="Print the cells and which are done; run nothing."),
) -> None:
    """Run every cell of CONFIG not yet done, then write results.csv, table.csv and table.md."""
    from synthfed.cli.render import RichProgress
    from synthfed.errors import UsageError
    from synthfed.experiment import RESULT_FILE, expand_grid, load_experiment, run_experiment

    if max_cells is not None and max_cells < 1:
        raise UsageError("--max-cells must be at least 1")
    config = load_experiment(config_path)
    out_dir = out_dir or Path("experiments") / config.name
    cells = expand_grid(config)
    done = [c for c in cells if (out_dir / "cells" / c.id / RESULT_FILE).is_file()]
    out.print(f"{config.name}: {len(cells)} cells ({len(done)} done) in {out_dir}")
    if config.budget:
        out.print(f"budget: {config.budget}", highlight=False)
    if list_only:
        for c in cells:
            mark = "done" if c in done else "todo"
            out.print(f"  {mark}  {c.id}", highlight=False)
        return
    with RichProgress(err) as progress:
        result = run_experiment(config, out_dir, progress=progress, stop_after_cells=max_cells)
    typer.echo(result.table_md)
    state = "complete" if result.complete else f"stopped after {len(result.ran)} cells (run again to continue)"
    out.print(
        f"{state}: {len(result.ran)} cells computed, {len(result.skipped)} already done; "
        f"wall time {result.wall_seconds:.0f} s",
        highlight=False,
    )
    out.print(f"tables: {out_dir / 'table.md'}, {out_dir / 'table.csv'}, {out_dir / 'results.csv'}", highlight=False)


@experiment_app.command("table")
def table(
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="An experiment folder written by `experiment run`."),
) -> None:
    """Rewrite and print the tables of an experiment folder from its finished cells."""
    from synthfed.experiment import load_experiment_dir, write_tables

    config = load_experiment_dir(out_dir)
    md = write_tables(config, out_dir)
    typer.echo(md)
