"""TLS and node authentication for ``synthfed flower serve|node``, and
``synthfed flower certs``.

The rule: traffic that leaves this machine is TLS with node authentication,
unless ``--insecure`` says otherwise (and then a warning says what it means).
On loopback, no certificates means plain HTTP: nothing leaves the machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from synthfed.errors import InputError, UsageError

out = Console()
err = Console(stderr=True)

CERTS_HINT = "synthfed flower certs makes a CA, the SuperLink's certificate and node keys"


def _is_loopback(host: str) -> bool:
    from synthfed.flower.certs import is_loopback

    return is_loopback(host)


def _existing(path: Optional[Path], flag: str) -> Optional[Path]:
    if path is not None and not path.is_file():
        raise InputError(f"{flag} {path}: no such file")
    return None if path is None else path.resolve()


def node_public_keys(paths: list[Path]) -> list[Path]:
    """Public key files, a folder's ``*.pub`` files counted in."""
    keys: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.pub"))
            if not found:
                raise InputError(f"--node-public-key {path}: no *.pub files in this folder")
            keys.extend(found)
        elif path.is_file():
            keys.append(path)
        else:
            raise InputError(f"--node-public-key {path}: no such file or folder")
    return [k.resolve() for k in keys]


def superlink_security(*, host: str, insecure: bool, ca: Optional[Path], cert: Optional[Path], key: Optional[Path],
                       node_keys: list[Path]) -> dict:
    """Deployment's keyword arguments for a SuperLink bound to ``host``."""
    given = [p for p in (ca, cert, key) if p is not None]
    if insecure:
        if given or node_keys:
            raise UsageError("--insecure turns TLS and node authentication off: give it without certificates or keys")
        if not _is_loopback(host):
            err.print(f"[yellow]warning:[/] --insecure on {host}: no TLS and no node authentication. Anyone who "
                      "reaches this port can read the traffic and join as a node.")
        return {}
    if not given:
        if _is_loopback(host):
            return {}
        raise UsageError(f"--host {host} lets other machines in: give --ssl-ca-certfile, --ssl-certfile, "
                         f"--ssl-keyfile and --node-public-key ({CERTS_HINT}), or --insecure")
    if len(given) != 3:
        raise UsageError("TLS needs all three of --ssl-ca-certfile, --ssl-certfile and --ssl-keyfile")
    if not node_keys:
        raise UsageError("TLS comes with node authentication: give the allowed nodes' public keys "
                         f"with --node-public-key FILE_OR_FOLDER ({CERTS_HINT})")
    return {"ca_cert": _existing(ca, "--ssl-ca-certfile"), "server_cert": _existing(cert, "--ssl-certfile"),
            "server_key": _existing(key, "--ssl-keyfile"), "node_keys": node_public_keys(node_keys)}


def supernode_security(*, superlink: str, insecure: bool, root_certificates: Optional[Path],
                       auth_key: Optional[Path]) -> tuple[dict, Optional[Path]]:
    """(Deployment's keyword arguments, the node's authentication key) for a
    SuperNode that dials ``superlink`` (HOST:PORT)."""
    host = superlink.rpartition(":")[0]
    if insecure:
        if root_certificates is not None or auth_key is not None:
            raise UsageError("--insecure turns TLS and node authentication off: give it without certificates or keys")
        if not _is_loopback(host):
            err.print(f"[yellow]warning:[/] --insecure to {superlink}: this node's traffic is not encrypted and "
                      "the SuperLink is not verified.")
        return {}, None
    if root_certificates is None and auth_key is None:
        if _is_loopback(host):
            return {}, None
        raise UsageError(f"--superlink {superlink} is another machine: give --root-certificates (the federation's "
                         f"CA) and --auth-key (this node's private key) ({CERTS_HINT}), or --insecure")
    if root_certificates is None or auth_key is None:
        raise UsageError("a TLS node needs both --root-certificates (the CA it trusts) and --auth-key (its key)")
    return ({"ca_cert": _existing(root_certificates, "--root-certificates")},
            _existing(auth_key, "--auth-key"))


def certs(
    out_dir: Path = typer.Option(..., "--out", help="Folder for the CA, the SuperLink's certificate and node keys."),
    nodes: int = typer.Option(..., help="How many node key pairs to make (node-0 ... node-<n-1>)."),
    host: list[str] = typer.Option([], "--host", help="A name or IP address the nodes dial (repeat for more; "
                                                      "localhost and 127.0.0.1 are always included)."),
) -> None:
    """Make a local CA, the SuperLink's TLS certificate and one authentication key per node (a test federation)."""
    from synthfed.flower.certs import make_federation

    files = make_federation(out_dir, nodes=nodes, hosts=host)
    out.print(f"CA certificate (give it to every node): {files.ca_cert}")
    out.print(f"SuperLink: --ssl-ca-certfile {files.ca_cert} --ssl-certfile {files.server_cert} "
              f"--ssl-keyfile {files.server_key} --node-public-key {files.root / 'nodes'}")
    out.print(f"node i: --root-certificates {files.ca_cert} --auth-key {files.root / 'nodes'}/node-<i>.key "
              "(send each node its own key only)")
    out.print(f"keep {files.ca_key} off the servers: it signs certificates")
