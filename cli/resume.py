"""``--resume``: a resumed run is the run that was started.

Its configuration comes from its ``run.json``; options typed on the command
line that differ from it are listed in one ``note:`` line (they are ignored),
and a different privacy plan (``--epsilon``, ``--delta``) is refused: the
ledger and the noise were planned for the run's own values."""

from __future__ import annotations

from pathlib import Path

import typer

from synthfed.cli.errors import say
from synthfed.config import ConfigError, TrainConfig

# Options that say where or how to resume, not what the run is. The others are
# keyed by TrainConfig field (synthfed.cli.options).
_NOT_CONFIG = {"resume", "out_dir", "config_file"}
# Chosen by the user: typed, or written in the --config file. By name: click's
# ParameterSource, or that of typer's own copy of click (typer >= 0.26).
_CHOSEN = ("COMMANDLINE", "DEFAULT_MAP")
_PRIVACY_PLAN = ("epsilon", "delta")


def _given(ctx: typer.Context) -> list:
    """The options typed on the command line or set by --config (not defaults)."""
    return [p for p in ctx.command.params
            if p.name in ctx.params and getattr(ctx.get_parameter_source(p.name), "name", None) in _CHOSEN]


def given_fields(ctx: typer.Context) -> set[str]:
    """``TrainConfig`` field names of the options typed on the command line or set by --config."""
    return {p.name for p in _given(ctx)} - _NOT_CONFIG


def _typed(name: str, value):
    if name == "participation":  # a string option: "3" and "3.0" are the same count
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _refuse_new_privacy_plan(name: str, given, planned) -> None:
    if name == "epsilon":
        plan = "without differential privacy (no --epsilon)" if planned is None else f"for epsilon {planned:g}"
    else:
        plan = "for the default delta, 1/(10 n_k) per client" if planned is None else f"for delta {planned:g}"
    raise ConfigError(f"--{name} {given:g}: the run was planned {plan}; a resumed run keeps its privacy plan")


def resumed_config(ctx: typer.Context, run_dir: Path) -> TrainConfig:
    """The configuration of the run in ``run_dir``; the options given in
    ``ctx`` (a ``train`` context) that it ignores are named in a note."""
    from synthfed.checkpoint import read_run_file

    config = TrainConfig.from_dict(read_run_file(run_dir)["config"]).validate()
    ignored = []
    for param in _given(ctx):
        name = param.name
        given = _typed(name, ctx.params[name])
        if name == "out_dir":
            if Path(given).resolve() != Path(run_dir).resolve():
                ignored.append(f"{param.opts[0]} {given} (the run directory is {run_dir})")
            continue
        if name in _NOT_CONFIG:
            continue
        planned = getattr(config, name)
        if given == planned:
            continue
        if name in _PRIVACY_PLAN:
            _refuse_new_privacy_plan(name, given, planned)
        if isinstance(given, bool):  # a flag: --public-labels
            ignored.append(f"{param.opts[0]} (the run has it {'on' if planned else 'off'})")
        else:
            ignored.append(f"{param.opts[0]} {given} (the run has {planned})")
    if ignored:
        say("note:", "yellow", f"--resume continues the run as it was started, so it ignores {', '.join(ignored)}")
    return config
