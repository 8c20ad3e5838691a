"""Per-client privacy ledgers: what each client actually released, round by round.

The ledger, not the plan, is the source of every epsilon the product reports:
a client that skipped rounds, stopped early or was resumed after a crash has
spent exactly what its entries say.  Entries store mechanisms (not epsilons),
so the guarantee is recomputed by the accountant from the full history and
composes correctly across rounds; a checkpoint carries the ledger as JSON.

Format 2 (this one) states its adjacency, replace-one, the product's one unit
of privacy.  Format 1 ledgers are read and re-accounted under replace-one:
their Gaussian (PFDM upload) entries stored noise std / (2C), now std / C, so
that noise multiplier is doubled on reading; DP-SGD and randomized-response
entries meant the same thing in both formats.  Their epsilon rises (format 1
accounted DP-SGD under add/remove), which is the honest figure.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .accountant import (
    ADJACENCY, EpsilonReport, Gaussian, Mechanism, SubsampledGaussian, compute_epsilon, mechanism_from_dict,
    mechanism_to_dict, merge_mechanisms,
)

__all__ = ["LedgerEntry", "ClientLedger", "PrivacyLedger"]

LEDGER_FORMAT = 2


def _upgrade_format_1(d: dict) -> dict:
    """A format-1 ledger as format 2: Gaussian noise multipliers were std / (2C), now std / C."""
    clients = {}
    for cid, c in d.get("clients", {}).items():
        entries = []
        for e in c.get("entries", []):
            mech = dict(e["mechanism"])
            if mech.get("kind") == Gaussian.kind:
                mech["noise_multiplier"] = 2.0 * float(mech["noise_multiplier"])
            entries.append({**e, "mechanism": mech})
        clients[cid] = {**c, "entries": entries}
    return {**d, "format": LEDGER_FORMAT, "adjacency": ADJACENCY, "clients": clients}


@dataclass
class LedgerEntry:
    """One release (or one round's batch of DP-SGD steps) by one client."""

    round: int
    mechanism: Mechanism
    note: str = ""
    # sha256 of what the release was made from (the requester's weights, t0...):
    # the same inputs again are the same release (synthfed.privacy.releases).
    inputs: str = ""

    def to_dict(self) -> dict:
        d = {"round": self.round, "mechanism": mechanism_to_dict(self.mechanism), "note": self.note}
        if self.inputs:
            d["inputs"] = self.inputs
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LedgerEntry":
        return cls(round=int(d["round"]), mechanism=mechanism_from_dict(d["mechanism"]), note=str(d.get("note", "")),
                   inputs=str(d.get("inputs", "")))


@dataclass
class ClientLedger:
    """A client's privacy account; epsilon_budget None means a run without a privacy promise."""

    client_id: str
    num_records: int
    delta: float
    epsilon_budget: float | None
    entries: list[LedgerEntry] = field(default_factory=list)

    def record(self, mechanism: Mechanism, *, round: int, note: str = "", inputs: str = "") -> None:
        """Append a release.  Equal entries are kept separately, even in the same
        round: two identical releases are two releases, and they compose."""
        merge_mechanisms([mechanism])  # type check: refuse anything the accountant cannot account
        self.entries.append(LedgerEntry(round=int(round), mechanism=mechanism, note=note, inputs=inputs))

    def mechanisms(self) -> list[Mechanism]:
        """All releases, merged by parameters (steps/count summed); zero-cost entries dropped."""
        return merge_mechanisms([e.mechanism for e in self.entries])

    def spent(self, *, eps_error: float = 0.01) -> EpsilonReport:
        """The guarantee so far: replace-one PLD composition of every recorded release at this client's delta."""
        return compute_epsilon(self.mechanisms(), delta=self.delta, eps_error=eps_error)

    def would_exceed(self, extra: Sequence[Mechanism]) -> bool:
        """Would releasing `extra` on top of the history push the upper bound past the budget?"""
        if self.epsilon_budget is None:
            return False
        report = compute_epsilon(self.mechanisms() + list(extra), delta=self.delta)
        return report.epsilon_upper > self.epsilon_budget

    def rounds_participated(self) -> list[int]:
        return sorted({e.round for e in self.entries})

    def to_dict(self) -> dict:
        return {
            "client_id": self.client_id,
            "num_records": self.num_records,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ClientLedger":
        budget = d.get("epsilon_budget")
        return cls(
            client_id=str(d["client_id"]),
            num_records=int(d["num_records"]),
            delta=float(d["delta"]),
            epsilon_budget=None if budget is None else float(budget),
            entries=[LedgerEntry.from_dict(e) for e in d.get("entries", [])],
        )


def _summary(m: Mechanism) -> str:
    if isinstance(m, SubsampledGaussian):
        return f"DP-SGD (sigma={m.noise_multiplier:g}, q={m.sampling_rate:g}, steps={m.steps})"
    if m.kind == "gaussian":
        return f"Gaussian upload (noise std = {m.noise_multiplier:g} x clip norm, count={m.count})"
    return f"randomized response on labels (epsilon={m.epsilon:g}, count={m.count})"


@dataclass
class PrivacyLedger:
    """All clients' ledgers of one run, saved with every checkpoint."""

    clients: dict[str, ClientLedger] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": LEDGER_FORMAT, "adjacency": ADJACENCY,
                "clients": {cid: c.to_dict() for cid, c in self.clients.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "PrivacyLedger":
        """Read format 2, or format 1 converted to replace-one; refuse anything else.

        No format, an unknown one, or another adjacency is a ValueError: guessing
        the unit of a noise multiplier could under-report epsilon."""
        fmt = d.get("format")
        if fmt == 1:
            if "adjacency" in d:
                raise ValueError("privacy ledger format 1 has no adjacency field; this file is not one")
            d = _upgrade_format_1(d)
        elif fmt != LEDGER_FORMAT:
            raise ValueError(f"privacy ledger format {fmt!r} is not supported (this version reads formats 1 and "
                             f"{LEDGER_FORMAT})")
        if d.get("adjacency") != ADJACENCY:
            raise ValueError(f"privacy ledger adjacency {d.get('adjacency')!r} is not supported: every epsilon is "
                             f"accounted under {ADJACENCY!r}")
        return cls(clients={str(cid): ClientLedger.from_dict(c) for cid, c in d.get("clients", {}).items()})

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never half of one.

        Temp file in the same directory (so os.replace is a rename on one file
        system), fsync before the rename, directory fsync after it."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:  # platforms without directory handles: the rename is still atomic
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrivacyLedger":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def table(self) -> list[dict]:
        """One row per client for reports and dataset cards.

        sigma and q are filled when the client used a single DP-SGD setting
        (None otherwise; the mechanisms column always lists everything)."""
        rows = []
        for cid, c in self.clients.items():
            mechs = c.mechanisms()
            sgd = [m for m in mechs if isinstance(m, SubsampledGaussian)]
            report = c.spent()
            rows.append({
                "client": cid,
                "n": c.num_records,
                "mechanisms": "; ".join(_summary(m) for m in mechs) or "none",
                "sigma": sgd[0].noise_multiplier if len(sgd) == 1 else None,
                "q": sgd[0].sampling_rate if len(sgd) == 1 else None,
                "steps": sum(m.steps for m in sgd),
                "eps_lower": report.epsilon_lower,
                "eps_estimate": report.epsilon_estimate,
                "eps_upper": report.epsilon_upper,
                "delta": c.delta,
                "budget": c.epsilon_budget,
                "accountant": report.accountant,
                "unit": ADJACENCY,
            })
        return rows
