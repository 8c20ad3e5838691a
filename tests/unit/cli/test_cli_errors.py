"""The CLI's one error boundary: every bad input ends with ONE line on stderr
and the right exit code (2 usage, 1 data/runtime, 130 Ctrl-C); --debug shows
the traceback; --resume says what it ignores; nothing is silently changed or deleted."""

import errno
import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthfed.cli.app import app, register_subcommands
from synthfed.errors import DataNote

register_subcommands()
runner = CliRunner()

TINY = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
        "--rounds", "1"]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_error_line(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and printed exactly one line on stderr,
    'error: ...', holding every needle; no traceback, no locals."""
    assert result.exit_code == code, result.output
    err = lines(result.stderr)
    assert len(err) == 1 and err[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in err[0], err[0]
    assert "Traceback" not in result.output and "locals" not in result.output
    return err[0]


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    """A finished one-round run with --epsilon 8."""
    run = tmp_path_factory.mktemp("private") / "run"
    result = runner.invoke(app, ["train", *TINY, "--epsilon", "8", "--warm-start", "none", "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run


# --------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("args,needle", [
    (["train", "--clients", "0"], "--clients must be at least 1"),
    (["train", "--clients", "x"], "'x' is not a valid integer"),  # a click usage error, same one-line form
    (["train", "--bogus"], "No such option"),
    (["trian"], "Did you mean 'train'"),
    (["train", "--preset", "paper", "--image-size", "12"], "divisible"),
    (["generate", "/nonexistent", "--out", "/tmp/x", "--sampler", "magic"], "--sampler"),
])
def test_a_usage_error_exits_2_with_one_line(args, needle):
    # Execute
    result = runner.invoke(app, args)
    # Assert
    assert_one_error_line(result, 2, needle)


def test_a_data_error_exits_1_with_one_line_naming_it():
    # Execute
    result = runner.invoke(app, ["train", *TINY, "--data", "folder:/nonexistent/images"])
    # Assert
    assert_one_error_line(result, 1, "/nonexistent/images")


def test_an_output_folder_under_a_file_exits_1_naming_it(tmp_path):
    # Prepare: --out below a file: no folder can be made there (and, unlike chmod, this holds for root too)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # Execute
    result = runner.invoke(app, ["train", *TINY, "--out", str(blocker / "run")])
    # Assert
    assert_one_error_line(result, 1, str(blocker), "is a file")


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "No space left on device"),
                                        (errno.EROFS, "Read-only file system")])
def test_a_full_or_read_only_disk_exits_1_naming_the_file(monkeypatch, tmp_path, code, words):
    # Prepare: the OS refuses the write of a round's state (tests run as root: chmod would not)
    target = "runs/x/rounds/round-0001/state.json"

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), target)

    monkeypatch.setattr("synthfed.training.train", refuse)
    # Execute
    result = runner.invoke(app, ["train", *TINY, "--out", str(tmp_path / "run")])
    # Assert
    assert assert_one_error_line(result, 1) == f"error: cannot write {target}: {words}"


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path):
    # Prepare
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("synthfed.training.train", interrupted)
    # Execute
    result = runner.invoke(app, ["train", *TINY, "--out", str(tmp_path / "run")])
    # Assert
    assert_one_error_line(result, 130, "interrupted")


def test_a_damaged_weights_or_json_file_is_named(monkeypatch, tmp_path):
    # Prepare: a pickle renamed .safetensors and a truncated JSON file, read the way the core reads them
    from safetensors.torch import load_file

    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    state = tmp_path / "state.json"
    state.write_text('{"round": ')

    def read_weights(path, **kwargs):
        return load_file(str(weights))

    def read_state(path, **kwargs):
        return json.loads(state.read_text())

    # Execute
    monkeypatch.setattr("synthfed.generation.load_generator", read_weights)
    bad_weights = runner.invoke(app, ["generate", str(tmp_path), "--out", str(tmp_path / "g")])
    monkeypatch.setattr("synthfed.generation.load_generator", read_state)
    bad_json = runner.invoke(app, ["generate", str(tmp_path), "--out", str(tmp_path / "g")])
    # Assert
    assert_one_error_line(bad_weights, 1, str(weights), "not a safetensors file")
    assert_one_error_line(bad_json, 1, str(state), "not valid JSON")


def test_a_data_note_is_one_note_line(monkeypatch):
    # Prepare: the loader tells what it changed in the user's data
    import synthfed.training

    load = synthfed.training.load_federated_data

    def noting(config):
        warnings.warn("3 images were converted from RGBA to L", DataNote)
        return load(config)

    monkeypatch.setattr(synthfed.training, "load_federated_data", noting)
    # Execute
    result = runner.invoke(app, ["partition", "--clients", "2"])
    # Assert
    assert result.exit_code == 0, result.output
    assert lines(result.stderr) == ["note: 3 images were converted from RGBA to L"]


# --------------------------------------------------------------------------- --debug
def _entry_point(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real ``synthfed`` program (its error boundary, typer's traceback printer)."""
    return subprocess.run([sys.executable, "-m", "synthfed.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100", **(env or {})}, timeout=120)


def test_debug_shows_the_traceback_and_plain_runs_do_not():
    # Execute
    plain = _entry_point("train", "--clients", "0")
    debug = _entry_point("train", "--clients", "0", "--debug")
    by_env = _entry_point("train", "--clients", "0", env={"SYNTHFED_DEBUG": "1"})
    # Assert: one line without; the traceback (no locals: they can hold data) with
    assert plain.returncode == 2 and lines(plain.stderr) == ["error: --clients must be at least 1"]
    for run in (debug, by_env):
        assert run.returncode == 1, run.stderr  # an uncaught exception
        assert "Traceback" in run.stderr and "ConfigError" in run.stderr
        assert "locals" not in run.stderr


# --------------------------------------------------------------------------- --resume
def test_resume_notes_the_options_it_ignores(private_run):
    # Execute: --lr differs from the run, --rounds and --epsilon are the run's own
    result = runner.invoke(app, ["train", "--resume", str(private_run), "--lr", "0.001", "--rounds", "1",
                                 "--epsilon", "8"])
    # Assert
    assert result.exit_code == 0, result.output
    notes = [line for line in lines(result.stderr) if line.startswith("note:")]
    assert len(notes) == 1
    assert "--lr 0.001 (the run has 0.0002)" in notes[0]
    assert "--rounds" not in notes[0] and "--epsilon" not in notes[0]


@pytest.mark.parametrize("args,needle", [
    (["--epsilon", "4"], "the run was planned for epsilon 8; a resumed run keeps its privacy plan"),
    (["--delta", "1e-4"], "a resumed run keeps its privacy plan"),
])
def test_resume_refuses_a_new_privacy_plan(private_run, args, needle):
    # Prepare
    before = sorted(p.name for p in (private_run / "rounds").iterdir())
    # Execute
    result = runner.invoke(app, ["train", "--resume", str(private_run), *args])
    # Assert
    assert_one_error_line(result, 2, needle)
    assert sorted(p.name for p in (private_run / "rounds").iterdir()) == before


def _image_folder(root, per_class: int):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_resume_with_changed_data_exits_1_with_one_line(tmp_path):
    # Prepare: a run on a folder of images; then the folder loses images
    data = tmp_path / "images"
    _image_folder(data, 12)
    run = tmp_path / "run"
    args = ["train", "--data", f"folder:{data}", "--partition", "iid", "--clients", "2", "--min-partition-size", "2",
            "--preset", "tiny", "--timesteps", "20", "--rounds", "1", "--batch-size", "8", "--out", str(run)]
    assert runner.invoke(app, args).exit_code == 0
    for f in sorted((data / "a").iterdir())[:4]:
        f.unlink()
    # Execute
    result = runner.invoke(app, ["train", "--resume", str(run)])
    # Assert
    assert_one_error_line(result, 1, "differs")


# --------------------------------------------------------------------------- refused, not changed
def test_participation_above_the_clients_is_refused():
    # Execute
    result = runner.invoke(app, ["train", *TINY, "--participation", "3"])
    # Assert: both numbers named, nothing clamped
    assert_one_error_line(result, 2, "--participation 3", "only 2 clients")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_usage_error():
    # Execute
    train = runner.invoke(app, ["train", *TINY, "--device", "cuda"])
    generate = runner.invoke(app, ["generate", "/nonexistent", "--out", "/tmp/x", "--device", "cuda"])
    # Assert
    for result in (train, generate):
        assert_one_error_line(result, 2, "--device cuda: CUDA is not available on this machine")


# --------------------------------------------------------------------------- the demo's --out
def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    # Prepare: someone's files where the demo is pointed
    from synthfed.cli import demo

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    # Execute
    code = demo.main(["--out", str(foreign)])
    # Assert: refused before any work; the file is still there
    assert code == 2
    err = lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error:") and "not made by the demo" in err[0]
    assert (foreign / "chapter1.tex").read_text() == "years of work"
    assert not (foreign / demo.MARKER).exists()


def test_the_demo_clears_only_its_own_folder(tmp_path):
    # Prepare: a folder a previous demo made (its marker), holding that demo's output
    from synthfed.cli.demo import MARKER, prepare_out_dir

    fresh, own = tmp_path / "new", tmp_path / "old-demo"
    prepare_out_dir(own)
    (own / "run" / "rounds").mkdir(parents=True)
    (own / "samples.png").write_text("old")
    # Execute
    prepare_out_dir(fresh)
    prepare_out_dir(own)
    # Assert: both hold only the marker, ready for the demo
    assert [p.name for p in fresh.iterdir()] == [MARKER]
    assert [p.name for p in own.iterdir()] == [MARKER]
