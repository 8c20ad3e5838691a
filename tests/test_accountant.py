"""Accountant and calibration: the numbers every privacy claim rests on.

Reference values come from DESIGN.md section 4 (measured on these machines);
"direct" means prv-accountant's own API, called the way its README shows."""

import json
import math
import re
import warnings

import pytest
from prv_accountant import GaussianMechanism, PoissonSubsampledGaussianMechanism, PRVAccountant

import synthfed.privacy.accountant as accountant_module
from synthfed.privacy.accountant import (
    Gaussian, RandomizedResponse, SubsampledGaussian, _RandomizedResponsePRV, compute_epsilon, mechanism_from_dict,
    mechanism_to_dict, merge_mechanisms, rdp_epsilon,
)
from synthfed.privacy.calibration import (
    CalibrationError, analytic_gaussian_epsilon, default_delta, find_gaussian_noise, find_noise_multiplier,
    plan_steps, validate_privacy_target,
)

DELTA = 1e-5


def direct_prv(prv, steps, *, delta=DELTA, eps_error=0.01):
    """prv-accountant called directly, automatic domain, delta_error = delta/1000."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = PRVAccountant(prvs=[prv], max_self_compositions=[steps], eps_error=eps_error, delta_error=delta / 1000)
        return acc.compute_epsilon(delta=delta, num_self_compositions=[steps])


def test_reference_setting_matches_design_and_direct_prv():
    # Prepare: DESIGN.md section 4: sigma=1, q=0.01, 10,000 steps, delta=1e-5 -> 6.188 (6.177-6.198)
    mech = SubsampledGaussian(noise_multiplier=1.0, sampling_rate=0.01, steps=10_000)

    # Execute
    report = compute_epsilon([mech], delta=DELTA)
    lo, est, up = direct_prv(PoissonSubsampledGaussianMechanism(noise_multiplier=1.0, sampling_probability=0.01), 10_000)
    halves = compute_epsilon([SubsampledGaussian(1.0, 0.01, 5_000)] * 2, delta=DELTA)

    # Assert
    assert report.epsilon_estimate == pytest.approx(6.188, abs=1e-3)
    assert report.epsilon_lower == pytest.approx(6.177, abs=1e-3)
    assert report.epsilon_upper == pytest.approx(6.198, abs=1e-3)
    assert (report.epsilon_lower, report.epsilon_estimate, report.epsilon_upper) == pytest.approx((lo, est, up), rel=1e-12)
    assert halves == report  # merged into one self-composition
    assert "prv-accountant" in report.accountant and "eps_error=0.01" in report.accountant
    assert rdp_epsilon([mech], delta=DELTA) == pytest.approx(6.713, abs=2e-3)  # Opacus RDP, DESIGN.md


@pytest.mark.parametrize(
    "mechanisms",
    [
        [SubsampledGaussian(1.0, 0.01, 1000)],
        [SubsampledGaussian(2.0, 0.05, 500)],
        [SubsampledGaussian(0.8, 0.1, 100)],
        [Gaussian(2.0, count=3)],
        [SubsampledGaussian(1.2, 0.02, 400), Gaussian(5.0)],
    ],
)
def test_rdp_is_an_upper_bound_above_prv(mechanisms):
    # Prepare / Execute
    prv = compute_epsilon(mechanisms, delta=DELTA)
    rdp = rdp_epsilon(mechanisms, delta=DELTA)

    # Assert: both are valid bounds; PRV is the tighter one
    assert rdp >= prv.epsilon_upper
    assert prv.epsilon_lower <= prv.epsilon_estimate <= prv.epsilon_upper


def test_rdp_epsilon_refuses_randomized_response():
    with pytest.raises(ValueError, match="randomized response"):
        rdp_epsilon([RandomizedResponse(1.0)], delta=DELTA)


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


def test_randomized_response_single_release_is_its_epsilon():
    # Prepare / Execute: one eps-DP release is (eps, ~0)-DP and no better
    report = compute_epsilon([RandomizedResponse(1.0)], delta=DELTA)

    # Assert
    assert report.epsilon_estimate == pytest.approx(1.0, abs=1e-3)
    assert report.epsilon_upper >= 1.0 - 1e-3


def test_randomized_response_rdp_is_exact_not_the_library_underestimate():
    # Prepare: binary RR at eps=1, alpha=2: log((p^3 + q^3) / (p q)) with p = e/(1+e)
    p = math.e / (1 + math.e)
    q = 1 - p
    exact = math.log((p**3 + q**3) / (p * q))

    # Execute
    value = _RandomizedResponsePRV(eps=1.0).rdp(2.0)

    # Assert: prv-accountant's PureDPMechanism says 0.5, which is below the truth
    assert value == pytest.approx(exact, rel=1e-9)
    assert value > 0.5


def test_empty_zero_and_noiseless_compositions():
    # Prepare / Execute
    empty = compute_epsilon([], delta=DELTA)
    zero = compute_epsilon([SubsampledGaussian(1.0, 0.01, 0), Gaussian(1.0, count=0)], delta=DELTA)
    noiseless = compute_epsilon([SubsampledGaussian(0.0, 0.01, 10)], delta=DELTA)

    # Assert
    assert (empty.epsilon_lower, empty.epsilon_estimate, empty.epsilon_upper) == (0.0, 0.0, 0.0)
    assert zero.epsilon_upper == 0.0
    assert math.isinf(noiseless.epsilon_upper)


def test_large_epsilon_widens_eps_error_instead_of_failing(monkeypatch):
    # Prepare: force the grid cap so the test is fast; the bound must stay above the truth
    mech = SubsampledGaussian(0.5, 0.02, 300)
    truth = compute_epsilon([mech], delta=DELTA, eps_error=0.1)
    monkeypatch.setattr(accountant_module, "MAX_DOMAIN_POINTS", 20_000)

    # Execute
    capped = compute_epsilon([mech], delta=DELTA, eps_error=0.1)

    # Assert
    used = float(re.search(r"eps_error=([0-9.e+-]+),", capped.accountant).group(1))
    assert used > 0.1  # a wider eps_error was used, and the report says so
    assert capped.epsilon_upper >= truth.epsilon_estimate
    assert capped.epsilon_lower <= truth.epsilon_estimate


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


def test_results_are_cached():
    # Prepare
    mech = [SubsampledGaussian(1.3, 0.03, 123)]
    compute_epsilon(mech, delta=DELTA)
    hits = accountant_module._prv_epsilon.cache_info().hits

    # Execute
    compute_epsilon(mech, delta=DELTA)

    # Assert
    assert accountant_module._prv_epsilon.cache_info().hits == hits + 1


@pytest.mark.parametrize("target, q, steps", [(3.0, 0.01, 1000), (1.0, 0.02, 500), (8.0, 0.05, 200)])
def test_calibrated_sigma_meets_target_on_prv_directly(target, q, steps):
    # Prepare / Execute
    sigma = find_noise_multiplier(target_epsilon=target, delta=DELTA, sampling_rate=q, steps=steps)
    _, _, up = direct_prv(PoissonSubsampledGaussianMechanism(noise_multiplier=sigma, sampling_probability=q), steps)
    _, _, up_less = direct_prv(PoissonSubsampledGaussianMechanism(noise_multiplier=0.98 * sigma, sampling_probability=q), steps)

    # Assert: within eps_error below the target, and 2% less noise breaks it
    assert target - 0.01 <= up <= target
    assert up_less > target


def test_unreachable_target_raises_with_advice():
    with pytest.raises(CalibrationError, match="unreachable.*fewer steps"):
        find_noise_multiplier(target_epsilon=0.5, delta=DELTA, sampling_rate=0.5, steps=1000, sigma_max=5.0)
    with pytest.raises(CalibrationError, match="resolution"):
        find_noise_multiplier(target_epsilon=0.01, delta=DELTA, sampling_rate=0.01, steps=100)


def test_gaussian_noise_against_prv_gaussian_mechanism():
    # Prepare / Execute
    sigma = find_gaussian_noise(target_epsilon=2.0, delta=DELTA, count=3)
    _, est, up = direct_prv(GaussianMechanism(noise_multiplier=sigma), 3)
    _, _, up_less = direct_prv(GaussianMechanism(noise_multiplier=0.98 * sigma), 3)

    # Assert: PRV agrees with the exact (Balle & Wang) curve, and the bound meets the target tightly
    assert analytic_gaussian_epsilon(noise_multiplier=sigma, delta=DELTA, count=3) == pytest.approx(est, abs=1e-3)
    assert 2.0 - 0.01 <= up <= 2.0
    assert up_less > 2.0


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


def test_where_prv_accountant_fails_opacus_prv_gives_a_tight_bound():
    # Prepare: few steps, low noise, high q: prv-accountant 0.2's discretisation
    # check raises here at every eps_error, which used to force a loose bound.
    from opacus.accountants import PRVAccountant as OpacusPRV

    from synthfed.privacy.accountant import SubsampledGaussian, compute_epsilon, rdp_epsilon

    mech = SubsampledGaussian(noise_multiplier=0.63, sampling_rate=64 / 492, steps=16)
    delta = 1 / 4920
    # Execute
    report = compute_epsilon([mech], delta=delta)
    # Assert: the upper bound is Opacus's PRV bound, within eps_error of the estimate,
    # and below the (looser, always valid) RDP bound
    reference = OpacusPRV()
    reference.history = [(0.63, 64 / 492, 16)]
    assert report.accountant.startswith("Opacus")
    assert report.epsilon_upper == pytest.approx(reference.get_epsilon(delta=delta, eps_error=0.01), rel=1e-9)
    assert report.epsilon_upper - report.epsilon_lower <= 3 * 0.01
    assert report.epsilon_upper < rdp_epsilon([mech], delta=delta)
