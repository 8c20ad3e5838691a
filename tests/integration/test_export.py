"""``synthfed export``: a run's model as a diffusers pipeline folder that every
loader (our pipeline class, DiffusionPipeline, the bare components with the
card's loop) samples into exactly the pixels ``synthfed generate`` writes."""

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import dynamic_modules_utils
from typer.testing import CliRunner

import synthfed.pipeline
from synthfed.checkpoint import latest_round_dir
from synthfed.cli.app import app, register_subcommands
from synthfed.config import TrainConfig
from synthfed.diffusion import NoiseSchedule
from synthfed.errors import UsageError
from synthfed.pipeline_folder import CARD_FILE, PFDM_REFUSED, export_pipeline
from synthfed.generation import generate_dataset, load_generated, load_generator
from synthfed.pipeline import ClassConditionalPipeline
from synthfed.training import train

register_subcommands()
runner = CliRunner()

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, batch_size=32, num_train_timesteps=20,
            max_client_size=64, rounds=1)
STEPS, SEED, BATCH = 4, 3, 7  # 20 images in batches of 7: the generator carries over between batches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny 1-round runs on digits: no DP, DP-SGD at epsilon 50, FedPer, PFDM."""
    root = tmp_path_factory.mktemp("export-runs")
    settings = {"plain": {}, "dp": dict(epsilon=50.0, warm_start="none"),
                "fedper": dict(strategy="fedper", head="out"), "pfdm": dict(strategy="pfdm", t0=15, public_labels=True)}
    for name, extra in settings.items():
        train(TrainConfig(**TINY, **extra).validate(), root / name)
    return {name: root / name for name in settings}


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """The plain run exported (read-only for the tests)."""
    return export_pipeline(runs["plain"], tmp_path_factory.mktemp("export") / "pipe", allow_non_private=True)


def _generated(gen, folder, *, per_class=2, steps=STEPS, guidance=0.0, seed=SEED, batch_size=BATCH):
    """Pixels (uint8 N×C×H×W) and labels of ``synthfed generate``, read back from its PNGs."""
    generate_dataset(gen, folder, per_class=per_class, num_steps=steps, guidance_scale=guidance, seed=seed,
                     batch_size=batch_size, allow_non_private=True)
    dataset, _ = load_generated(folder)
    return dataset.images, dataset.labels


def _pixels(pipe, labels, *, steps=STEPS, guidance=0.0, seed=SEED, batch_size=BATCH):
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=labels.tolist(), num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed), batch_size=batch_size).images
    return (images * 255).round().astype(np.uint8).transpose(0, 3, 1, 2)


def _card(folder):
    text = (folder / CARD_FILE).read_text()
    header = yaml.safe_load(text.split("---")[1])
    return text, header


def _card_loop(folder) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (folder / CARD_FILE).read_text(), flags=re.S)
    loops = [b for b in blocks if "UNet2DModel.from_pretrained" in b]
    assert len(loops) == 1
    return loops[0]


# --------------------------------------------------------------------------- the folder
def test_the_folder_is_a_diffusers_pipeline_with_the_runs_exact_scheduler(runs, exported):
    # Prepare
    gen = load_generator(runs["plain"])
    # Execute
    index = json.loads((exported / "model_index.json").read_text())
    unet = UNet2DModel.from_pretrained(exported, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(exported, subfolder="scheduler")
    # Assert: diffusers' layout, our class and labels
    assert index["_class_name"] == ["pipeline", "ClassConditionalPipeline"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["class_names"] == [str(d) for d in range(10)] and index["null_label"] == 10
    assert (exported / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # Assert: pipeline.py is synthfed's class, runnable where synthfed is not installed
    code = (exported / "pipeline.py").read_text()
    assert code == Path(synthfed.pipeline.__file__).read_text()
    tree = ast.parse(code)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m.split(".")[0] for m in imported} == {"__future__", "inspect", "collections", "numpy", "torch",
                                                   "diffusers", "PIL"}
    # Assert: every config field of the run's DDIM scheduler, and the EMA weights
    expected = NoiseSchedule(**gen.spec.schedule).ddim().config
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(scheduler.config) == public(expected)
    assert scheduler.config.timestep_spacing == "trailing" and scheduler.config.num_train_timesteps == 20
    for key, value in gen.model.state_dict().items():
        assert torch.equal(unet.state_dict()[key], value), key


def test_the_folder_names_no_path_of_the_users_files(runs, exported):
    # Execute
    texts = {p.relative_to(exported).as_posix(): p.read_text() for p in exported.rglob("*")
             if p.is_file() and p.suffix != ".safetensors"}
    # Assert: the run by folder name only, no absolute path, ordinary permissions, no temporary folder left
    assert "run: plain, round 1" in texts[CARD_FILE]
    for name, text in texts.items():
        assert str(runs["plain"].parent) not in text and str(exported.parent) not in text, name
        assert "_name_or_path" not in text or name == "pipeline.py", name
    ordinary = exported.stat().st_mode & 0o666  # what the umask allows (diffusers writes weights 0600)
    assert {p.stat().st_mode & 0o777 for p in exported.rglob("*") if p.is_file()} == {ordinary}
    assert sorted(p.name for p in exported.parent.iterdir()) == ["pipe"]


# --------------------------------------------------------------------------- the same pixels as generate
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_the_pipeline_reproduces_generate_bit_for_bit(runs, exported, tmp_path, guidance):
    # Prepare
    reference, labels = _generated(load_generator(runs["plain"]), tmp_path / "g", guidance=guidance)
    # Execute
    pipe = ClassConditionalPipeline.from_pretrained(exported)
    pixels = _pixels(pipe, labels, guidance=guidance)
    # Assert
    assert reference.shape == (20, 1, 8, 8) and reference.std() > 0
    np.testing.assert_array_equal(pixels, reference)


def test_diffusion_pipeline_from_pretrained_runs_the_folders_code_only_when_trusted(runs, exported, tmp_path,
                                                                                    monkeypatch):
    # Prepare: diffusers copies the folder's pipeline.py into its module cache: keep it in tmp_path
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    reference, labels = _generated(load_generator(runs["plain"]), tmp_path / "g", guidance=0.5)
    # Execute
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(exported)
    pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True)
    # Assert
    assert type(pipe).__name__ == "ClassConditionalPipeline" and pipe.config.null_label == 10
    np.testing.assert_array_equal(_pixels(pipe, labels, guidance=0.5), reference)


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_the_cards_plain_diffusers_loop_reproduces_generate(runs, exported, tmp_path, monkeypatch, guidance):
    # Prepare: the loop as printed, at the card's settings (one image a class, seed 0, steps = T here)
    code = _card_loop(exported)
    assert "guidance = 0.0" in code and "synthfed" not in code.replace("synthfed's", "")
    code = code.replace("guidance = 0.0", f"guidance = {guidance}")
    reference, _ = _generated(load_generator(runs["plain"]), tmp_path / "g", per_class=1, steps=20, seed=0,
                              guidance=guidance, batch_size=100)
    # Execute: from inside the folder, as the card says
    monkeypatch.chdir(exported)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    # Assert
    np.testing.assert_array_equal(scope["images"].numpy(), reference)


def test_output_types_and_labels_by_name(exported):
    # Prepare
    pipe = ClassConditionalPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=2, generator=None)
    # Execute
    np_images = pipe(["3", 7], **{**call, "generator": torch.Generator().manual_seed(1)}).images
    pt_images = pipe([3, 7], output_type="pt", **{**call, "generator": torch.Generator().manual_seed(1)}).images
    pil_images = pipe(torch.tensor([3, 7]), output_type="pil", **{**call, "generator": torch.Generator().manual_seed(1)}).images
    # Assert: one set of 8-bit pixels in three forms
    pixels = (np_images * 255).round().astype(np.uint8)
    assert np_images.shape == (2, 8, 8, 1) and np_images.dtype == np.float32
    np.testing.assert_array_equal(pt_images.permute(0, 2, 3, 1).numpy(), np_images)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil_images]), pixels[..., 0])
    for bad, needle in [([10], "null label 10"), (["cat"], "unknown class name"), ([], "empty"), ([-1], "label id")]:
        with pytest.raises(ValueError, match=needle):
            pipe(bad, **call)
    with pytest.raises(ValueError, match="num_inference_steps"):
        pipe([0], num_inference_steps=21)


# --------------------------------------------------------------------------- the model card
def test_the_card_has_the_hub_header_classes_guidance_and_a_plain_non_dp_statement(exported):
    # Execute
    text, header = _card(exported)
    # Assert
    assert header["library_name"] == "diffusers" and header["license"] == "other"
    assert header["pipeline_tag"] == "unconditional-image-generation"
    assert {"synthfed", "diffusion", "class-conditional", "not-differentially-private"} <= set(header["tags"])
    assert "differential-privacy" not in header["tags"]
    assert "**NOT differentially private**" in text and "NOT differentially private: trained without DP-SGD" in text
    assert "| 7 | 7 |" in text and "Null label: **10**" in text
    assert "(1 + w) eps(x, y) - w eps(x, null)" in text and "g = 1 + w" in text
    assert "8x8, 1 channel" in text and "T = 20" in text
    assert "ClassConditionalPipeline.from_pretrained" in text and "trust_remote_code=True" in text


def test_a_dp_runs_card_states_the_ledgers_epsilon(runs, tmp_path):
    # Prepare
    rows = load_generator(runs["dp"]).privacy["clients"]
    # Execute
    folder = export_pipeline(runs["dp"], tmp_path / "dp-pipe")
    text, header = _card(folder)
    # Assert
    assert "differential-privacy" in header["tags"] and "not-differentially-private" not in header["tags"]
    assert "NOT differentially private" not in text
    assert "formally differentially private, but WEAK" in text and "weak" in text
    assert len(rows) == 2
    for row in rows:
        assert f"| {row['client']} | {row['n']} | {row['mechanisms']} | {row['eps_upper']:.4g} |" in text
    assert "one image (record) of one client" in text


# --------------------------------------------------------------------------- what export refuses
def test_a_pfdm_run_is_refused_with_one_line_and_nothing_written(runs, tmp_path):
    # Execute / Assert: the core, with or without --client
    for client in (None, 0):
        with pytest.raises(UsageError, match="two denoisers"):
            export_pipeline(runs["pfdm"], tmp_path / "p", client=client)
    result = runner.invoke(app, ["export", str(runs["pfdm"]), "--out", str(tmp_path / "p"), "--client", "1"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "synthfed generate RUN --client i" in " ".join(result.stderr.split()) and "PFDM" in PFDM_REFUSED
    assert not (tmp_path / "p").exists()


def test_a_failed_export_leaves_nothing_behind(runs, tmp_path, monkeypatch):
    # Prepare: the card fails after the weights were written
    import synthfed.pipeline_folder as export_mod

    def broken(gen):
        raise RuntimeError("disk gremlin")

    monkeypatch.setattr(export_mod, "render_model_card", broken)
    # Execute
    with pytest.raises(RuntimeError, match="gremlin"):
        export_pipeline(runs["plain"], tmp_path / "out", allow_non_private=True)
    # Assert
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- personalized clients
def test_a_personalized_clients_export_reproduces_generate_client(runs, tmp_path):
    # Prepare
    run = runs["fedper"]
    gen = load_generator(run, client=1)
    reference, labels = _generated(gen, tmp_path / "g", guidance=1.0)
    # Execute
    with pytest.raises(UsageError, match="--client"):
        export_pipeline(run, tmp_path / "none", allow_non_private=True)
    folder = export_pipeline(run, tmp_path / "c1", client=1, allow_non_private=True)
    other = UNet2DModel.from_pretrained(export_pipeline(run, tmp_path / "c0", client=0, allow_non_private=True), subfolder="unet")
    pipe = ClassConditionalPipeline.from_pretrained(folder)
    # Assert: client 1's own head, and generate --client 1's pixels
    assert not torch.equal(pipe.unet.conv_out.weight, other.conv_out.weight)
    np.testing.assert_array_equal(_pixels(pipe, labels, guidance=1.0), reference)
    text, _ = _card(folder)
    assert "client 1's model" in text and "--client 1" in text


# --------------------------------------------------------------------------- the command line
def test_the_command_exports_prints_the_privacy_line_and_refuses_a_non_empty_out(runs, tmp_path):
    # Prepare
    run, out = runs["plain"], tmp_path / "cli-pipe"
    # Execute
    refused = runner.invoke(app, ["export", str(run), "--out", str(out)])
    result = runner.invoke(app, ["export", str(run), "--out", str(out), "--no-ema", "--allow-non-private"])
    again = runner.invoke(app, ["export", str(run), "--out", str(out), "--allow-non-private"])
    shown = runner.invoke(app, ["export", "--help"], terminal_width=200)
    # Assert: a model without DP is exported only when asked, as generate writes its images
    assert refused.exit_code == 2 and "--allow-non-private" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # Assert: written, with the raw weights
    assert result.exit_code == 0, result.output
    assert "privacy: NOT differentially private" in result.stdout and "README.md" in result.stdout
    raw = load_generator(run, use_ema=False).model.state_dict()
    exported = UNet2DModel.from_pretrained(out, subfolder="unet").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in raw.items())
    assert "raw weights" in (out / CARD_FILE).read_text() and "--no-ema" in (out / CARD_FILE).read_text()
    # Assert: a taken --out is refused in one line, and the help names what the command takes
    assert again.exit_code == 1 and "not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert shown.exit_code == 0 and "MODEL" in shown.output and "--client" in shown.output


def test_a_model_folder_exports_too(runs, tmp_path):
    # Execute
    folder = export_pipeline(latest_round_dir(runs["dp"]) / "global" / "ema", tmp_path / "from-folder")
    # Assert
    text, header = _card(folder)
    assert "differential-privacy" in header["tags"] and "run: dp, round 1" not in text
    assert "model folder: ema (from run dp, round 1, EMA weights)" in text
