"""Seconds per find_noise_multiplier call (first and cached) for a few DP-SGD plans, replace-one.

Run:  .venv/bin/python benchmarks/calibration.py [--compare]

Each first call searches on coarse PLDs and ends with full evaluations at
eps_error=0.01 (the check that makes the answer a guarantee).  Printed per
plan: the calibrated sigma, the replace-one upper bound the ledger will report
for it, the accountant's estimate, seconds for the first and the cached call,
and seconds for one uncached compute_epsilon at that sigma.  --compare also
prints the PRV accountant's (Opacus) add/remove epsilon at the same sigma: the figure the
product reported before it moved to replace-one (lower, i.e. under-reported)."""

from __future__ import annotations

import argparse
import time
import warnings

from synthfed.privacy import accountant
from synthfed.privacy.accountant import SubsampledGaussian, compute_epsilon
from synthfed.privacy.calibration import find_noise_multiplier

DELTA = 1e-5
PLANS = [  # (target epsilon, q, steps)
    (8.0, 0.01, 100),
    (8.0, 0.064, 480),  # n=1000, B=64, 3 local epochs, 10 rounds
    (1.0, 0.01, 1000),
    (8.0, 0.01, 1000),
    (3.0, 0.004, 5000),
    (8.0, 0.01, 10_000),
    (1.0, 0.01, 10_000),
]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def add_remove_epsilon(sigma: float, q: float, steps: int) -> float:
    """Opacus's PRV accountant (add/remove), which survives plans where prv-accountant's domain explodes."""
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acc.get_epsilon(delta=DELTA, eps_error=0.01)


def one_evaluation(sigma: float, q: float, steps: int) -> float:
    """Seconds for one uncached compute_epsilon (the caches would answer at once otherwise)."""
    for cached in (accountant._account, accountant._pld_upper, accountant._upper, accountant._extent):
        cached.cache_clear()
    return timed(compute_epsilon, [SubsampledGaussian(sigma, q, steps)], delta=DELTA)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="also print the add/remove epsilon (Opacus PRV)")
    args = parser.parse_args()
    header = f"{'eps':>5} {'q':>6} {'steps':>6} {'sigma':>8} {'eps_upper':>9} {'estimate':>9} {'first s':>8} " \
             f"{'cached s':>9} {'1 eval s':>8}"
    print(header + (f" {'add/remove':>10}" if args.compare else ""))
    for eps, q, steps in PLANS:
        kw = dict(target_epsilon=eps, delta=DELTA, sampling_rate=q, steps=steps)
        sigma, first = timed(find_noise_multiplier, **kw)
        _, cached = timed(find_noise_multiplier, **kw)
        report = compute_epsilon([SubsampledGaussian(sigma, q, steps)], delta=DELTA)  # cached by the search
        line = (f"{eps:5g} {q:6g} {steps:6d} {sigma:8.5f} {report.epsilon_upper:9.4f} {report.epsilon_estimate:9.4f} "
                f"{first:8.2f} {cached:9.6f} {one_evaluation(sigma, q, steps):8.2f}")
        print(line + (f" {add_remove_epsilon(sigma, q, steps):10.4f}" if args.compare else ""))
    print(f"accountant: {report.accountant}")


if __name__ == "__main__":
    main()
