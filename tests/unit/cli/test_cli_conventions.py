"""The command line follows the conventions a user expects: --version, shell
completion, choices that are listed and checked, positional help shown, a start
without torch, one name per setting (CLI, --config file, experiment grids,
Flower run config), and the same names and defaults across commands."""

import json
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

import synthfed
from synthfed.cli.app import app, register_subcommands
from synthfed.config import TrainConfig
from synthfed.settings import BY_NAME, SETTINGS

register_subcommands()
runner = CliRunner()


def _command(*path: str) -> click.Command:
    command = typer.main.get_command(app)
    for name in path:
        command = command.get_command(None, name)
    return command


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"synthfed {synthfed.__version__}" == f"synthfed {version('synthfed')}"


def test_shell_completion_script_is_available():
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="synthfed")
    assert result.exit_code == 0 and "_SYNTHFED_COMPLETE" in result.output


def test_importing_the_cli_and_its_commands_loads_no_torch():
    # -X importtime lists every module imported; the command modules register on start-up.
    code = "import synthfed.cli.app as a; a.register_subcommands()"
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "synthfed.cli.app" in imported
    assert not {"torch", "diffusers", "numpy", "pandas", "sklearn", "flwr"} & imported


def test_positional_arguments_show_their_help():
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "250"})
    assert "A run directory (its latest round, EMA weights) or a model folder." in result.output


@pytest.mark.parametrize("args,option", [(["train", "--strategy", "fedsgd"], "--strategy"),
                                         (["generate", "r", "--out", "o", "--sampler", "euler"], "--sampler"),
                                         (["train", "--precision", "fp8"], "--precision")])
def test_choices_are_checked_by_the_parser_in_one_line(args, option):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert option in result.output and "is not one of" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_every_setting_is_a_train_option_with_the_dataclass_default():
    params = {p.name: p for p in _command("train").params}
    defaults = TrainConfig()
    for s in SETTINGS:
        assert params[s.field].opts == [s.option]
        if s.field == "participation":
            assert float(params[s.field].default) == defaults.participation
        elif s.field != "warm_start":  # "auto": resolved by the DP recipe
            assert params[s.field].default == getattr(defaults, s.field), s.name
        if s.choices:
            assert list(params[s.field].type.choices) == list(s.choices)


@pytest.mark.parametrize("path", [("compare",), ("privacy", "calibrate")])
def test_other_commands_take_trains_options_under_the_same_names_and_defaults(path):
    train = {p.name: p for p in _command("train").params}
    shared = [p for p in _command(*path).params if p.name in {s.field for s in SETTINGS}]
    assert len(shared) >= 15
    for p in shared:
        assert p.opts == train[p.name].opts and p.default == train[p.name].default, p.name


def test_audit_names_the_real_data_as_train_does():
    audit = {p.name: p for p in _command("audit").params}
    assert any("--data" in p.opts for p in audit.values())


def _capture_config(monkeypatch):
    """Run train's option handling but not the training: the config it would run."""
    import synthfed.training as train_module

    seen = {}

    def fake_train(config, out_dir, **kwargs):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", fake_train)
    return seen


def test_a_config_file_sets_train_options_by_their_names_and_the_command_line_wins(tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    path = tmp_path / "run.toml"
    path.write_text('clients = 3\nlocal_epochs = 2\n"local-steps" = 5\nstrategy = "fedper"\nlr = 0.001\n')
    result = runner.invoke(app, ["train", "--config", str(path), "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.num_clients, config.local_epochs, config.local_steps, config.strategy) == (3, 2, 5, "fedper")
    assert config.lr == 0.01


@pytest.mark.parametrize("text,needle", [
    ("num_clients = 3\n", "the setting is called 'clients' (as --clients)"),
    ("rounds = 'three'\n", "rounds: expected an integer"),
    ("epsilom = 3.0\n", "did you mean 'epsilon'?"),
    ("rounds = [\n", "not valid TOML"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path, text, needle):
    path = tmp_path / "run.toml"
    path.write_text(text)
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2 and needle in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_config_files_values_count_as_chosen_for_the_dp_recipe(tmp_path, monkeypatch):
    seen = _capture_config(monkeypatch)
    path = tmp_path / "run.toml"
    path.write_text("epsilon = 8.0\nlr = 0.0005\nwarm-start = 'none'\n")
    result = runner.invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert seen["config"].lr == 0.0005 and seen["config"].warm_start == "none"
    assert "DP recipe" not in result.output


def test_the_flower_run_config_uses_the_same_names():
    from synthfed.flower.run_config import TRAIN_KEYS, FlowerOptions, from_run_config, to_run_config

    assert TRAIN_KEYS == {s.name: s.field for s in SETTINGS}
    config = TrainConfig(num_clients=3, local_steps=4, num_train_timesteps=50).validate()
    run_config = to_run_config(config, FlowerOptions(run_dir="r", run_name="r").validate(config))
    assert run_config["clients"] == 3 and run_config["local-steps"] == 4 and run_config["timesteps"] == 50
    assert from_run_config(json.loads(json.dumps(run_config)))[0] == config


def test_experiment_grids_use_the_same_names(tmp_path):
    from synthfed.experiment_config import parse_experiment

    raw = {"name": "x", "data": {"source": "digits"}, "train": {"clients": 3, "timesteps": 50, "preset": "tiny"},
           "grid": {"local-epochs": [1, 2]}}
    config = parse_experiment(raw)
    assert config.train.num_clients == 3 and config.train.num_train_timesteps == 50
    assert dict(config.grid)["local_epochs"] == (1, 2)
    assert BY_NAME["local-epochs"].field == "local_epochs"
