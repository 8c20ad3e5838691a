"""Secret noise keys: the randomness that protects privacy, held by whoever adds it.

A DP guarantee holds only against an adversary who cannot predict the noise.
The run seed is public (the server chooses it on Flower; the simulation writes
it to run.json), so every privacy-protecting draw — DP-SGD's Gaussian noise
and Poisson batches, the diffusion (t, noise) draws inside a DP-SGD step,
PFDM's forward-noise uploads and the randomized-response coins — comes
instead from a 256-bit key made with the OS's CSPRNG (``secrets``) by the
party that adds the noise: each Flower node for itself, the trainer (one key
per client) in the simulation. The run seed keeps driving only what is
public: initialisation, client selection, the partition and the sampling of
released images.

A key lives only in that party's private state, in a file of mode 0600
(``<run>/private/noise-keys.json`` for the simulation, ``<state-dir>/<run>/
noise-key.json`` on a node), never in run.json, checkpoints, model folders,
cards, reports or messages. Resume reads it back, so a round redone after a
crash draws the same noise and is the same release.

Each stream is ``HMAC-SHA256(key, purpose)`` cut to 63 bits and used to seed a
torch generator. torch's generators are not cryptographic; what an adversary
would have to guess is the 63-bit seed of each stream (and the 256-bit key
behind all of them), not a public number. Streams are named by purpose, so
no two purposes share noise."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import torch

from synthfed.errors import SynthfedError

KEY_BYTES = 32
PRIVATE_DIR = "private"
SIMULATION_KEYS_FILE = "noise-keys.json"
NODE_KEY_FILE = "noise-key.json"
KEYS_FORMAT = 1


class NoiseKeyError(SynthfedError, RuntimeError):
    """A key file is missing, unreadable or too open to be trusted."""


class NoiseKey:
    """One party's secret: seeds every privacy-protecting stream it draws."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise NoiseKeyError(f"a noise key is {KEY_BYTES} bytes")
        self._key = key

    @classmethod
    def generate(cls) -> "NoiseKey":
        return cls(secrets.token_bytes(KEY_BYTES))

    def hex(self) -> str:
        return self._key.hex()

    def __repr__(self) -> str:  # never print the key by accident
        return "NoiseKey(<secret>)"

    def seed(self, *purpose: object) -> int:
        """The 63-bit seed of the stream named by ``purpose`` (e.g. ("client-round", 3, 0))."""
        name = json.dumps([str(p) for p in purpose]).encode()
        digest = hmac.new(self._key, name, hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> 1

    def generator(self, *purpose: object, device: torch.device | str = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed(*purpose))


def _write_private_json(path: Path, obj: dict) -> None:
    """Create or replace ``path`` atomically, readable by its owner only (0600)
    from the first byte: the file is created with that mode, not chmod-ed later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_private_json(path: Path) -> dict:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise NoiseKeyError(f"{path} is readable by others (mode {mode:o}); a noise key must be mode 600")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NoiseKeyError(f"{path} is not a readable key file: {exc}") from None
    if raw.get("format") != KEYS_FORMAT:
        raise NoiseKeyError(f"{path} has an unknown key-file format {raw.get('format')!r}")
    return raw


def _key_from_hex(text: str, path: Path) -> NoiseKey:
    try:
        return NoiseKey(bytes.fromhex(text))
    except (ValueError, TypeError, NoiseKeyError):
        raise NoiseKeyError(f"{path} holds a damaged noise key") from None


def simulation_keys_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PRIVATE_DIR / SIMULATION_KEYS_FILE


def load_or_create_simulation_keys(run_dir: str | Path, client_ids: Iterable[int], *, create: bool) -> dict[int, NoiseKey]:
    """The trainer's keys, one per client. ``create``: make missing ones (a new
    run); otherwise (resume) every key must already be there, since a new key
    would make a redone round a second, uncounted release."""
    path = simulation_keys_path(run_dir)
    stored: dict[str, str] = _read_private_json(path)["clients"] if path.is_file() else {}
    keys: dict[int, NoiseKey] = {}
    changed = False
    for cid in client_ids:
        if str(cid) in stored:
            keys[cid] = _key_from_hex(stored[str(cid)], path)
        elif create:
            keys[cid] = NoiseKey.generate()
            stored[str(cid)] = keys[cid].hex()
            changed = True
        else:
            raise NoiseKeyError(f"{path} has no noise key for client {cid}; the run's private state is lost, "
                                "so it cannot be resumed without risking a second release with the same noise")
    if changed:
        _write_private_json(path, {"format": KEYS_FORMAT, "clients": stored})
    return keys


def load_or_create_node_key(node_dir: str | Path) -> NoiseKey:
    """A node's own key, made the first time the node serves the run."""
    path = Path(node_dir) / NODE_KEY_FILE
    if path.is_file():
        return _key_from_hex(_read_private_json(path)["key"], path)
    key = NoiseKey.generate()
    _write_private_json(path, {"format": KEYS_FORMAT, "key": key.hex()})
    return key


def provision_node_key(node_dir: str | Path, key: NoiseKey) -> None:
    """Install ``key`` as a node's key (restoring a node's private state from a
    backup; tests use it to give a node the key a simulation used)."""
    _write_private_json(Path(node_dir) / NODE_KEY_FILE, {"format": KEYS_FORMAT, "key": key.hex()})
