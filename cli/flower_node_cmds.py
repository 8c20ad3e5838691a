"""``synthfed flower generate``: sample a personalized model where it lives, at its Flower node.

Registered on ``synthfed flower`` by ``synthfed.cli.flower_cmds``. Takes
``synthfed generate``'s options (``synthfed.cli.generate_options``) and
writes the same dataset folder; the loading is
``synthfed.flower.node_generation``. Needs no Flower and no network: it reads
the node's state directory and writes --out, nothing else."""

from __future__ import annotations

from pathlib import Path

import typer

from synthfed.cli.generate_options import check_generate_options, with_generate_options, write_dataset


@with_generate_options
def generate(
    state_dir: Path = typer.Option(..., "--state-dir", help="This node's private state folder (as given to its node; flower run: <state-dir>/node-<i>)."),
    run_name: str = typer.Option(..., "--run", help="The run's name in that folder (flower run: its --out folder's name)."),
    **options,
) -> None:
    """Sample this node's personalized model (its local part with the run's final shared weights) with this node's own ledger; nothing leaves the node."""
    from synthfed.flower.node_generation import load_node_generator

    check_generate_options(options)
    gen = load_node_generator(state_dir, run_name, use_ema=not options["no_ema"])
    write_dataset(gen, options, client=gen.source["client"])
