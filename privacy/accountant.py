"""Privacy mechanisms and their (epsilon, delta) accounting, all under ONE adjacency: replace-one.

The product promises each client an (epsilon, delta) guarantee over everything
it released, so the numbers here must be *upper bounds* that compose
heterogeneous mechanisms tightly: DP-SGD steps, one-shot Gaussian uploads
(PFDM) and randomized response on labels.  Client sizes are public, so every
mechanism is accounted under replace-one (DESIGN.md section 3, "One unit"):
mixing in an add/remove figure would under-report epsilon.

We use the privacy loss distribution (PLD) accountant of Google's
``dp-accounting`` (Doroshenko et al. 2022, "Connect the dots").  Its
pessimistic PLD gives a valid upper bound at any discretization; a finer grid
only makes it tighter.  Each mechanism is modelled by its replace-one
dominating pair, sensitivity in units of the per-record L2 bound C:

* ``SubsampledGaussian`` (DP-SGD, Poisson rate q): P = (1-q) N(0, s^2) + q N(-1, s^2)
  against Q = (1-q) N(0, s^2) + q N(+1, s^2), s = noise_multiplier;
* ``Gaussian`` (q = 1): N(-1, s^2) against N(+1, s^2), i.e. the output moves by
  up to 2C; ``count`` releases compose exactly to one with s / sqrt(count);
* ``RandomizedResponse(eps)``: binary randomized response with privacy loss
  +-eps, the dominating pair of *every* eps-DP mechanism (Kairouz et al. 2015);
  ``count`` releases compose exactly to a binomial privacy loss.

Mechanisms are frozen dataclasses: ledgers store them as JSON, and equal ones
merge into one self-composition.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.pld.common import compute_self_convolve_bounds
from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss
from scipy import integrate, special, stats

from .mechanisms import (  # noqa: F401 (re-exported: the accountant's public API)
    Gaussian, Mechanism, RandomizedResponse, SubsampledGaussian, uses_of,
    mechanism_from_dict, mechanism_to_dict, merge_mechanisms,
)

__all__ = [
    "ADJACENCY", "UNIT_OF_PRIVACY",
    "SubsampledGaussian", "Gaussian", "RandomizedResponse", "Mechanism", "EpsilonReport",
    "mechanism_to_dict", "mechanism_from_dict", "merge_mechanisms", "compute_epsilon",
]

# The one unit of privacy of the product (DESIGN.md section 3): every mechanism
# a client runs (DP-SGD, forward-noise uploads, randomized response, DP label
# counts) is accounted under the same neighbouring relation. Client sizes n_k
# are published (cards, ledgers, FedAvg weights), so replace-one is the honest
# choice: an add/remove figure would under-report epsilon.
ADJACENCY = "replace-one"
UNIT_OF_PRIVACY = ("one image (record) of one client, replace-one adjacency: the datasets differ in one record, "
                   "replaced by any other; each client's size is public")

# Grid caps: above them one evaluation costs seconds and hundreds of MB, so the
# interval is widened instead (the pessimistic bound stays valid, only looser).
MAX_SINGLE_POINTS = 1 << 17  # one mechanism's PLD before composition
MAX_POINTS = 1 << 20  # the composed PLD
# Probability mass the FFT composition may cut from the tails; the upper bound
# charges it to delta (dp-accounting moves it to infinite loss), so it is safe.
TAIL_MASS = 1e-15
# The pessimistic PLD's error shrinks as interval^2 (measured: 0.0023, 0.0096,
# 0.039 at 1e-3, 2e-3, 4e-3 for sigma 1, q 0.01, 10^4 steps).  Start at
# eps_error/4 and refine until the Richardson estimate of the error is at most
# eps_error/2, so upper - true epsilon stays below eps_error.
START_FRACTION, AIM_FRACTION = 0.25, 0.5


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


def _gaussian_params(m: Mechanism) -> tuple[float, float, int]:
    """(std, sampling probability, self-compositions) of a Gaussian mechanism, std in units of C.

    Releases without subsampling compose exactly: k Gaussians with std s are
    one Gaussian with std s / sqrt(k), which avoids k-fold grid error."""
    q = getattr(m, "sampling_rate", 1.0)
    if q == 1.0:
        return m.noise_multiplier / math.sqrt(uses_of(m)), 1.0, 1
    return m.noise_multiplier, q, uses_of(m)


def _gaussian_loss(m: Mechanism, pessimistic: bool = True) -> GaussianPrivacyLoss:
    std, q, _ = _gaussian_params(m)
    return GaussianPrivacyLoss(std, sensitivity=1.0, pessimistic_estimate=pessimistic, sampling_prob=q,
                               adjacency_type=AdjacencyType.REPLACE)


def _rr_outcomes(m: RandomizedResponse) -> tuple[np.ndarray, np.ndarray, float]:
    """(privacy losses, P-masses, dropped P-mass) of `count` binary randomized responses.

    j answers kept out of k: P = Bin(k, p), Q = Bin(k, 1-p), p = e^eps/(1+e^eps),
    so the loss is exactly (2j - k) eps.  Outcomes of negligible P-mass (at most
    TAIL_MASS in all) are dropped: to infinite loss in the upper bound."""
    k, eps = m.count, m.epsilon
    j = np.arange(k + 1)
    mass = np.exp(stats.binom.logpmf(j, k, special.expit(eps)))
    keep = mass > TAIL_MASS / (k + 1)
    return (2 * j[keep] - k) * eps, mass[keep], float(mass[~keep].sum())


def _rr_pld(m: RandomizedResponse, interval: float, pessimistic: bool):
    losses, mass, dropped = _rr_outcomes(m)
    scaled = losses / interval
    index = np.ceil(scaled) if pessimistic else np.floor(scaled)  # one rounding for all `count` releases
    rounded: dict[int, float] = {}
    for i, p in zip(index.astype(np.int64).tolist(), mass.tolist()):
        rounded[i] = rounded.get(i, 0.0) + p
    return pld_lib.PrivacyLossDistribution.create_from_rounded_probability(
        rounded, dropped if pessimistic else 0.0, interval, pessimistic_estimate=pessimistic)


def _single_pld(m: Mechanism, interval: float, pessimistic: bool):
    """PLD of one use (one step, or all releases of an unsubsampled mechanism), replace-one."""
    if isinstance(m, RandomizedResponse):
        return _rr_pld(m, interval, pessimistic)
    std, q, _ = _gaussian_params(m)
    # Connect-the-dots for the upper bound; the library offers only privacy
    # buckets (losses rounded down) for the optimistic one.
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=std, sensitivity=1.0, pessimistic_estimate=pessimistic,
        value_discretization_interval=interval, sampling_prob=q, use_connect_dots=pessimistic,
        neighboring_relation=NeighboringRelation.REPLACE_ONE)


def _composed_pld(mechs: tuple, interval: float, pessimistic: bool, tail: float):
    total = None
    for m in mechs:
        pld = _single_pld(m, interval, pessimistic)
        if not isinstance(m, RandomizedResponse) and _gaussian_params(m)[2] > 1:
            pld = pld.self_compose(_gaussian_params(m)[2], tail_mass_truncation=tail)
        total = pld if total is None else total.compose(pld, tail_mass_truncation=tail)
    return total


@functools.lru_cache(maxsize=4096)
def _extent(m: Mechanism, tail: float) -> tuple[float, float]:
    """(loss range of one use, width of the composed PLD), in nats, to size the grid.

    The composed width is what dp-accounting's Chernoff bound keeps after
    self-composition, measured on a coarse probe grid (4096 points)."""
    if isinstance(m, RandomizedResponse):
        losses = _rr_outcomes(m)[0]
        width = float(losses.max() - losses.min()) + m.epsilon
        return width, width
    loss = _gaussian_loss(m)
    t = loss.privacy_loss_tail()
    width = float(loss.privacy_loss(t.lower_x_truncation) - loss.privacy_loss(t.upper_x_truncation))
    compositions = _gaussian_params(m)[2]
    if compositions == 1:
        return width, width
    probe = width / 4096
    pmf = _single_pld(m, probe, True)._pmf_remove.to_dense_pmf()  # replace-one: one symmetric PMF
    lo, hi = compute_self_convolve_bounds(pmf._probs, compositions, tail)
    return width, (hi - lo + 1) * probe


def interval_floor(mechs: tuple, tail: float) -> float:
    """Smallest interval whose grids stay within MAX_SINGLE_POINTS and MAX_POINTS."""
    extents = [_extent(m, tail) for m in mechs]
    return max(max(e[0] for e in extents) / MAX_SINGLE_POINTS, sum(e[1] for e in extents) / MAX_POINTS)


@functools.lru_cache(maxsize=8192)
def _upper(mechs: tuple, delta: float, interval: float, tail: float) -> float:
    """Pessimistic PLD epsilon at `interval` (no smaller than the grid caps allow): a valid upper bound."""
    interval = max(interval, interval_floor(mechs, tail))
    return float(_composed_pld(mechs, interval, True, tail).get_epsilon_for_delta(delta))


def _rounding_mean(m: Mechanism, interval: float) -> float:
    """A lower bound on E_P[rho] for one DP-SGD step, rho = min(L - L_down, interval) in [0, interval].

    L_down is the loss as the optimistic PLD rounds it down.  E_P[L] over the
    PLD's inner range [lower_x, upper_x] comes from quadrature; outside that
    range rho >= 0 is all we count."""
    std, q, _ = _gaussian_params(m)
    loss = _gaussian_loss(m, pessimistic=False)
    t = loss.privacy_loss_tail()
    a, b = t.lower_x_truncation, t.upper_x_truncation

    def upper_density_times_loss(x):
        log_p = np.logaddexp(math.log1p(-q) - x * x / (2 * std * std), math.log(q) - (x + 1) ** 2 / (2 * std * std))
        return math.exp(log_p) / (std * math.sqrt(2 * math.pi)) * loss.privacy_loss(x)

    inner, abserr = integrate.quad(upper_density_times_loss, a, b, points=[p for p in (-1, 0, 1) if a < p < b],
                                   limit=500, epsabs=1e-13)
    pmf = _single_pld(m, interval, False)._pmf_remove.to_dense_pmf()
    rounded = float(np.dot((np.arange(pmf.size) + pmf._lower_loss) * interval, pmf._probs))
    rounded -= sum(p * math.floor(x / interval) * interval for x, p in t.tail_probability_mass_function.items())
    return min(max(inner - rounded - 10 * abserr - 1e-12, 0.0), interval)


def _lower(mechs: tuple, delta: float, interval: float, tail: float) -> float:
    """A valid lower bound from the optimistic PLD (privacy buckets: each loss rounded down).

    The optimistic loss of a DP-SGD step is L - rho with rho in [0, interval];
    summed over steps that bias is ~steps x interval / 2 (3.7 instead of 10.88
    at 10^4 steps), so we add it back: the rho of independent steps are
    independent, so by Hoeffding their sum is at least s = E[sum] - t except
    with probability eta = delta/100, and the true delta(eps) >= optimistic
    delta(eps - s) - eta.  The FFT composition may add up to 2 x tail of mass
    per mechanism; asking at delta + that keeps the result a lower bound."""
    pld = _composed_pld(mechs, interval, False, tail)
    slack = 2 * tail * len(mechs)
    steps = [m for m in mechs if not isinstance(m, RandomizedResponse) and _gaussian_params(m)[2] > 1]
    n = sum(m.steps for m in steps)
    eta = delta / 100
    shift = sum(m.steps * _rounding_mean(m, interval) for m in steps) - interval * math.sqrt(n * math.log(1 / eta) / 2)
    if shift < interval:
        return float(pld.get_epsilon_for_delta(delta + slack))
    # Add s as a deterministic loss (rounded down to the grid) rather than to the
    # resulting epsilon: the library clamps epsilon at 0, which would lose part of s.
    constant = pld_lib.PrivacyLossDistribution.create_from_rounded_probability(
        {math.floor(shift / interval): 1.0}, 0.0, interval, pessimistic_estimate=False)
    return float(pld.compose(constant).get_epsilon_for_delta(delta + eta + slack))


def _richardson(mechs: tuple, delta: float, interval: float, tail: float) -> tuple[float, float, float]:
    """(upper bound at interval, extrapolated estimate, estimated error of the upper bound).

    The error is ~c interval^2, so U(2h) - U(h) ~ 3 c h^2."""
    up, coarse = _upper(mechs, delta, interval, tail), _upper(mechs, delta, 2 * interval, tail)
    err = max(coarse - up, 0.0) / 3 if math.isfinite(coarse) else 0.0
    return up, up - err, err


@functools.lru_cache(maxsize=4096)
def pld_upper(mechs: tuple, delta: float, eps_error: float, tail: float) -> tuple[float, float, float, float]:
    """(upper bound, estimate, estimated error of the upper bound, interval used) at `eps_error`.

    Starts at eps_error * START_FRACTION and refines (at most three times) while the
    Richardson error estimate exceeds eps_error * AIM_FRACTION: far from the asymptotic
    regime (tiny per-step losses, e.g. q = 0.001) the error is nearly linear in
    the interval, so one square-root step can fall short."""
    floor = interval_floor(mechs, tail)
    interval = max(START_FRACTION * eps_error, floor)
    up, est, err = _richardson(mechs, delta, interval, tail)
    for _ in range(3):
        if not math.isfinite(up) or err <= AIM_FRACTION * eps_error:
            break
        refined = max(interval * math.sqrt(AIM_FRACTION * eps_error / err), floor)  # error ~ interval^2
        if refined >= 0.95 * interval:
            break
        interval = refined
        up, est, err = _richardson(mechs, delta, interval, tail)
    return up, est, err, interval


@functools.lru_cache(maxsize=4096)
def _account(mechs: tuple, delta: float, eps_error: float, tail: float) -> EpsilonReport:
    up, est, _, interval = pld_upper(mechs, delta, eps_error, tail)
    if not math.isfinite(up):
        return EpsilonReport(math.inf, math.inf, math.inf, delta, "none (infinite privacy loss at this delta)")
    lo = min(_lower(mechs, delta, interval, tail), up)
    est = min(max(est, lo), up)
    desc = f"dp-accounting {metadata.version('dp-accounting')} PLD, {ADJACENCY} (discretization {interval:.3g})"
    return EpsilonReport(lo, est, up, delta, desc)


def compute_epsilon(
    mechanisms: Sequence[Mechanism], *, delta: float, eps_error: float = 0.01, delta_error: float | None = None
) -> EpsilonReport:
    """Epsilon bounds at `delta` for the composition of all `mechanisms`, replace-one adjacency.

    epsilon_upper (the guarantee) is dp-accounting's pessimistic connect-the-dots
    PLD, aimed within eps_error of the true epsilon: the grid interval starts at
    eps_error/4 and is refined while the estimated error exceeds eps_error/2, or
    widened where the grid would exceed MAX_POINTS (large epsilon: still valid,
    only looser; ``accountant`` names the interval).  epsilon_estimate is the
    Richardson extrapolation of the upper bound at intervals h and 2h;
    epsilon_lower is the optimistic PLD with its rounding bias added back
    (``_lower``), a valid lower bound.  delta_error is the mass the FFT
    composition may truncate (default 1e-15), charged to delta by the upper bound.

    Equal mechanisms are merged first, zero-cost ones dropped; an empty
    composition is epsilon 0, a noiseless one epsilon infinity.  Results are
    cached: the calibration search and every ledger query ask for the same
    compositions."""
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    eps_error = float(eps_error)
    if not (eps_error > 0 and math.isfinite(eps_error)):
        raise ValueError(f"eps_error must be a finite number > 0, got {eps_error!r}")
    tail = TAIL_MASS if delta_error is None else float(delta_error)
    if not 0.0 < tail < delta:
        raise ValueError(f"delta_error must lie in (0, delta), got {delta_error!r}")
    merged = merge_mechanisms(mechanisms)
    if not merged:
        return EpsilonReport(0.0, 0.0, 0.0, delta, "none (no mechanism ran)")
    if any(getattr(m, "noise_multiplier", 1.0) == 0.0 for m in merged):  # Gaussian without noise
        inf = math.inf
        return EpsilonReport(inf, inf, inf, delta, "none (a mechanism added no noise: not differentially private)")
    return _account(tuple(merged), delta, eps_error, tail)
