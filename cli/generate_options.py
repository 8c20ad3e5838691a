"""``synthfed generate``'s options and what it does with a loaded model,
declared once: ``synthfed generate`` (a run or a model folder) and
``synthfed flower generate`` (a personalized model at its Flower node) take
the same options under the same names, defaults and checks, and write the
same dataset folder."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.console import Console

from synthfed.cli.options import choice, with_parameters
from synthfed.cli.render import RichProgress
from synthfed.config import DDPM_VARIANCES, DEVICES, LAYOUTS, SAMPLERS, check_device
from synthfed.errors import UsageError

out = Console()
err = Console(stderr=True)


def _option(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


GENERATE_OPTIONS = [
    _option("out_dir", Path, typer.Option(..., "--out", help="New folder: images/ (PNGs + metadata.csv), manifest.csv, grid.png and the README.md card.")),
    _option("per_class", int, typer.Option(10, help="Images per class (with --counts match-real: the average).")),
    _option("counts", str, typer.Option("uniform", help="Class counts: uniform | a CSV of class,count | match-real (the real class mix: only for a non-DP output with --allow-non-private).")),
    _option("allow_non_private", bool, typer.Option(False, "--allow-non-private", help="Write a dataset not covered by DP (stamped 'NOT differentially private').")),
    _option("sampler", choice(SAMPLERS), typer.Option("ddim", help="ddim | ddpm (ancestral).")),
    _option("steps", int, typer.Option(50, help="Sampling steps (DDPM with steps = T is the seed's sampler).")),
    _option("ddpm_variance", choice(DDPM_VARIANCES), typer.Option("fixed_small", help="DDPM sigma^2: fixed_small (beta-tilde) | fixed_large (beta).")),
    _option("guidance", float, typer.Option(0.0, help="Classifier-free guidance weight w (0 = plain conditional).")),
    _option("no_ema", bool, typer.Option(False, "--no-ema", help="Use the raw weights instead of the EMA.")),
    _option("batch_size", int, typer.Option(100, help="Images sampled at once.")),
    _option("layout", choice(LAYOUTS), typer.Option("flat", help="flat (images/000000.png) | class-folders (images/00-<class>/..., torchvision ImageFolder).")),
    _option("seed", int, typer.Option(0, help="Sampling seed.")),
    _option("device", choice(DEVICES), typer.Option("auto", help="auto | cpu | cuda.")),
]

with_generate_options = with_parameters(GENERATE_OPTIONS)


def check_generate_options(o: dict) -> None:
    """The refusals that need no model (before any is loaded)."""
    if o["per_class"] < 1:
        raise UsageError("--per-class must be at least 1")
    if o["sampler"] not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}")
    if o["ddpm_variance"] not in DDPM_VARIANCES:
        raise UsageError(f"--ddpm-variance must be one of {', '.join(DDPM_VARIANCES)}")
    if o["steps"] < 1 or o["batch_size"] < 1 or o["guidance"] < 0:
        raise UsageError("--steps and --batch-size must be at least 1 and --guidance non-negative")
    check_device(o["device"])


def write_dataset(gen, o: dict, *, client: int | None) -> None:
    """Sample ``gen`` (a ``LoadedGenerator``) with the options ``o`` into the
    dataset folder ``o["out_dir"]``, and say what was written and under what guarantee."""
    from synthfed.card import NOT_DP, counts_origin, privacy_label, resolve_class_counts
    from synthfed.federated.setup import resolve_device
    from synthfed.generation import generate_dataset

    if o["steps"] > gen.schedule.num_train_timesteps:
        raise UsageError(f"--steps must be at most the model's T = {gen.schedule.num_train_timesteps}")
    run_info = None
    if gen.run_dir is not None:
        from synthfed.run_info import RunInfo

        run_info = RunInfo.read(gen.run_dir)
    counts = o["counts"]
    class_counts = resolve_class_counts(counts, num_classes=gen.spec.num_classes, class_names=gen.spec.class_names,
                                        per_class=o["per_class"], run_info=run_info, client=client,
                                        differentially_private=bool(gen.privacy.get("differentially_private")),
                                        allow_non_private=o["allow_non_private"])
    with RichProgress(err) as progress:
        path = generate_dataset(
            gen, o["out_dir"], per_class=o["per_class"], counts=class_counts, allow_non_private=o["allow_non_private"],
            counts_source=counts_origin(counts, client), real_counts=counts == "match-real",
            sampler=o["sampler"], num_steps=o["steps"], guidance_scale=o["guidance"],
            ddpm_variance=o["ddpm_variance"], batch_size=o["batch_size"], seed=o["seed"],
            device=resolve_device(o["device"]), layout=o["layout"], progress=progress,
        )
    out.print(f"wrote {sum(class_counts)} images to {path / 'images'}")
    parquet = " (and .parquet)" if (path / "manifest.parquet").is_file() else ""
    out.print(f"manifest: {path / 'manifest.csv'}{parquet}; dataset card: {path / 'README.md'}")
    out.print(f"load it: datasets.load_dataset('imagefolder', data_dir='{path / 'images'}')")
    out.print(f"sample grid: {path / 'grid.png'}")
    label = privacy_label(gen.privacy)
    out.print(f"privacy: {gen.privacy['statement'] if label == NOT_DP else label}")
    if counts == "match-real":
        out.print("class counts: the real class histogram of the training data (the card says so)")
