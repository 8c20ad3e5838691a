"""``run.json``: one schema, one writer, one reader, for every engine.

A run directory's ``run.json`` says what the run is: its settings, its model,
its data (described in words) and its clients (size, and where the engine
holds them, the data's fingerprint and class counts). The in-process engine
knows every client's data; a Flower server knows only what each node told it
(its size), so the fingerprints and class counts are None there and whatever
needs them says so in one line rather than failing on a missing key.

``RunInfo.write`` is the only writer (through ``synthfed.checkpoint``'s atomic
JSON) and ``RunInfo.read`` the only reader; ``read_run_file`` returns its
normalised dict for code that reads fields by name."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from synthfed.errors import InputError, UsageError
from synthfed.io import write_json_atomic

if TYPE_CHECKING:
    from synthfed.data import FederatedData

FORMAT = 1  # bump on a change readers must know about; readers refuse a newer one
RUN_FILE = "run.json"
INTEGRITY = "sha256"  # run.json's "integrity": every round of the run is sealed


@dataclass(frozen=True)
class ClientInfo:
    id: int
    n: int
    fingerprint: str | None = None  # None: the data stays where the server cannot see it (a Flower node)
    class_counts: list[int] | None = None


@dataclass(frozen=True)
class RunInfo:
    config: dict
    model: dict
    data: str
    clients: list[ClientInfo]
    engine: str = "simulation"  # or "flower"
    format: int = FORMAT
    flower: dict | None = None  # run-name, secagg
    pfdm: dict | None = None  # t0, clip norm, upload noise std
    extra: dict = field(default_factory=dict)  # keys this version does not know (kept on rewrite)

    @classmethod
    def for_simulation(cls, config: dict, spec: dict, fed: "FederatedData", **parts) -> "RunInfo":
        clients = [ClientInfo(id=i, n=len(c), fingerprint=c.fingerprint(), class_counts=c.class_counts().tolist())
                   for i, c in enumerate(fed.clients)]
        return cls(config=config, model=spec, data=fed.description, clients=clients, **parts)

    @classmethod
    def for_flower(cls, config: dict, spec: dict, sizes: dict[int, int], *, run_name: str, secagg: bool,
                   **parts) -> "RunInfo":
        return cls(config=config, model=spec, data="held by the Flower nodes", engine="flower",
                   clients=[ClientInfo(id=cid, n=n) for cid, n in sorted(sizes.items())],
                   flower={"run-name": run_name, "secagg": secagg}, **parts)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "clients")}
        out["clients"] = [asdict(c) for c in self.clients]
        out = {k: v for k, v in out.items() if v is not None}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, raw: dict, where: str = "run.json") -> "RunInfo":
        try:
            if int(raw.get("format", 1)) > FORMAT:
                raise UsageError(f"{where} was written by a newer synthfed (format {raw['format']}); upgrade to read it")
            known = {f.name for f in fields(cls)} | {"integrity"}
            clients = [ClientInfo(id=int(c["id"]), n=int(c["n"]), fingerprint=c.get("fingerprint"),
                                  class_counts=c.get("class_counts")) for c in raw.get("clients", [])]
            return cls(config=dict(raw["config"]), model=dict(raw.get("model") or {}), data=str(raw.get("data", "")),
                       clients=clients, engine=str(raw.get("engine", "simulation")), format=int(raw.get("format", 1)),
                       flower=raw.get("flower"), pfdm=raw.get("pfdm"),
                       extra={k: v for k, v in raw.items() if k not in known})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"{where} is damaged ({exc!r}); the run's settings cannot be read") from exc

    def write(self, run_dir: Path) -> None:
        write_run_file(Path(run_dir), self.to_dict())

    @classmethod
    def read(cls, run_dir: Path) -> "RunInfo":
        return cls.from_dict(read_run_file(run_dir), f"{Path(run_dir).name}/{RUN_FILE}")

    def check_same_run(self, other: "RunInfo", *, resume_hint: str) -> None:
        """A resumed run is the run that was started: same settings (and on
        Flower the same run name, which names the nodes' state)."""
        if self.config != other.config or (self.flower or {}).get("run-name") != (other.flower or {}).get("run-name"):
            raise RuntimeError(f"resume with the configuration and run-name the run started with ({resume_hint})")

    def check_same_data(self, fed: "FederatedData") -> None:
        """A resumed run must see the data it started with (same clients, same contents)."""
        if len(self.clients) != len(fed.clients) or any(
                s.fingerprint != c.fingerprint() for s, c in zip(self.clients, fed.clients)):
            raise RuntimeError("the data given to resume differs from the data the run started with "
                               "(client sizes or contents changed); resume with the same data and seed")

    def class_counts(self, client: int | None = None) -> list[list[int]]:
        """The real class counts of ``client`` (all clients when None)."""
        rows = self.clients if client is None else [c for c in self.clients if c.id == client]
        if not rows or any(r.class_counts is None for r in rows):
            where = ("a Flower run's class counts stay on its nodes" if self.engine == "flower"
                     else "this run directory predates class counts in run.json")
            raise UsageError(f"--counts match-real needs the training data's class counts: {where}")
        return [list(r.class_counts) for r in rows]


def write_run_file(run_dir: Path, info: dict) -> None:
    """Low level: ``RunInfo.write`` is the writer to call."""
    # "integrity" tells readers that every round of this run is sealed, so a
    # round whose checksums.json is gone is refused rather than read unverified.
    write_json_atomic(run_dir / RUN_FILE, {**info, "integrity": INTEGRITY})


def read_run_file(run_dir: Path) -> dict:
    """run.json as a dict, checked against the schema (``RunInfo.from_dict``):
    a missing, damaged or newer file is refused, named."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a synthfed run directory (no {RUN_FILE})")
    try:
        info = json.loads(path.read_bytes())
        if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
            raise ValueError("no config in it")
    except ValueError as exc:
        raise InputError(f"{path} is damaged ({str(exc).splitlines()[0]}); the run's settings cannot be read") from exc
    RunInfo.from_dict(info, str(path))
    return info
