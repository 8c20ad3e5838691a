"""Wall time of a federated run on Flower against the in-process simulation.

Runs the same configuration side by side in this run: the simulation
(`synthfed train`); a local Flower deployment over TLS with node
authentication (SuperLink + one SuperNode per client, plain FedAvg) whose
nodes run Flower's own executor (a new `flwr-clientapp` process per message);
the same with synthfed's warm executor (the default: imports once, forks per
message); and the warm deployment with SecAgg+. Prints the seconds per round,
the ratio to the simulation, and checks that the Flower weights equal the
simulation's (bit for bit without SecAgg+).

    python benchmarks/flower_round.py [--preset tiny] [--rounds 2] [--clients 2] [--no-secagg] [--no-cold]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from synthfed.config import TrainConfig
from synthfed.flower.deploy import Deployment, write_app
from synthfed.flower.run_config import FlowerOptions, to_run_config
from synthfed.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from shared_keys import give_nodes_simulation_keys  # noqa: E402

EMA = "global/ema/diffusion_pytorch_model.safetensors"


def flower_run(root: Path, config: TrainConfig, sim_run: Path, *, secagg: bool, warm: bool = True) -> tuple[float, Path]:
    options = FlowerOptions(run_dir=str(root / "server"), run_name="bench", secagg=secagg)
    # The nodes hold the simulation's secret noise keys (as restoring its backup would), so the
    # weights can be compared bit for bit; with keys of their own the noise differs, as it should.
    give_nodes_simulation_keys(sim_run, {cid: root / f"node{cid}" / "bench" for cid in range(config.num_clients)})
    deployment = Deployment.with_local_federation(root / "flower", nodes=config.num_clients)
    deployment.warm = warm
    with deployment:
        deployment.start_superlink()
        for cid in range(config.num_clients):
            deployment.start_node(cid, state_dir=root / f"node{cid}", threads=1)
        app = write_app(root / "app", to_run_config(config, options))
        start = time.perf_counter()
        status = deployment.run(app, timeout=3600)
        seconds = time.perf_counter() - start
    if status.get("status") != "finished:completed":
        raise RuntimeError(f"Flower run ended {status}")
    return seconds, root / "server" / "rounds" / f"round-{config.rounds:04d}"


def max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / EMA)), load_file(str(b / EMA))
    return max((x[k] - y[k]).abs().max().item() for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--no-secagg", action="store_true")
    parser.add_argument("--no-cold", action="store_true", help="leave out the run with Flower's own executor")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = TrainConfig(data="digits", image_size=args.image_size, preset=args.preset, num_clients=args.clients,
                         num_train_timesteps=20, batch_size=64, rounds=args.rounds, device="cpu").validate()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        sim = train(config, tmp / "sim")
        sim_s = time.perf_counter() - start
        rows = [("simulation (in-process)", sim_s, 0.0)]
        if not args.no_cold:
            seconds, last = flower_run(tmp / "cold", config, tmp / "sim", secagg=False, warm=False)
            rows.append(("Flower TLS, Flower's executor", seconds, max_diff(sim.last_round_dir, last)))
        seconds, last = flower_run(tmp / "plain", config, tmp / "sim", secagg=False)
        rows.append(("Flower TLS, warm executor", seconds, max_diff(sim.last_round_dir, last)))
        if not args.no_secagg:
            seconds, last = flower_run(tmp / "secagg", config, tmp / "sim", secagg=True)
            rows.append(("Flower TLS, warm executor, SecAgg+", seconds, max_diff(sim.last_round_dir, last)))
    print(f"{args.preset} preset, {args.clients} clients, {args.rounds} rounds, digits {args.image_size}x{args.image_size}")
    print(f"{'engine':38s} {'s/round':>8s} {'x sim':>7s} {'max |w - w_sim|':>16s}")
    for name, seconds, diff in rows:
        print(f"{name:38s} {seconds / args.rounds:8.1f} {seconds / sim_s:7.1f} {diff:16.3g}")


if __name__ == "__main__":
    main()
