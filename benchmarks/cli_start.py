"""Start-up time and memory of the command line, side by side in one run.

Times ``synthfed --help`` (and a few sub-command helps) as a user runs them, a
fresh process each time, median of --repeats; and, for scale, a process that
imports torch and diffusers, which is what every start cost before imports
were deferred. Target: ``synthfed --help`` under 1 s.

    python benchmarks/cli_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

TARGET_S = 1.0


# Timed inside a small parent of its own, so that the peak RSS of its only child is the command's.
_PROBE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run_once(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one fresh process running ``cmd``."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *cmd], check=True, capture_output=True, text=True).stdout
    wall, mb = out.split()
    return float(wall), float(mb)


def measure(cmd: list[str], repeats: int) -> tuple[float, float]:
    runs = [run_once(cmd) for _ in range(repeats)]
    return statistics.median(w for w, _ in runs), max(m for _, m in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe = shutil.which("synthfed") or str(Path(sys.executable).with_name("synthfed"))
    rows = [
        ("synthfed --help", [exe, "--help"]),
        ("synthfed --version", [exe, "--version"]),
        ("synthfed train --help", [exe, "train", "--help"]),
        ("synthfed generate --help", [exe, "generate", "--help"]),
        ("synthfed audit --help", [exe, "audit", "--help"]),
        ("python -c 'import torch, diffusers' (the old floor)", [sys.executable, "-c", "import torch, diffusers"]),
    ]
    print(f"{'command':55s} {'median s':>9s} {'peak MB':>8s}")
    results = {}
    for name, cmd in rows:
        wall, mb = measure(cmd, args.repeats)
        results[name] = wall
        print(f"{name:55s} {wall:9.3f} {mb:8.0f}")
    help_s = results["synthfed --help"]
    floor = results["python -c 'import torch, diffusers' (the old floor)"]
    verdict = "met" if help_s < TARGET_S else "NOT met"
    print(f"\nsynthfed --help: {help_s:.2f} s, target < {TARGET_S:.0f} s: {verdict}; "
          f"{floor / help_s:.1f}x faster than importing torch and diffusers alone")


if __name__ == "__main__":
    main()
