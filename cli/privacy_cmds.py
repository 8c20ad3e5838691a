"""``synthfed privacy ...``: ledger reports and noise calibration.

Every figure printed here is computed by the accountant from a ledger or a
plan; nothing is copied from a config."""

from __future__ import annotations

import json
import math

import numpy as np
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

privacy_app = typer.Typer(no_args_is_help=True, help="Privacy ledger reports and noise calibration.")
out = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}g}"
    return str(value)


def ledger_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ["client", "n", "sigma", "q", "steps", "eps lower", "eps estimate", "eps upper", "delta", "budget"]:
        table.add_column(col, justify="left" if col == "client" else "right")
    for r in rows:
        table.add_row(
            str(r["client"]), str(r["n"]), _fmt(r["sigma"]), _fmt(r["q"]), str(r["steps"]), _fmt(r["eps_lower"]),
            _fmt(r["eps_estimate"]), _fmt(r["eps_upper"]), _fmt(r["delta"], 3), _fmt(r["budget"]),
        )
    return table


@privacy_app.command("report")
def report(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Print each client's privacy ledger: mechanisms, steps, and epsilon with its error bounds."""
    from synthfed.checkpoint import latest_round_dir, read_run_file
    from synthfed.privacy.ledger import PrivacyLedger

    try:
        read_run_file(run_dir)
        round_dir = latest_round_dir(run_dir)
    except (FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
    if round_dir is None:
        _fail(f"{run_dir} has no completed round yet")
    path = round_dir / "ledger.json"
    if not path.is_file():
        out.print(f"{run_dir} was trained without differential privacy: there is no ledger and no DP guarantee.")
        raise typer.Exit(0)
    ledger = PrivacyLedger.from_dict(json.loads(path.read_text()))
    rows = ledger.table()
    if as_json:
        out.print_json(data=rows)
        return
    out.print(ledger_table(rows, f"privacy ledger of {run_dir} after {round_dir.name}"))
    if rows:
        # Clients can be answered by different accountants (prv-accountant, or
        # Opacus's PRV where prv-accountant's discretisation fails): list each.
        accountants = "; ".join(dict.fromkeys(r["accountant"] for r in rows))
        out.print(f"accountant: {accountants}; unit: one record of one client (add/remove)")


@privacy_app.command("calibrate")
def calibrate(
    epsilon: float = typer.Option(..., help="Target epsilon per client."),
    delta: Optional[float] = typer.Option(None, help="Target delta (default 1/(10 n_k) per client)."),
    n: Optional[int] = typer.Option(None, help="Records of one client (otherwise the partition of --data is used)."),
    data: str = typer.Option("digits", help="Data source, when --n is not given."),
    clients: int = typer.Option(4, help="Number of clients of the partition."),
    alpha: float = typer.Option(0.5, help="Dirichlet concentration of the partition."),
    seed: int = typer.Option(0, help="Partition seed."),
    batch_size: int = typer.Option(32, help="Expected batch size B (q = B / n_k)."),
    rounds: int = typer.Option(5, help="Rounds R (calibrated as if the client takes part in all)."),
    local_epochs: int = typer.Option(1, help="Local epochs E per round."),
    strategy: str = typer.Option("fedavg", help="fedavg (and every DP-SGD strategy) | pfdm (prints the t0 <-> epsilon curve)."),
    timesteps: int = typer.Option(1000, help="pfdm: diffusion steps T of the linear schedule."),
    image_size: Optional[int] = typer.Option(None, help="pfdm: image size (default: the data's)."),
    clip_norm: Optional[float] = typer.Option(None, help="pfdm: clip norm C (default sqrt(#pixels))."),
    upload_copies: int = typer.Option(1, help="pfdm: noised copies per image."),
    label_epsilon: Optional[float] = typer.Option(None, help="pfdm: randomized-response epsilon of the labels."),
) -> None:
    """What noise does each client need for (epsilon, delta) with this plan? Trains nothing."""
    if strategy == "pfdm":
        _calibrate_pfdm(epsilon=epsilon, delta=delta, n=n, data=data, timesteps=timesteps, image_size=image_size,
                        clip_norm=clip_norm, copies=upload_copies, label_epsilon=label_epsilon)
        return
    from synthfed.privacy.accountant import SubsampledGaussian, compute_epsilon
    from synthfed.privacy.calibration import (
        CalibrationError,
        default_delta,
        find_noise_multiplier,
        validate_privacy_target,
    )

    if epsilon <= 0 or batch_size < 1 or rounds < 1 or local_epochs < 1:
        _fail("--epsilon must be positive and --batch-size, --rounds, --local-epochs at least 1")
    if n is not None:
        sizes = {"client": n}
    else:
        from synthfed.config import ConfigError, TrainConfig
        from synthfed.data import DataError
        from synthfed.train import load_federated_data

        try:
            config = TrainConfig(data=data, num_clients=clients, alpha=alpha, seed=seed).validate()
            fed = load_federated_data(config)
        except (ConfigError, DataError, ValueError) as exc:
            _fail(str(exc))
        sizes = {name: len(c) for name, c in zip(fed.client_names, fed.clients)}
    table = Table(title=f"noise for epsilon={epsilon} over {rounds} rounds x {local_epochs} epochs, B={batch_size}")
    for col in ["client", "n", "delta", "q", "steps", "sigma", "eps upper at sigma"]:
        table.add_column(col, justify="right")
    for name, size in sizes.items():
        d = delta if delta is not None else default_delta(size)
        try:
            validate_privacy_target(epsilon=epsilon, delta=d, n=size)
            if batch_size > size:
                raise CalibrationError(f"client {name} has {size} records, fewer than --batch-size {batch_size}")
            q = batch_size / size
            steps = rounds * local_epochs * math.ceil(1 / q)
            sigma = find_noise_multiplier(target_epsilon=epsilon, delta=d, sampling_rate=q, steps=steps)
        except (CalibrationError, ValueError) as exc:
            _fail(str(exc))
        check = compute_epsilon([SubsampledGaussian(noise_multiplier=sigma, sampling_rate=q, steps=steps)], delta=d)
        table.add_row(name, str(size), _fmt(d, 3), _fmt(q), str(steps), _fmt(sigma, 5), _fmt(check.epsilon_upper))
    out.print(table)


def _calibrate_pfdm(*, epsilon, delta, n, data, timesteps, image_size, clip_norm, copies, label_epsilon) -> None:
    import math

    from synthfed.data import DataError, load_source
    from synthfed.diffusion import NoiseSchedule
    from synthfed.privacy.calibration import CalibrationError, default_delta
    from synthfed.privacy.forward_noise import choose_t0, t0_curve

    try:
        dataset = load_source(data, split="train")
        if image_size is not None:
            dataset = dataset.resized(image_size)
        acp = NoiseSchedule(num_train_timesteps=timesteps).alphas_cumprod()
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    records = n if n is not None else len(dataset)
    d = delta if delta is not None else default_delta(records)
    clip = clip_norm if clip_norm is not None else math.sqrt(float(np.prod(dataset.image_shape)))
    curve = t0_curve(acp, delta=d, clip_norm=clip, copies=copies, label_epsilon=label_epsilon)
    table = Table(title=f"PFDM upload: epsilon at each hand-off step t0 (delta={d:.3g}, C={clip:.3g}, m={copies})")
    for col in ["t0", "alpha-bar", "noise multiplier", "eps upper"]:
        table.add_column(col, justify="right")
    for t, sigma, eps in curve:
        table.add_row(str(t), _fmt(float(acp[t])), _fmt(sigma), _fmt(eps))
    out.print(table)
    try:
        choice = choose_t0(acp, epsilon=epsilon, delta=d, clip_norm=clip, copies=copies, label_epsilon=label_epsilon)
    except CalibrationError as exc:
        _fail(str(exc))
    out.print(f"smallest t0 meeting epsilon={epsilon:g}: t0={choice.t0} (eps upper {choice.report.epsilon_upper:.4g}, "
              f"noise multiplier {choice.noise_multiplier:.4g}; {choice.report.accountant})")
