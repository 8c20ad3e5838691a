"""Sampling a trained run into an image dataset on disk.

``load_generator`` resolves what produced the images (a run's global model or
one client's personalized model, EMA weights by default) and what privacy
guarantee covers it, straight from the run's ledger (or, for a model folder
copied out of its run, from the ``privacy.json`` written into it from the
ledger); ``generate_dataset`` writes the dataset folder laid out by
``synthfed.dataset_folder`` and records both. Every written file names its source by folder name or
relative path: the dataset is meant to leave the party that made it.

Every file read from a run or a model folder is verified against the
checksums written with it (``synthfed.checkpoint``); a DP run whose ledger is
missing is refused, never sampled as non-private. ``generate_dataset`` owns
its output folder while it writes (``synthfed.locking``) and removes its
partial output if it fails."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthfed.card import privacy_status
from synthfed.checkpoint import (MODEL_PRIVACY_FILE, client_file, latest_round_dir, load_model_folder, load_tensors,
                                 model_folder_seal, read_round_ledger, read_run_file, round_seal)
from synthfed.config import PERSONALIZED_STRATEGIES
from synthfed.dataset_folder import (IMAGES_DIR, LAYOUTS, load_generated, loading_section,  # noqa: F401  (load_generated: re-exported)
                                     readme_front_matter, write_images)
from synthfed.diffusion import NoiseSchedule, model_eps_fn, pfdm_sample, sample, to_uint8
from synthfed.errors import InputError, UsageError
from synthfed.io import new_output_folder, refuse_non_empty, write_json_atomic
from synthfed.model.presets import MODEL_META_FILE, ModelSpec, build_unet
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress


@dataclass
class LoadedGenerator:
    model: torch.nn.Module
    spec: ModelSpec
    schedule: NoiseSchedule
    source: dict = field(default_factory=dict)  # what produced the images, in words and names (no paths): released
    privacy: dict = field(default_factory=dict)  # privacy status of every producing component
    handover: tuple | None = None  # PFDM: (shared high-noise model, t0); ``model`` finishes below t0
    run_dir: Path | None = None  # local only (never written out): the run, when the images come from one
    config: dict = field(default_factory=dict)  # the run's settings (for the card's label handling)


def _privacy_status(round_dir: Path, client: int | None, info: dict) -> dict:
    """The guarantee of the round's ledger (verified; a DP run without its
    ledger is refused by ``read_round_ledger``)."""
    return privacy_status(read_round_ledger(round_dir, info), info["config"], client)


def _round_number(round_dir: Path) -> int:
    return int(round_dir.name.split("-")[1])


def load_generator(path: str | Path, *, client: int | None = None, use_ema: bool = True) -> LoadedGenerator:
    """``path`` is a run directory (its latest complete round) or a model folder."""
    path = Path(path)
    if (path / MODEL_META_FILE).is_file():
        if client is not None:
            raise UsageError("--client needs a run directory, not a single model folder")
        return _load_model_folder(path)
    info = read_run_file(path)
    if info["config"].get("strategy") == "pfdm":
        return _load_pfdm_generator(path, info, client=client, use_ema=use_ema)
    round_dir = latest_round_dir(path)
    if round_dir is None:
        raise FileNotFoundError(f"{path} has no completed round yet")
    spec = ModelSpec.from_dict(info["model"])
    which = "ema" if use_ema else "model"
    global_dir = round_dir / "global" / which
    clients_dir = round_dir / "clients"
    # By strategy, not by folder: a Flower run's local parts stay on its nodes.
    personalized = clients_dir.is_dir() or info["config"].get("strategy") in PERSONALIZED_STRATEGIES
    if personalized and client is None:
        raise UsageError(
            f"run {path} keeps part of each client's model local ({info['config']['strategy']}); "
            "choose whose model samples with --client"
        )
    if client is not None and not personalized:
        raise UsageError(f"run {path} has one global model; --client does not apply")
    if global_dir.is_dir():
        model, _ = load_model_folder(global_dir)
    else:
        model = build_unet(spec)
    source = {"kind": "run", "run": path.resolve().name, "round": _round_number(round_dir), "weights": which}
    if client is not None:
        local_path = clients_dir / client_file(client)
        if not local_path.is_file():
            raise UsageError(_no_client(path, info, client))
        prefix = "ema." if use_ema else "model."
        tensors = load_tensors(round_seal(round_dir, info), f"clients/{local_path.name}")
        model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False)
        source["client"] = client
    return LoadedGenerator(
        model=model.eval(),
        spec=spec,
        schedule=NoiseSchedule(**spec.schedule),
        source=source,
        privacy=_privacy_status(round_dir, client, info),
        run_dir=path,
        config=info["config"],
    )


def _load_model_folder(path: Path) -> LoadedGenerator:
    """A single model folder. Inside a run (rounds/round-N/global/ema) the run's
    ledger says what covers it; elsewhere (a copy) its own privacy.json does; a
    folder with neither carries no claim at all."""
    model, spec = load_model_folder(path)
    round_dir = path.parent.parent if path.parent.name == "global" else None
    run_dir = round_dir.parent.parent if round_dir is not None else None
    source = {"kind": "model folder", "folder": path.resolve().name, "weights": path.name}
    if run_dir is not None and (run_dir / "run.json").is_file():
        info = read_run_file(run_dir)
        _refuse_shared_part(info["config"].get("strategy"))
        source.update(run=run_dir.resolve().name, round=_round_number(round_dir))
        privacy = _privacy_status(round_dir, None, info)
        config = info["config"]
    else:
        config, privacy = _folder_privacy(path, source)
    return LoadedGenerator(model=model.eval(), spec=spec, schedule=NoiseSchedule(**spec.schedule), source=source,
                           privacy=privacy, config=config)


def _refuse_shared_part(strategy: str | None) -> None:
    if strategy in PERSONALIZED_STRATEGIES:
        raise UsageError(
            f"this folder holds only the shared part of a {strategy} run; sample the run directory with --client instead"
        )


def _folder_privacy(path: Path, source: dict) -> tuple[dict, dict]:
    """(public run settings, privacy status) from the folder's privacy.json, which
    ``save_round`` wrote from the ledger. Anything short of a complete DP
    statement with finite epsilons counts as NOT differentially private."""
    meta_path = path / MODEL_PRIVACY_FILE
    if not meta_path.is_file():
        return {}, {"differentially_private": False,
                    "components": [{"component": "model folder", "dp": False, "mechanism": "unknown"}],
                    "statement": "NOT differentially private (no privacy statement in the folder)"}
    sealed, prefix = model_folder_seal(path)
    meta = sealed.read_json(prefix + MODEL_PRIVACY_FILE)  # verified: a claim of DP must be the one written
    try:
        rows = list(meta.get("clients") or [])
        finite = all(math.isfinite(float(r["eps_upper"])) for r in rows)
        statement = str(meta["statement"])
        config = dict(meta.get("config") or {})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{MODEL_PRIVACY_FILE} in {path.name} is not a readable privacy statement ({exc})") from exc
    _refuse_shared_part(meta.get("shared_part_of"))
    dp = meta.get("differentially_private") is True and bool(rows) and finite
    source.update(run=meta.get("run"), round=meta.get("round"))
    if not dp and not statement.startswith("NOT"):
        statement = f"NOT differentially private: {statement}"
    statement += (f" (recorded in the folder's {MODEL_PRIVACY_FILE} from the ledger of run {meta.get('run')}, "
                  f"round {meta.get('round')})")
    privacy = {"differentially_private": dp, "components": list(meta.get("components") or []),
               "statement": statement, "clients": rows}
    return config, privacy


def _no_client(path: Path, info: dict, client: int) -> str:
    if info.get("engine") == "flower":
        return (f"run {path} ran on Flower: client {client}'s own model stays on its node; sample it there with "
                f"`synthfed flower generate --state-dir <its state dir> --run {info['flower']['run-name']} --out DATA`")
    return f"run {path} has no client {client}"


def _load_pfdm_generator(path: Path, info: dict, *, client: int | None, use_ema: bool) -> LoadedGenerator:
    round_dir = latest_round_dir(path)
    if round_dir is None:
        raise FileNotFoundError(f"{path} has no completed round yet")
    if client is None:
        raise UsageError("a PFDM run's shared model only denoises down to t0; choose whose low-noise model finishes with --client")
    spec = ModelSpec.from_dict(info["model"])
    which = "ema" if use_ema else "model"
    shared, _ = load_model_folder(round_dir / "global" / which)
    local_path = round_dir / "clients" / client_file(client)
    if not local_path.is_file():
        raise UsageError(_no_client(path, info, client))
    prefix = f"{which}."
    local = build_unet(spec)
    tensors = load_tensors(round_seal(round_dir, info), f"clients/{local_path.name}")
    local.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    t0 = int(info["pfdm"]["t0"])
    source = {"kind": "run", "run": path.resolve().name, "round": _round_number(round_dir), "weights": which,
              "client": client, "strategy": "pfdm", "t0": t0}
    return LoadedGenerator(model=local.eval(), spec=spec, schedule=NoiseSchedule(**spec.schedule), source=source,
                           privacy=_privacy_status(round_dir, client, info), handover=(shared.eval(), t0),
                           run_dir=path, config=info["config"])


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path, *, num_classes: int, per_class: int = 8) -> None:
    """One row per class, up to ``per_class`` images each (uint8 N×C×H×W)."""
    c, h, w = images.shape[1:]
    grid = np.full((num_classes * (h + 2), per_class * (w + 2), c), 255, dtype=np.uint8)
    for k in range(num_classes):
        picks = np.flatnonzero(labels == k)[:per_class]
        for j, i in enumerate(picks):
            grid[k * (h + 2) + 1 : k * (h + 2) + 1 + h, j * (w + 2) + 1 : j * (w + 2) + 1 + w] = images[i].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    scale = max(1, 256 // max(grid.shape[:2]))
    img.resize((img.width * scale * 2, img.height * scale * 2), Image.NEAREST).save(path)


def generate_dataset(
    gen: LoadedGenerator,
    out_dir: str | Path,
    *,
    per_class: int,
    counts: list[int] | None = None,
    sampler: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float = 0.0,
    ddpm_variance: str = "fixed_small",
    batch_size: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    allow_non_private: bool = False,
    counts_source: str = "as requested",
    real_counts: bool = False,
    layout: str = "flat",
    progress: Progress = null_progress,
) -> Path:
    """Write the dataset folder (``synthfed.dataset_folder``): PNGs under
    ``images/`` (``layout`` flat or class-folders) with Hugging Face's
    metadata.csv, manifest.csv (+ parquet), grid.png and the README.md card.

    ``counts`` (per class) overrides ``per_class``; ``counts_source`` says in
    the card where they came from, and ``real_counts`` that they are the real
    class histogram (refused for a DP output: no mechanism covers it). A
    dataset not covered by DP is refused unless ``allow_non_private``, and then
    stamped as such. The folder is assembled under a unique temporary name
    (``.<name>.<random>.partial``) and renamed into place, holding the
    output's lock: a crash never leaves a half-written dataset behind a
    valid-looking name, a failure removes the partial folder, and nothing that
    was there before (an existing ``out_dir`` is refused unless empty) is ever
    removed."""
    from synthfed.card import build_card, manifest_stamp, render_card_md

    out_dir = Path(out_dir)
    _check_request(gen, out_dir, layout=layout, allow_non_private=allow_non_private)
    spec = gen.spec
    counts = list(counts) if counts is not None else [per_class] * spec.num_classes
    # The card first: a refusal (e.g. real counts under a DP claim) costs no sampling.
    card = build_card(source=_released_source(gen, out_dir), privacy=gen.privacy, config=gen.config,
                      class_names=spec.class_names, counts=counts, counts_source=counts_source, real_counts=real_counts,
                      sampler={"name": sampler, "steps": num_steps, "guidance_scale": guidance_scale, "seed": seed,
                               "ddpm_variance": ddpm_variance})
    with new_output_folder(out_dir, command="synthfed generate", what="dataset") as tmp:
        (tmp / IMAGES_DIR).mkdir()
        images, labels = _sample_images(gen, counts, sampler=sampler, num_steps=num_steps,
                                        guidance_scale=guidance_scale, ddpm_variance=ddpm_variance,
                                        batch_size=batch_size, seed=seed, device=device, progress=progress)
        write_images(tmp, images, labels, spec.class_names, layout=layout, producer=card["source"], seed=seed,
                     stamp=manifest_stamp(card))
        save_grid(images, labels, tmp / "grid.png", num_classes=spec.num_classes, per_class=min(max(counts), 10))
        write_json_atomic(tmp / "card.json", card)
        (tmp / "README.md").write_text(readme_front_matter(card, len(labels)) + render_card_md(card)
                                       + loading_section(layout, spec.class_names))
    return out_dir


def _check_request(gen: LoadedGenerator, out_dir: Path, *, layout: str, allow_non_private: bool) -> None:
    """The cheap refusals, before any sampling: a bad layout, a taken folder,
    a dataset not covered by DP without the flag."""
    from synthfed.card import NonPrivateOutputRefused

    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    refuse_non_empty(out_dir)
    if not gen.privacy.get("differentially_private") and not allow_non_private:
        raise NonPrivateOutputRefused(
            f"refusing to write a dataset that is not differentially private ({gen.privacy.get('statement')}); "
            "pass --allow-non-private to write it stamped 'NOT differentially private'"
        )


def _released_source(gen: LoadedGenerator, out_dir: Path) -> dict:
    """``gen.source`` plus the run directory relative to the dataset folder (so
    that ``synthfed audit`` finds the run), unless that relative path would
    spell out where the user's files live: through the file-system root or
    above the home folder."""
    source = dict(gen.source)
    if gen.run_dir is None:
        return source
    run, out = Path(gen.run_dir).resolve(), out_dir.resolve()
    common = Path(os.path.commonpath([run, out.parent]))
    home = Path.home().resolve()
    if common != Path(common.anchor) and common not in home.parents:
        source["run_dir"] = os.path.relpath(run, out)
    return source


def _sample_images(gen: LoadedGenerator, counts: list[int], *, sampler: str, num_steps: int, guidance_scale: float,
                   ddpm_variance: str, batch_size: int, seed: int, device, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N×C×H×W images, labels): ``counts[k]`` images of class k, in class order."""
    spec = gen.spec
    device = torch.device(device)
    model = gen.model.to(device)
    labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(counts)])
    eps_fn = model_eps_fn(model, guidance_scale=guidance_scale, null_label=spec.null_label)
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (spec.channels, spec.image_size, spec.image_size)
    all_images: list[np.ndarray] = []
    progress(TaskStarted("sample", f"sampling {len(labels)} images ({sampler}, {num_steps} steps)", len(labels)))
    for batch in labels.split(batch_size):
        if gen.handover is not None:
            shared, t0 = gen.handover
            x = pfdm_sample(
                model_eps_fn(shared.to(device), guidance_scale=guidance_scale, null_label=spec.null_label),
                eps_fn, labels=batch.to(device), image_shape=shape, schedule=gen.schedule, t0=t0, sampler=sampler,
                num_steps=num_steps, ddpm_variance=ddpm_variance, generator=generator,
            )
        else:
            x = sample(eps_fn, labels=batch.to(device), image_shape=shape, schedule=gen.schedule, sampler=sampler,
                       num_steps=num_steps, ddpm_variance=ddpm_variance, generator=generator)
        all_images.append(to_uint8(x).cpu().numpy())
        progress(TaskAdvanced("sample", len(batch)))
    progress(TaskFinished("sample"))
    return np.concatenate(all_images), labels.numpy()
