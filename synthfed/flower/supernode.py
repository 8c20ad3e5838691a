"""``flower-supernode`` with a heartbeat interval of our choosing.

A SuperNode tells the SuperLink how often it will send a heartbeat; the
SuperLink marks it offline after two missed intervals, and only then does the
ServerApp get an error for a message to that node. Flower 1.42 fixes the
interval at 30 s (a dead node is noticed after about a minute) and offers no
flag for it; the SuperLink accepts any interval from 10 s to 30 min. This
entry point sets Flower's constant before Flower's SuperNode modules read it,
then runs Flower's own command line:

    python -m synthfed.flower.supernode --heartbeat 10 -- <flower-supernode options>

A shorter interval notices a dead node sooner for a heartbeat request per
interval per node; nothing else changes."""

from __future__ import annotations

import argparse
import sys

MIN_HEARTBEAT, MAX_HEARTBEAT = 10.0, 1800.0  # what the SuperLink accepts (flwr 1.42)
FLOWER_HEARTBEAT = 30.0


def check_heartbeat(seconds: float) -> float:
    if not MIN_HEARTBEAT <= seconds <= MAX_HEARTBEAT:
        raise ValueError(f"heartbeat must be between {MIN_HEARTBEAT:g} and {MAX_HEARTBEAT:g} s "
                         f"(what the SuperLink accepts), not {seconds:g}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat", type=float, default=FLOWER_HEARTBEAT)
    args = parser.parse_args(argv[:split])
    import flwr.common.constant as constant

    if any(name.startswith("flwr.supernode") or name == "flwr.supercore.heartbeat" for name in sys.modules):
        raise RuntimeError("set the heartbeat before Flower's SuperNode modules are imported")
    constant.HEARTBEAT_DEFAULT_INTERVAL = check_heartbeat(args.heartbeat)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[split + 1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
