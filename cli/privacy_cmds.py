"""``synthfed privacy ...``: ledger reports and noise calibration.

Every figure printed here is computed by the accountant from a ledger or a
plan; nothing is copied from a config."""

from __future__ import annotations

import math

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from synthfed.cli.options import with_settings
from synthfed.errors import InputError, UsageError

privacy_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                          help="Privacy ledger reports and noise calibration.")
out = Console()


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


_STRENGTH_STYLE = {"strong": "green", "moderate": "yellow", "weak": "red", "none": "red"}


def ledger_table(rows: list[dict], title: str) -> Table:
    """Each client's ledger row; the guarantee's strength in words and colour
    (an epsilon of 1,000 is formally DP and protects almost nobody)."""
    from synthfed.card import guarantee_strength

    table = Table(title=title)
    for col in ["client", "n", "sigma", "q", "steps", "eps lower", "eps estimate", "eps upper", "delta", "budget",
                "guarantee"]:
        table.add_column(col, justify="left" if col in ("client", "guarantee") else "right")
    for r in rows:
        strength = guarantee_strength(r["eps_upper"])
        table.add_row(
            str(r["client"]), str(r["n"]), _fmt(r["sigma"]), _fmt(r["q"]), str(r["steps"]), _fmt(r["eps_lower"]),
            _fmt(r["eps_estimate"]), _fmt(r["eps_upper"]), _fmt(r["delta"], 3), _fmt(r["budget"]),
            f"[{_STRENGTH_STYLE.get(strength, 'red')}]{strength}[/]",
        )
    return table


def print_ledger(rows: list[dict], title: str) -> None:
    """The ledger table, then the accountant(s) that computed it and the unit it is stated in."""
    out.print(ledger_table(rows, title))
    if rows:
        from synthfed.privacy.accountant import UNIT_OF_PRIVACY

        # Each client's figure may come from a different discretization: list every one.
        out.print(f"accountant: {'; '.join(dict.fromkeys(r['accountant'] for r in rows))}")
        out.print(f"unit of privacy: {UNIT_OF_PRIVACY}")


@privacy_app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Print each client's privacy ledger: mechanisms, steps, and epsilon with its error bounds."""
    from synthfed.checkpoint import latest_ledger, read_run_file
    from synthfed.privacy.ledger import PrivacyLedger

    # latest_ledger refuses a DP run whose ledger is gone: it must not read as non-private.
    round_dir, raw = latest_ledger(run_dir)
    if round_dir is None:
        raise InputError(f"{run_dir} has no completed round yet")
    if raw is None:
        config = read_run_file(run_dir)["config"]
        if config.get("epsilon") is not None or config.get("strategy") == "pfdm":  # a Flower run: its nodes hold them
            out.print(f"{run_dir}'s privacy ledgers are held by its Flower nodes; publish them with "
                      "`synthfed flower collect-ledgers`.")
        else:
            out.print(f"{run_dir} was trained without differential privacy: there is no ledger and no DP guarantee.")
        raise typer.Exit(0)
    ledger = PrivacyLedger.from_dict(raw)
    rows = ledger.table()
    if as_json:
        out.print_json(data=rows)
        return
    print_ledger(rows, f"privacy ledger of {run_dir} after {round_dir.name}")


# The settings a privacy plan depends on: train's options, same names and defaults (synthfed.settings).
PLAN_SETTINGS = ["data", "strategy", "clients", "partition", "alpha", "min-partition-size", "max-client-size",
                 "rounds", "local-epochs", "local-steps", "batch-size", "image-size", "timesteps", "delta",
                 "head-epochs", "clip-norm", "upload-copies", "label-epsilon", "public-labels", "local-epsilon",
                 "warm-start", "warm-start-share", "seed"]


@privacy_app.command("calibrate")
@with_settings(PLAN_SETTINGS)
def calibrate(
    epsilon: float = typer.Option(..., help="Target epsilon per client (pfdm: of the upload and labels)."),
    n: Optional[int] = typer.Option(None, help="Plan for one client of this many records instead of splitting --data."),
    **settings,
) -> None:
    """What noise (or PFDM t0) does each client get for (epsilon, delta)? Exactly the plan `synthfed train`
    would run with the same options (the same planner); trains nothing. Rounds are calibrated as if the
    client takes part in all of them; pfdm prints the t0 <-> epsilon curve."""
    from synthfed.config import TrainConfig
    from synthfed.recipes import resolve_warm_start
    from synthfed.training import load_federated_data

    if n is not None and n < 1:
        raise UsageError("--n must be at least 1")
    strategy = settings["strategy"]
    config = TrainConfig(**{
        **settings, "epsilon": epsilon,
        "public_labels": settings["public_labels"] or (strategy == "pfdm" and settings["label_epsilon"] is None),
        "warm_start": resolve_warm_start(settings["warm_start"], private=True, strategy=strategy, engine="simulation"),
    }).validate()
    if n is not None:
        sizes, names, shape = {0: n}, {0: "0"}, None  # one client, id 0 (as in the ledgers)
    else:
        fed = load_federated_data(config)
        sizes = {cid: len(c) for cid, c in enumerate(fed.clients)}
        names = dict(enumerate(fed.client_names))
        shape = fed.clients[0].image_shape
    if strategy == "pfdm":
        _calibrate_pfdm(config, sizes, names, shape)
    else:
        _calibrate_dp_sgd(config, sizes, names)


def _calibrate_dp_sgd(config, sizes: dict[int, int], names: dict[int, str]) -> None:
    from synthfed.privacy.accountant import ADJACENCY, compute_epsilon
    from synthfed.privacy.planner import plan_dp_sgd

    plans = plan_dp_sgd(config, sizes, names=names)
    per_round = (f"{config.local_steps} steps" if config.local_steps is not None
                 else f"{config.epochs_per_round()} epochs")
    central = config.warm_start == "central"
    title = (f"noise for epsilon={config.epsilon} ({ADJACENCY}) over {config.rounds} rounds x {per_round}, "
             f"B={config.batch_size}" + (f"; central images get {config.warm_start_share:g} of epsilon" if central else ""))
    table = Table(title=title)
    cols = ["client", "n", "delta", "q", "steps", "sigma"] + (["central sigma"] if central else []) + ["eps upper at sigma"]
    for col in cols:
        table.add_column(col, justify="right")
    for cid, nz in plans.items():
        check = compute_epsilon(nz.planned_mechanisms(), delta=nz.delta)
        extra = [_fmt(nz.central_noise, 5)] if central else []
        table.add_row(names[cid], str(nz.num_records), _fmt(nz.delta, 3), _fmt(nz.sampling_rate),
                      str(nz.planned_steps), _fmt(nz.noise_multiplier, 5), *extra, _fmt(check.epsilon_upper))
    out.print(table)


def _calibrate_pfdm(config, sizes: dict[int, int], names: dict[int, str], shape) -> None:
    from synthfed.privacy.accountant import ADJACENCY
    from synthfed.privacy.forward_noise import t0_curve
    from synthfed.privacy.planner import client_delta, pfdm_budget, plan_dp_sgd, plan_t0

    if shape is None:
        raise UsageError("pfdm needs the data's image shape: give --data rather than --n")
    acp = config.schedule().alphas_cumprod()
    t0, clip = plan_t0(config, list(sizes.values()), shape, acp)
    # The curve at the smallest delta (the largest client): the one that binds t0.
    d = min(client_delta(config, size) for size in sizes.values())
    curve = t0_curve(acp, delta=d, clip_norm=clip, copies=config.upload_copies, label_epsilon=config.label_epsilon)
    table = Table(title=f"PFDM upload ({ADJACENCY}): epsilon at each hand-off step t0 (delta={d:.3g}, C={clip:.3g}, "
                        f"m={config.upload_copies})")
    for col in ["t0", "alpha-bar", "noise multiplier", "eps upper"]:
        table.add_column(col, justify="right")
    for t, sigma, eps in curve:
        table.add_row(str(t), _fmt(float(acp[t])), _fmt(sigma), _fmt(eps))
    out.print(table)
    sgd = plan_dp_sgd(config, sizes, epsilon=config.local_epsilon, names=names) if config.local_epsilon else {}
    out.print(f"hand-off t0={t0} for every client (the largest client's smallest admissible t0)")
    for cid, size in sizes.items():
        budget = pfdm_budget(config, size, alpha_bar_t0=float(acp[t0]), clip=clip, sgd=sgd.get(cid))
        local = "" if cid not in sgd else f", local DP-SGD sigma {sgd[cid].noise_multiplier:.5g}"
        out.print(f"  {names[cid]}: n={size}, delta={client_delta(config, size):.3g}, planned epsilon {budget:.4g}{local}")
