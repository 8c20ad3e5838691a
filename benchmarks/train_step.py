"""Training-step and sampling throughput of every model preset.

Prints images/s of one optimizer step (non-private) and images/s of a
DDIM-50 and a full DDPM (T-step) sampling chain, per preset, measured side by
side in this run. Sampling chains longer than --max-steps are timed over
--max-steps steps and extrapolated linearly (each step is one U-Net forward
plus a scheduler update, so cost is linear in steps); the table says so.

    python benchmarks/train_step.py [--presets tiny small paper] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from synthfed.diffusion import NoiseSchedule, model_eps_fn, per_example_loss
from synthfed.model import PRESETS, ModelSpec, build_unet

SIZES = {"tiny": 16, "small": 28, "paper": 32}


def time_train_step(model, *, batch: int, size: int, channels: int, repeats: int, precision: str) -> float:
    acp = NoiseSchedule().alphas_cumprod()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    import contextlib

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        with ctx():
            loss = per_example_loss(model, x, y, alphas_cumprod=acp).mean()
        loss.backward()
        opt.step()
        if i:  # first step warms up kernels
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def time_sampling_step(model, *, batch: int, size: int, channels: int, sampler: str, steps: int, timed_steps: int) -> float:
    """Seconds per sampler step (median), measured over ``timed_steps`` steps."""
    sched = NoiseSchedule()
    scheduler = sched.ddim() if sampler == "ddim" else sched.ddpm()
    scheduler.set_timesteps(steps)
    eps_fn = model_eps_fn(model)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i, t in enumerate(scheduler.timesteps[: timed_steps + 1]):
        t0 = time.perf_counter()
        eps = eps_fn(x, int(t), y)
        x = scheduler.step(eps, t, x).prev_sample
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=20, help="sampler steps actually timed per chain")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.precision}")
    header = f"{'preset':7} {'size':>5} {'params':>8} {'train img/s':>12} {'DDIM-50 img/s':>14} {'DDPM-1000 img/s':>16}"
    print(header)
    print("-" * len(header))
    for name in args.presets:
        size = SIZES[name]
        spec = ModelSpec(preset=name, image_size=size, channels=1, num_classes=10, class_names=tuple("0123456789"))
        model = build_unet(spec)
        params = sum(p.numel() for p in model.parameters())
        step = time_train_step(model.train(), batch=args.batch, size=size, channels=1, repeats=args.repeats, precision=args.precision)
        model.eval()
        ddim = time_sampling_step(model, batch=args.batch, size=size, channels=1, sampler="ddim", steps=50, timed_steps=min(50, args.max_steps))
        ddpm = time_sampling_step(model, batch=args.batch, size=size, channels=1, sampler="ddpm", steps=1000, timed_steps=min(1000, args.max_steps))
        print(
            f"{name:7} {size:>5} {params / 1e6:>7.2f}M {args.batch / step:>12.1f} "
            f"{args.batch / (ddim * 50):>14.2f} {args.batch / (ddpm * 1000):>16.3f}"
        )
    print(f"(sampling: median step time over {args.max_steps} timed steps, times the chain length)")


if __name__ == "__main__":
    main()
