"""Seconds per find_noise_multiplier call (first and cached) for a few DP-SGD plans.

Run:  .venv/bin/python benchmarks/calibration.py [--compare]

Each first call ends with one full prv-accountant evaluation at eps_error=0.01
(the check that makes the answer a guarantee); the rest is the coarse search.
--compare also times prv-accountant's own find_noise_multiplier on the DESIGN.md
plan (its default eps_error=0.1, i.e. a looser answer) for reference."""

from __future__ import annotations

import argparse
import time
import warnings

from synthfed.privacy.accountant import SubsampledGaussian, compute_epsilon
from synthfed.privacy.calibration import find_noise_multiplier

DELTA = 1e-5
PLANS = [  # (target epsilon, q, steps)
    (8.0, 0.01, 100),
    (8.0, 0.064, 480),  # n=1000, B=64, 3 local epochs, 10 rounds
    (1.0, 0.01, 1000),
    (8.0, 0.01, 1000),
    (3.0, 0.004, 5000),
    (8.0, 0.01, 10_000),  # DESIGN.md section 4: prv-accountant's own search 0.8852 in 10 s
    (1.0, 0.01, 10_000),
]


def timed(fn, **kwargs):
    start = time.perf_counter()
    out = fn(**kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true", help="also time prv-accountant's find_noise_multiplier")
    args = parser.parse_args()
    print(f"{'eps':>5} {'q':>6} {'steps':>6} {'sigma':>8} {'eps_upper':>9} {'first s':>8} {'cached s':>9}")
    for eps, q, steps in PLANS:
        kw = dict(target_epsilon=eps, delta=DELTA, sampling_rate=q, steps=steps)
        sigma, first = timed(find_noise_multiplier, **kw)
        _, cached = timed(find_noise_multiplier, **kw)
        upper = compute_epsilon([SubsampledGaussian(sigma, q, steps)], delta=DELTA).epsilon_upper  # cached too
        print(f"{eps:5g} {q:6g} {steps:6d} {sigma:8.5f} {upper:9.4f} {first:8.2f} {cached:9.6f}")
    if args.compare:
        from prv_accountant.dpsgd import find_noise_multiplier as prv_find

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma, secs = timed(prv_find, sampling_probability=0.01, num_steps=10_000, target_epsilon=8.0,
                                target_delta=DELTA)
        print(f"prv-accountant find_noise_multiplier (eps_error=0.1), eps 8, q 0.01, 10000 steps: "
              f"sigma {sigma:.5f} in {secs:.2f} s")


if __name__ == "__main__":
    main()
