"""Typer options generated from ``synthfed.settings.SETTINGS``, and ``--config``.

``with_settings(names)`` decorates a command so that it takes those settings as
options, each under its one public name, with the dataclass's default, its
help and (for a fixed set of values) a ``Literal`` of them (a choice). The command receives
them keyed by ``TrainConfig`` field. ``--config FILE`` reads a TOML file of
the same names into click's default map: a value typed on the command line
wins over the file, the file over the defaults."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Callable, Literal, Optional

import typer

from synthfed.cli.errors import say
from synthfed.config import ConfigError, TrainConfig
from synthfed.settings import BY_FIELD, SETTINGS, Setting, fields_from_table

_PY_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
# What the command line takes differs from the field for these: participation is
# "0.5" or "3" (parsed by the CLI), warm-start's "auto" is resolved by the DP recipe.
_CLI_DEFAULTS = {"participation": "1.0", "warm_start": "auto"}
_CLI_TYPES = {"participation": str}


def choice(values) -> object:
    """The annotation of an option that takes one of ``values``: typer lists
    and checks them (typer >= 0.26 no longer takes click types, ``click_type``)."""
    return Literal[tuple(values)]


def _parameter(setting: Setting, default=None) -> inspect.Parameter:
    kind, nullable = setting.kind
    value = _CLI_DEFAULTS.get(setting.field, setting.default) if default is None else default
    annotation = _CLI_TYPES.get(setting.field, choice(setting.choices) if setting.choices else _PY_TYPES[kind])
    if nullable and setting.field not in _CLI_TYPES:
        annotation = Optional[annotation]
    option = typer.Option(value, setting.option, help=setting.help)
    return inspect.Parameter(setting.field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def _read_config(ctx: typer.Context, _param: typer.CallbackParam, path: Optional[str]) -> Optional[str]:
    """Eager: load the file into the default map before the other options parse."""
    if path is None:
        return None
    import tomllib

    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    # A flat file, or the [train] table alone (an experiment's [train] spells settings the same way).
    table = raw["train"] if set(raw) == {"train"} and isinstance(raw["train"], dict) else raw
    values = fields_from_table(table, f"--config {Path(path).name}")
    known = {p.name for p in ctx.command.params}
    outside = sorted(BY_FIELD[f].name for f in values if f not in known)
    if outside:
        raise ConfigError(f"--config {Path(path).name}: {', '.join(outside)} is not an option of this command")
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


CONFIG_OPTION = inspect.Parameter(
    "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
    default=typer.Option(None, "--config", metavar="FILE.toml", is_eager=True, callback=_read_config,
                         help="A TOML file of settings under these same names (e.g. local-epochs = 2); "
                              "options typed on the command line win."),
)


def with_settings(names: list[str] | None = None, *, defaults: dict | None = None,
                  config_file: bool = False) -> Callable:
    """Give a command the settings ``names`` (all when None) as options, after
    its own parameters; ``defaults`` overrides a default by field name."""
    chosen = [s for s in SETTINGS if names is None or s.name in names]
    defaults = defaults or {}
    params = [_parameter(s, defaults.get(s.field)) for s in chosen]
    return with_parameters([*params, CONFIG_OPTION] if config_file else params, drop=("config_file",))


def with_parameters(extra: list[inspect.Parameter], *, drop: tuple[str, ...] = ()) -> Callable:
    """Give a command the options ``extra`` (declared once, shared by several
    commands) after its own parameters; its ``**kwargs`` receives them. The
    values named in ``drop`` are not passed on."""

    def decorate(func: Callable) -> Callable:
        own = [p for p in inspect.signature(func).parameters.values() if p.kind is not p.VAR_KEYWORD]
        params = [*own, *extra]

        @functools.wraps(func)
        def command(**kwargs):
            for name in drop:
                kwargs.pop(name, None)
            return func(**kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the signature above, not func's
        return command

    return decorate


def parse_participation(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--participation must be a fraction like 0.5 or a count like 3, not {text!r}") from None


def train_config(p: dict, *, explicit: set[str] | None = None, engine: str = "simulation") -> TrainConfig:
    """The validated ``TrainConfig`` of ``synthfed train``'s option values (also
    used by ``synthfed flower run``, which takes the same options). Under
    ``--epsilon`` the DP recipe (``synthfed.recipes``) fills the options not in
    ``explicit`` (all of them when None), with one note line saying so."""
    from synthfed.recipes import RECIPE_NAME, recipe_changes, resolve_warm_start

    warm = resolve_warm_start(p["warm_start"], private=p["epsilon"] is not None, strategy=p["strategy"], engine=engine,
                              init_from=p["init_from"] is not None)
    config = _train_config({**p, "warm_start": warm})
    changes = recipe_changes(config.to_dict(), explicit or set())
    if changes or (warm == "central" and p["warm_start"] == "auto"):
        config = config.replace(**changes).validate()
        chosen = ", ".join(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
                           for k, v in {"warm_start": warm, **changes}.items())
        say("note:", "bold cyan", f"DP recipe {RECIPE_NAME}: {chosen} (give an option to override it; "
                                  "--warm-start none for DP-SGD alone)")
    return config


def _train_config(p: dict) -> TrainConfig:
    """``p``: option values keyed by ``TrainConfig`` field (``synthfed.cli.options``)."""
    values = {s.field: p[s.field] for s in SETTINGS if s.field in p}
    values["participation"] = parse_participation(p["participation"])
    return TrainConfig(**values).validate()
