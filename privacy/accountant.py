"""Privacy mechanisms and their (epsilon, delta) accounting.

The product promises each client an (epsilon, delta) guarantee over everything
it released, so the numbers here must be *upper bounds* that compose
heterogeneous mechanisms tightly: DP-SGD steps, one-shot Gaussian uploads
(PFDM) and randomized response on labels.  We use the PRV accountant of Gopi et
al. (2021) as shipped in ``prv-accountant``; it reports a lower bound, an
estimate and an upper bound, and the upper bound is the guarantee.  Opacus's RDP
accountant is kept only as an independent, looser cross-check (``rdp_epsilon``).

Mechanisms are small frozen dataclasses so that ledgers can be stored as JSON
and so that identical mechanisms can be merged into one self-composition
(much cheaper for the FFT composer than many separate entries).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar, Union

import numpy as np
from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism, PRVAccountant, PureDPMechanism

__all__ = [
    "ADJACENCY", "UNIT_OF_PRIVACY",
    "SubsampledGaussian", "Gaussian", "RandomizedResponse", "Mechanism", "EpsilonReport",
    "mechanism_to_dict", "mechanism_from_dict", "merge_mechanisms", "compute_epsilon", "rdp_epsilon",
]

# The one unit of privacy of the product (DESIGN.md section 3): every mechanism
# a client runs (DP-SGD, forward-noise uploads, randomized response, DP label
# counts) is accounted under the same neighbouring relation. Client sizes n_k
# are published (cards, ledgers, FedAvg weights), so replace-one is the honest
# choice: an add/remove figure would under-report epsilon.
ADJACENCY = "replace-one"
UNIT_OF_PRIVACY = ("one image (record) of one client, replace-one adjacency: the datasets differ in one record, "
                   "replaced by any other; each client's size is public")

# Above this many grid points a single PRV evaluation takes tens of seconds and
# gigabytes; we then widen eps_error (the bound stays valid, only looser).
MAX_DOMAIN_POINTS = 2_000_000
# RDP orders for the Opacus cross-check: Opacus's defaults plus a few large
# orders, which only tighten the (always valid) bound at small epsilon.
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 256, 512, 1024])


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
    """DP-SGD: Poisson sampling at rate q, Gaussian noise std = noise_multiplier x clip norm, `steps` steps.

    noise_multiplier 0 means no noise (a non-private run): infinite epsilon."""

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
    """One-shot Gaussian mechanism (PFDM forward-noised upload): noise std / L2 sensitivity, `count` releases."""

    noise_multiplier: float
    count: int = 1
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self):
        object.__setattr__(self, "noise_multiplier", _check_nonneg("noise_multiplier", self.noise_multiplier))
        object.__setattr__(self, "count", _check_count("count", self.count))


@dataclass(frozen=True)
class RandomizedResponse:
    """k-ary randomized response on labels: pure epsilon-DP per release, `count` releases."""

    epsilon: float
    count: int = 1
    kind: ClassVar[str] = "randomized_response"

    def __post_init__(self):
        object.__setattr__(self, "epsilon", _check_nonneg("epsilon", self.epsilon))
        object.__setattr__(self, "count", _check_count("count", self.count))


Mechanism = Union[SubsampledGaussian, Gaussian, RandomizedResponse]
_KINDS = {cls.kind: cls for cls in (SubsampledGaussian, Gaussian, RandomizedResponse)}
_COUNT_FIELD = {SubsampledGaussian: "steps", Gaussian: "count", RandomizedResponse: "count"}


def _uses(m: Mechanism) -> int:
    return getattr(m, _COUNT_FIELD[type(m)])


def _unit(m: Mechanism, uses: int = 1) -> Mechanism:
    return dataclasses.replace(m, **{_COUNT_FIELD[type(m)]: uses})


def _costs_nothing(m: Mechanism) -> bool:
    """No release, or a release independent of the data (q=0, randomized response at eps=0)."""
    return _uses(m) == 0 or getattr(m, "sampling_rate", 1.0) == 0.0 or getattr(m, "epsilon", 1.0) == 0.0


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
        totals[key] = totals.get(key, 0) + _uses(m)
        protos.setdefault(key, m)
    return [_unit(protos[k], totals[k]) for k in sorted(totals)]


@dataclass(frozen=True)
class EpsilonReport:
    """Bounds on epsilon at `delta`; `epsilon_upper` is the guarantee, the others are for context."""

    epsilon_lower: float
    epsilon_estimate: float
    epsilon_upper: float
    delta: float
    accountant: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _RandomizedResponsePRV(PureDPMechanism):
    """PRV of an epsilon-pure-DP release (k-ary randomized response on labels).

    Binary randomized response is the dominating pair of *every* eps-DP
    mechanism (Kairouz et al. 2015), so prv-accountant's ``PureDPMechanism``
    (privacy loss +-eps with probabilities e^eps/(1+e^eps), 1/(1+e^eps)) is a
    sound PRV for k-ary randomized response.  Its ``rdp`` however returns
    (alpha-1)/alpha*eps, which is *below* the true Renyi divergence of that pair
    (0.5 vs 0.735 at eps=1, alpha=2); the accountant sizes its truncation domain
    from RDP, so we override it with the exact value to keep the domain safe."""

    def rdp(self, alpha):
        eps = float(self.eps)
        log_p, log_q = -np.logaddexp(0.0, -eps), -np.logaddexp(0.0, eps)
        if np.isinf(alpha):
            return eps
        if alpha == 1:  # KL divergence
            return float((np.exp(log_p) - np.exp(log_q)) * eps)
        terms = np.logaddexp(alpha * log_p + (1 - alpha) * log_q, alpha * log_q + (1 - alpha) * log_p)
        return float(min(eps, terms / (alpha - 1)))


def _to_prv(m: Mechanism):
    if isinstance(m, SubsampledGaussian):
        return PoissonSubsampledGaussianMechanism(noise_multiplier=m.noise_multiplier, sampling_probability=m.sampling_rate)
    if isinstance(m, Gaussian):
        return GaussianMechanism(noise_multiplier=m.noise_multiplier)
    return _RandomizedResponsePRV(eps=m.epsilon)


@functools.lru_cache(maxsize=1)
def _prv_version() -> str:
    return metadata.version("prv-accountant")


# prv-accountant's own RDP orders (other_accountants.RDP), so that our domain
# size equals the one PRVAccountant would compute itself.
_PRV_ORDERS = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# Integer orders only: ~20x cheaper (no series for fractional orders); the
# minimum over fewer orders is larger, so the domain is larger, never unsafe.
_FAST_ORDERS = tuple(range(2, 64))


@functools.lru_cache(maxsize=8192)
def _rdp_curve(unit: Mechanism, orders: tuple) -> np.ndarray:
    """RDP of one use of a mechanism at each order (cached: the search revisits the same mechanisms)."""
    prv = _to_prv(unit)
    curve = np.array([prv.rdp(a) for a in orders], dtype=float)
    curve.flags.writeable = False
    return curve


def _rdp_to_eps(rdp: np.ndarray, orders: np.ndarray, delta: float) -> float:
    eps = rdp - np.log(delta * orders) / (orders - 1) + np.log1p(-1 / orders)  # as prv-accountant's RDP class
    return float(eps[np.nanargmin(eps)])


def _safe_domain_size(mechs: tuple, eps_error: float, delta_error: float, orders: tuple) -> float:
    """prv-accountant's compute_safe_domain_size (Gopi et al. Remark 5.6) with cached RDP curves.

    The library computes each curve twice per call; doing it once and reusing
    it across a calibration search removes most of the fixed cost per call."""
    counts = [_uses(m) for m in mechs]
    total = sum(counts)
    o = np.asarray(orders, dtype=float)
    curves = [_rdp_curve(_unit(m), orders) for m in mechs]
    L = _rdp_to_eps(sum(c * n for c, n in zip(curves, counts)), o, delta_error / 4)
    for c in curves:
        L = max(L, _rdp_to_eps(c, o, delta_error / 8 / total))
    return max(L, eps_error) + 3


def _domain_points(L: float, total: int, eps_error: float, delta_error: float) -> float:
    """Grid size PRVAccountant builds for half-width L (same mesh formula as its constructor)."""
    mesh = eps_error / math.sqrt(total / 2 * math.log(12 / delta_error))
    return 2 * L / mesh


@functools.lru_cache(maxsize=4096)
def _prv_epsilon(mechs: tuple, delta: float, eps_error: float, delta_error: float, max_points: int,
                 fast: bool = False) -> tuple:
    """(lower, estimate, upper, accountant description) for merged, costly mechanisms.

    The truncation domain is prv-accountant's own automatic one (RDP based,
    Gopi et al. Remark 5.6), computed here and passed as eps_max so the result is
    identical to calling the library directly.  We never *shrink* it: an eps_max
    below the true epsilon silently under-reports (measured: 43.31 instead of
    43.38).  When the grid would be too large, or the library's discretisation
    check fails (it does at epsilon in the hundreds), we grow eps_error instead
    and retry: the upper bound stays valid, only looser, and the description
    says which eps_error was used.  If every retry fails, the RDP bound (valid,
    looser) is reported with lower bound 0.  `fast` uses integer RDP orders for
    the domain (calibration's coarse search only)."""
    orders = _FAST_ORDERS if fast else _PRV_ORDERS
    counts = [_uses(m) for m in mechs]
    err, failure = eps_error, ""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # eps_max notice and numpy overflow chatter from the library
        for _ in range(3):  # the domain depends weakly on eps_error: refine twice
            L = _safe_domain_size(mechs, err, delta_error, orders)
            points = _domain_points(L, sum(counts), err, delta_error)
            if points <= max_points:
                break
            err *= points / max_points * 1.05
        for attempt in range(4):
            try:
                L = _safe_domain_size(mechs, err, delta_error, orders)
                acc = PRVAccountant(prvs=[_to_prv(m) for m in mechs], max_self_compositions=counts,
                                    eps_error=err, delta_error=delta_error, eps_max=L)
                lo, est, up = acc.compute_epsilon(delta=delta, num_self_compositions=counts)
                desc = f"prv-accountant {_prv_version()} (eps_error={err:.3g}, delta_error={delta_error:.3g})"
                return float(lo), float(est), float(up), desc
            except (RuntimeError, ValueError, FloatingPointError, OverflowError, MemoryError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if attempt == 0:
                    # prv-accountant's discretisation check fails for few steps at
                    # low noise and high q (e.g. sigma 0.63, q 0.13, 16 steps);
                    # Opacus's port of the same algorithm (Gopi et al. 2021)
                    # builds its domain differently and succeeds there, at the
                    # requested eps_error: prefer it to a looser bound.
                    opacus_result = _opacus_prv_epsilon(mechs, delta, err, delta_error)
                    if opacus_result is not None:
                        return opacus_result
                err *= 4
        rdp = sum(_rdp_curve(_unit(m), _PRV_ORDERS) * n for m, n in zip(mechs, counts))
        up = _rdp_to_eps(rdp, np.asarray(_PRV_ORDERS), delta)
    return 0.0, up, up, f"RDP bound (prv-accountant {_prv_version()} failed: {failure})"


def _opacus_prv_epsilon(mechs: tuple, delta: float, eps_error: float, delta_error: float) -> tuple | None:
    """The same PRV accountant as implemented in Opacus (Gaussian mechanisms only:
    a plain Gaussian release is a subsampled one with q = 1). None when it does
    not apply or fails too."""
    if not all(isinstance(m, (SubsampledGaussian, Gaussian)) for m in mechs):
        return None
    from opacus import __version__ as opacus_version
    from opacus.accountants import PRVAccountant as OpacusPRV

    acc = OpacusPRV()
    acc.history = [(m.noise_multiplier, getattr(m, "sampling_rate", 1.0), _uses(m)) for m in mechs]
    try:
        dprv = acc._get_dprv(eps_error=eps_error, delta_error=delta_error)
        lo, est, up = dprv.compute_epsilon(delta, delta_error, eps_error)
    except (RuntimeError, ValueError, FloatingPointError, OverflowError, MemoryError):
        return None
    desc = f"Opacus {opacus_version} PRV accountant (eps_error={eps_error:.3g}, delta_error={delta_error:.3g})"
    return float(lo), float(est), float(up), desc


def compute_epsilon(
    mechanisms: Sequence[Mechanism], *, delta: float, eps_error: float = 0.01, delta_error: float | None = None
) -> EpsilonReport:
    """Epsilon bounds at `delta` for the composition of all `mechanisms` (PRV accountant).

    Equal mechanisms are merged first, zero-cost ones dropped; an empty
    composition is epsilon 0, a noiseless one epsilon infinity.  delta_error
    defaults to delta/1000 (the convention of prv-accountant and Opacus), so
    the bounds hold at delta up to that error.  Results are cached: the
    calibration search and every ledger query ask for the same compositions."""
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    eps_error = float(eps_error)
    if not eps_error > 0:
        raise ValueError(f"eps_error must be > 0, got {eps_error!r}")
    delta_error = delta / 1000 if delta_error is None else float(delta_error)
    if not 0.0 < delta_error < delta:
        raise ValueError(f"delta_error must lie in (0, delta), got {delta_error!r}")
    merged = merge_mechanisms(mechanisms)
    if not merged:
        return EpsilonReport(0.0, 0.0, 0.0, delta, "none (no mechanism ran)")
    if any(getattr(m, "noise_multiplier", 1.0) == 0.0 for m in merged):  # Gaussian without noise
        inf = math.inf
        return EpsilonReport(inf, inf, inf, delta, "none (a mechanism added no noise: not differentially private)")
    lo, est, up, desc = _prv_epsilon(tuple(merged), delta, eps_error, delta_error, MAX_DOMAIN_POINTS)
    return EpsilonReport(lo, est, up, delta, desc)


def rdp_epsilon(mechanisms: Sequence[Mechanism], *, delta: float) -> float:
    """Epsilon from Opacus's RDP accountant: an independent, looser upper bound for cross-checks.

    Randomized response is rejected: its RDP curve is not in Opacus, and a
    cross-check that silently skips a component would check nothing."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    merged = merge_mechanisms(mechanisms)
    if any(isinstance(m, RandomizedResponse) for m in merged):
        raise ValueError("rdp_epsilon covers Gaussian mechanisms only; randomized response needs compute_epsilon")
    if not merged:
        return 0.0
    orders = list(RDP_ORDERS)
    total = np.zeros(len(orders))
    for m in merged:
        q, steps = (m.sampling_rate, m.steps) if isinstance(m, SubsampledGaussian) else (1.0, m.count)
        total = total + np.asarray(compute_rdp(q=q, noise_multiplier=m.noise_multiplier, steps=steps, orders=orders))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a valid, slightly loose bound
        eps, _ = get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)
