"""``synthfed flower``: run training across institutions on Flower.

- ``run``: a whole local deployment (SuperLink, one SuperNode per client,
  the run, then everything stopped), with ``synthfed train``'s options;
- ``serve`` / ``node``: one SuperLink or one SuperNode in the foreground, for
  a deployment across machines;
- ``app``: write the Flower app directory for ``flwr run``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from synthfed.cli.options import train_config
from synthfed.config import TrainConfig
from synthfed.errors import InputError, SynthfedError, UsageError

out = Console()
err = Console(stderr=True)
_MAIN_APP: list[typer.Typer] = []  # the root app, set by register (not imported: it imports this module)
flower_app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False,
                         help="Run synthfed on Flower: SuperLink, SuperNodes, SecAgg+.")
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _need_flower() -> None:
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise SynthfedError("Flower is not installed: pip install 'synthfed[flower]'") from None


def _train_options(name: str, args: list[str], resume_from: Optional[Path] = None) -> TrainConfig:
    """``synthfed train``'s options, parsed by the train command itself (its
    usage errors reach the CLI's error boundary as they are). With
    ``resume_from``: that run's own configuration, as ``train --resume`` gives it."""
    from synthfed.cli.resume import given_fields, resumed_config

    command = typer.main.get_command(_MAIN_APP[0]).get_command(None, "train")
    with command.make_context(name, list(args)) as ctx:
        if ctx.params.get("resume") is not None:
            raise UsageError("use --resume of synthfed flower run (the nodes keep their state by run name)")
        if resume_from is not None:
            return resumed_config(ctx, resume_from)
        return train_config(ctx.params, explicit=given_fields(ctx), engine="flower")


HEARTBEAT_HELP = ("Seconds between this node's heartbeats, 10-1800 (default: Flower's 30). "
                  "The SuperLink reports a node dead after two missed ones.")


def _heartbeat(seconds: Optional[float]) -> Optional[float]:
    from synthfed.flower.supernode import check_heartbeat

    if seconds is None:
        return None
    try:
        return check_heartbeat(seconds)
    except ValueError as e:
        raise UsageError(f"--heartbeat: {e}") from None


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (e.g. a service manager) both stop what we started:
    turned into KeyboardInterrupt, even where the shell started us with SIGINT ignored."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _options(out_dir: Path, run_name: Optional[str], secagg: bool, min_clients: int, round_timeout: float,
             resume: bool, config: TrainConfig):
    from synthfed.flower.run_config import FlowerOptions

    return FlowerOptions(run_dir=str(out_dir.resolve()), run_name=run_name or out_dir.name, resume=resume,
                         min_clients=min_clients, round_timeout=round_timeout, secagg=secagg).validate(config)


@flower_app.command("run", context_settings=PASS_THROUGH)
def run(
    ctx: typer.Context,
    out_dir: Path = typer.Option(Path("runs/flower"), "--out", help="The server's run directory."),
    state_dir: Path = typer.Option(Path("flower-nodes"), help="Parent of each node's private state (node-<i>/)."),
    run_name: Optional[str] = typer.Option(None, help="Run name in the nodes' state (default: the --out folder's name)."),
    secagg: bool = typer.Option(False, "--secagg", help="Average with Flower's SecAgg+: the server sees only the sum."),
    min_clients: int = typer.Option(1, help="A round needs replies from at least min(this, chosen) clients."),
    round_timeout: float = typer.Option(0.0, help="Seconds to wait for a round's replies (0: until Flower reports them)."),
    resume: bool = typer.Option(False, "--resume", help="Continue --out from its last complete round."),
    work_dir: Optional[Path] = typer.Option(None, help="Flower's files and logs (default: OUT/flower)."),
    threads: int = typer.Option(1, help="torch threads per node."),
    heartbeat: Optional[float] = typer.Option(None, help=HEARTBEAT_HELP),
) -> None:
    """Train on a local Flower deployment with synthfed train's options (e.g. --epsilon 8 --rounds 3)."""
    _need_flower()
    from synthfed.flower.deploy import Deployment, write_app
    from synthfed.flower.run_config import to_run_config

    # --resume: the run's own configuration, as synthfed train --resume
    config = _train_options("synthfed flower run", ctx.args, out_dir if resume and out_dir.exists() else None)
    options = _options(out_dir, run_name, secagg, min_clients, round_timeout, resume, config)
    root = (work_dir or out_dir / "flower").resolve()
    _stop_on_signals()
    # TLS and node authentication on this machine too: the path a federation across machines takes
    deployment = Deployment.with_local_federation(root, nodes=config.num_clients)
    deployment.heartbeat = _heartbeat(heartbeat)
    with deployment:
        address = deployment.start_superlink()
        err.print(f"SuperLink on {address} (TLS, {len(deployment.registered)} nodes allowed); logs in {deployment.logs}")
        for cid in range(config.num_clients):
            deployment.start_node(cid, state_dir=state_dir / f"node-{cid}", threads=threads)
        # The server addresses only the nodes whose keys we registered
        options = dataclasses.replace(options, allowed_nodes=" ".join(deployment.registered))
        app_dir = write_app(root / "app", to_run_config(config, options))
        status = deployment.run(app_dir, on_line=lambda line: err.print(line, markup=False, highlight=False))
    if status.get("status") != "finished:completed":
        raise SynthfedError(f"the Flower run ended {status.get('status')}: {status.get('status-details')}")
    out.print(f"run directory: {options.run_dir}")
    out.print(f"node state (private to each institution): {state_dir.resolve()}/node-*/{options.run_name}")


@flower_app.command("app", context_settings=PASS_THROUGH)
def app_command(
    ctx: typer.Context,
    app_dir: Path = typer.Option(..., "--app-dir", help="Folder for the Flower app (pyproject.toml)."),
    out_dir: Path = typer.Option(..., "--out", help="The server's run directory."),
    run_name: Optional[str] = typer.Option(None, help="Run name in the nodes' state."),
    secagg: bool = typer.Option(False, "--secagg", help="Average with SecAgg+."),
    min_clients: int = typer.Option(1, help="Minimum replies per round."),
    round_timeout: float = typer.Option(0.0, help="Seconds to wait for a round's replies (0: no limit)."),
    allowed_nodes: Optional[Path] = typer.Option(None, help="The file `flower serve` wrote (allowed-nodes.txt): "
                                                            "the server addresses only those nodes."),
) -> None:
    """Write a Flower app directory for `flwr run APP_DIR <superlink>` with synthfed train's options."""
    from synthfed.flower.deploy import write_app
    from synthfed.flower.run_config import to_run_config

    config = _train_options("synthfed flower app", ctx.args)
    options = _options(out_dir, run_name, secagg, min_clients, round_timeout, False, config)
    if allowed_nodes is not None:
        if not allowed_nodes.is_file():
            raise InputError(f"--allowed-nodes {allowed_nodes}: no such file")
        ids = " ".join(line.split()[0] for line in allowed_nodes.read_text().splitlines() if line.strip())
        options = dataclasses.replace(options, allowed_nodes=ids).validate(config)
    write_app(app_dir, to_run_config(config, options))
    out.print(f"wrote {app_dir / 'pyproject.toml'}")


@flower_app.command("serve")
def serve(
    port: int = typer.Option(9093, help="The SuperLink's port (one port for nodes, ServerApps and flwr)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind: 127.0.0.1 (this machine) or 0.0.0.0 (other machines' nodes)."),
    work_dir: Path = typer.Option(Path("flower-superlink"), help="Flower's files (FLWR_HOME) and logs."),
    ssl_ca_certfile: Optional[Path] = typer.Option(None, help="The federation's CA certificate (PEM)."),
    ssl_certfile: Optional[Path] = typer.Option(None, help="This SuperLink's TLS certificate (PEM)."),
    ssl_keyfile: Optional[Path] = typer.Option(None, help="Its private key (PEM)."),
    node_public_key: list[Path] = typer.Option([], help="An allowed node's public key, or a folder of *.pub (repeat)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (warned outside loopback)."),
) -> None:
    """Run a SuperLink in the foreground (Ctrl-C stops it and its children). Outside loopback: TLS and node authentication."""
    _need_flower()
    from synthfed.cli.flower_security import superlink_security
    from synthfed.flower.deploy import Deployment

    security = superlink_security(host=host, insecure=insecure, ca=ssl_ca_certfile, cert=ssl_certfile,
                                  key=ssl_keyfile, node_keys=node_public_key)
    deployment = Deployment(work_dir.resolve(), **security)
    _stop_on_signals()
    try:
        address = deployment.start_superlink(port=port, host=host)
        mode = f"TLS, {len(deployment.registered)} nodes allowed" if deployment.secure else "insecure"
        out.print(f"SuperLink on {host}:{port} ({mode}). Runs: FLWR_HOME={deployment.home} flwr run APP_DIR synthfed")
        if deployment.registered:
            allowed = deployment.root / "allowed-nodes.txt"
            allowed.write_text("".join(f"{node_id} {key}\n" for node_id, key in deployment.registered.items()))
            out.print(f"allowed nodes (Flower node id, public key) in {allowed}: give it to "
                      "synthfed flower app --allowed-nodes")
        deployment.superlink.wait()
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()


@flower_app.command("node")
def node(
    partition_id: int = typer.Option(..., help="This institution's client id in the run."),
    state_dir: Path = typer.Option(..., help="Private folder for local weights and the privacy ledger."),
    superlink: str = typer.Option("127.0.0.1:9093", help="The SuperLink's address."),
    data: Optional[str] = typer.Option(None, help="This node's own data (folder:DIR, csv:FILE...); default: its partition of the run's data."),
    max_epsilon: Optional[float] = typer.Option(None, help="Refuse runs that would spend more than this epsilon."),
    threads: int = typer.Option(1, help="torch threads."),
    work_dir: Path = typer.Option(Path("flower-node"), help="Flower's files (FLWR_HOME) and logs."),
    root_certificates: Optional[Path] = typer.Option(None, help="The federation's CA certificate: the SuperLink is verified against it."),
    auth_key: Optional[Path] = typer.Option(None, "--auth-key", "--auth-supernode-private-key",
                                            help="This node's private key (its public key is on the SuperLink's allow-list)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node authentication (warned outside loopback)."),
    heartbeat: Optional[float] = typer.Option(None, help=HEARTBEAT_HELP),
) -> None:
    """Run a SuperNode in the foreground (Ctrl-C stops it and its ClientApps). Outside loopback: TLS and node authentication."""
    _need_flower()
    from synthfed.cli.flower_security import supernode_security
    from synthfed.flower.deploy import Deployment

    host, _, port = superlink.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--superlink must be HOST:PORT, not {superlink!r}")
    security, key = supernode_security(superlink=superlink, insecure=insecure, root_certificates=root_certificates,
                                       auth_key=auth_key)
    deployment = Deployment(work_dir.resolve(), heartbeat=_heartbeat(heartbeat), **security)
    deployment.port = int(port)
    _stop_on_signals()
    try:
        proc = deployment.start_node(partition_id, state_dir=state_dir, data=data, threads=threads,
                                     max_epsilon=max_epsilon, superlink=superlink, auth_key=key)
        mode = "TLS, authenticated" if deployment.secure else "insecure"
        out.print(f"SuperNode for client {partition_id} connecting to {superlink} ({mode}); state in {state_dir}")
        code = proc.wait()
        if code != 0:
            raise SynthfedError(f"the SuperNode stopped with exit code {code}; see {deployment.logs / f'node-{partition_id}.log'}")
    except KeyboardInterrupt:
        pass
    finally:
        deployment.stop()


@flower_app.command("ledger")
def ledger(
    state_dir: Path = typer.Argument(..., help="A node's state folder (as given to the node)."),
    run_name: str = typer.Argument(..., help="The run's name."),
) -> None:
    """Show a node's privacy ledger (what it spent, by the accountant)."""
    from synthfed.cli.privacy_cmds import ledger_table
    from synthfed.privacy.ledger import PrivacyLedger

    path = state_dir / run_name / "node.json"
    if not path.is_file():
        raise InputError(f"no node state for run {run_name!r} in {state_dir}")
    raw = json.loads(path.read_text())
    if raw.get("ledger") is None:
        out.print("privacy: NOT differentially private (no --epsilon)")
        return
    out.print(ledger_table(PrivacyLedger.from_dict(raw["ledger"]).table(), f"node {raw['client_id']}: privacy spent"))


@flower_app.command("collect-ledgers")
def collect(
    run_dir: Path = typer.Argument(..., help="The server's run directory."),
    node_states: list[Path] = typer.Argument(..., help="Each node's state folder (as given to its node)."),
) -> None:
    """Publish the nodes' privacy ledgers into the run (checked against what the server aggregated)."""
    from synthfed.cli.privacy_cmds import ledger_table
    from synthfed.flower.ledgers import collect_ledgers
    from synthfed.privacy.ledger import PrivacyLedger

    target = collect_ledgers(run_dir, list(node_states))
    out.print(ledger_table(PrivacyLedger.from_dict(json.loads(target.read_text())).table(), "privacy spent"))
    out.print(f"wrote {target}")


def register(root: typer.Typer) -> None:
    """Add ``synthfed flower ...``; the root app is kept to parse train's options (flower run takes them)."""
    from synthfed.cli.flower_security import certs

    _MAIN_APP[:] = [root]
    flower_app.command("certs")(certs)
    root.add_typer(flower_app, name="flower")


from synthfed.cli.flower_node_cmds import generate as _node_generate; flower_app.command("generate")(_node_generate)  # noqa: E402,E702
