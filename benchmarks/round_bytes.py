"""Bytes a round writes, and memory held, for a many-client personalized run.

A 100-client FedPer simulation (preset small, iid digits, 10% participation)
runs --rounds rounds twice, side by side: as checkpoints are written now
(a client file the round did not touch is hard-linked from the previous
round) and as they were written before (every client file rewritten each
round). For each it prints the bytes newly written by the last round and the
run's peak resident memory, next to what the model parts weigh: the shared
model, one working copy, and the clients' local parts.

    python benchmarks/round_bytes.py [--clients 100] [--participation 0.1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from synthfed import checkpoint
from synthfed.config import TrainConfig
from synthfed.training import train

run_dir, clients, participation, rounds, rewrite = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
if rewrite:  # the old behaviour: never link, always write
    checkpoint._link = lambda source, target: False
config = TrainConfig(data="digits", strategy="fedper", head="up", preset="small", num_clients=clients, partition="iid",
                     min_partition_size=1, participation=participation, rounds=rounds, batch_size=16, device="cpu")
train(config.validate(), run_dir)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def new_bytes(round_dir: Path) -> tuple[int, int]:
    """(bytes in files this round allocated, bytes of every file the round lists)."""
    fresh = total = 0
    for path in round_dir.rglob("*"):
        if path.is_file():
            st = path.stat()
            total += st.st_size
            if st.st_nlink == 1:
                fresh += st.st_size
    return fresh, total


def part_sizes(round_dir: Path) -> tuple[float, float]:
    """(MB of the shared model's weights file, mean MB of a client's local file)."""
    shared = sum(p.stat().st_size for p in (round_dir / "global" / "model").glob("*.safetensors"))
    clients = list((round_dir / "clients").glob("*.safetensors"))
    local = sum(p.stat().st_size for p in clients) / max(len(clients), 1)
    return shared / 2**20, local / 2**20


def run(tmp: Path, args, rewrite: bool) -> dict:
    import json

    run_dir = tmp / ("rewrite" if rewrite else "linked")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run_dir), str(args.clients), str(args.participation),
                          str(args.rounds), "1" if rewrite else "0"], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    last = run_dir / "rounds" / f"round-{args.rounds:04d}"
    result["fresh"], result["total"] = new_bytes(last)
    result["shared_mb"], result["local_mb"] = part_sizes(last)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--participation", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: run(Path(tmp), args, rewrite) for name, rewrite in (("before: rewrite all", True),
                                                                          ("now: link unchanged", False))}
    print(f"{args.clients} clients, FedPer (head 'up'), preset small, {args.participation:g} participation, "
          f"round {args.rounds}")
    print(f"{'checkpoint':22s} {'MB written':>11s} {'MB listed':>10s} {'peak RSS MB':>12s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['fresh'] / 2**20:11.1f} {r['total'] / 2**20:10.1f} {r['peak_rss_mb']:12.0f}")
    r = rows["now: link unchanged"]
    before = rows["before: rewrite all"]["fresh"]
    print(f"written per round: {before / max(r['fresh'], 1):.1f}x less")
    print(f"model parts: shared model {r['shared_mb']:.1f} MB (weights; x2 with its EMA), one client's local part "
          f"{r['local_mb']:.2f} MB (weights + EMA), all {args.clients} clients' local parts "
          f"{r['local_mb'] * args.clients:.0f} MB")


if __name__ == "__main__":
    main()
