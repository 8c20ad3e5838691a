"""synthfed from Python: the four steps of the command line as functions.

::

    from synthfed import TrainConfig, train, generate, audit, export

    config = TrainConfig(data="digits", num_clients=4, rounds=3, epsilon=10.0).validate()
    result = train(config, "runs/dp")
    dataset = generate(result.run_dir, "data/dp", per_class=30)
    report = audit(dataset, data="digits", out_dir="reports/dp")
    export(result.run_dir, "pipelines/dp")

Each function takes what the matching command takes (same names and defaults,
Python spelling) and does what it does, with the same refusals: a dataset or a
pipeline not covered by DP is written only with ``allow_non_private=True``. The
core never prints; pass ``progress`` (a ``synthfed.progress.Progress``
callback) to follow long work. Under ``--epsilon`` the command line applies the
DP recipe (``synthfed.recipes``) to options not given; from Python the config
is run exactly as built: use ``synthfed.recipes.DP_RECIPE`` to apply it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthfed.progress import Progress, null_progress

if TYPE_CHECKING:
    from synthfed.config import TrainConfig
    from synthfed.federated.simulation import TrainResult


def train(config: "TrainConfig", out_dir: str | Path, *, resume: bool = False,
          progress: Progress = null_progress) -> "TrainResult":
    """Train ``config`` (validated: ``TrainConfig(...).validate()``) into the run
    directory ``out_dir``; with ``resume``, continue that run from its last
    complete round (its privacy ledger carries over: nothing is spent twice).

    Returns the ``TrainResult``: ``run_dir``, ``rounds_completed``, the
    per-round ``history`` and ``last_round_dir`` (whose ``ledger.json`` holds
    the privacy spent, when ``config.epsilon`` is set)."""
    from synthfed.training import train as run_train

    return run_train(config.validate(), out_dir, resume=resume, progress=progress)


def generate(model: str | Path, out_dir: str | Path, *, per_class: int = 10, counts: list[int] | None = None,
             sampler: str = "ddim", steps: int = 50, guidance: float = 0.0, ddpm_variance: str = "fixed_small",
             client: int | None = None, use_ema: bool = True, layout: str = "flat", batch_size: int = 100,
             seed: int = 0, device: str = "auto", allow_non_private: bool = False,
             progress: Progress = null_progress) -> Path:
    """Sample ``model`` (a run directory or a model folder; ``client`` for a
    personalized run) into the new dataset folder ``out_dir`` and return it.

    ``counts`` (images per class, in class order) overrides ``per_class``. The
    folder holds ``images/`` (with Hugging Face's ``metadata.csv``; ``layout``
    "class-folders" for torchvision's ImageFolder), ``manifest.csv``, the
    ``README.md`` card stating the guarantee from the run's ledger, and
    ``grid.png``. A model not covered by DP is refused unless
    ``allow_non_private``; the card then says "NOT differentially private"."""
    from synthfed.config import check_device
    from synthfed.federated.setup import resolve_device
    from synthfed.generation import generate_dataset, load_generator

    gen = load_generator(model, client=client, use_ema=use_ema)
    return generate_dataset(gen, out_dir, per_class=per_class, counts=counts, sampler=sampler, num_steps=steps,
                            guidance_scale=guidance, ddpm_variance=ddpm_variance, batch_size=batch_size, seed=seed,
                            device=resolve_device(check_device(device)), allow_non_private=allow_non_private,
                            layout=layout, progress=progress)


def audit(dataset_dir: str | Path, *, data: str, out_dir: str | Path | None, run_dir: str | Path | None = None,
          seed: int = 0, progress: Progress = null_progress, **options: Any) -> dict:
    """Audit the generated dataset ``dataset_dir`` against the real source
    ``data`` (a ``--data`` spec such as "digits"): downstream accuracy on real
    test data (train on synthetic, test on real), per-class and per-group
    fairness, distribution fidelity, memorization and membership inference.

    Writes ``report.html``, ``report.json`` and CSV tables into ``out_dir``
    (nothing when None) and returns the report as a dict; its ``summary`` has
    the verdict per area ("ok", "warning", "alert"). ``options`` are
    ``synthfed.fairness.audit.run_audit``'s (``families``, ``cnn_epochs``,
    ``mia``, ``max_real_train``...)."""
    from synthfed.fairness.audit import run_audit

    return run_audit(dataset_dir, real=data, out_dir=out_dir, run_dir=run_dir, seed=seed, progress=progress,
                     **options)


def export(model: str | Path, out_dir: str | Path, *, client: int | None = None, use_ema: bool = True,
           allow_non_private: bool = False, progress: Progress = null_progress) -> Path:
    """Write ``model`` (a run directory or a model folder; ``client`` for a
    personalized run) as a diffusers pipeline folder ``out_dir`` and return it.

    Load it with ``synthfed.pipeline.ClassConditionalPipeline.from_pretrained``
    (or diffusers alone: ``DiffusionPipeline.from_pretrained(dir,
    trust_remote_code=True)``); it samples exactly what ``generate`` samples.
    A PFDM run is refused (two denoisers); a model not covered by DP unless
    ``allow_non_private``."""
    from synthfed.pipeline_folder import export_pipeline

    return export_pipeline(model, out_dir, client=client, use_ema=use_ema, allow_non_private=allow_non_private,
                           progress=progress)
