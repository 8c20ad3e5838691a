"""The ``synthfed`` command line: option parsing and rendering only.

Every value is validated here (``TrainConfig.validate``) so that the core can
trust its inputs. Errors are not handled per command: every command runs
inside the one boundary of ``synthfed.cli.errors`` (the root group's class),
which prints one line and exits 2 for a usage error, 1 for bad data or a
runtime failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from synthfed.cli.errors import DEBUG_ENV, SynthfedGroup
from synthfed.cli.render import RichProgress
from synthfed.config import DDPM_VARIANCES, DEVICES, LAYOUTS, PARTITIONS, PRECISIONS, SAMPLERS, TrainConfig
from synthfed.model.presets import PRESETS
from synthfed.cli.generate_options import check_generate_options, with_generate_options, write_dataset
from synthfed.cli.options import choice, train_config, with_settings

app = typer.Typer(
    cls=SynthfedGroup,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold data and keys; --debug shows the traceback without them
    help="Federated, differentially private diffusion models that release shareable synthetic image datasets.",
)
out = Console()
err = Console(stderr=True)

# Options that take one of a fixed set of values (typer lists and checks them).
Preset, Precision, Device = choice(PRESETS), choice(PRECISIONS), choice(DEVICES)
Sampler, DdpmVariance, Layout, Partition = choice(SAMPLERS), choice(DDPM_VARIANCES), choice(LAYOUTS), choice(PARTITIONS)


def _print_version(value: bool) -> None:
    if value:
        from synthfed import __version__

        typer.echo(f"synthfed {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                               help="On an error, show the full traceback instead of one line (any position)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print synthfed's version and exit."),
) -> None:
    """(The root's help is the app's.) Nothing to do here: SynthfedGroup reads --debug from the parsed options."""


@app.command()
@with_settings(config_file=True)
def train(
    ctx: typer.Context,
    out_dir: Path = typer.Option(Path("runs/run"), "--out", help="Run directory (checkpoints, run.json, ledger)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last complete round, as it was started (other options are ignored, with a note; a changed --epsilon or --delta is refused)."),
    **settings,
) -> None:
    """Train a class-conditional DDPM across clients without moving their images."""
    from synthfed.training import train as run_train

    if resume is not None:
        from synthfed.cli.resume import resumed_config

        config, out_dir = resumed_config(ctx, resume), resume
    else:
        from synthfed.cli.resume import given_fields

        config = train_config(ctx.params, explicit=given_fields(ctx))
    with RichProgress(err) as progress:
        result = run_train(config, out_dir, resume=resume is not None, progress=progress)
    last = result.history[-1]
    out.print(f"trained {result.rounds_completed} rounds; last mean loss {last['mean_loss']}")
    out.print(f"run directory: {result.run_dir}")
    out.print(f"latest checkpoint: {result.last_round_dir}")
    ledger_path = result.last_round_dir / "ledger.json"
    if ledger_path.is_file():
        import json

        from synthfed.cli.privacy_cmds import print_ledger
        from synthfed.privacy.ledger import PrivacyLedger

        rows = PrivacyLedger.from_dict(json.loads(ledger_path.read_text())).table()
        print_ledger(rows, "privacy spent (accountant, for the steps that ran)")
    else:
        out.print("privacy: NOT differentially private (no --epsilon)")


@app.command()
def pretrain(
    data: str = typer.Option(..., help="PUBLIC data source (as for train); its classes must match the private data's."),
    out_dir: Path = typer.Option(..., "--out", help="New folder: the run, and model/ to pass to train --init-from."),
    preset: Preset = typer.Option("small", help="Model size: tiny | small | paper (as the private run will use)."),
    image_size: Optional[int] = typer.Option(None, help="Image size (as the private run will use)."),
    epochs: int = typer.Option(5, help="Epochs over the public data."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    timesteps: int = typer.Option(1000, help="Diffusion steps T (as the private run will use)."),
    precision: Precision = typer.Option("fp32", help="fp32 | bf16."),
    device: Device = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Seed."),
) -> None:
    """Pretrain on public data (no DP, no budget): a model folder for train --init-from."""
    from synthfed.pretrain import pretrain as run_pretrain

    config = TrainConfig(data=data, preset=preset, image_size=image_size, local_epochs=epochs, rounds=1,
                         batch_size=batch_size, lr=lr, num_train_timesteps=timesteps, precision=precision,
                         device=device, seed=seed, strategy="centralized", num_clients=1, partition="iid").validate()
    with RichProgress(err) as progress:
        model_dir = run_pretrain(config, out_dir, progress=progress)
    out.print(f"pretrained model folder: {model_dir}")
    out.print(f"start a private run from it: synthfed train --init-from {model_dir} --preset {preset} ...")
    out.print("privacy: NOT differentially private (public data); a run started from it costs no budget for it")


@app.command()
@with_generate_options
def generate(
    model: Path = typer.Argument(..., help="A run directory (its latest round, EMA weights) or a model folder."),
    client: Optional[int] = typer.Option(None, help="Sample client i's personalized model."),
    **options,
) -> None:
    """Sample a trained model into PNGs with a manifest."""
    from synthfed.generation import load_generator

    check_generate_options(options)
    gen = load_generator(model, client=client, use_ema=not options["no_ema"])
    write_dataset(gen, options, client=client)


@app.command()
def partition(
    data: str = typer.Option("digits", help="Data source (as for train)."),
    clients: int = typer.Option(4, help="Number of clients."),
    scheme: Partition = typer.Option("dirichlet", help="dirichlet | iid | folders."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration."),
    min_partition_size: int = typer.Option(10, help="Smallest client."),
    seed: int = typer.Option(0, help="Partition seed."),
    save: Optional[Path] = typer.Option(None, help="Also write the table as CSV here."),
) -> None:
    """Print the class counts per client of a partition."""
    from synthfed.training import load_federated_data

    config = TrainConfig(
        data=data, num_clients=clients, partition=scheme, alpha=alpha, min_partition_size=min_partition_size, seed=seed
    ).validate()
    fed = load_federated_data(config)
    stats = fed.stats()
    table = Table(title=fed.description)
    table.add_column("client")
    for col in stats.columns:
        table.add_column(str(col), justify="right")
    for name, row in stats.iterrows():
        table.add_row(str(name), *(str(int(v)) for v in row))
    out.print(table)
    if save is not None:
        stats.to_csv(save)
        out.print(f"saved {save}")


_registered = False


def register_subcommands() -> None:
    global _registered
    if _registered:  # tests import the app more than once
        return
    _registered = True
    from synthfed.cli.privacy_cmds import privacy_app

    app.add_typer(privacy_app, name="privacy")
    from synthfed.cli.experiment_cmds import experiment_app

    app.add_typer(experiment_app, name="experiment")
    from synthfed.cli.audit_cmds import register as register_audit

    register_audit(app)
    from synthfed.cli.compare_cmds import register as register_compare

    register_compare(app)
    from synthfed.cli.flower_cmds import register as register_flower

    register_flower(app)
    from synthfed.cli.export_cmds import register as register_export

    register_export(app)


def main() -> None:
    register_subcommands()
    app(prog_name="synthfed")


if __name__ == "__main__":
    sys.exit(main())
