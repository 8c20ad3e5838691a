"""Turn a privacy target (epsilon, delta) into noise before training starts.

`--epsilon` is a promise about the *reported* guarantee, and the ledger reports
the replace-one PLD accountant's upper bound; so calibration picks the smallest
noise whose upper bound (at the same eps_error) meets the target.  Anything
looser would make the ledger say "budget exceeded" for a run that followed its
plan.

Speed: a full evaluation (eps_error=0.01, 10^4 steps) takes ~0.3 s, nearly all
of it grid work that shrinks with the interval.  So the search runs on coarse
PLDs in log-log space (epsilon is nearly a power law in sigma): first at
eps_error x 10, then at eps_error x 2, each aiming its Richardson estimate plus
the gap the final grid will leave at the target; only the final candidates are
checked with the real eps_error, by the very function ``compute_epsilon`` takes
its upper bound from (cached, so the ledger's later query reuses it).
"""

from __future__ import annotations

import functools
import math
import numbers

from scipy import optimize
from scipy.stats import norm

from synthfed.errors import UsageError
from .accountant import AIM_FRACTION, START_FRACTION, TAIL_MASS, Gaussian, SubsampledGaussian, interval_floor, pld_upper

__all__ = [
    "CalibrationError", "default_delta", "validate_privacy_target", "find_noise_multiplier",
    "find_gaussian_noise", "analytic_gaussian_epsilon", "plan_steps",
]

# Coarse search levels, as multiples of the final eps_error: the search aims
# with these cheap grids and only the last steps use the real one.
_COARSE, _MEDIUM = 10.0, 2.0
_REL_TOL = 1e-3  # returned sigma is within this relative distance of the smallest admissible one


class CalibrationError(UsageError):
    """The privacy target cannot be met, or is not a meaningful target."""


def default_delta(n: int) -> float:
    """1/(10 n): well below 1/n, the level at which "release one random record" would be (eps, delta)-DP."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return 1.0 / (10 * int(n))


def validate_privacy_target(*, epsilon: float, delta: float, n: int) -> None:
    """Reject targets that are meaningless, so a run never starts with a vacuous promise."""
    if int(n) != n or n < 1:
        raise CalibrationError(f"a client needs at least one record to be protected, got n={n!r}")
    if not (isinstance(epsilon, numbers.Real) and math.isfinite(epsilon)) or epsilon <= 0:
        raise CalibrationError(
            f"epsilon must be a finite number > 0, got {epsilon!r}; for a non-private run leave epsilon unset"
        )
    if not (isinstance(delta, numbers.Real) and math.isfinite(delta)) or delta <= 0:
        raise CalibrationError(f"delta must be > 0, got {delta!r}: Gaussian noise cannot give pure (delta=0) DP")
    if delta >= 1.0 / n:
        raise CalibrationError(
            f"delta={delta:g} is not below 1/n={1.0 / n:g}: publishing one random record in the clear would satisfy "
            f"it, so it protects nobody; use delta <= {default_delta(n):g} (1/(10 n))"
        )


def _ceil_sig(x: float, digits: int = 5) -> float:
    """Round up to `digits` significant digits: tidy and reproducible; the rounded value is what gets checked."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale * (1 - 1e-12)) / scale


def _solve_loglog(f, target: float, *, x0: float, x_max: float, xtol: float, slope: float = -2.0):
    """(x, slope): x = log(sigma) where the decreasing f(sigma) crosses target, or (None, slope)
    if even f(e^x_max) > target.

    log f is nearly linear in log sigma, so a safeguarded secant (bisection once
    bracketed and a step goes astray) needs only a handful of evaluations."""

    def g(x):
        val = f(math.exp(x))
        return max(-30.0, min(30.0, math.log(max(val, 1e-300)) - math.log(target)))

    lo = hi = prev = None  # lo: largest x seen with g > 0; hi: smallest with g <= 0
    x, v = x0, g(x0)
    for _ in range(60):
        if v > 0:
            lo = x if lo is None else max(lo, x)
        else:
            hi = x if hi is None else min(hi, x)
            if x < -10:  # sigma < 5e-5 already meets the target
                return x, slope
        if prev is not None and x != prev[0] and max(abs(v), abs(prev[1])) < 25:
            s = (v - prev[1]) / (x - prev[0])
            if s < 0:
                slope = s
        x_new = x + max(-1.5, min(1.5, -v / slope))
        if lo is not None and hi is not None and not lo < x_new < hi:
            x_new = (lo + hi) / 2
        if x_new > x_max:
            if x >= x_max and v > 0:
                return None, slope
            x_new = x_max
        if abs(x_new - x) < xtol:
            return x_new, slope
        prev, x = (x, v), x_new
        v = g(x)
    return x, slope


def _verify(upper, target: float, *, x: float, slope: float, sigma_max: float, unreachable) -> float:
    """Check candidates with the real accountant; return the smallest passing sigma (within _REL_TOL).

    `upper(sigma)` is the guaranteed bound.  A failed check steps up along the
    known slope; a pass with slack > _REL_TOL steps down (rare: the aim sits
    just below target).  Each step costs one full accountant evaluation."""
    best = None
    for _ in range(6):
        sigma = _ceil_sig(math.exp(x))
        if sigma > sigma_max:
            if best is not None:
                return best
            raise unreachable(upper(sigma_max))
        u = upper(sigma)
        if u <= target:
            best = sigma if best is None else min(best, sigma)
            slack = (math.log(target) - math.log(max(u, 1e-300))) / -slope  # in log sigma
            if slack <= _REL_TOL:
                return best
            x -= slack - 2e-4
        else:
            x += (math.log(u) - math.log(target)) / -slope + 2e-4
            if best is not None and _ceil_sig(math.exp(x)) >= best:
                return best
    if best is not None:
        return best
    while True:  # pathological curvature: walk up until the bound holds
        x += 0.01
        sigma = _ceil_sig(math.exp(x))
        if sigma > sigma_max:
            raise unreachable(upper(sigma_max))
        if upper(sigma) <= target:
            return sigma


def _check_common(target_epsilon, delta, eps_error) -> None:
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise CalibrationError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise CalibrationError(f"delta must lie in (0, 1), got {delta!r}")
    if not (eps_error > 0 and math.isfinite(eps_error)):
        raise ValueError(f"eps_error must be a finite number > 0, got {eps_error!r}")
    if target_epsilon <= 1.5 * eps_error:
        raise CalibrationError(
            f"target epsilon {target_epsilon:g} is within the accountant's resolution (eps_error={eps_error:g}): "
            f"the upper bound may lie up to ~eps_error above the true epsilon; pass a smaller eps_error"
        )


def _margin(target: float) -> float:
    """Aim this far below target so that the first full check usually passes with little slack."""
    return 1.5e-4 * target + 1e-4


def _predicted_gap(err: float, interval: float, eps_error: float, floor: float) -> float:
    """Predicted (upper - true epsilon) of the accountant at eps_error, from an error `err` measured at `interval`.

    Mirrors the accountant's choice of interval (error ~ c interval^2), so a
    search on cheap coarse grids aims at the bound the final check will report."""
    c = err / interval ** 2
    start = max(START_FRACTION * eps_error, floor)
    gap = c * start ** 2
    return gap if gap <= AIM_FRACTION * eps_error else max(AIM_FRACTION * eps_error, c * floor ** 2)


def find_noise_multiplier(
    *, target_epsilon: float, delta: float, sampling_rate: float, steps: int,
    eps_error: float = 0.01, sigma_max: float = 100.0, before: tuple = (),
) -> float:
    """Smallest DP-SGD noise multiplier (5 significant digits, within 1e-3 relative of optimal) whose
    replace-one PLD upper bound over `steps` Poisson-subsampled steps is <= target_epsilon at `delta`.

    The bound is the one ``compute_epsilon(..., eps_error=eps_error)`` reports,
    so a ledger of the planned steps agrees with the plan.  ``before``: fixed
    mechanisms released as well (e.g. the DP central images); the bound is
    then that of their composition with the steps.  Raises CalibrationError
    when even sigma_max cannot meet the target."""
    target_epsilon, delta, eps_error = float(target_epsilon), float(delta), float(eps_error)
    _check_common(target_epsilon, delta, eps_error)
    if not 0 < sampling_rate <= 1:
        raise CalibrationError(f"sampling_rate must lie in (0, 1], got {sampling_rate!r}")
    if int(steps) != steps or steps < 1:
        raise CalibrationError(f"steps must be a positive integer, got {steps!r}")
    if not sigma_max > 0:
        raise ValueError(f"sigma_max must be > 0, got {sigma_max!r}")
    return _find_noise_multiplier(target_epsilon, delta, float(sampling_rate), int(steps), eps_error, float(sigma_max),
                                  tuple(before))


@functools.lru_cache(maxsize=1024)
def _find_noise_multiplier(target: float, delta: float, q: float, steps: int, eps_error: float, sigma_max: float,
                           before: tuple = ()) -> float:
    def predicted_upper(level: float):
        """The final bound as predicted from a grid `level` times coarser: estimate + the gap the final grid leaves."""
        def f(s):
            mechs = (*before, SubsampledGaussian(s, q, steps))
            up, est, err, interval = pld_upper(mechs, delta, level * eps_error, TAIL_MASS)
            if not math.isfinite(up):
                return up
            return est + _predicted_gap(err, interval, eps_error, interval_floor(mechs, TAIL_MASS))
        return f

    def upper(s):  # compute_epsilon's epsilon_upper, without its lower bound (not needed here)
        return pld_upper((*before, SubsampledGaussian(s, q, steps)), delta, eps_error, TAIL_MASS)[0]

    def unreachable(eps_at_max):
        also = " together with the central images' release (lower --warm-start-share)" if before else ""
        return CalibrationError(
            f"target epsilon {target:g} (delta={delta:g}) is unreachable for this plan (q={q:g}, {steps} steps{also}): "
            f"even noise multiplier {sigma_max:g} gives epsilon ~{eps_at_max:.4g}. Plan fewer steps (fewer rounds or "
            f"local epochs), a smaller sampling rate (smaller batches or more records), a larger epsilon or delta, "
            f"or allow a larger sigma_max"
        )

    aim = target - _margin(target)
    coarse, medium = predicted_upper(_COARSE), predicted_upper(_MEDIUM)
    x_max = math.log(sigma_max)
    x, slope = _solve_loglog(coarse, aim, x0=min(0.0, x_max), x_max=x_max, xtol=5e-3)
    if x is not None:
        x, slope = _solve_loglog(medium, aim, x0=x, x_max=x_max, xtol=5e-5, slope=slope)
    if x is None:  # quote the cheap prediction: a full check at sigma_max would only say the same, slowly
        raise unreachable(medium(sigma_max))
    return _verify(upper, target, x=x, slope=slope, sigma_max=sigma_max, unreachable=unreachable)


def _log_gaussian_delta(epsilon: float, mu: float) -> float:
    """log delta(eps) of the Gaussian mechanism with mu = sensitivity/std (Balle & Wang 2018, Thm 8), exact."""
    a = norm.logcdf(-epsilon / mu + mu / 2)
    b = epsilon + norm.logcdf(-epsilon / mu - mu / 2)
    if b >= a:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def analytic_gaussian_epsilon(*, noise_multiplier: float, delta: float, count: int = 1) -> float:
    """Exact epsilon of `count` Gaussian releases, noise_multiplier = noise std / L2 distance between the
    neighbouring outputs (they compose to one release with std / sqrt(count)).

    Adjacency-free: under replace-one a ``Gaussian(s)`` moves by 2C, i.e. this
    with noise_multiplier s / 2.  Seeds find_gaussian_noise and cross-checks the
    accountant."""
    mu = math.sqrt(count) / noise_multiplier
    log_delta = math.log(delta)
    if _log_gaussian_delta(0.0, mu) <= log_delta:
        return 0.0
    hi = 1.0
    while _log_gaussian_delta(hi, mu) > log_delta:
        hi *= 2
    return optimize.brentq(lambda e: _log_gaussian_delta(e, mu) - log_delta, 0.0, hi, xtol=1e-12, rtol=1e-12)


def find_gaussian_noise(
    *, target_epsilon: float, delta: float, count: int = 1, eps_error: float = 0.01, sigma_max: float = 1e4,
) -> float:
    """Smallest ``Gaussian.noise_multiplier`` (noise std / C, C the per-record L2 bound; a replacement
    moves the output by up to 2C) for `count` releases whose replace-one PLD upper bound is <= target.

    The exact analytic curve (at noise_multiplier / 2) gives the answer up to
    the grid's tiny gap; the PLD upper bound is then checked, so the ledger
    will agree with the plan."""
    target_epsilon, delta, eps_error = float(target_epsilon), float(delta), float(eps_error)
    _check_common(target_epsilon, delta, eps_error)
    if int(count) != count or count < 1:
        raise CalibrationError(f"count must be a positive integer, got {count!r}")
    return _find_gaussian_noise(target_epsilon, delta, int(count), eps_error, float(sigma_max))


@functools.lru_cache(maxsize=1024)
def _find_gaussian_noise(target: float, delta: float, count: int, eps_error: float, sigma_max: float) -> float:
    def exact(s):  # replace-one: the output moves by 2C, so the std per unit distance is s / 2
        return analytic_gaussian_epsilon(noise_multiplier=s / 2, delta=delta, count=count)

    def upper(s):  # compute_epsilon's epsilon_upper, without its lower bound (not needed here)
        return pld_upper((Gaussian(s, count),), delta, eps_error, TAIL_MASS)[0]

    def unreachable(eps_at_max):
        return CalibrationError(
            f"target epsilon {target:g} (delta={delta:g}) is unreachable with {count} Gaussian release(s) and "
            f"noise up to {sigma_max:g} x C (epsilon {eps_at_max:.4g}); allow more noise or fewer releases"
        )

    aim = target - _margin(target)
    x_max = math.log(sigma_max)
    x, slope = _solve_loglog(exact, aim, x0=0.0, x_max=x_max, xtol=1e-7, slope=-1.0)
    if x is None:
        raise unreachable(upper(sigma_max))
    return _verify(upper, target, x=x, slope=slope, sigma_max=sigma_max, unreachable=unreachable)


def plan_steps(*, n: int, batch_size: int, local_epochs: int, rounds_participating: int) -> tuple[float, int]:
    """(sampling rate q = B/n, number of DP-SGD steps) for a client's whole planned participation.

    An "epoch" under Poisson sampling is ceil(n/B) steps of expected size B."""
    for name, value, low in (("n", n, 1), ("batch_size", batch_size, 1), ("local_epochs", local_epochs, 1),
                             ("rounds_participating", rounds_participating, 0)):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the client's {n} records; use batch_size <= n")
    steps = int(rounds_participating) * int(local_epochs) * math.ceil(n / batch_size)
    return batch_size / n, steps
