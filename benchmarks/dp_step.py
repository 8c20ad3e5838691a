"""DP-SGD step cost against a non-private step, per model preset.

For each preset, each variant runs in its own subprocess (so that peak memory,
the process's max RSS, belongs to that variant alone) and all are measured in
this one run, side by side:

* ``plain``      non-private Adam step (the baseline: 1.00x)
* ``dp-hooks``   DPSGDStepper: Opacus hooks + contiguous fix + DPOptimizer
* ``dp-functorch`` the same with Opacus's functorch per-sample gradients
* ``dp-bf16``    DP hooks with bf16 autocast (norms and sums stay fp32)
* ``plain-bf16`` non-private with bf16 autocast

    python benchmarks/dp_step.py [--presets tiny small] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SIZES = {"tiny": 16, "small": 28, "paper": 32}
VARIANTS = ("plain", "dp-hooks", "dp-functorch", "plain-bf16", "dp-bf16")


def measure(preset: str, variant: str, batch: int, repeats: int) -> dict:
    import torch

    from synthfed.diffusion import NoiseSchedule, draw_rows, rows_loss
    from synthfed.federated.client import PlainStepper, autocast_context
    from synthfed.model import ModelSpec, build_unet
    from synthfed.privacy.dp_sgd import DPSGDStepper

    size = SIZES[preset]
    spec = ModelSpec(preset=preset, image_size=size, channels=1, num_classes=10, class_names=tuple("0123456789"))
    torch.manual_seed(0)
    model = build_unet(spec).train()
    acp = NoiseSchedule().alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    precision = "bf16" if variant.endswith("bf16") else "fp32"
    device = torch.device("cpu")
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, 10, (batch,))

    def rows_fn(xb, yb):
        xr, yr, t, noise = draw_rows(xb, yb, num_train_timesteps=acp.numel(), multiplicity=1, generator=gen)
        with autocast_context(precision, device):
            rows = rows_loss(model, xr, yr, t, noise, acp)
        return rows.float(), 1

    if variant.startswith("dp"):
        stepper = DPSGDStepper(model, lr=1e-4, expected_batch_size=batch, num_records=batch * 10, noise_multiplier=1.0,
                               max_grad_norm=1.0, generator=gen)
        if variant == "dp-functorch":
            from opacus import GradSampleModule

            stepper.gsm._close()
            stepper.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", force_functorch=True)
    else:
        stepper = PlainStepper(model, lr=1e-4, batch_size=batch)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        stepper.step(rows_fn, x, y)
        if i:
            times.append(time.perf_counter() - t0)
    stepper.close()
    return {
        "seconds": sorted(times)[len(times) // 2],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("PRESET", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.repeats)))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats} steps")
    header = f"{'preset':7} {'variant':13} {'s/step':>8} {'img/s':>8} {'time x':>7} {'peak MB':>8} {'mem x':>6}"
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        base = None
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--one", preset, variant, "--batch", str(args.batch), "--repeats", str(args.repeats)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            if variant == "plain":
                base = res
            tx = res["seconds"] / base["seconds"] if base else float("nan")
            mx = res["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
            print(f"{preset:7} {variant:13} {res['seconds']:>8.3f} {args.batch / res['seconds']:>8.1f} {tx:>6.2f}x "
                  f"{res['peak_rss_mb']:>8.0f} {mx:>5.2f}x")
    print("peak MB = max RSS of the measuring process (model, activations, per-sample gradients, Python)")


if __name__ == "__main__":
    main()
