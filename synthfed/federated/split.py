"""Which parameters of the U-Net are shared (the backbone) and which stay on
each client (the head), declared by a named preset or glob patterns.

The split is a partition by construction (local = what the patterns match,
shared = the rest); validation rejects splits that cannot be what the user
meant: a pattern that matches nothing, or a head that is empty or the whole
model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from synthfed.errors import UsageError

HEAD_PRESETS: dict[str, tuple[str, ...]] = {
    # The decoder half and the output layer: FedPer's "personalization layers"
    # taken as the whole up path of the U-Net.
    "up": ("up_blocks.*", "conv_norm_out.*", "conv_out.*"),
    # Only the last normalisation and output convolution.
    "out": ("conv_norm_out.*", "conv_out.*"),
    # Each client's own class embedding: its label semantics stay local.
    "class-embedding": ("class_embedding.*",),
}


class SplitError(UsageError):
    """A backbone/head split that does not describe a proper partition."""


@dataclass(frozen=True)
class ParameterSplit:
    shared: frozenset[str]
    local: frozenset[str]
    spec: str

    def is_shared(self, key: str) -> bool:
        return key in self.shared


def parse_head(spec: str) -> tuple[str, ...]:
    """A preset name, or comma-separated glob patterns over state-dict keys."""
    spec = spec.strip()
    if spec in HEAD_PRESETS:
        return HEAD_PRESETS[spec]
    patterns = tuple(p.strip() for p in spec.split(",") if p.strip())
    if not patterns:
        raise SplitError(f"--head must be one of {', '.join(HEAD_PRESETS)} or glob patterns like 'up_blocks.1.*'")
    return patterns


def split_parameters(keys: Iterable[str], head: str) -> ParameterSplit:
    keys = list(keys)
    patterns = parse_head(head)
    unmatched = [p for p in patterns if not any(fnmatchcase(k, p) for k in keys)]
    if unmatched:
        raise SplitError(f"head pattern(s) {unmatched} match no parameter of this model (e.g. {keys[0]!r})")
    local = frozenset(k for k in keys if any(fnmatchcase(k, p) for p in patterns))
    shared = frozenset(keys) - local
    if not local:
        raise SplitError("the head is empty: every parameter would be shared (that is FedAvg)")
    if not shared:
        raise SplitError("the head is the whole model: nothing would be shared (that is local-only training)")
    assert shared.isdisjoint(local) and shared | local == set(keys)
    return ParameterSplit(shared=shared, local=local, spec=head)
