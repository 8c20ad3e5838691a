"""Publishing the nodes' ledgers into the server's run directory.

During a Flower run each node keeps its privacy ledger at home, so the
server's run directory alone supports no privacy claim: ``synthfed generate``
labels its output "NOT differentially private" until the ledgers are there.
When the institutions choose to publish them (they hold accountant figures,
not data), ``collect_ledgers`` checks each against what the server saw and
writes them into the last round as ``ledger.json``:

- the node's run configuration is the server's;
- every round in which the server aggregated the client's update is in its
  ledger (a ledger that forgets a release is refused);
- one ledger per client of the run, none missing.

The round is sealed again afterwards (``reseal_round``: every other file of
it verified first), so what generate reads is still checked; the run's lock
is held meanwhile."""

from __future__ import annotations

import json
from pathlib import Path

from synthfed.checkpoint import (
    LEDGER_FILE,
    MODEL_PRIVACY_FILE,
    latest_round_dir,
    read_run_file,
    reseal_round,
    round_seal,
    verify_round,
    write_model_privacy,
)
from synthfed.io import write_json_atomic
from synthfed.locking import run_lock
from synthfed.privacy.ledger import PrivacyLedger


def collect_ledgers(run_dir: str | Path, node_state_dirs: list[str | Path]) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        read_run_file(run_dir)  # its error: not a run directory (before a lock file is made there)
    with run_lock(run_dir, "synthfed flower collect-ledgers"):
        return _collect(run_dir, node_state_dirs)


def _collect(run_dir: Path, node_state_dirs: list[str | Path]) -> Path:
    info = read_run_file(run_dir)
    if info.get("engine") != "flower":
        raise ValueError(f"{run_dir} is not a Flower run (its ledger is already in each round)")
    round_dir = latest_round_dir(run_dir)
    if round_dir is None:
        raise FileNotFoundError(f"{run_dir} has no completed round yet")
    run_name = info["flower"]["run-name"]
    state = round_seal(round_dir, info).read_json("state.json")
    history = state["history"]
    merged: dict = {}
    for state_dir in node_state_dirs:
        path = Path(state_dir) / run_name / "node.json"
        if not path.is_file():
            raise FileNotFoundError(f"no state of run {run_name!r} in {state_dir}")
        node = json.loads(path.read_text())
        if node["config"] != info["config"]:
            raise ValueError(f"{path} belongs to a run with another configuration")
        if node.get("ledger") is None:
            raise ValueError(f"{path} has no privacy ledger: the run was not private")
        cid = str(node["client_id"])
        ledger = PrivacyLedger.from_dict(node["ledger"]).clients[cid]
        released = {h["round"] for h in history if int(cid) in h.get("replied", [])}
        recorded = set(ledger.rounds_participated())
        if not released <= recorded:
            raise ValueError(f"client {cid}'s ledger misses rounds {sorted(released - recorded)} whose updates the "
                             "server aggregated; refusing it")
        if cid in merged:
            raise ValueError(f"two ledgers for client {cid}")
        merged[cid] = ledger
    missing = {str(c["id"]) for c in info["clients"]} - set(merged)
    if missing:
        raise ValueError(f"no ledger for clients {sorted(missing, key=int)}: every client's guarantee is needed")
    ledger = PrivacyLedger(clients=dict(sorted(merged.items(), key=lambda kv: int(kv[0]))))
    folders = sorted(p.name for p in (round_dir / "global").glob("*") if p.is_dir())
    changed = {LEDGER_FILE, *(f"global/{f}/{MODEL_PRIVACY_FILE}" for f in folders)}
    verify_round(round_dir, changed)  # before writing: never add a ledger to a damaged round
    target = round_dir / LEDGER_FILE
    write_json_atomic(target, ledger.to_dict())
    # The model folders' own privacy statements follow the published ledgers,
    # so a folder copied out of the run keeps its guarantee.
    write_model_privacy(round_dir, run_dir, int(state["round"]), ledger.to_dict())
    reseal_round(round_dir, changed)
    return target
