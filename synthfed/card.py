"""Dataset cards: what a generated dataset is, and exactly what privacy holds.

The card is written from the run's ledger and the producing components'
status (``LoadedGenerator.privacy``); nothing in it is typed by hand. A
dataset whose producing components are not all DP is labelled "NOT
differentially private" in the card, in README.md and on every manifest row.

Everything here ends up in files that leave a party (cards, manifests, model
folders' privacy.json, audit reports), so it names sources by folder name or
relative path, never by an absolute path (DESIGN.md section 3)."""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthfed.errors import InputError, UsageError
from synthfed.privacy.accountant import ADJACENCY, UNIT_OF_PRIVACY

if TYPE_CHECKING:
    from synthfed.run_info import RunInfo

COUNT_MODES = ("uniform", "match-real")
NOT_DP = "NOT differentially private"

# Thresholds of ``guarantee_strength`` (per-client epsilon upper bound). eps <= 1
# is the textbook "strong" regime; up to 10 is what deployed DP systems publish;
# beyond 10 the bound exp(eps) on the likelihood ratio is so large that an
# attacker's odds may change by orders of magnitude: formally DP, little protection.
STRONG_MAX_EPSILON = 1.0
MODERATE_MAX_EPSILON = 10.0
STRENGTH_TEXT = {
    "strong": f"strong guarantee (epsilon <= {STRONG_MAX_EPSILON:g})",
    "moderate": f"moderate guarantee ({STRONG_MAX_EPSILON:g} < epsilon <= {MODERATE_MAX_EPSILON:g})",
    "weak": (f"formally DP, but weak: epsilon > {MODERATE_MAX_EPSILON:g} gives little practical protection"),
    "none": "no differential-privacy guarantee",
}
MATCH_REAL_REFUSED = (
    "--counts match-real would publish the real label histogram, which no mechanism in the privacy ledger covers; "
    "use --counts uniform or a CSV of class,count (e.g. from public knowledge)"
)


class NonPrivateOutputRefused(UsageError):
    """Refused to write a dataset not covered by DP without the explicit flag."""


def guarantee_strength(epsilon: float | None) -> str:
    """"strong" (eps <= 1), "moderate" (<= 10) or "weak" (> 10) for a per-client
    epsilon upper bound; "none" when there is no finite epsilon (not DP)."""
    if epsilon is None or not math.isfinite(float(epsilon)) or float(epsilon) < 0:
        return "none"
    if epsilon <= STRONG_MAX_EPSILON:
        return "strong"
    return "moderate" if epsilon <= MODERATE_MAX_EPSILON else "weak"


def worst_epsilon(privacy: dict) -> float:
    """The largest per-client epsilon upper bound in a privacy status (inf if none)."""
    eps = [r.get("eps_upper") for r in privacy.get("clients") or []]
    eps = [float(e) for e in eps if e is not None]
    return max(eps) if eps else math.inf


def privacy_label(privacy: dict) -> str:
    """One line for the card's title, the manifest rows and the CLI."""
    if not privacy.get("differentially_private"):
        return NOT_DP
    worst = worst_epsilon(privacy)
    strength = guarantee_strength(worst)
    if strength == "none":
        return NOT_DP
    # Sampled at a Flower node: only that node's ledger is known there.
    who = "each client" if privacy.get("ledger_of") is None else f"client {privacy['ledger_of']}, by its own ledger"
    if strength == "weak":
        return (f"formally differentially private, but WEAK ({who}: epsilon <= {worst:.4g} at its delta; "
                f"epsilon > {MODERATE_MAX_EPSILON:g} gives little practical protection)")
    return f"differentially private, {strength} ({who}: epsilon <= {worst:.4g} at its delta)"


def resolve_class_counts(mode: str, *, num_classes: int, class_names: tuple[str, ...], per_class: int,
                         run_info: "RunInfo | None", client: int | None, differentially_private: bool,
                         allow_non_private: bool) -> list[int]:
    """Images to generate per class.

    uniform: ``per_class`` each. match-real: the producing data's class mix
    (the client's own for a personalized model, all clients' otherwise) scaled
    to ``per_class × K`` images; that is the real histogram, covered by no
    mechanism, so it is refused for a DP output and needs ``allow_non_private``
    otherwise. Any other value is a CSV with columns class (name or index) and count."""
    if mode == "uniform":
        return [per_class] * num_classes
    if mode == "match-real":
        if differentially_private:
            raise UsageError(MATCH_REAL_REFUSED)
        if not allow_non_private:
            raise NonPrivateOutputRefused("--counts match-real writes the real class histogram into a dataset that is "
                                          "NOT differentially private; pass --allow-non-private to write it stamped so")
        return _match_real(run_info, client, per_class * num_classes)
    return _counts_from_csv(Path(mode), num_classes, class_names)


def _match_real(run_info: "RunInfo | None", client: int | None, total: int) -> list[int]:
    if run_info is None:
        raise UsageError("--counts match-real needs a run directory (its run.json holds the class counts)")
    real = np.sum(run_info.class_counts(client), axis=0).astype(float)
    raw = real / real.sum() * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: total - counts.sum()]:  # largest remainders
        counts[i] += 1
    return counts.tolist()


def _counts_from_csv(path: Path, num_classes: int, class_names: tuple[str, ...]) -> list[int]:
    if not path.is_file():
        raise UsageError(f"--counts must be uniform, match-real or a CSV file of class,count; {str(path)!r} is none")
    counts = [0] * num_classes
    with open(path, newline="") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            key, value = (row.get("class") or "").strip(), (row.get("count") or "").strip()
            if key in class_names:
                k = class_names.index(key)
            elif key.isdigit() and int(key) < num_classes:
                k = int(key)
            else:
                raise InputError(f"{path}:{line}: unknown class {key!r}")
            if not value.isdigit():
                raise InputError(f"{path}:{line}: count must be a whole number, got {value!r}")
            counts[k] = int(value)
    if sum(counts) == 0:
        raise InputError(f"{path} asks for no images")
    return counts


def counts_origin(mode: str, client: int | None) -> str:
    """Where the card's class counts came from, in words (a CSV by file name only)."""
    if mode == "uniform":
        return "uniform: the same number of images per class"
    if mode == "match-real":
        whose = f"client {client}'s own" if client is not None else "all clients' pooled"
        return (f"the REAL class histogram of {whose} training data (scaled), covered by no privacy mechanism")
    return f"requested by the user in {Path(mode).name}"


def label_handling(config: dict) -> str:
    if config.get("strategy") == "pfdm":
        if config.get("public_labels"):
            return "uploaded labels declared public by the data owner (not protected)"
        return f"uploaded labels protected by k-ary randomized response (epsilon={config.get('label_epsilon')}, in the ledger)"
    if config.get("epsilon") is not None:
        return "labels never leave a client; they are part of each record protected by DP-SGD"
    return "labels never leave a client (no DP guarantee)"


# The run parameters a model folder's privacy.json keeps so that its card can
# be written away from the run (public settings only: no data path, no seed).
PUBLIC_CONFIG_KEYS = ("strategy", "epsilon", "delta", "local_epsilon", "public_labels", "label_epsilon", "warm_start",
                      "init_from")


def training_mechanism(config: dict) -> str:
    """How a DP-SGD-family model was trained, in words (the card's component line)."""
    dp_sgd = config.get("epsilon") is not None
    text = "DP-SGD" if dp_sgd else "trained without DP-SGD"
    if config.get("warm_start") == "central":
        text = ("pretrained on one DP release of each class's mean and principal directions "
                "(central images, Gaussian mechanism), then " + text)
    if config.get("init_from"):
        # The folder's name only: cards carry no absolute paths.
        text = (f"initialised from the model folder {Path(str(config['init_from'])).name!r} "
                f"(public pretraining: costs no budget of this run, if its data is public), then " + text)
    return text


def privacy_components(config: dict, client: int | None, *, shared_only: bool = False) -> list[dict]:
    """Every model that takes part in producing the images, and whether it
    was trained under a differential-privacy mechanism recorded in the ledger.
    ``shared_only``: just the part a personalized run shares (a global folder)."""
    strategy = config.get("strategy", "fedavg")
    dp_sgd = config.get("epsilon") is not None
    if strategy == "pfdm":
        local_dp = config.get("local_epsilon") is not None
        shared = {"component": "shared high-noise denoiser (t > t0)", "dp": True,
                  "mechanism": "trained only on forward-noised uploads (Gaussian mechanism; labels "
                               + ("public" if config.get("public_labels") else "randomized response") + ")"}
        if shared_only:
            return [shared]
        return [shared, {"component": f"client {client} low-noise denoiser (t <= t0)", "dp": local_dp,
                         "mechanism": "DP-SGD" if local_dp else "trained on the client's raw images without DP-SGD"}]
    if shared_only:
        name = f"shared backbone of a {strategy} run (each client's head stays local)"
    else:
        name = "global model" if client is None else f"client {client} personalized model (shared backbone + local head)"
    return [{"component": name, "dp": dp_sgd, "mechanism": training_mechanism(config)}]


def privacy_status(ledger: dict | None, config: dict | None, client: int | None, *, shared_only: bool = False) -> dict:
    """Read, never infer: the guarantee is whatever the run's ledger (a
    ``PrivacyLedger.to_dict()``, None when the run has none) says, and it covers
    the images only if every producing component is DP."""
    config = config or {}
    components = privacy_components(config, client, shared_only=shared_only)
    all_dp = all(c["dp"] for c in components)
    if ledger is None:
        statement = "NOT differentially private: trained without DP-SGD"
        if config.get("epsilon") is not None or config.get("strategy") == "pfdm":
            # A Flower run: the ledgers stay on the nodes until they are published.
            statement = ("NOT differentially private as far as this run directory shows: its privacy ledgers are "
                         "held by the Flower nodes (publish them with `synthfed flower collect-ledgers`)")
        return {"differentially_private": False, "components": components, "statement": statement}
    from synthfed.privacy.ledger import PrivacyLedger

    rows = PrivacyLedger.from_dict(ledger).table()
    if not rows or any(not math.isfinite(r["eps_upper"]) for r in rows):
        # A mechanism without noise (e.g. a PFDM upload at a t0 with ᾱ ≈ 1) is no guarantee.
        all_dp = False
        components = [dict(c, dp=False) if "upload" in c["mechanism"] or "shared" in c["component"] else c
                      for c in components]
    if all_dp:
        statement = (f"each client's records are (epsilon, delta)-DP as listed ({ADJACENCY} adjacency, "
                     "record-level; accountant below)")
    else:
        not_dp = "; ".join(c["component"] for c in components if not c["dp"]) or "the ledger"
        statement = f"NOT differentially private: {not_dp} was trained without a DP mechanism"
    return {"differentially_private": all_dp, "components": components, "statement": statement, "clients": rows}


def _public_value(key: str, value):
    """A public setting as a copy may carry it: ``init_from`` by folder name only (no path)."""
    return Path(str(value)).name if key == "init_from" and value else value


def model_folder_statement(ledger: dict | None, config: dict, *, run_name: str, server_round: int, weights: str,
                           shared_only: bool) -> dict:
    """The ``privacy.json`` of a model folder: its guarantee as the ledger stated
    it when the round was saved, so that a copy of the folder keeps it. Only
    what the ledger and the public run settings say: no data, no path."""
    status = privacy_status(ledger, config, None, shared_only=shared_only)
    return {
        "format": 1,
        "differentially_private": status["differentially_private"],
        "statement": status["statement"],
        "components": status["components"],
        "clients": status.get("clients", []),
        "unit_of_privacy": UNIT_OF_PRIVACY,
        "adjacency": ADJACENCY,
        "config": {k: _public_value(k, config.get(k)) for k in PUBLIC_CONFIG_KEYS},
        "run": run_name,
        "round": int(server_round),
        "weights": weights,
        "shared_part_of": config.get("strategy") if shared_only else None,
    }


def source_label(source: dict) -> str:
    """A source in words, e.g. "run: myrun, round 3, global model (EMA weights)"."""
    weights = "EMA weights" if source.get("weights", "ema") == "ema" else "raw weights"
    part = "global model" if source.get("client") is None else f"client {source['client']}'s model"
    if source.get("kind") == "model folder":
        origin = f"from run {source['run']}, round {source['round']}" if source.get("run") else "origin not recorded"
        return f"model folder: {source.get('folder')} ({origin}, {weights})"
    run = source.get("run") or Path(str(source.get("run_dir") or "")).name  # older cards: run_dir only
    if run:
        text = f"run: {run}, round {source.get('round')}, {part} ({weights})"
        return text + (f", PFDM hand-off at t0={source['t0']}" if "t0" in source else "")
    if source.get("model_dir"):
        return f"model folder: {Path(str(source['model_dir'])).name}"
    return "unknown source"


def build_card(*, source: dict, privacy: dict, config: dict, class_names: tuple[str, ...], counts: list[int],
               sampler: dict, counts_source: str = "as requested", real_counts: bool = False) -> dict:
    """``source`` must already be free of absolute paths (see ``generate_dataset``)."""
    label = privacy_label(privacy)
    dp = label != NOT_DP
    if real_counts and dp:  # defence in depth: the CLI refuses this earlier
        raise UsageError(MATCH_REAL_REFUSED)
    strength = guarantee_strength(worst_epsilon(privacy)) if dp else "none"
    return {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "differentially_private": dp,
        "guarantee_strength": strength,
        "guarantee": STRENGTH_TEXT[strength],
        "label": label,
        "source": source,
        "source_text": source_label(source),
        "strategy": config.get("strategy"),
        "privacy": privacy,
        "label_handling": label_handling(config),
        "class_names": list(class_names),
        "counts": {name: int(n) for name, n in zip(class_names, counts)},
        "counts_source": counts_source,
        "counts_are_real": bool(real_counts),
        "sampler": sampler,
        "unit_of_privacy": UNIT_OF_PRIVACY,
        "adjacency": ADJACENCY,
    }


def render_card_md(card: dict) -> str:
    lines = ["# Synthetic dataset card", "", f"**{card['label']}**", ""]
    if card["differentially_private"]:
        lines += [f"Guarantee strength: **{card['guarantee_strength']}** ({card['guarantee']}).", ""]
    lines += ["## Source", "", f"- {card['source_text']}"]
    if card["source"].get("run_dir"):
        lines.append(f"- run directory, relative to this folder: `{card['source']['run_dir']}`")
    lines += [f"- strategy: {card['strategy']}", f"- sampler: {json.dumps(card['sampler'])}", ""]
    lines += ["## Producing components", ""]
    for comp in card["privacy"].get("components", []):
        lines.append(f"- {comp['component']}: {'DP' if comp['dp'] else 'NOT DP'} ({comp['mechanism']})")
    lines += ["", "## Privacy guarantee", "", card["privacy"]["statement"], ""]
    rows = card["privacy"].get("clients", [])
    if rows:
        lines += ["| client | n | mechanisms | eps lower | eps estimate | eps upper | delta | strength |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['client']} | {r['n']} | {r['mechanisms']} | {r['eps_lower']:.4g} | "
                         f"{r['eps_estimate']:.4g} | {r['eps_upper']:.4g} | {r['delta']:.3g} | "
                         f"{guarantee_strength(r['eps_upper'])} |")
        accountants = "; ".join(dict.fromkeys(r["accountant"] for r in rows))  # each client's may differ
        lines += ["", f"Accountant: {accountants}.", ""]
    lines += [f"Unit of privacy: {card['unit_of_privacy']}.", ""]
    lines += ["## Labels", "", card["label_handling"], "", "## Contents", ""]
    lines += [f"Class counts: {card['counts_source']}.", ""]
    lines += [f"- {name}: {n}" for name, n in card["counts"].items()]
    return "\n".join(lines) + "\n"


def manifest_stamp(card: dict) -> str:
    """The short privacy column of every manifest row."""
    if not card["differentially_private"]:
        return NOT_DP
    return (f"differentially private, {card['guarantee_strength']} guarantee "
            f"(epsilon <= {worst_epsilon(card['privacy']):.3g})")
