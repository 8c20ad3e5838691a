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

import click
import typer
from rich.console import Console
from rich.table import Table

from synthfed.cli.errors import DEBUG_ENV, SynthfedGroup, say
from synthfed.cli.render import RichProgress
from synthfed.config import ConfigError, TrainConfig, check_device
from synthfed.errors import UsageError

app = typer.Typer(
    cls=SynthfedGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold data and keys; --debug shows the traceback without them
    help="Federated, differentially private diffusion models that release shareable synthetic image datasets.",
)
out = Console()
err = Console(stderr=True)


@app.callback()
def root(
    debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                               help="On an error, show the full traceback instead of one line (any position)."),
) -> None:
    """(The root's help is the app's.) Nothing to do here: SynthfedGroup reads --debug from the parsed options."""


def parse_participation(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--participation must be a fraction like 0.5 or a count like 3, not {text!r}") from None


def train_config(p: dict, *, explicit: set[str] | None = None, engine: str = "simulation") -> TrainConfig:
    """The validated ``TrainConfig`` of ``synthfed train``'s option values (also
    used by ``synthfed flower run``, which takes the same options). Under
    ``--epsilon`` the DP recipe (``synthfed.recipes``) fills the options not in
    ``explicit`` (all of them when None), with one note line saying so."""
    from synthfed.recipes import RECIPE_NAME, recipe_changes, resolve_warm_start

    warm = resolve_warm_start(p["warm_start"], private=p["epsilon"] is not None, strategy=p["strategy"], engine=engine,
                              init_from=p["init_from"] is not None)
    config = _train_config({**p, "warm_start": warm})
    changes = recipe_changes(config.to_dict(), explicit or set())
    if changes or (warm == "central" and p["warm_start"] == "auto"):
        config = config.replace(**changes).validate()
        chosen = ", ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                           for k, v in {"warm_start": warm, **changes}.items())
        say("note:", "bold cyan", f"DP recipe {RECIPE_NAME}: {chosen} (give an option to override it; "
                                  "--warm-start none for DP-SGD alone)")
    return config


def _train_config(p: dict) -> TrainConfig:
    return TrainConfig(
        data=p["data"], image_size=p["image_size"], partition=p["partition"], num_clients=p["clients"],
        alpha=p["alpha"], min_partition_size=p["min_partition_size"], max_client_size=p["max_client_size"],
        strategy=p["strategy"], rounds=p["rounds"], local_epochs=p["local_epochs"],
        participation=parse_participation(p["participation"]), batch_size=p["batch_size"], lr=p["lr"],
        ema_decay=p["ema_decay"], label_dropout=p["label_dropout"], precision=p["precision"], preset=p["preset"],
        num_train_timesteps=p["timesteps"], epsilon=p["epsilon"], delta=p["delta"], max_grad_norm=p["max_grad_norm"],
        noise_multiplicity=p["noise_multiplicity"], head=p["head"], head_epochs=p["head_epochs"], t0=p["t0"],
        clip_norm=p["clip_norm"], upload_copies=p["upload_copies"], label_epsilon=p["label_epsilon"],
        public_labels=p["public_labels"], local_epsilon=p["local_epsilon"], device=p["device"], seed=p["seed"],
        local_steps=p["local_steps"], physical_batch_size=p["physical_batch_size"], warm_start=p["warm_start"],
        warm_start_share=p["warm_start_share"], warm_start_steps=p["warm_start_steps"],
        warm_start_rank=p["warm_start_rank"], warm_start_clip=p["warm_start_clip"],
        init_from=None if p["init_from"] is None else str(p["init_from"]),
    ).validate()


@app.command()
def train(
    data: str = typer.Option("digits", help="Data source: digits | fashion-mnist[:DIR] | idx:IMAGES,LABELS | folder:DIR | csv:FILE; with --partition folders, a folder of per-client folders."),
    out_dir: Path = typer.Option(Path("runs/run"), "--out", help="Run directory (checkpoints, run.json, ledger)."),
    strategy: str = typer.Option("fedavg", help="fedavg | centralized (pooled data, same compute) | local (each client alone) | fedper | fedrep (shared backbone, local head) | pfdm (timestep split)."),
    clients: int = typer.Option(4, help="Number of clients K to split the data over."),
    partition: str = typer.Option("dirichlet", help="dirichlet | iid | folders (DATA holds one folder per client)."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration: small = very non-IID."),
    min_partition_size: int = typer.Option(10, help="Smallest number of images a client may get."),
    max_client_size: Optional[int] = typer.Option(None, help="Keep at most this many images per client (seeded subset; CPU-scale experiments)."),
    rounds: int = typer.Option(5, help="Federated rounds R."),
    local_epochs: int = typer.Option(1, help="Local epochs E per round."),
    local_steps: Optional[int] = typer.Option(None, help="Local steps per round instead of whole epochs (DP-SGD on a CPU budget: fewer, larger steps)."),
    participation: str = typer.Option("1.0", help="Clients per round: a fraction in (0, 1] (1 = all) or a count >= 2; one client a round is the fraction 1/K."),
    batch_size: int = typer.Option(32, help="Batch size (expected batch size under DP-SGD)."),
    lr: float = typer.Option(2e-4, help="Adam learning rate."),
    ema_decay: float = typer.Option(0.999, help="EMA decay of the weights (0 turns it off)."),
    label_dropout: float = typer.Option(0.1, help="Probability of dropping the label (classifier-free guidance)."),
    preset: str = typer.Option("small", help="Model size: tiny | small | paper."),
    image_size: Optional[int] = typer.Option(None, help="Resize images to this square size (default: the data's own; digits: 16)."),
    timesteps: int = typer.Option(1000, help="Diffusion steps T of the linear beta schedule."),
    epsilon: Optional[float] = typer.Option(None, help="Each client's records are (epsilon, delta)-DP: DP-SGD noise (pfdm: the upload's t0) calibrated to it."),
    delta: Optional[float] = typer.Option(None, help="DP delta per client (default 1/(10 n_k))."),
    max_grad_norm: float = typer.Option(1.0, help="DP-SGD per-example clipping norm C."),
    noise_multiplicity: int = typer.Option(1, help="DP-SGD: (t, noise) draws averaged per example before clipping."),
    physical_batch_size: Optional[int] = typer.Option(None, help="DP-SGD: process each logical (Poisson) batch in chunks of this size (memory); the privacy plan is the logical batch's."),
    warm_start: str = typer.Option("auto", help="auto (under --epsilon: central) | central (pretrain on one DP release of each class's mean and principal directions) | none."),
    warm_start_share: float = typer.Option(0.5, help="Part of --epsilon the central images get on their own; DP-SGD is calibrated to the rest of the composition."),
    warm_start_steps: int = typer.Option(1000, help="Pretraining steps on draws of the DP class Gaussians (post-processing, no budget)."),
    warm_start_rank: int = typer.Option(10, help="Principal directions kept per class (0: class means only)."),
    warm_start_clip: Optional[float] = typer.Option(None, help="L2 clip of each image before the central release (default sqrt(#pixels): no image changes)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from this model folder's weights (e.g. synthfed pretrain on public data); costs no budget, the card names it."),
    head: str = typer.Option("up", help="fedper/fedrep: the local head: up | out | class-embedding, or glob patterns like 'up_blocks.1.*,conv_out.*'."),
    head_epochs: int = typer.Option(1, help="fedrep: head-only epochs before the body epochs."),
    t0: Optional[int] = typer.Option(None, help="pfdm: hand-off timestep (default: the accountant picks it from --epsilon)."),
    clip_norm: Optional[float] = typer.Option(None, help="pfdm: L2 clip of each image before upload (default sqrt(#pixels): no image changes)."),
    upload_copies: int = typer.Option(1, help="pfdm: noised copies uploaded per image (they compose)."),
    label_epsilon: Optional[float] = typer.Option(None, help="pfdm: protect uploaded labels by randomized response with this epsilon."),
    public_labels: bool = typer.Option(False, "--public-labels", help="pfdm: declare labels public (uploaded as they are)."),
    local_epsilon: Optional[float] = typer.Option(None, help="pfdm: also train the local low-noise denoisers with DP-SGD at this epsilon."),
    precision: str = typer.Option("fp32", help="fp32 | bf16 (autocast; clipping stays fp32)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    seed: int = typer.Option(0, help="Seed of the partition, initialisation and every draw."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last complete round, as it was started (other options are ignored, with a note; a changed --epsilon or --delta is refused)."),
) -> None:
    """Train a class-conditional DDPM across clients without moving their images."""
    from synthfed.train import train as run_train

    ctx = click.get_current_context()
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
    preset: str = typer.Option("small", help="Model size: tiny | small | paper (as the private run will use)."),
    image_size: Optional[int] = typer.Option(None, help="Image size (as the private run will use)."),
    epochs: int = typer.Option(5, help="Epochs over the public data."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    timesteps: int = typer.Option(1000, help="Diffusion steps T (as the private run will use)."),
    precision: str = typer.Option("fp32", help="fp32 | bf16."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
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
def generate(
    model: Path = typer.Argument(..., help="A run directory (its latest round, EMA weights) or a model folder."),
    out_dir: Path = typer.Option(..., "--out", help="New folder for the PNGs, manifest.csv and grid.png."),
    per_class: int = typer.Option(10, help="Images per class (with --counts match-real: the average)."),
    counts: str = typer.Option("uniform", help="Class counts: uniform | a CSV of class,count | match-real (the real class mix: only for a non-DP output with --allow-non-private)."),
    allow_non_private: bool = typer.Option(False, "--allow-non-private", help="Write a dataset not covered by DP (stamped 'NOT differentially private')."),
    sampler: str = typer.Option("ddim", help="ddim | ddpm (ancestral)."),
    steps: int = typer.Option(50, help="Sampling steps (DDPM with steps = T is the seed's sampler)."),
    ddpm_variance: str = typer.Option("fixed_small", help="DDPM sigma^2: fixed_small (beta-tilde) | fixed_large (beta)."),
    guidance: float = typer.Option(0.0, help="Classifier-free guidance weight w (0 = plain conditional)."),
    client: Optional[int] = typer.Option(None, help="Sample client i's personalized model."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights instead of the EMA."),
    batch_size: int = typer.Option(100, help="Images sampled at once."),
    seed: int = typer.Option(0, help="Sampling seed."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Sample a trained model into PNGs with a manifest."""
    from synthfed.card import NOT_DP, counts_origin, privacy_label, resolve_class_counts
    from synthfed.diffusion import DDPM_VARIANCES, SAMPLERS
    from synthfed.federated.simulation import resolve_device
    from synthfed.generate import generate_dataset, load_generator

    if per_class < 1:
        raise UsageError("--per-class must be at least 1")
    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    if ddpm_variance not in DDPM_VARIANCES:
        raise UsageError(f"--ddpm-variance must be one of {', '.join(DDPM_VARIANCES)}")
    if steps < 1 or batch_size < 1 or guidance < 0:
        raise UsageError("--steps and --batch-size must be at least 1 and --guidance non-negative")
    check_device(device)
    gen = load_generator(model, client=client, use_ema=not no_ema)
    if steps > gen.schedule.num_train_timesteps:
        raise UsageError(f"--steps must be at most the model's T = {gen.schedule.num_train_timesteps}")
    run_info = None
    if gen.run_dir is not None:
        from synthfed.checkpoint import read_run_file

        run_info = read_run_file(gen.run_dir)
    class_counts = resolve_class_counts(counts, num_classes=gen.spec.num_classes, class_names=gen.spec.class_names,
                                        per_class=per_class, run_info=run_info, client=client,
                                        differentially_private=bool(gen.privacy.get("differentially_private")),
                                        allow_non_private=allow_non_private)
    with RichProgress(err) as progress:
        path = generate_dataset(
            gen, out_dir, per_class=per_class, counts=class_counts, allow_non_private=allow_non_private,
            counts_source=counts_origin(counts, client), real_counts=counts == "match-real",
            sampler=sampler, num_steps=steps, guidance_scale=guidance,
            ddpm_variance=ddpm_variance, batch_size=batch_size, seed=seed, device=resolve_device(device),
            progress=progress,
        )
    out.print(f"wrote {sum(class_counts)} images to {path / 'images'}")
    out.print(f"manifest: {path / 'manifest.csv'} (and .parquet); dataset card: {path / 'CARD.md'}")
    out.print(f"sample grid: {path / 'grid.png'}")
    label = privacy_label(gen.privacy)
    out.print(f"privacy: {gen.privacy['statement'] if label == NOT_DP else label}")
    if counts == "match-real":
        out.print("class counts: the real class histogram of the training data (the card says so)")


@app.command()
def partition(
    data: str = typer.Option("digits", help="Data source (as for train)."),
    clients: int = typer.Option(4, help="Number of clients."),
    scheme: str = typer.Option("dirichlet", help="dirichlet | iid | folders."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration."),
    min_partition_size: int = typer.Option(10, help="Smallest client."),
    seed: int = typer.Option(0, help="Partition seed."),
    save: Optional[Path] = typer.Option(None, help="Also write the table as CSV here."),
) -> None:
    """Print the class counts per client of a partition."""
    from synthfed.train import load_federated_data

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


def main() -> None:
    register_subcommands()
    app(prog_name="synthfed")


if __name__ == "__main__":
    sys.exit(main())
