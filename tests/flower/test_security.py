"""TLS material, node keys, the node's app guard and the CLI's rules for leaving loopback.

The deployment tests (test_flower_deployment.py) run these against real
processes; here each piece is checked on its own, fast."""

from __future__ import annotations

import ssl
import stat

import pytest

pytest.importorskip("flwr")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from synthfed.cli.app import app, register_subcommands  # noqa: E402
from synthfed.errors import InputError  # noqa: E402
from synthfed.flower.certs import is_loopback, make_federation  # noqa: E402
from synthfed.flower.warm_exec import ALLOWED_CLIENTAPP, ForeignAppError, check_fab  # noqa: E402

runner = CliRunner()
register_subcommands()


def _handshake(client_ca, server_files, host: str) -> str | None:
    """A TLS handshake in memory between a client trusting ``client_ca`` and a
    server holding ``server_files``' certificate; None, or the client's error."""
    client = ssl.create_default_context(cafile=str(client_ca))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(server_files.server_cert), str(server_files.server_key))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, side in (("c", c), ("s", s)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                except ssl.SSLError as e:
                    return str(e) if name == "c" else f"server: {e}"
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return None
    return "no handshake"


def test_federation_files_form_a_chain_a_tls_client_accepts(tmp_path):
    # Execute
    files = make_federation(tmp_path / "fed", nodes=2, hosts=["fl.example.org", "10.1.2.3"])
    # Assert: a TLS handshake (Python's own TLS stack) with the server's certificate succeeds for a
    # client that trusts the CA and dials a host it names, and fails for one that trusts another CA
    assert _handshake(files.ca_cert, files, "fl.example.org") is None
    assert _handshake(files.ca_cert, files, "127.0.0.1") is None
    stranger = make_federation(tmp_path / "stranger", nodes=1)
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(stranger.ca_cert, files, "fl.example.org")
    assert "CERTIFICATE_VERIFY_FAILED" in _handshake(files.ca_cert, files, "other.example.org")
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"fl.example.org", "10.1.2.3", "localhost", "127.0.0.1"} <= names
    # Node keys: Flower's formats, P-384, private keys 0600, public key matches the private one
    for i in range(2):
        private = load_ssh_private_key(files.node_key(i).read_bytes(), None)
        public = load_ssh_public_key(files.node_public_key(i).read_bytes())
        assert private.curve.name == "secp384r1" and private.public_key().public_numbers() == public.public_numbers()
        assert stat.S_IMODE(files.node_key(i).stat().st_mode) == 0o600
    assert stat.S_IMODE(files.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert files.node_public_keys() == [files.node_public_key(0), files.node_public_key(1)]


def test_a_second_federation_never_overwrites_keys(tmp_path):
    files = make_federation(tmp_path / "fed", nodes=1)
    before = files.node_key(0).read_bytes()
    with pytest.raises(InputError, match="already holds keys"):
        make_federation(tmp_path / "fed", nodes=1)
    assert files.node_key(0).read_bytes() == before


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("::1", True),
                                       ("[::1]", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                       ("fl.example.org", False)])
def test_loopback_is_only_this_machine(host, loop):
    assert is_loopback(host) is loop


def _fab(tmp_path, clientapp=ALLOWED_CLIENTAPP, extra: dict | None = None):
    app_dir = tmp_path / "fab"
    app_dir.mkdir()
    (app_dir / "pyproject.toml").write_text(
        f'[tool.flwr.app.components]\nserverapp = "synthfed.flower.server_app:app"\nclientapp = "{clientapp}"\n')
    for name, text in (extra or {}).items():
        (app_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (app_dir / name).write_text(text)
    return app_dir


def test_the_node_runs_synthfeds_app_bundle(tmp_path):
    check_fab(_fab(tmp_path))  # no error


@pytest.mark.parametrize("clientapp,extra", [
    ("evil:app", {"evil.py": "import os; os.system('cat /secret')"}),  # another ClientApp, shipped in the FAB
    ("evil.client:app", {}),  # another ClientApp, installed somewhere
    (ALLOWED_CLIENTAPP, {"synthfed/flower/client_app.py": "app = None"}),  # shadows synthfed's module
    (ALLOWED_CLIENTAPP, {"opacus.py": "raise SystemExit"}),  # shadows a lazily imported dependency
    (ALLOWED_CLIENTAPP, {"sitecustom.pth": "import evil"}),
])
def test_an_attackers_app_bundle_is_refused_before_import(tmp_path, clientapp, extra):
    # The attacker's side: Flower's Control API lets whoever reaches it submit a run with any app
    with pytest.raises(ForeignAppError):
        check_fab(_fab(tmp_path, clientapp, extra))


def test_serve_outside_loopback_needs_tls_and_node_keys_or_an_explicit_insecure(tmp_path):
    files = make_federation(tmp_path / "fed", nodes=1)
    tls = ["--ssl-ca-certfile", str(files.ca_cert), "--ssl-certfile", str(files.server_cert),
           "--ssl-keyfile", str(files.server_key)]
    # No certificates on 0.0.0.0: refused, one line
    res = runner.invoke(app, ["flower", "serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--insecure" in res.output
    # TLS without an allow-list: refused (TLS comes with node authentication)
    res = runner.invoke(app, ["flower", "serve", "--host", "0.0.0.0", *tls])
    assert res.exit_code == 2 and "--node-public-key" in res.output
    # Half the TLS files: refused
    res = runner.invoke(app, ["flower", "serve", "--host", "0.0.0.0", *tls[:2], "--node-public-key", str(tmp_path)])
    assert res.exit_code == 2 and "all three" in res.output
    # --insecure with certificates: contradictory
    res = runner.invoke(app, ["flower", "serve", "--host", "0.0.0.0", "--insecure", *tls])
    assert res.exit_code == 2


def test_node_to_another_machine_needs_the_ca_and_its_key_or_an_explicit_insecure(tmp_path):
    base = ["flower", "node", "--partition-id", "0", "--state-dir", str(tmp_path / "s"),
            "--superlink", "fl.example.org:9093"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "--root-certificates" in res.output
    files = make_federation(tmp_path / "fed", nodes=1)
    res = runner.invoke(app, [*base, "--root-certificates", str(files.ca_cert)])
    assert res.exit_code == 2 and "--auth-key" in res.output
    res = runner.invoke(app, [*base, "--root-certificates", str(tmp_path / "missing.crt"),
                              "--auth-key", str(files.node_key(0))])
    assert res.exit_code != 0 and "no such file" in res.output


def test_certs_command_makes_a_federation(tmp_path):
    res = runner.invoke(app, ["flower", "certs", "--out", str(tmp_path / "fed"), "--nodes", "3",
                              "--host", "fl.example.org"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "fed" / "nodes").iterdir()) == [
        "node-0.key", "node-0.pub", "node-1.key", "node-1.pub", "node-2.key", "node-2.pub"]
    res = runner.invoke(app, ["flower", "certs", "--out", str(tmp_path / "fed"), "--nodes", "1"])
    assert res.exit_code != 0 and "already holds keys" in res.output


def _commands(monkeypatch, tmp_path, *, warm: bool, supported: bool, heartbeat=None):
    """The commands Deployment.start_node would run (nothing is started)."""
    import synthfed.flower.warm_exec as warm_exec
    from synthfed.flower.deploy import Deployment

    started: list[list[str]] = []

    class Fake:
        pid = 4242

    monkeypatch.setattr(warm_exec, "warm_exec_supported", lambda: supported)
    deployment = Deployment(tmp_path / "d", warm=warm, heartbeat=heartbeat)
    monkeypatch.setattr(deployment, "_spawn", lambda args, log: started.append(args) or Fake())
    deployment.start_node(0, state_dir=tmp_path / "s")
    return started


def test_nodes_run_synthfeds_executor_and_fall_back_to_flowers_where_it_cannot(monkeypatch, tmp_path):
    warm = _commands(monkeypatch, tmp_path, warm=True, supported=True)
    assert len(warm) == 2 and warm[0][warm[0].index("--isolation") + 1] == "process"
    assert warm[1][1:3] == ["-m", "synthfed.flower.warm_exec"] and "4242" in warm[1]  # dies with its node
    cold = _commands(monkeypatch, tmp_path, warm=True, supported=False)  # a Flower without the internals
    assert len(cold) == 1 and cold[0][cold[0].index("--isolation") + 1] == "subprocess"
    assert _commands(monkeypatch, tmp_path, warm=False, supported=True)[0][-1].startswith("partition-id=0")
    beat = _commands(monkeypatch, tmp_path, warm=False, supported=True, heartbeat=12.0)[0]
    assert beat[1:6] == ["-m", "synthfed.flower.supernode", "--heartbeat", "12.0", "--"]


def test_the_heartbeat_reaches_flowers_supernode_modules():
    import subprocess
    import sys

    code = ("import runpy, sys\n"
            "sys.argv = ['supernode', '--heartbeat', '12', '--', '--help']\n"
            "try:\n    runpy.run_module('synthfed.flower.supernode', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import flwr.supernode.fleet_http_connection as f, flwr.supercore.heartbeat as h\n"
            "print(f.HEARTBEAT_DEFAULT_INTERVAL, h.HEARTBEAT_DEFAULT_INTERVAL)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["12.0", "12.0"], out.stdout[-500:] + out.stderr[-500:]
    from synthfed.flower.supernode import check_heartbeat

    with pytest.raises(ValueError, match="between 10 and 1800"):
        check_heartbeat(5)


def test_a_local_federation_replaces_only_its_own_keys(tmp_path):
    from synthfed.flower.deploy import Deployment

    first = Deployment.with_local_federation(tmp_path / "w", nodes=1)
    key = first.node_auth_keys[0].read_bytes()
    second = Deployment.with_local_federation(tmp_path / "w", nodes=1)  # a new start: new keys
    assert second.node_auth_keys[0].read_bytes() != key
    (tmp_path / "mine" / "certs").mkdir(parents=True)
    (tmp_path / "mine" / "certs" / "hospital-ca.key").write_text("precious")
    with pytest.raises(InputError, match="not made by synthfed"):
        Deployment.with_local_federation(tmp_path / "mine", nodes=1)
    assert (tmp_path / "mine" / "certs" / "hospital-ca.key").read_text() == "precious"
