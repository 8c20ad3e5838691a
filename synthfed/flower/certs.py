"""Certificates and node keys for a federation: a local CA, the SuperLink's
TLS certificate and one authentication key pair per SuperNode.

For a test federation or a first deployment; an institution with its own PKI
uses its own CA and certificates (Flower takes any PEM files). What is made:

    DIR/ca.crt                    the CA's certificate: every node trusts it
    DIR/ca.key                    the CA's key (0600): keep it off the servers
    DIR/superlink/server.crt      the SuperLink's TLS certificate (SANs: hosts)
    DIR/superlink/server.key      its key (0600)
    DIR/nodes/node-<i>.key        node i's authentication key (0600, OpenSSH,
                                  ECDSA P-384: Flower's node authentication)
    DIR/nodes/node-<i>.pub        its public key: the SuperLink's allow-list

TLS keys are ECDSA P-256 (fast, accepted by every TLS stack Flower uses);
node keys are P-384 as Flower's documentation makes them. Private keys are
written 0600 and never overwritten: a second call with the same folder
refuses rather than silently replacing a key a node already holds."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from synthfed.errors import InputError
from synthfed.io import write_bytes_atomic

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365


@dataclass(frozen=True)
class FederationFiles:
    """Where ``make_federation`` put each file (see the module's docstring)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    def node_key(self, i: int) -> Path:
        return self.root / "nodes" / f"node-{i}.key"

    def node_public_key(self, i: int) -> Path:
        return self.root / "nodes" / f"node-{i}.pub"

    def node_public_keys(self) -> list[Path]:
        return sorted((self.root / "nodes").glob("node-*.pub"), key=lambda p: int(p.stem.split("-")[1]))


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(hosts: list[str]):
    from cryptography import x509

    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate(subject: str, public_key, issuer, signing_key, *, ca: bool, hosts: list[str] | None = None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = (builder.add_extension(_san(hosts or []), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                                  critical=False))
    return builder.sign(signing_key, hashes.SHA256())


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o600)


def make_ca(files: FederationFiles, name: str = "synthfed federation CA") -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, key.public_key(), _name(name), key, ca=True)
    _write_private(files.ca_key, _pem_key(key))
    write_bytes_atomic(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(files: FederationFiles):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    return cert, key


def make_server_certificate(files: FederationFiles, hosts: list[str]) -> None:
    """The SuperLink's certificate, valid for ``hosts`` (names or IP addresses
    the nodes dial) and for loopback, signed by the CA."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_cert, ca_key = _load_ca(files)
    names = list(dict.fromkeys([*hosts, *LOOPBACK_NAMES]))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(names[0], key.public_key(), ca_cert.subject, ca_key, ca=False, hosts=names)
    _write_private(files.server_key, _pem_key(key))
    write_bytes_atomic(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def make_node_key(files: FederationFiles, i: int) -> None:
    """Node i's authentication key pair in the OpenSSH formats Flower reads."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(files.node_key(i), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_bytes_atomic(files.node_public_key(i), public + f" synthfed-node-{i}\n".encode())


def make_federation(root: str | Path, *, nodes: int, hosts: list[str] | None = None) -> FederationFiles:
    """A CA, the SuperLink's certificate for ``hosts`` and ``nodes`` node key pairs."""
    files = FederationFiles(Path(root))
    if nodes < 1:
        raise InputError(f"--nodes must be at least 1, not {nodes}")
    existing = [p for p in (files.ca_key, files.server_key, files.node_key(0)) if p.exists()]
    if existing:
        raise InputError(f"{files.root} already holds keys ({existing[0].name}); choose an empty folder "
                         "(keys are never overwritten: nodes may already hold them)")
    for host in hosts or []:
        if not host or any(c.isspace() for c in host) or "/" in host:
            raise InputError(f"--host {host!r} is not a host name or IP address")
    make_ca(files)
    make_server_certificate(files, list(hosts or []))
    for i in range(nodes):
        make_node_key(files, i)
    return files


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: traffic that never leaves this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
