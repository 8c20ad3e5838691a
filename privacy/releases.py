"""A release is released once: repeated requests get the same release, new inputs a counted one.

A party (a Flower node, or a client in the simulation) can be asked for the
same round again: the server resumed after a crash, or a curious server
re-asks with other weights or another t0. Redrawing the noise from the same
key stream for *other* inputs would release two outputs with the same noise
(their difference is noise-free); drawing fresh noise without counting it
would under-report epsilon. So every ledger entry carries a digest of the
inputs the release was made from, and:

* the same round with the same inputs is the same release: the same key
  stream (attempt k) reproduces it, and it is not counted again;
* the same round with other inputs is a new release: the next attempt's
  stream (fresh noise) and a new ledger entry, checked against the budget.

The digest covers only what the requester sent (or what the run's public
plan fixes): it says nothing about the party's data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

import torch

from synthfed.privacy.ledger import ClientLedger


def inputs_digest(*parts: object) -> str:
    """sha256 over tensors (dtype, shape, bytes), dicts of them (sorted keys) and JSON-able values."""
    h = hashlib.sha256()

    def feed(obj: object) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, Mapping):
            h.update(b"{")
            for k in sorted(obj):
                h.update(json.dumps(str(k)).encode())
                feed(obj[k])
            h.update(b"}")
        else:
            h.update(json.dumps(obj, sort_keys=True).encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


def release_attempt(ledger: ClientLedger, *, round: int, digest: str,
                    is_kind: Callable[[str], bool]) -> tuple[int, bool]:
    """(attempt, already recorded) for a release of this kind in ``round`` made
    from inputs ``digest``: the index of the recorded release with the same
    inputs, or the next index for new inputs."""
    seen: list[str] = []
    for entry in ledger.entries:
        if entry.round == round and is_kind(entry.note) and entry.inputs and entry.inputs not in seen:
            seen.append(entry.inputs)
    if digest in seen:
        return seen.index(digest), True
    return len(seen), False
