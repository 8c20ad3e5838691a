"""The privacy mechanisms a ledger can hold, as JSON-ready frozen dataclasses.

Sensitivities are in units of the per-record L2 bound C, under the product's
one adjacency, replace-one (``synthfed.privacy.accountant``): a ``Gaussian``
release moves by up to 2C when one record is replaced by another. Identical
mechanisms merge into one self-composition (much cheaper to account)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

__all__ = ["SubsampledGaussian", "Gaussian", "RandomizedResponse", "Mechanism", "mechanism_to_dict",
           "mechanism_from_dict", "merge_mechanisms"]


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_nonneg(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class SubsampledGaussian:
    """DP-SGD: Poisson sampling at rate q, `steps` steps, Gaussian noise std = noise_multiplier x C.

    C is the per-sample clip norm (Opacus's convention).  Under replace-one a
    sampled record's clipped gradient can be swapped for any other, so the sum
    moves by up to 2C; the accountant models that.  noise_multiplier 0 means
    no noise (a non-private run): infinite epsilon."""

    noise_multiplier: float
    sampling_rate: float
    steps: int
    kind: ClassVar[str] = "subsampled_gaussian"

    def __post_init__(self):
        object.__setattr__(self, "noise_multiplier", _check_nonneg("noise_multiplier", self.noise_multiplier))
        q = float(self.sampling_rate)
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"sampling_rate must lie in [0, 1], got {self.sampling_rate!r}")
        object.__setattr__(self, "sampling_rate", q)
        object.__setattr__(self, "steps", _check_count("steps", self.steps))


@dataclass(frozen=True)
class Gaussian:
    """One-shot Gaussian mechanism (PFDM forward-noised upload), `count` releases.

    noise_multiplier = noise std / C, where C bounds each record's L2 norm
    (the clip norm).  Replacing a record moves the output by up to 2C, and the
    accountant models that: this is NOT std / sensitivity (ledger format 1
    stored std / (2C); the ledger converts old files)."""

    noise_multiplier: float
    count: int = 1
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "noise_multiplier", _check_nonneg("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "count", _check_count("count", self.count))


@dataclass(frozen=True)
class RandomizedResponse:
    """k-ary randomized response on labels: pure epsilon-DP per release (under replace-one), `count` releases."""

    epsilon: float
    count: int = 1
    kind: ClassVar[str] = "randomized_response"

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _check_nonneg("epsilon", self.epsilon))
        object.__setattr__(self, "count", _check_count("count", self.count))


Mechanism = Union[SubsampledGaussian, Gaussian, RandomizedResponse]
_KINDS = {cls.kind: cls for cls in (SubsampledGaussian, Gaussian, RandomizedResponse)}
_COUNT_FIELD = {SubsampledGaussian: "steps", Gaussian: "count", RandomizedResponse: "count"}


def uses_of(m: Mechanism) -> int:
    return getattr(m, _COUNT_FIELD[type(m)])


def _unit(m: Mechanism, uses: int = 1) -> Mechanism:
    return dataclasses.replace(m, **{_COUNT_FIELD[type(m)]: uses})


def _costs_nothing(m: Mechanism) -> bool:
    """No release, or a release independent of the data (q=0, randomized response at eps=0)."""
    return uses_of(m) == 0 or getattr(m, "sampling_rate", 1.0) == 0.0 or getattr(m, "epsilon", 1.0) == 0.0


def mechanism_to_dict(m: Mechanism) -> dict:
    """JSON-ready dict with a "kind" tag, so ledgers survive a round trip through ledger.json."""
    if type(m) not in _COUNT_FIELD:
        raise TypeError(f"not a privacy mechanism: {m!r}")
    return {"kind": m.kind, **dataclasses.asdict(m)}


def mechanism_from_dict(d: dict) -> Mechanism:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown mechanism kind {kind!r}; expected one of {sorted(_KINDS)}")
    try:
        return _KINDS[kind](**d)
    except TypeError as exc:
        raise ValueError(f"bad fields for mechanism {kind!r}: {exc}") from None


def _params(m: Mechanism) -> tuple:
    """The mechanism without its repetition count: equal params compose as one self-composition."""
    count_field = _COUNT_FIELD[type(m)]
    return (m.kind,) + tuple(getattr(m, f.name) for f in dataclasses.fields(m) if f.name != count_field)


def merge_mechanisms(mechanisms: Sequence[Mechanism]) -> list[Mechanism]:
    """Merge equal-parameter mechanisms (summing steps/count) and drop the ones that cost nothing.

    Order is canonical (sorted by parameters) so that equal multisets give equal
    cache keys and bit-identical accountant results."""
    totals: dict[tuple, int] = {}
    protos: dict[tuple, Mechanism] = {}
    for m in mechanisms:
        if type(m) not in _COUNT_FIELD:
            raise TypeError(f"not a privacy mechanism: {m!r}")
        if _costs_nothing(m):
            continue
        key = _params(m)
        totals[key] = totals.get(key, 0) + uses_of(m)
        protos.setdefault(key, m)
    return [_unit(protos[k], totals[k]) for k in sorted(totals)]
