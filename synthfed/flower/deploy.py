"""Start, drive and stop a Flower deployment on this machine (flwr 1.42).

What runs: one ``flower-superlink`` (one HTTPS port: Fleet API for nodes,
Control API for ``flwr``, Runtime API for ServerApps; ServerApps in
subprocesses, ``--disable-runtime-dependency-installation`` so it uses the
installed synthfed and torch instead of installing the app's dependencies),
one ``flower-supernode`` per institution, and ``flwr run`` of a generated app
directory whose config holds the run's options.

Security: with a CA certificate (``Deployment(ca_cert=...)``, or
``Deployment.with_local_federation``) every connection is TLS verified against
that CA, and SuperNode authentication is on: only the public keys in
``node_keys`` are registered (Flower's allow-list), and each node signs with
its private key. Without one, everything runs ``--insecure`` (loopback tests
of the insecure path only; the CLI refuses it outside loopback unless asked).

Telemetry and update checks are off; every Flower file lives under the
deployment's ``FLWR_HOME``, never in the user's home. ``stop`` ends every
process it started, children included (Flower starts ``flower-superexec``,
``flwr-serverapp`` and one ``flwr-clientapp`` per message), by PID: SIGTERM,
then SIGKILL after a grace period. Nothing here imports flwr: it drives
Flower's own commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

APP_NAME = "synthfed-app"
CONNECTION = "synthfed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process: quiet, local, and with this
    interpreter's scripts first on PATH (SuperLink and SuperNode start
    ``flower-superexec`` by name)."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1")  # a loopback request per 0.1 s, not 1 s of latency
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def flower_command(name: str) -> str:
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the Flower extra, pip install 'synthfed[flower]'")
    return found


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def write_app(app_dir: Path, run_config: dict) -> Path:
    """A Flower app directory whose components are synthfed's installed apps and
    whose config is the run's options (``flwr run --run-config`` may override them)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in sorted(run_config.items()))
    (app_dir / "pyproject.toml").write_text(f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "synthfed: federated diffusion training with differential privacy"
license = "Apache-2.0"
dependencies = []  # runs on the installed synthfed (--disable-runtime-dependency-installation)

[tool.flwr.app]
publisher = "synthfed"

[tool.flwr.app.components]
serverapp = "synthfed.flower.server_app:app"
clientapp = "synthfed.flower.client_app:app"

[tool.flwr.app.config]
{config}
""")
    return app_dir


def write_connection(home: Path, address: str, ca_cert: Path | None = None) -> None:
    """``flwr`` finds SuperLinks in $FLWR_HOME/config.toml (written by us, so
    ``flwr run`` never falls back to a local simulation)."""
    home.mkdir(parents=True, exist_ok=True)
    trust = "insecure = true" if ca_cert is None else f"root-certificates = {json.dumps(str(Path(ca_cert).resolve()))}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{trust}\n')


def node_config_arg(values: dict) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces and parentheses
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(int(entry.name))
    return out


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    return tree


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_tree(pid: int, *, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Every descendant is listed *before* anything is signalled (Flower's
    superexec runs in its own session, so a process-group kill misses it)."""
    pids = process_tree(pid) if _alive(pid) else [pid]
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class Deployment:
    """Flower processes started here; ``stop()`` (or ``with``) ends them all.

    ``ca_cert`` switches TLS on (and, on the SuperLink side, ``server_cert`` /
    ``server_key`` and node authentication with the ``node_keys`` allow-list);
    ``node_auth_keys`` maps a partition id to that node's private key."""

    root: Path
    ca_cert: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None
    node_keys: list[Path] = field(default_factory=list)
    node_auth_keys: dict[int, Path] = field(default_factory=dict)
    port: int = 0
    superlink: subprocess.Popen | None = None
    nodes: dict[int, subprocess.Popen] = field(default_factory=dict)
    others: list[subprocess.Popen] = field(default_factory=list)
    registered: dict[str, str] = field(default_factory=dict)  # Flower node id -> public key file
    warm: bool = True  # synthfed's warm executor next to each SuperNode (warm_exec), else Flower's
    heartbeat: float | None = None  # seconds between a node's heartbeats (None: Flower's 30 s); see supernode.py
    executors: dict[int, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def with_local_federation(cls, root: Path, *, nodes: int) -> "Deployment":
        """TLS and node authentication with a CA and keys made for this
        deployment alone (``root/certs``, replaced at each start: a one-machine
        federation's keys live as long as it does)."""
        from synthfed.errors import InputError
        from synthfed.flower.certs import make_federation

        certs = Path(root) / "certs"
        marker = certs / ".synthfed-local-federation"
        if certs.exists():
            if not marker.exists():  # not ours: never delete what we did not make
                raise InputError(f"{certs} exists and was not made by synthfed flower run; choose another --work-dir")
            shutil.rmtree(certs)
        files = make_federation(certs, nodes=nodes)
        marker.write_text("made by synthfed flower run for one deployment; replaced at its next start\n")
        return cls(Path(root), ca_cert=files.ca_cert, server_cert=files.server_cert, server_key=files.server_key,
                   node_keys=files.node_public_keys(), node_auth_keys={i: files.node_key(i) for i in range(nodes)})

    @property
    def secure(self) -> bool:
        return self.ca_cert is not None

    @property
    def home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / log_name, "ab")
        try:
            return subprocess.Popen(args, cwd=self.root, env=flower_env(self.home), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def _superlink_security(self) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        if self.server_cert is None or self.server_key is None:
            raise ValueError("a TLS SuperLink needs its certificate and key besides the CA certificate")
        return ["--ssl-ca-certfile", str(self.ca_cert), "--ssl-certfile", str(self.server_cert),
                "--ssl-keyfile", str(self.server_key), "--enable-supernode-auth"]

    def _healthy(self, address: str) -> bool:
        """A liveness probe of our own child on loopback: the chain is checked
        against the CA, not the name (a certificate may name only public hosts)."""
        import ssl

        context = None
        if self.secure:
            context = ssl.create_default_context(cafile=str(self.ca_cert))
            context.check_hostname = False
        scheme = "https" if self.secure else "http"
        try:
            urllib.request.urlopen(f"{scheme}://{address}/health", timeout=2, context=context).close()
            return True
        except OSError:
            return False

    def start_superlink(self, *, port: int = 0, host: str = "127.0.0.1", wait: float = 60.0) -> str:
        """``host`` 127.0.0.1 keeps it on this machine; 0.0.0.0 lets other machines' nodes in.
        With TLS, the allow-list's keys are registered once it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.superlink = self._spawn([
            flower_command("flower-superlink"), *self._superlink_security(), "--isolation", "subprocess",
            "--disable-runtime-dependency-installation", "--host", host, "--port", str(self.port),
        ], "superlink.log")
        address = f"127.0.0.1:{self.port}"
        write_connection(self.home, address, self.ca_cert)
        deadline = time.monotonic() + wait
        while not self._healthy(address):
            if self.superlink.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not start; see {self.logs / 'superlink.log'}")
            time.sleep(0.2)
        for key in self.node_keys if self.secure else []:
            self.register_node(Path(key))
        return address

    def register_node(self, public_key: Path) -> str:
        """Add one node's public key to the SuperLink's allow-list; returns its Flower node id."""
        out = subprocess.run([flower_command("flwr"), "supernode", "register", str(public_key), CONNECTION,
                              "--format", "json"], cwd=self.root, env=flower_env(self.home), capture_output=True,
                             text=True, timeout=120)
        try:
            node_id = str(json.loads(out.stdout)["node-id"])
        except (ValueError, KeyError):
            raise RuntimeError(f"registering {public_key} failed: {out.stdout.strip()} {out.stderr.strip()}") from None
        self.registered[node_id] = str(public_key)
        return node_id

    def _node_security(self, partition_id: int, auth_key: Path | None) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        key = auth_key or self.node_auth_keys.get(partition_id)
        args = ["--root-certificates", str(self.ca_cert)]
        return args + (["--auth-supernode-private-key", str(key)] if key is not None else [])

    def start_node(self, partition_id: int, *, state_dir: Path, data: str | None = None, threads: int | None = None,
                   max_epsilon: float | None = None, superlink: str | None = None,
                   auth_key: Path | None = None) -> subprocess.Popen:
        """One SuperNode; with TLS it trusts ``ca_cert`` and signs with
        ``auth_key`` (default: ``node_auth_keys[partition_id]``)."""
        values: dict = {"partition-id": partition_id, "state-dir": str(Path(state_dir).resolve())}
        if data:
            values["data"] = data
        if threads:
            values["threads"] = threads
        if max_epsilon is not None:
            values["max-epsilon"] = max_epsilon
        from synthfed.flower.warm_exec import warm_exec_supported

        warm = self.warm and warm_exec_supported()
        runtime_port = free_port()  # the node's Runtime API for its executor: loopback only
        command = [flower_command("flower-supernode")]
        if self.heartbeat is not None:
            command = [sys.executable, "-m", "synthfed.flower.supernode", "--heartbeat", str(self.heartbeat), "--"]
        node = self._spawn([
            *command, *self._node_security(partition_id, auth_key),
            "--superlink", superlink or f"127.0.0.1:{self.port}", "--isolation", "process" if warm else "subprocess",
            "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config_arg(values),
        ], f"node-{partition_id}.log")
        self.nodes[partition_id] = node
        if warm:
            self.executors[partition_id] = self._spawn([
                sys.executable, "-m", "synthfed.flower.warm_exec", "--runtime-api-address",
                f"127.0.0.1:{runtime_port}", "--parent-pid", str(node.pid), "--insecure",
            ], f"node-{partition_id}-exec.log")
        return node

    def kill_node(self, partition_id: int) -> None:
        """SIGKILL a node, its executor and its ClientApp: a crash, not a shutdown."""
        for proc in (self.nodes[partition_id], self.executors.get(partition_id)):
            if proc is not None:
                kill_tree(proc.pid, grace=0.0, sig=signal.SIGKILL)

    def run(self, app_dir: Path, *, on_line: Callable[[str], None] = lambda line: None,
            timeout: float | None = None) -> dict:
        """``flwr run`` the app and wait; returns ``flwr ls``'s record of the run."""
        started = subprocess.run([flower_command("flwr"), "run", str(app_dir), CONNECTION, "--format", "json"],
                                 cwd=self.root, env=flower_env(self.home), capture_output=True, text=True,
                                 timeout=300)
        try:
            run_id = int(json.loads(started.stdout)["run-id"])
        except (ValueError, KeyError):
            raise RuntimeError(f"flwr run failed: {started.stdout.strip()} {started.stderr.strip()}") from None
        stream = subprocess.Popen([flower_command("flwr"), "log", str(run_id), CONNECTION, "--stream"],
                                  cwd=self.root, env=flower_env(self.home), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.others.append(stream)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            assert stream.stdout is not None
            with open(self.logs / f"run-{run_id}.log", "a") as log:
                for line in stream.stdout:
                    log.write(line)
                    log.flush()
                    on_line(line.rstrip("\n"))
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"the run took longer than {timeout} s")
            status = self.status(run_id)
            while not str(status.get("status", "")).startswith("finished"):
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"the run took longer than {timeout} s")
                time.sleep(1.0)
                status = self.status(run_id)
            return status
        finally:
            kill_tree(stream.pid, grace=1.0)

    def status(self, run_id: int) -> dict:
        out = subprocess.run([flower_command("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
                             cwd=self.root, env=flower_env(self.home), capture_output=True, text=True, timeout=60)
        try:
            runs = json.loads(out.stdout)["runs"]
        except (ValueError, KeyError):
            raise RuntimeError(f"flwr ls failed: {out.stdout.strip()} {out.stderr.strip()}") from None
        return runs[0] if runs else {}

    def started_pids(self) -> list[int]:
        procs = [p for p in [self.superlink, *self.nodes.values(), *self.executors.values(), *self.others]
                 if p is not None]
        return [p.pid for p in procs]

    def stop(self) -> None:
        """Nodes and stream clients first (the SuperLink waits for open connections), then the SuperLink."""
        for proc in [*self.others, *self.executors.values(), *self.nodes.values()]:
            kill_tree(proc.pid)
            proc.wait(timeout=10)
        if self.superlink is not None:
            kill_tree(self.superlink.pid)
            self.superlink.wait(timeout=10)

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
