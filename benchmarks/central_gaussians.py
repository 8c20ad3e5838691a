"""How good can the DP central images be? The class Gaussians alone, no diffusion model.

    python benchmarks/central_gaussians.py --data fashion-mnist --image-size 16

For each epsilon of the central release alone (delta = 1/(10 n)), clip
factor (C = factor x sqrt(#pixels)) and rank: release the class moments
(``privacy/central.py``, the same mechanism ``train --warm-start central``
runs), draw ``--per-class`` images per class from ``ClassGaussians``, train a
logistic regression on them and print its accuracy on the real test split."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--epsilons", default="1,5,10")
    p.add_argument("--clip-factors", default="1.0,0.6")
    p.add_argument("--ranks", default="0,3,10,30")
    p.add_argument("--per-class", type=int, default=500)
    args = p.parse_args()

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from synthfed.data import load_source
    from synthfed.privacy.calibration import default_delta, find_gaussian_noise
    from synthfed.privacy.central import ClassGaussians, release_central_stats

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    train = load_source(args.data, split="train").resized(args.image_size)
    test = load_source(args.data, split="test").resized(args.image_size)
    x, y = train.to_tensor()
    xt, yt = test.to_tensor()
    xt, yt = xt.reshape(len(xt), -1).numpy(), yt.numpy()
    classes, dim = len(train.class_names), x[0].numel()
    print(f"{'eps_c':>6}{'clip':>6}{'rank':>6}{'sigma_c':>9}{'TSTR':>7}")
    for eps in (float(e) for e in args.epsilons.split(",")):
        sigma = find_gaussian_noise(target_epsilon=eps, delta=default_delta(len(x)))
        for factor in (float(f) for f in args.clip_factors.split(",")):
            stats = release_central_stats(x, y, num_classes=classes, clip=factor * dim ** 0.5, noise_multiplier=sigma,
                                          moments="cov", generator=torch.Generator().manual_seed(1))
            for rank in (int(r) for r in args.ranks.split(",")):
                labels = np.repeat(np.arange(classes), args.per_class)
                draws = ClassGaussians.from_stats(stats, rank=rank).sample(labels, np.random.default_rng(0))
                acc = LogisticRegression(max_iter=500).fit(draws.reshape(len(labels), -1), labels).score(xt, yt)
                print(f"{eps:>6g}{factor:>6g}{rank:>6}{sigma:>9.4g}{acc:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
