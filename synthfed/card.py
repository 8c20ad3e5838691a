"""Dataset cards: what a generated dataset is, and exactly what privacy holds.

The card is written from the run's ledger and the producing components'
status (``LoadedGenerator.privacy``); nothing in it is typed by hand. A
dataset whose producing components are not all DP is labelled "NOT
differentially private" in the card, in CARD.md and on every manifest row."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

COUNT_MODES = ("uniform", "match-real")
NOT_DP = "NOT differentially private"


class NonPrivateOutputRefused(ValueError):
    """Refused to write a dataset not covered by DP without the explicit flag."""


def resolve_class_counts(mode: str, *, num_classes: int, class_names: tuple[str, ...], per_class: int,
                         run_info: dict | None, client: int | None) -> list[int]:
    """Images to generate per class.

    uniform: ``per_class`` each. match-real: the producing data's class mix
    (the client's own for a personalized model, all clients' otherwise) scaled
    to ``per_class × K`` images. Any other value is a CSV with columns
    class (name or index) and count."""
    if mode == "uniform":
        return [per_class] * num_classes
    if mode == "match-real":
        if run_info is None or "class_counts" not in run_info["clients"][0]:
            raise ValueError("--counts match-real needs a run directory trained by this version (class counts in run.json)")
        rows = run_info["clients"] if client is None else [run_info["clients"][client]]
        real = np.sum([r["class_counts"] for r in rows], axis=0).astype(float)
        total = per_class * num_classes
        raw = real / real.sum() * total
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts))[: total - counts.sum()]:  # largest remainders
            counts[i] += 1
        return counts.tolist()
    path = Path(mode)
    if not path.is_file():
        raise ValueError(f"--counts must be uniform, match-real or a CSV file of class,count; {mode!r} is none")
    counts = [0] * num_classes
    with open(path, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            key, value = (row.get("class") or "").strip(), (row.get("count") or "").strip()
            if key in class_names:
                k = class_names.index(key)
            elif key.isdigit() and int(key) < num_classes:
                k = int(key)
            else:
                raise ValueError(f"{path}:{line}: unknown class {key!r}")
            if not value.isdigit():
                raise ValueError(f"{path}:{line}: count must be a whole number, got {value!r}")
            counts[k] = int(value)
    if sum(counts) == 0:
        raise ValueError(f"{path} asks for no images")
    return counts


def label_handling(config: dict) -> str:
    if config.get("strategy") == "pfdm":
        if config.get("public_labels"):
            return "uploaded labels declared public by the data owner (not protected)"
        return f"uploaded labels protected by k-ary randomized response (epsilon={config.get('label_epsilon')}, in the ledger)"
    if config.get("epsilon") is not None:
        return "labels never leave a client; they are part of each record protected by DP-SGD"
    return "labels never leave a client (no DP guarantee)"


def build_card(*, source: dict, privacy: dict, config: dict, class_names: tuple[str, ...], counts: list[int],
               sampler: dict) -> dict:
    dp = bool(privacy.get("differentially_private"))
    clients = privacy.get("clients", [])
    worst = max((c["eps_upper"] for c in clients), default=math.inf)
    return {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "differentially_private": dp,
        "label": f"differentially private (each client: epsilon <= {worst:.4g} at its delta)" if dp else NOT_DP,
        "source": source,
        "strategy": config.get("strategy"),
        "privacy": privacy,
        "label_handling": label_handling(config),
        "class_names": list(class_names),
        "counts": {name: int(n) for name, n in zip(class_names, counts)},
        "sampler": sampler,
        "unit_of_privacy": "one image (record) of one client",
    }


def render_card_md(card: dict) -> str:
    lines = ["# Synthetic dataset card", "", f"**{card['label']}**", ""]
    lines += ["## Source", "", f"- run: `{card['source'].get('run_dir', card['source'].get('model_dir'))}`"]
    for key in ("round", "client", "weights", "t0"):
        if key in card["source"]:
            lines.append(f"- {key}: {card['source'][key]}")
    lines += [f"- strategy: {card['strategy']}", f"- sampler: {json.dumps(card['sampler'])}", ""]
    lines += ["## Producing components", ""]
    for comp in card["privacy"].get("components", []):
        lines.append(f"- {comp['component']}: {'DP' if comp['dp'] else 'NOT DP'} ({comp['mechanism']})")
    lines += ["", "## Privacy guarantee", "", card["privacy"]["statement"], ""]
    rows = card["privacy"].get("clients", [])
    if rows:
        lines += ["| client | n | mechanisms | eps lower | eps estimate | eps upper | delta |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['client']} | {r['n']} | {r['mechanisms']} | {r['eps_lower']:.4g} | "
                         f"{r['eps_estimate']:.4g} | {r['eps_upper']:.4g} | {r['delta']:.3g} |")
        accountants = "; ".join(dict.fromkeys(r["accountant"] for r in rows))  # each client's may differ
        lines += ["", f"Accountant: {accountants}. Unit: {card['unit_of_privacy']}.", ""]
    lines += ["## Labels", "", card["label_handling"], "", "## Contents", ""]
    lines += [f"- {name}: {n}" for name, n in card["counts"].items()]
    return "\n".join(lines) + "\n"
