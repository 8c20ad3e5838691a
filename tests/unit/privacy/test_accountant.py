"""Accountant and calibration: the numbers every privacy claim rests on.

Correctness by reference: each figure is checked against a computation that
does not go through dp-accounting: the exact Gaussian curve (Balle & Wang),
numerical integration of the hockey-stick divergence of the replace-one
dominating pair, a Monte Carlo of the summed privacy loss, the exact binomial
curve of randomized response, and prv-accountant's add/remove figure (which a
replace-one figure must never undercut)."""

import json
import math
import re
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant
from scipy import integrate, optimize, special, stats

import synthfed.privacy.accountant as accountant_module
from synthfed.privacy.accountant import (
    ADJACENCY, UNIT_OF_PRIVACY, Gaussian, RandomizedResponse, SubsampledGaussian, compute_epsilon,
    mechanism_from_dict, mechanism_to_dict, merge_mechanisms,
)
from synthfed.privacy.calibration import (
    CalibrationError, analytic_gaussian_epsilon, default_delta, find_gaussian_noise, find_noise_multiplier,
    plan_steps, validate_privacy_target,
)

DELTA = 1e-5


def prv_add_remove(sigma, q, steps, *, delta=DELTA):
    """The PRV accountant under add/remove, (lower, estimate, upper): prv-accountant called directly, or
    Opacus's port of it where prv-accountant 0.2's discretisation check fails (few steps, low noise, high q)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            acc = PRVAccountant(prvs=[PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q)],
                                max_self_compositions=[steps], eps_error=0.01, delta_error=delta / 1000)
            return acc.compute_epsilon(delta=delta, num_self_compositions=[steps])
        except RuntimeError:
            from opacus.accountants import PRVAccountant as OpacusPRV

            opacus = OpacusPRV()
            opacus.history = [(sigma, q, steps)]
            dprv = opacus._get_dprv(eps_error=0.01, delta_error=delta / 1000)
            return dprv.compute_epsilon(delta, delta / 1000, 0.01)


# -- the replace-one dominating pair, written out independently of dp-accounting

def pair_densities(q, sigma):
    """mu_upper(x) = (1-q) phi(x) + q phi(x+1), mu_lower(x) = (1-q) phi(x) + q phi(x-1), phi = N(0, sigma^2)."""
    c = 1 / (sigma * math.sqrt(2 * math.pi))

    def phi(x):
        return c * math.exp(-x * x / (2 * sigma * sigma))

    def upper(x):
        return (1 - q) * phi(x) + q * phi(x + 1)

    def lower(x):
        return (1 - q) * phi(x) + q * phi(x - 1)
    return upper, lower


def hockey_stick(p, q_, eps, lo, hi):
    """integral of max(p - e^eps q, 0) over [lo, hi] by quad, split where the integrand changes sign."""
    t = math.exp(eps)

    def g(x):
        return p(x) - t * q_(x)
    grid = np.linspace(lo, hi, 2001)
    sign = np.sign([g(x) for x in grid])
    cuts = [optimize.brentq(g, grid[i], grid[i + 1], xtol=1e-13) for i in np.nonzero(np.diff(sign))[0]]
    edges = [lo, *cuts, hi]
    return sum(integrate.quad(lambda x: max(g(x), 0.0), a, b, limit=200, epsabs=1e-15, epsrel=1e-10)[0]
               for a, b in zip(edges, edges[1:]))


def one_step_delta(q, sigma, eps):
    """delta(eps) of one Poisson-subsampled Gaussian step under replace-one: both directions, the max."""
    upper, lower = pair_densities(q, sigma)
    lo, hi = -1 - 12 * sigma, 1 + 12 * sigma  # the mass outside is < 1e-32
    return max(hockey_stick(upper, lower, eps, lo, hi), hockey_stick(lower, upper, eps, lo, hi))


def step_loss(x, q, sigma):
    """Privacy loss ln(mu_upper(x) / mu_lower(x)) of one subsampled step, computed in log space."""
    a = np.logaddexp(math.log1p(-q) - x**2 / (2 * sigma**2), math.log(q) - (x + 1) ** 2 / (2 * sigma**2))
    b = np.logaddexp(math.log1p(-q) - x**2 / (2 * sigma**2), math.log(q) - (x - 1) ** 2 / (2 * sigma**2))
    return a - b


def monte_carlo_losses(rng, n, *, q, sigma, steps, gaussian_sigma=None, rr_epsilon=None, chunk=100_000):
    """n samples of the summed privacy loss under mu_upper (DP-SGD steps, optional Gaussian and RR releases)."""
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        total = np.zeros(m)
        for _ in range(steps):
            x = rng.normal(0.0, sigma, m) - (rng.random(m) < q)
            total += step_loss(x, q, sigma)
        if gaussian_sigma is not None:  # N(-1, s^2) against N(+1, s^2): loss -2x / s^2
            x = rng.normal(-1.0, gaussian_sigma, m)
            total += -2 * x / gaussian_sigma**2
        if rr_epsilon is not None:  # binary randomized response: +eps with probability e^eps / (1 + e^eps)
            total += np.where(rng.random(m) < special.expit(rr_epsilon), rr_epsilon, -rr_epsilon)
        out.append(total)
    return np.concatenate(out)


def mc_delta(losses, eps):
    """delta(eps) = E_P[(1 - e^(eps - L))_+] and its standard error."""
    terms = np.clip(-np.expm1(eps - losses), 0.0, None)
    return terms.mean(), terms.std() / math.sqrt(len(terms))


# -- tests

def test_reference_setting_replace_one_and_add_remove():
    # Prepare: sigma=1, q=0.01, 10,000 steps, delta=1e-5 (DESIGN.md section 4 plan)
    mech = SubsampledGaussian(noise_multiplier=1.0, sampling_rate=0.01, steps=10_000)

    # Execute
    start = time.perf_counter()
    report = compute_epsilon([mech], delta=DELTA)
    seconds = time.perf_counter() - start
    fine = compute_epsilon([mech], delta=DELTA, eps_error=0.001)
    halves = compute_epsilon([SubsampledGaussian(1.0, 0.01, 5_000)] * 2, delta=DELTA)
    _, _, add_remove = prv_add_remove(1.0, 0.01, 10_000)

    # Assert: ~10.88 under replace-one against 6.19 under add/remove
    assert report.epsilon_estimate == pytest.approx(10.881, abs=2e-3)
    assert fine.epsilon_estimate <= report.epsilon_upper <= fine.epsilon_estimate + 0.01
    assert fine.epsilon_upper <= report.epsilon_upper  # a finer grid is tighter, never looser
    assert report.epsilon_lower <= report.epsilon_estimate <= report.epsilon_upper
    assert add_remove == pytest.approx(6.198, abs=2e-3)
    assert add_remove < report.epsilon_estimate - 4
    assert halves == report  # merged into one self-composition
    assert re.fullmatch(r"dp-accounting [0-9.]+ PLD, replace-one \(discretization [0-9.e-]+\)", report.accountant)
    assert seconds < 3.0  # ~0.3 s alone; generous for 2 shared cores
    assert ADJACENCY == "replace-one" and "replace-one" in UNIT_OF_PRIVACY


@pytest.mark.parametrize("sigma, count, delta", [(2.0, 1, 1e-5), (2.0, 3, 1e-5), (0.8, 1, 1e-6), (10.0, 4, 1e-3)])
def test_unsubsampled_gaussian_is_the_exact_gaussian_with_twice_the_sensitivity(sigma, count, delta):
    # Prepare: replace-one moves the output by 2C, so std/C = sigma is std/distance = sigma/2
    exact = analytic_gaussian_epsilon(noise_multiplier=sigma / 2, delta=delta, count=count)

    # Execute
    report = compute_epsilon([Gaussian(sigma, count=count)], delta=delta)
    full_batch = compute_epsilon([SubsampledGaussian(sigma, 1.0, count)], delta=delta)

    # Assert
    assert report.epsilon_lower <= exact <= report.epsilon_upper
    assert report.epsilon_upper - exact <= 0.01
    assert report.epsilon_estimate == pytest.approx(exact, abs=2e-3)
    assert full_batch.epsilon_upper == pytest.approx(report.epsilon_upper, abs=1e-9)  # q = 1 is the same mechanism


@pytest.mark.parametrize("sigma, q, delta", [(1.0, 0.1, 1e-5), (0.7, 0.05, 1e-5), (2.0, 0.5, 1e-4)])
def test_one_subsampled_step_against_numerical_hockey_stick(sigma, q, delta):
    # Prepare / Execute
    report = compute_epsilon([SubsampledGaussian(sigma, q, 1)], delta=delta)
    lo, hi = report.epsilon_upper - 0.05, report.epsilon_upper + 0.05
    numeric = optimize.brentq(lambda e: one_step_delta(q, sigma, e) - delta, lo, hi, xtol=1e-7)

    # Assert: the upper bound's delta is within tolerance of the target, and it is close to the numeric epsilon
    assert one_step_delta(q, sigma, report.epsilon_upper) <= delta * (1 + 1e-6)
    assert report.epsilon_lower <= numeric + 1e-6
    assert numeric - 1e-6 <= report.epsilon_upper <= numeric + 0.01
    assert report.epsilon_estimate == pytest.approx(numeric, abs=2e-3)


def test_subsampled_pair_is_symmetric_so_one_direction_suffices():
    # Prepare: swapping the pair is the reflection x -> -x
    upper, lower = pair_densities(0.1, 1.0)

    # Execute
    forward = hockey_stick(upper, lower, 1.0, -41, 41)
    backward = hockey_stick(lower, upper, 1.0, -41, 41)

    # Assert
    assert forward == pytest.approx(backward, rel=1e-8)
    assert forward > 1e-4  # not a vacuous comparison of two zeros


@pytest.mark.parametrize(
    "mechanisms, extra, delta",
    [
        ([SubsampledGaussian(1.0, 0.1, 30)], {}, 1e-3),
        ([SubsampledGaussian(1.0, 0.1, 20), Gaussian(6.0), RandomizedResponse(0.3)],
         {"gaussian_sigma": 6.0, "rr_epsilon": 0.3}, 1e-3),
    ],
)
def test_composition_against_monte_carlo(mechanisms, extra, delta):
    # Prepare
    report = compute_epsilon(mechanisms, delta=delta)
    steps = mechanisms[0].steps

    # Execute: 10^6 seeded samples of the summed privacy loss under the upper distribution
    losses = monte_carlo_losses(np.random.default_rng(20240601), 1_000_000, q=0.1, sigma=1.0, steps=steps, **extra)
    at_upper, se = mc_delta(losses, report.epsilon_upper)
    below, se_below = mc_delta(losses, report.epsilon_upper - 0.05)

    at_lower, se_lower = mc_delta(losses, report.epsilon_lower)

    # Assert: valid (delta(upper) <= target within MC error) and tight (not far below it); the lower bound too
    assert at_upper <= delta + 4 * se
    assert at_lower >= delta - 4 * se_lower
    assert at_upper >= 0.95 * delta - 4 * se
    assert below > delta + 2 * se_below  # 0.05 less epsilon no longer holds
    assert se < 0.05 * delta  # the Monte Carlo resolves delta


@pytest.mark.parametrize(
    "sigma, q, steps, delta",
    [(1.0, 0.01, 1000, 1e-5), (0.8, 0.064, 480, 1e-4), (2.0, 0.05, 500, 1e-5), (0.63, 64 / 492, 16, 1 / 4920),
     (5.0, 0.2, 100, 1e-6)],
)
def test_replace_one_never_under_reports_add_remove(sigma, q, steps, delta):
    # Prepare / Execute
    replace_one = compute_epsilon([SubsampledGaussian(sigma, q, steps)], delta=delta)
    _, _, add_remove_upper = prv_add_remove(sigma, q, steps, delta=delta)

    # Assert: the replace-one estimate is above even the add/remove upper bound
    assert replace_one.epsilon_estimate > add_remove_upper


def exact_rr_delta(eps, k, eps_rr):
    """delta(eps) of k binary randomized responses: sum over j kept of Bin(k, p)(j) (1 - e^(eps - (2j-k) eps_rr))_+."""
    j = np.arange(k + 1)
    mass = stats.binom.pmf(j, k, special.expit(eps_rr))
    return float(np.sum(mass * np.clip(-np.expm1(eps - (2 * j - k) * eps_rr), 0, None)))


def test_randomized_response_single_release_is_its_epsilon_and_the_library_pair_agrees():
    # Prepare: dp-accounting's randomized response with 2 buckets and noise 2/(1+e^eps)
    from dp_accounting.pld import privacy_loss_distribution as pld_lib

    eps = 1.0
    library = pld_lib.from_randomized_response(noise_parameter=2 / (1 + math.e), num_buckets=2,
                                               value_discretization_interval=1e-4)

    # Execute
    report = compute_epsilon([RandomizedResponse(eps)], delta=1e-9)
    curve = [library.get_delta_for_epsilon(e) for e in (0.0, 0.5, 0.9)]

    # Assert: privacy loss +-eps (the library's pair is binary RR), and one release is (eps, ~0)-DP
    assert curve == pytest.approx([exact_rr_delta(e, 1, eps) for e in (0.0, 0.5, 0.9)], abs=1e-4)
    assert library.get_delta_for_epsilon(1.0 + 1e-3) == pytest.approx(0.0, abs=1e-12)
    assert report.epsilon_upper == pytest.approx(eps, abs=1e-3)
    assert report.epsilon_upper >= eps - 1e-8


@pytest.mark.parametrize("count, eps_rr, delta", [(5, 1.0, 1e-5), (50, 0.1, 1e-5), (200, 0.05, 1e-6)])
def test_randomized_response_composition_against_the_binomial_curve(count, eps_rr, delta):
    # Prepare
    exact = optimize.brentq(lambda e: exact_rr_delta(e, count, eps_rr) - delta, 0.0, count * eps_rr + 1, xtol=1e-10)

    # Execute
    report = compute_epsilon([RandomizedResponse(eps_rr, count=count)], delta=delta)

    # Assert: no worse than basic composition, and the exact curve within the grid's error
    assert report.epsilon_upper <= count * eps_rr + 1e-9
    assert report.epsilon_lower <= exact + 1e-9 and exact <= report.epsilon_upper + 1e-9
    assert report.epsilon_upper - exact <= 0.01
    if count >= 50:
        assert report.epsilon_upper < 0.6 * count * eps_rr  # composition theorems, not k x eps


def test_heterogeneous_composition_between_parts_and_their_sum():
    # Prepare
    parts = [SubsampledGaussian(1.0, 0.01, 1000), Gaussian(3.0), RandomizedResponse(0.5, count=2)]

    # Execute
    whole = compute_epsilon(parts, delta=DELTA)
    alone = [compute_epsilon([p], delta=DELTA) for p in parts]
    # basic composition: (sum eps_i, sum delta_i)-DP, so splitting delta in three bounds the whole
    split = [compute_epsilon([p], delta=DELTA / 3) for p in parts]

    # Assert
    for part in alone:
        assert whole.epsilon_estimate >= part.epsilon_estimate
        assert whole.epsilon_upper >= part.epsilon_upper
    assert whole.epsilon_upper <= sum(r.epsilon_upper for r in split)


def test_empty_zero_and_noiseless_compositions():
    # Prepare / Execute
    empty = compute_epsilon([], delta=DELTA)
    zero = compute_epsilon([SubsampledGaussian(1.0, 0.01, 0), Gaussian(1.0, count=0)], delta=DELTA)
    noiseless = compute_epsilon([SubsampledGaussian(0.0, 0.01, 10)], delta=DELTA)

    # Assert
    assert (empty.epsilon_lower, empty.epsilon_estimate, empty.epsilon_upper) == (0.0, 0.0, 0.0)
    assert zero.epsilon_upper == 0.0
    assert math.isinf(noiseless.epsilon_upper)


def test_large_epsilon_is_fast_small_and_still_an_upper_bound():
    # Prepare: epsilon in the thousands (sigma 0.3 at q 0.5 for 1000 steps)
    mech = [SubsampledGaussian(0.3, 0.5, 1000)]

    # Execute
    tracemalloc.start()
    start = time.perf_counter()
    report = compute_epsilon(mech, delta=DELTA)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    # Assert
    assert 1000 < report.epsilon_upper < math.inf
    assert report.epsilon_lower <= report.epsilon_estimate <= report.epsilon_upper
    assert seconds < 20 and peak < 1 << 30


def test_grid_cap_widens_the_interval_and_the_bound_stays_above_the_truth(monkeypatch):
    # Prepare: force a tiny grid cap; the loose bound must stay above the fine figure
    mech = [SubsampledGaussian(0.5, 0.02, 300)]
    fine = compute_epsilon(mech, delta=DELTA)
    monkeypatch.setattr(accountant_module, "MAX_POINTS", 2_000)
    accountant_module._extent.cache_clear()

    # Execute
    capped = compute_epsilon(mech, delta=DELTA, eps_error=0.0101)  # another cache key

    # Assert: a wider interval was used, and the report says so
    used = float(re.search(r"discretization ([0-9.e-]+)\)", capped.accountant).group(1))
    assert used > 0.0101 * 0.25 * 2
    assert capped.epsilon_upper >= fine.epsilon_estimate
    assert capped.epsilon_upper > fine.epsilon_upper  # looser, as expected at a coarser grid
    accountant_module._extent.cache_clear()


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 0.01, 10_000), (1.0, 0.001, 100_000), (0.8, 0.05, 3000)])
def test_lower_bound_is_below_the_fine_figure_and_useful_for_long_runs(sigma, q, steps):
    # Prepare: privacy buckets alone would sit ~steps x interval / 2 below (3.7 instead of 10.88)
    mech = [SubsampledGaussian(sigma, q, steps)]

    # Execute
    report = compute_epsilon(mech, delta=DELTA)
    fine = compute_epsilon(mech, delta=DELTA, eps_error=0.001)

    # Assert
    assert report.epsilon_lower <= fine.epsilon_estimate  # fine.estimate is within ~1e-4 of the truth
    assert report.epsilon_lower >= 0.9 * fine.epsilon_estimate


def test_eps_error_controls_the_gap_even_for_tiny_per_step_losses():
    # Prepare: q = 0.001 over 10^5 steps, where the error is far from its asymptotic regime
    mech = [SubsampledGaussian(1.0, 0.001, 100_000)]

    # Execute
    default = compute_epsilon(mech, delta=DELTA)
    reference = compute_epsilon(mech, delta=DELTA, eps_error=0.001)

    # Assert
    assert reference.epsilon_estimate <= default.epsilon_upper <= reference.epsilon_estimate + 0.01
    assert reference.epsilon_upper <= default.epsilon_upper


def test_delta_error_is_charged_to_delta():
    # Prepare
    mech = [SubsampledGaussian(1.0, 0.05, 200)]

    # Execute
    default = compute_epsilon(mech, delta=DELTA)
    truncated = compute_epsilon(mech, delta=DELTA, delta_error=DELTA / 10)

    # Assert: cutting more tail mass can only raise the bound
    assert truncated.epsilon_upper >= default.epsilon_upper - 1e-9
    with pytest.raises(ValueError, match="delta_error"):
        compute_epsilon(mech, delta=DELTA, delta_error=DELTA)


def test_mechanism_dict_round_trip_and_merge():
    # Prepare
    mechs = [SubsampledGaussian(1.1, 0.02, 50), Gaussian(2.5, count=2), RandomizedResponse(0.7, count=3)]

    # Execute
    back = [mechanism_from_dict(json.loads(json.dumps(mechanism_to_dict(m)))) for m in mechs]
    merged = merge_mechanisms(mechs + [SubsampledGaussian(1.1, 0.02, 25), SubsampledGaussian(1.1, 0.03, 0)])

    # Assert
    assert back == mechs
    assert mechanism_to_dict(mechs[0])["kind"] == "subsampled_gaussian"
    assert SubsampledGaussian(1.1, 0.02, 75) in merged and len(merged) == 3
    with pytest.raises(ValueError):
        mechanism_from_dict({"kind": "laplace", "scale": 1.0})
    with pytest.raises(ValueError):
        SubsampledGaussian(1.0, 1.5, 10)
    with pytest.raises(ValueError):
        Gaussian(1.0, count=-1)


def test_results_are_cached_per_merged_composition():
    # Prepare
    mech = [SubsampledGaussian(1.3, 0.03, 123), Gaussian(4.0)]
    first = compute_epsilon(mech, delta=DELTA)
    hits = accountant_module._account.cache_info().hits

    # Execute: the same multiset in another order and split differently
    again = compute_epsilon([Gaussian(4.0), SubsampledGaussian(1.3, 0.03, 100), SubsampledGaussian(1.3, 0.03, 23)],
                            delta=DELTA)

    # Assert
    assert accountant_module._account.cache_info().hits == hits + 1
    assert again is first


@pytest.mark.parametrize("target, q, steps", [(3.0, 0.01, 1000), (1.0, 0.02, 500), (8.0, 0.05, 200)])
def test_calibrated_sigma_is_the_smallest_admissible_one(target, q, steps):
    # Prepare / Execute
    sigma = find_noise_multiplier(target_epsilon=target, delta=DELTA, sampling_rate=q, steps=steps)
    at = compute_epsilon([SubsampledGaussian(sigma, q, steps)], delta=DELTA)
    less = compute_epsilon([SubsampledGaussian(sigma * (1 - 1e-3), q, steps)], delta=DELTA)

    # Assert: the ledger will agree with the plan; 0.1% less noise breaks it
    assert target - 0.01 <= at.epsilon_upper <= target
    assert less.epsilon_upper > target
    assert prv_add_remove(sigma, q, steps)[2] < target  # the add/remove figure is (much) lower


def test_calibration_is_fast_for_ten_thousand_steps():
    # Prepare / Execute
    start = time.perf_counter()
    sigma = find_noise_multiplier(target_epsilon=8.0, delta=DELTA, sampling_rate=0.01, steps=10_000)
    seconds = time.perf_counter() - start

    # Assert
    assert compute_epsilon([SubsampledGaussian(sigma, 0.01, 10_000)], delta=DELTA).epsilon_upper <= 8.0
    assert seconds < 10  # ~0.6 s alone


def test_unreachable_target_raises_with_advice():
    with pytest.raises(CalibrationError, match="unreachable.*fewer steps"):
        find_noise_multiplier(target_epsilon=0.5, delta=DELTA, sampling_rate=0.5, steps=1000, sigma_max=5.0)
    with pytest.raises(CalibrationError, match="resolution"):
        find_noise_multiplier(target_epsilon=0.01, delta=DELTA, sampling_rate=0.01, steps=100)


def test_gaussian_noise_against_the_exact_curve():
    # Prepare / Execute
    sigma = find_gaussian_noise(target_epsilon=2.0, delta=DELTA, count=3)
    report = compute_epsilon([Gaussian(sigma, count=3)], delta=DELTA)
    less = compute_epsilon([Gaussian(sigma * (1 - 1e-3), count=3)], delta=DELTA)
    exact = analytic_gaussian_epsilon(noise_multiplier=sigma / 2, delta=DELTA, count=3)

    # Assert: the PLD bound sits just above the exact (Balle & Wang) curve, and meets the target tightly
    assert exact <= report.epsilon_upper <= exact + 0.01
    assert 2.0 - 0.01 <= report.epsilon_upper <= 2.0
    assert less.epsilon_upper > 2.0


@pytest.mark.parametrize(
    "epsilon, delta, n",
    [(0.0, 1e-5, 1000), (-1.0, 1e-5, 1000), (math.inf, 1e-5, 1000), (math.nan, 1e-5, 1000),
     (1.0, 0.0, 1000), (1.0, 1e-3, 1000), (1.0, 0.5, 1000)],
)
def test_validation_rejects_bad_targets(epsilon, delta, n):
    with pytest.raises(CalibrationError):
        validate_privacy_target(epsilon=epsilon, delta=delta, n=n)


def test_validation_accepts_sensible_target_and_default_delta():
    # Prepare / Execute
    delta = default_delta(1000)

    # Assert
    assert delta == pytest.approx(1e-4)
    validate_privacy_target(epsilon=8.0, delta=delta, n=1000)


def test_plan_steps():
    # Prepare / Execute
    q, steps = plan_steps(n=1000, batch_size=64, local_epochs=3, rounds_participating=10)

    # Assert
    assert q == pytest.approx(0.064)
    assert steps == 10 * 3 * 16
    with pytest.raises(ValueError, match="exceeds"):
        plan_steps(n=10, batch_size=64, local_epochs=1, rounds_participating=1)
