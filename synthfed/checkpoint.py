"""Run directories: one atomically published, sealed folder per completed round.

Layout of a run directory::

    run.json                 config, model spec, client sizes and data fingerprints
    .lock                    held by the process that owns the run (``synthfed.locking``)
    LATEST                   name of the last complete round folder (atomic)
    rounds/round-0003/
        global/model/        diffusers folder (safetensors) of the shared weights
        global/ema/          the same for the EMA weights (what ``generate`` uses)
        global/*/privacy.json   the folder's guarantee as the ledger states it (travels with a copy)
        global/*/checksums.json the folder's own checksums (travel with a copy)
        clients/client-07.safetensors   a client's local (never shared) tensors
        state.json           round, per-client EMA step counters, metrics history
        ledger.json          privacy ledger (when the run is private)
        checksums.json       sha256 of every file above, written last

A round folder is written under a unique temporary name, sealed and renamed
into place, and ``LATEST`` is replaced atomically afterwards, so a kill at any
moment leaves the previous complete round readable: at most the round in
flight is lost. Whatever reads a round verifies the files it reads against
``checksums.json`` and refuses a damaged one by name (``IntegrityError``).
Rounds written before rounds were sealed (no ``checksums.json``, and a
run.json without ``"integrity"``) still load, unverified. Weights are
safetensors only: nothing here is ever unpickled."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from synthfed.errors import InputError, IntegrityError, SynthfedError
from synthfed.run_info import INTEGRITY, RUN_FILE, read_run_file, write_run_file  # noqa: F401  (write_run_file: re-exported)
from synthfed.io import (CHECKSUM_FILE, Sealed, make_temp_dir, publish_dir_atomic, write_bytes_atomic,
                         write_checksums, write_json_atomic)
from synthfed.model.presets import MODEL_META_FILE, ModelSpec, build_unet, load_model, save_model

MODEL_PRIVACY_FILE = "privacy.json"
LEDGER_FILE = "ledger.json"
LATEST_FILE = "LATEST"
ROUNDS_DIR = "rounds"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
KEEP_ROUNDS = 2
_ROUND_NAME = re.compile(r"round-\d{4,}")
_ROUND_HINT = "resume from an earlier round or retrain"


def round_name(server_round: int) -> str:
    return f"round-{server_round:04d}"


def client_file(client_id: int) -> str:
    return f"client-{client_id:02d}.safetensors"


@dataclass
class RoundCheckpoint:
    """Everything needed to continue after ``server_round``."""

    server_round: int
    global_state: dict[str, torch.Tensor]  # shared model entries
    global_ema: dict[str, torch.Tensor]
    local_states: dict[int, dict[str, torch.Tensor]]  # client -> local model entries
    local_emas: dict[int, dict[str, torch.Tensor]]
    ema_steps: dict[int, int]
    history: list[dict] = field(default_factory=list)
    ledger: dict | None = None
    # Clients whose local part this round did not touch: their file is hard-linked
    # from the previous round instead of written again (100 clients at 10%
    # participation rewrote 90 unchanged files a round).
    unchanged_clients: frozenset[int] = frozenset()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_round(run_dir: Path, spec: ModelSpec, ckpt: RoundCheckpoint) -> Path:
    """Write, seal and publish round ``ckpt.server_round``; then point LATEST at it.
    A failure (a full disk) removes the half-written folder and leaves the run
    as it was after the previous round."""
    run_dir = Path(run_dir)
    rounds = run_dir / ROUNDS_DIR
    rounds.mkdir(parents=True, exist_ok=True)
    final = rounds / round_name(ckpt.server_round)
    tmp = make_temp_dir(rounds, prefix=f".{final.name}.", suffix=".tmp")
    try:
        _write_round(tmp, run_dir, spec, ckpt)
        for folder in _model_folders(tmp):
            write_checksums(folder)
        write_checksums(tmp)  # last: it seals everything above
        publish_dir_atomic(tmp, final)
        write_bytes_atomic(run_dir / LATEST_FILE, final.name.encode())
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SynthfedError(f"could not write {final} ({exc.strerror or exc}); the run is intact up to the "
                            f"previous round: fix that (free space?) and continue with --resume {run_dir}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # ours: made above under a unique name
        raise
    _prune(rounds, keep=KEEP_ROUNDS)
    return final


def _write_round(tmp: Path, run_dir: Path, spec: ModelSpec, ckpt: RoundCheckpoint) -> None:
    if ckpt.global_state:
        # A diffusers-loadable folder needs a complete model: entries that are
        # not shared come from a fresh model (they are meaningless globally).
        model = build_unet(spec)
        model.load_state_dict(ckpt.global_state, strict=False)
        save_model(model, spec, tmp / "global" / "model")
        model.load_state_dict(ckpt.global_ema, strict=False)
        save_model(model, spec, tmp / "global" / "ema")
        write_model_privacy(tmp, run_dir, ckpt.server_round, ckpt.ledger)
    if ckpt.local_states:
        (tmp / "clients").mkdir()
        previous = run_dir / ROUNDS_DIR / round_name(ckpt.server_round - 1) / "clients"
        for cid, local in ckpt.local_states.items():
            target = tmp / "clients" / client_file(cid)
            if cid in ckpt.unchanged_clients and _link(previous / client_file(cid), target):
                continue
            tensors = {f"model.{k}": v for k, v in local.items()}
            tensors.update({f"ema.{k}": v for k, v in ckpt.local_emas[cid].items()})
            save_file(_contiguous(tensors), str(target))
    state = {
        "round": ckpt.server_round,
        "ema_steps": {str(k): v for k, v in ckpt.ema_steps.items()},
        "history": ckpt.history,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if ckpt.ledger is not None:
        (tmp / LEDGER_FILE).write_text(json.dumps(ckpt.ledger, indent=2))


def _link(source: Path, target: Path) -> bool:
    """Hard-link an unchanged client file into the new round (True), or False
    where the file system cannot (then it is written). Safe because no file of
    a published round is ever written again: every round is a new folder, and
    the seal covers the linked file like any other."""
    try:
        os.link(source, target)
        return True
    except OSError:
        return False


def _model_folders(round_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(round_dir) / "global").glob("*") if p.is_dir())


def write_model_privacy(round_dir: Path, run_dir: Path, server_round: int, ledger: dict | None) -> None:
    """Write ``privacy.json`` into each model folder of ``round_dir``: a folder
    copied out of the run keeps its guarantee (or its lack of one). The run's
    public settings come from run.json, the figures from ``ledger`` only."""
    from synthfed.card import model_folder_statement
    from synthfed.config import PERSONALIZED_STRATEGIES

    run_file = Path(run_dir) / RUN_FILE
    config = read_run_file(run_dir)["config"] if run_file.is_file() else {}
    for folder in _model_folders(round_dir):
        statement = model_folder_statement(
            ledger, config, run_name=Path(run_dir).resolve().name, server_round=server_round, weights=folder.name,
            shared_only=config.get("strategy") in PERSONALIZED_STRATEGIES,
        )
        write_json_atomic(folder / MODEL_PRIVACY_FILE, statement)


def verify_round(round_dir: Path, skip: set[str] = frozenset()) -> Sealed:
    """Verify every file of a sealed round but ``skip`` (paths relative to it),
    and refuse files that are not recorded. A round written before rounds were
    sealed passes unverified."""
    round_dir = Path(round_dir)
    sealed = round_seal(round_dir)
    if sealed.files is not None:
        for path in sorted(p for p in round_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(round_dir).as_posix()
            if rel not in skip and path.name != CHECKSUM_FILE:
                sealed.verify(rel)
    return sealed


def reseal_round(round_dir: Path, changed: set[str]) -> None:
    """Seal a published round again after the files ``changed`` were written
    into it, as ``synthfed flower collect-ledgers`` does. Every other file is
    verified first, so a damaged one is never blessed (call ``verify_round``
    before writing, too, so as not to write into a damaged round). A round
    written before rounds were sealed stays unsealed."""
    if verify_round(round_dir, changed).files is None:
        return
    for folder in _model_folders(round_dir):
        write_checksums(folder)
    write_checksums(Path(round_dir))


_TEMP_ROUND = re.compile(r"\.round-\d{4,}\.(\w+\.)?(tmp|old)")


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the round folders a killed owner of this run left under temporary
    names in ``rounds/`` (``.round-0003.<random>.tmp`` or ``.old``: only
    ``save_round`` makes such names). Call it holding the run's lock
    (``synthfed.locking.run_lock``), so that no live process is writing them."""
    rounds = Path(run_dir) / ROUNDS_DIR
    if not rounds.is_dir():
        return []
    stale = sorted(p for p in rounds.iterdir() if p.is_dir() and _TEMP_ROUND.fullmatch(p.name))
    for path in stale:
        shutil.rmtree(path)
    return stale


def _prune(rounds: Path, *, keep: int) -> None:
    done = sorted(p for p in rounds.iterdir() if p.is_dir() and _ROUND_NAME.fullmatch(p.name))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_round_dir(run_dir: Path) -> Path | None:
    """The round LATEST names (None before the first round). A LATEST that does
    not hold a round name, or names a round that is not there, is refused."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    if not latest.is_file():
        return None
    raw = latest.read_bytes()
    name = raw.decode("ascii", errors="replace").strip()
    newest = _newest_complete_round(run_dir)
    fix = (f"write {newest!r} (the newest complete round) into it, or retrain" if newest
           else "no complete round is left: retrain")
    if not _ROUND_NAME.fullmatch(name):
        shown = repr(raw[:40]) if len(raw) <= 40 else repr(raw[:40])[:-1] + "...'"
        raise IntegrityError(f"{latest} is damaged: it should name the last complete round (like round-0002) "
                             f"but holds {shown}; {fix}")
    path = run_dir / ROUNDS_DIR / name
    if not (path / "state.json").is_file():
        raise IntegrityError(f"{latest} names {name}, which is missing or incomplete; {fix}")
    return path


def _newest_complete_round(run_dir: Path) -> str | None:
    rounds = run_dir / ROUNDS_DIR
    names = sorted(p.name for p in rounds.glob("round-*") if _ROUND_NAME.fullmatch(p.name)
                   and (p / "state.json").is_file()) if rounds.is_dir() else []
    return names[-1] if names else None


def round_seal(round_dir: Path, info: dict | None = None) -> Sealed:
    """The verifying reader of a round's files. ``info`` (run.json) says
    whether the round must be sealed; read from the run when not given."""
    round_dir = Path(round_dir)
    if info is None:
        run_dir = round_dir.parent.parent
        info = read_run_file(run_dir) if (run_dir / RUN_FILE).is_file() else {}
    return Sealed(round_dir, required=info.get("integrity") == INTEGRITY, hint=_ROUND_HINT)


def load_round(round_dir: Path, spec: ModelSpec, *, shared_keys: set[str], local_keys: set[str]) -> RoundCheckpoint:
    """A round back in memory, every file verified against the round's
    checksums (rounds written before rounds were sealed: unverified). A missing
    ledger comes back as None: the engine decides whether that is allowed."""
    round_dir = Path(round_dir)
    sealed = round_seal(round_dir)
    state = sealed.read_json("state.json")
    global_state: dict[str, torch.Tensor] = {}
    global_ema: dict[str, torch.Tensor] = {}
    if shared_keys:
        g = load_tensors(sealed, f"global/model/{WEIGHTS_FILE}")
        e = load_tensors(sealed, f"global/ema/{WEIGHTS_FILE}")
        global_state = {k: g[k] for k in shared_keys}
        global_ema = {k: e[k] for k in shared_keys}
    local_states: dict[int, dict[str, torch.Tensor]] = {}
    local_emas: dict[int, dict[str, torch.Tensor]] = {}
    clients = round_dir / "clients"
    if local_keys and clients.is_dir():
        for f in sorted(clients.glob("client-*.safetensors")):
            cid = int(f.stem.split("-")[1])
            t = load_tensors(sealed, f"clients/{f.name}")
            local_states[cid] = {k[len("model."):]: v for k, v in t.items() if k.startswith("model.")}
            local_emas[cid] = {k[len("ema."):]: v for k, v in t.items() if k.startswith("ema.")}
    ledger = sealed.read_json(LEDGER_FILE) if (round_dir / LEDGER_FILE).is_file() else None
    try:
        return RoundCheckpoint(
            server_round=int(state["round"]),
            global_state=global_state,
            global_ema=global_ema,
            local_states=local_states,
            local_emas=local_emas,
            ema_steps={int(k): int(v) for k, v in state["ema_steps"].items()},
            history=list(state["history"]),
            ledger=ledger,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{round_dir / 'state.json'} is not a round's state ({exc!r}); {_ROUND_HINT}") from exc


def load_tensors(sealed: Sealed, rel: str) -> dict[str, torch.Tensor]:
    """A safetensors file of a sealed folder, verified, then parsed from the
    very bytes that were verified."""
    data = sealed.read_bytes(rel)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InputError(f"{sealed.folder / rel} is not a readable safetensors file "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {sealed.hint}") from exc


def model_folder_seal(path: Path) -> tuple[Sealed, str]:
    """(verifying reader, the folder's path inside it) for a model folder: its
    round's checksums when it sits in a run (rounds/round-N/global/ema), its
    own when it is a copy. A copy without a checksums.json reads unverified."""
    path = Path(path)
    round_dir = path.parent.parent
    if path.parent.name == "global" and (round_dir.parent.parent / RUN_FILE).is_file():
        return round_seal(round_dir), f"global/{path.name}/"
    return Sealed(path, required=False, hint="copy the folder again from its run, or retrain"), ""


def load_model_folder(path: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """``load_model`` after verifying the files it reads; a file that is not a
    model (a pickle renamed .safetensors, a truncated file) is refused by name."""
    path = Path(path)
    sealed, prefix = model_folder_seal(path)
    for name in ("config.json", MODEL_META_FILE, WEIGHTS_FILE):
        sealed.verify(prefix + name)
    try:
        return load_model(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path / WEIGHTS_FILE} (with {path / 'config.json'}) cannot be loaded as a model "
                         f"({first}); {sealed.hint}") from exc


def read_round_ledger(round_dir: Path, info: dict | None = None) -> dict | None:
    """The round's privacy ledger, verified. None only when the run has none by
    design: trained without DP, or a Flower run whose nodes have not published
    theirs (``synthfed flower collect-ledgers``). A DP run whose ledger is gone
    raises ``IntegrityError``: it must never read as non-private."""
    round_dir = Path(round_dir)
    run_dir = round_dir.parent.parent
    info = read_run_file(run_dir) if info is None else info
    sealed = round_seal(round_dir, info)
    if (round_dir / LEDGER_FILE).is_file():
        return sealed.read_json(LEDGER_FILE)
    config = info.get("config") or {}
    private = config.get("epsilon") is not None or config.get("strategy") == "pfdm"
    flower = info.get("engine") == "flower"
    if not sealed.recorded(LEDGER_FILE) and (flower or not private):
        return None
    rel = (round_dir / LEDGER_FILE).relative_to(run_dir).as_posix()
    if flower:
        raise IntegrityError(f"{run_dir}'s published ledger ({rel}) is missing: publish the nodes' ledgers again "
                             "with `synthfed flower collect-ledgers`")
    how = f"--epsilon {config['epsilon']:g}" if config.get("epsilon") is not None else "--strategy pfdm"
    raise IntegrityError(f"{run_dir} was trained with {how} but its ledger ({rel}) is missing: without it no "
                         "privacy guarantee can be stated (and the run must not be taken for non-private); restore "
                         "the file from a backup, or retrain")


def latest_ledger(run_dir: Path) -> tuple[Path | None, dict | None]:
    """(latest round, its ledger as ``read_round_ledger`` gives it); (None, None)
    before the first round. What ``synthfed privacy report`` reads."""
    run_dir = Path(run_dir)
    info = read_run_file(run_dir)
    round_dir = latest_round_dir(run_dir)
    if round_dir is None:
        return None, None
    return round_dir, read_round_ledger(round_dir, info)
