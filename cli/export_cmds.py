"""``synthfed export``: a run's model as a diffusers pipeline folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

out = Console(soft_wrap=True)  # paths stay whole on one line (copy-paste)
err = Console(stderr=True)


def export(
    model: Path = typer.Argument(..., help="A run directory (its latest round) or a model folder."),
    out_dir: Path = typer.Option(..., "--out", help="New (or empty) folder for the diffusers pipeline and its model card."),
    client: Optional[int] = typer.Option(None, help="Export client i's personalized model (fedper, fedrep, local runs)."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Export the raw weights instead of the EMA (generate's default)."),
    allow_non_private: bool = typer.Option(False, "--allow-non-private", help="Export a model not covered by DP (its card says 'NOT differentially private')."),
) -> None:
    """Write a diffusers pipeline folder (model_index.json, unet/, scheduler/, README.md model card)."""
    from synthfed.card import NOT_DP, privacy_label
    from synthfed.cli.render import RichProgress
    from synthfed.pipeline_folder import CARD_FILE, PIPELINE_FILE, load_exportable, write_pipeline_folder

    gen = load_exportable(model, client=client, use_ema=not no_ema)
    with RichProgress(err) as progress:
        path = write_pipeline_folder(gen, out_dir, allow_non_private=allow_non_private, progress=progress)
    privacy = gen.privacy
    out.print(f"wrote a diffusers pipeline to {path}: model_index.json, unet/, scheduler/, {PIPELINE_FILE}")
    out.print(f"model card: {path / CARD_FILE}")
    out.print(f"load it: synthfed.pipeline.ClassConditionalPipeline.from_pretrained({str(path)!r}) "
              "(or with diffusers alone, see the card)")
    label = privacy_label(privacy)
    out.print(f"privacy: {privacy['statement'] if label == NOT_DP else label}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to the main app."""
    app.command("export")(export)
