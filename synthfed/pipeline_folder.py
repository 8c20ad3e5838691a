"""A run's model as a diffusers pipeline folder (``synthfed export``).

The folder is what ``DiffusionPipeline.save_pretrained`` writes (``model_index.json``,
``unet/``, ``scheduler/``) plus ``pipeline.py`` (a copy of ``synthfed.pipeline``,
so plain diffusers can load it) and ``README.md``, a Hub model card. The
scheduler is the DDIM scheduler that ``synthfed generate`` builds from the
run's noise schedule, so any of the loaders reproduces generate's images.

The card's privacy part comes from the run's ledger through
``LoadedGenerator.privacy`` and ``synthfed.card``'s wording; nothing is typed
by hand. Like a generated dataset the folder is meant to leave the party that
made it: it names the run by folder name only, and it is assembled under a
temporary name and renamed into place (a crash never leaves a half-written
folder behind a valid-looking name)."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

from synthfed import pipeline as pipeline_module
from synthfed.card import (NOT_DP, STRENGTH_TEXT, guarantee_strength, label_handling, privacy_label, source_label,
                           worst_epsilon)
from synthfed.checkpoint import read_run_file
from synthfed.errors import UsageError
from synthfed.generation import LoadedGenerator, load_generator
from synthfed.io import new_output_folder, refuse_non_empty, write_json_atomic
from synthfed.model.presets import MODEL_META_FILE
from synthfed.pipeline import ClassConditionalPipeline
from synthfed.privacy.accountant import UNIT_OF_PRIVACY
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress

PIPELINE_FILE = "pipeline.py"
# model_index.json names the folder's own code this way (the Hub convention for a
# custom pipeline), so that DiffusionPipeline.from_pretrained(..., trust_remote_code=True) finds it.
PIPELINE_CLASS = [Path(PIPELINE_FILE).stem, ClassConditionalPipeline.__name__]
CARD_FILE = "README.md"
PFDM_REFUSED = ("a PFDM run samples with two denoisers (the shared model above t0, a client's own below), which one "
                "diffusers UNet cannot hold; sample it with `synthfed generate RUN --client i` instead")
DEFAULT_STEPS = 50


def export_pipeline(model: str | Path, out_dir: str | Path, *, client: int | None = None, use_ema: bool = True,
                    allow_non_private: bool = False, progress: Progress = null_progress) -> Path:
    """Write the diffusers pipeline folder of ``model`` (a run directory, its
    latest round, or a model folder) into ``out_dir`` (new or empty); returns it.

    ``client``: a personalized run's client i (shared backbone + i's local
    part, as ``load_generator`` builds it). ``use_ema``: the EMA weights
    (what ``synthfed generate`` samples by default). A PFDM run is refused:
    its sampler hands over between two denoisers. A model not covered by DP
    is refused unless ``allow_non_private`` (as ``synthfed generate`` refuses
    its images), and its card then says so."""
    refuse_non_empty(Path(out_dir))  # before loading anything: the cheap refusal first
    gen = load_exportable(model, client=client, use_ema=use_ema)
    return write_pipeline_folder(gen, out_dir, allow_non_private=allow_non_private, progress=progress)


def load_exportable(model: str | Path, *, client: int | None = None, use_ema: bool = True) -> LoadedGenerator:
    """``load_generator``, refusing what one diffusers UNet cannot hold (PFDM)."""
    model = Path(model)
    _refuse_pfdm(model)
    gen = load_generator(model, client=client, use_ema=use_ema)
    if gen.handover is not None:  # defence in depth: _refuse_pfdm reads the strategy
        raise UsageError(PFDM_REFUSED)
    return gen


def write_pipeline_folder(gen: LoadedGenerator, out_dir: str | Path, *, allow_non_private: bool = False,
                          progress: Progress = null_progress) -> Path:
    """The pipeline folder of a loaded generator, assembled under a temporary
    name and renamed into ``out_dir`` (refused unless missing or empty)."""
    out_dir = Path(out_dir)
    refuse_non_empty(out_dir)
    if not gen.privacy.get("differentially_private") and not allow_non_private:
        from synthfed.card import NonPrivateOutputRefused

        raise NonPrivateOutputRefused(
            f"refusing to export a model that is not differentially private ({gen.privacy.get('statement')}); "
            "pass --allow-non-private to export it with a card that says so")
    with new_output_folder(out_dir, command="synthfed export", what="pipeline") as tmp:
        _write_folder(gen, tmp, progress)
    return out_dir


def _refuse_pfdm(model: Path) -> None:
    """Before loading: ``load_generator`` would ask a PFDM run for --client,
    which export could not use either. (A PFDM run's model folder is refused
    by ``load_generator`` itself: it is only the shared part.)"""
    if (model / MODEL_META_FILE).is_file():
        return
    if read_run_file(model)["config"].get("strategy") == "pfdm":
        raise UsageError(PFDM_REFUSED)


def build_pipeline(gen: LoadedGenerator) -> ClassConditionalPipeline:
    """The pipeline of a loaded (non-PFDM) generator: its UNet and the DDIM
    scheduler of its noise schedule, as ``synthfed generate`` samples it."""
    spec = gen.spec
    return ClassConditionalPipeline(unet=gen.model, scheduler=gen.schedule.ddim(),
                                    class_names=list(spec.class_names), null_label=spec.null_label)


def _write_folder(gen: LoadedGenerator, folder: Path, progress: Progress) -> None:
    progress(TaskStarted("export", "writing the pipeline folder", 3))
    build_pipeline(gen).save_pretrained(folder, safe_serialization=True)
    _drop_load_path(folder / "unet" / "config.json")
    progress(TaskAdvanced("export"))
    index = json.loads((folder / "model_index.json").read_text())
    write_json_atomic(folder / "model_index.json", {**index, "_class_name": PIPELINE_CLASS})
    (folder / PIPELINE_FILE).write_text(Path(inspect.getsourcefile(pipeline_module)).read_text())
    progress(TaskAdvanced("export"))
    (folder / CARD_FILE).write_text(render_model_card(gen))
    progress(TaskAdvanced("export"))
    progress(TaskFinished("export"))
    _ordinary_permissions(folder)


def _ordinary_permissions(folder: Path) -> None:
    """Files as the user's umask makes them: diffusers writes the weights 0600
    (through a temporary file), and the folder is published as it is."""
    mode = folder.stat().st_mode & 0o666  # make_temp_dir gave the folder 0777 & ~umask
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, mode)


def _drop_load_path(config_path: Path) -> None:
    """diffusers keeps the folder a model was loaded from (``_name_or_path``) in
    the config it saves: that is where the user's run lives, not for release."""
    config = json.loads(config_path.read_text())
    if config.pop("_name_or_path", None) is not None:
        write_json_atomic(config_path, config)


# --------------------------------------------------------------------------- the model card
def render_model_card(gen: LoadedGenerator) -> str:
    """README.md: Hub YAML header, then what the model is, its privacy (from
    the ledger), its classes, how to sample it exactly as synthfed does."""
    label = privacy_label(gen.privacy)
    dp = label != NOT_DP
    sections = [_front_matter(dp), _overview(gen, label), _privacy_section(gen, dp), _classes_section(gen),
                _sampling_section(gen), _loading_section(gen), _plain_loop_section(gen), _license_section()]
    return "\n".join(sections)


def _front_matter(dp: bool) -> str:
    tags = ["synthfed", "diffusion", "class-conditional", "differential-privacy" if dp else "not-differentially-private"]
    # license: synthfed cannot know the terms of the training data the weights derive from.
    return "\n".join(["---", "library_name: diffusers", "license: other  # set the training data's terms before publishing",
                      "tags:", *(f"- {t}" for t in tags), "pipeline_tag: unconditional-image-generation", "---", ""])


def _overview(gen: LoadedGenerator, label: str) -> str:
    spec = gen.spec
    lines = ["# Class-conditional DDPM (synthfed)", "", f"**{label}**", "",
             f"- source: {source_label(gen.source)}",
             f"- strategy: {gen.config.get('strategy', 'not recorded')}",
             f"- images: {spec.image_size}x{spec.image_size}, {spec.channels} channel(s), pixels in [0, 255]",
             f"- model: diffusers `UNet2DModel` (synthfed preset `{spec.preset}`), "
             f"{spec.num_classes} classes + 1 null label", ""]
    return "\n".join(lines)


def _privacy_section(gen: LoadedGenerator, dp: bool) -> str:
    privacy = gen.privacy
    lines = ["## Privacy", "", privacy["statement"], ""]
    if dp:
        strength = guarantee_strength(worst_epsilon(privacy))
        lines += [f"Guarantee strength: **{strength}** ({STRENGTH_TEXT[strength]}). The weights are the output of "
                  "the mechanism, so publishing them, and any image sampled from them, is covered by the same "
                  "guarantee (post-processing).", ""]
    else:
        lines += [f"These weights are **{NOT_DP}**: a diffusion model can reproduce its training images. "
                  "Do not publish them where the training data could not go.", ""]
    lines += [f"- {c['component']}: {'DP' if c['dp'] else 'NOT DP'} ({c['mechanism']})"
              for c in privacy.get("components", [])]
    rows = privacy.get("clients") or []
    if rows:
        lines += ["", "| client | n | mechanisms | eps upper | delta | strength |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['client']} | {r['n']} | {r['mechanisms']} | {r['eps_upper']:.4g} | {r['delta']:.3g} | "
                  f"{guarantee_strength(r['eps_upper'])} |" for r in rows]
        accountants = "; ".join(dict.fromkeys(str(r.get("accountant")) for r in rows))
        lines += ["", f"Accountant: {accountants}."]
    lines += ["", f"Unit of privacy: {UNIT_OF_PRIVACY}.", "", f"Labels: {label_handling(gen.config)}.", ""]
    return "\n".join(lines)


def _classes_section(gen: LoadedGenerator) -> str:
    spec = gen.spec
    lines = ["## Classes", "", "| label id | class name |", "|---|---|"]
    lines += [f"| {k} | {name} |" for k, name in enumerate(spec.class_names)]
    lines += ["", f"Null label: **{spec.null_label}** (the class-embedding row meaning \"no label\", used only by "
              "classifier-free guidance; not a class).", ""]
    return "\n".join(lines)


def _sampling_section(gen: LoadedGenerator) -> str:
    s = gen.schedule
    client = f" --client {gen.source['client']}" if gen.source.get("client") is not None else ""
    weights = "" if gen.source.get("weights", "ema") == "ema" else " --no-ema"
    return "\n".join([
        "## Sampling", "",
        f"`scheduler/` is the DDIM scheduler the model was sampled with: {s.beta_schedule} betas from {s.beta_start:g} "
        f"to {s.beta_end:g} over T = {s.num_train_timesteps} steps, `timestep_spacing=\"trailing\"`, "
        "`clip_sample=True`, `set_alpha_to_one=True`, epsilon prediction, eta = 0. A default-configured "
        "scheduler gives different images.", "",
        "Classifier-free guidance weight w (`guidance_scale`) follows synthfed's convention "
        "eps = (1 + w) eps(x, y) - w eps(x, null); w = 0 is plain conditional sampling. It is diffusers' usual "
        "eps(x, null) + g (eps(x, y) - eps(x, null)) with **g = 1 + w**.", "",
        "Pixels are `round((x.clamp(-1, 1) + 1) * 127.5)`. With the same seed, steps, guidance and batch size, "
        f"these calls give the images of `synthfed generate RUN{client}{weights} --sampler ddim --steps N "
        "--guidance w --seed s --batch-size b` (generate samples class 0's images first, then class 1's, ...), "
        "pixel for pixel.", ""])


def _loading_section(gen: LoadedGenerator) -> str:
    labels = ", ".join(str(k) for k in range(min(3, gen.spec.num_classes)))
    steps = min(DEFAULT_STEPS, gen.schedule.num_train_timesteps)
    return "\n".join([
        "## Loading", "",
        "With synthfed installed (runs no code from this folder):", "",
        "```python",
        "import torch",
        "from synthfed.pipeline import ClassConditionalPipeline",
        "",
        'pipe = ClassConditionalPipeline.from_pretrained("PATH/TO/THIS/FOLDER")',
        f"images = pipe(class_labels=[{labels}], num_inference_steps={steps}, guidance_scale=0.0,",
        '              generator=torch.Generator().manual_seed(0), output_type="pil").images',
        "```", "",
        f"With diffusers alone: `DiffusionPipeline.from_pretrained(\"PATH/TO/THIS/FOLDER\", trust_remote_code=True)` "
        f"runs this folder's `{PIPELINE_FILE}` (read it first; it imports only torch, numpy, PIL and diffusers) "
        "and returns the same pipeline.", ""])


def plain_loop(gen: LoadedGenerator, *, steps: int | None = None) -> str:
    """The card's self-contained sampling loop (plain diffusers, no pipeline
    class): one image of each class, in class order, seed 0, no guidance."""
    spec, total = gen.spec, gen.schedule.num_train_timesteps
    steps = min(DEFAULT_STEPS, total) if steps is None else steps
    return "\n".join([
        "import torch",
        "from diffusers import DDIMScheduler, UNet2DModel",
        "",
        'folder = "."  # this folder (or its Hub repo id)',
        'unet = UNet2DModel.from_pretrained(folder, subfolder="unet")',
        'scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")',
        f"labels = torch.arange({spec.num_classes})  # label ids (table above): one image of each class",
        "guidance = 0.0  # synthfed's w (0: no guidance)",
        f"null, steps, generator = {spec.null_label}, {steps}, torch.Generator().manual_seed(0)",
        "x = torch.randn((len(labels), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size),",
        "                generator=generator)",
        "scheduler.set_timesteps(steps)",
        "with torch.no_grad():",
        "    for t in scheduler.timesteps:",
        "        tt = torch.full((len(x),), int(t))",
        "        if guidance > 0:  # synthfed's rule: (1 + w) eps(x, y) - w eps(x, null)",
        "            y = torch.cat([labels, torch.full_like(labels, null)])",
        "            cond, uncond = unet(torch.cat([x, x]), torch.cat([tt, tt]), class_labels=y).sample.chunk(2)",
        "            eps = (1 + guidance) * cond - guidance * uncond",
        "        else:",
        "            eps = unet(x, tt, class_labels=labels).sample",
        "        x = scheduler.step(eps, t, x, eta=0.0).prev_sample",
        "images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # N x C x H x W pixels",
    ])


def _plain_loop_section(gen: LoadedGenerator) -> str:
    return "\n".join([
        "## The loop in plain diffusers", "",
        "No pipeline class, no custom code: the UNet, the scheduler and this loop give the same pixels as "
        "`synthfed generate --per-class 1 --seed 0` with the steps and guidance set below (up to `--batch-size` "
        "images: generate draws each further batch's noise from the same generator, after the previous batch).", "",
        "```python", plain_loop(gen), "```", ""])


def _license_section() -> str:
    return "\n".join([
        "## License", "",
        "`license: other` above is a placeholder: the weights derive from the training data, whose terms synthfed "
        "does not know. Set the field (and `license_name`/`license_link` for a custom license) before publishing.", ""])
