"""Run directories: one atomically published folder per completed round.

Layout of a run directory::

    run.json                 config, model spec, client sizes and data fingerprints
    LATEST                   name of the last complete round folder (atomic)
    rounds/round-0003/
        global/model/        diffusers folder (safetensors) of the shared weights
        global/ema/          the same for the EMA weights (what ``generate`` uses)
        global/*/privacy.json   the folder's guarantee as the ledger states it (travels with a copy)
        clients/client-07.safetensors   a client's local (never shared) tensors
        state.json           round, per-client EMA step counters, metrics history
        ledger.json          privacy ledger (when the run is private)

A round folder is written under a temporary name and renamed into place, and
``LATEST`` is replaced atomically afterwards, so a kill at any moment leaves
the previous complete round readable: at most the round in flight is lost.
Weights are safetensors only: nothing here is ever unpickled."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from synthfed.io import publish_dir_atomic, write_bytes_atomic, write_json_atomic
from synthfed.model.presets import ModelSpec, build_unet, save_model

RUN_FILE = "run.json"
MODEL_PRIVACY_FILE = "privacy.json"
LATEST_FILE = "LATEST"
ROUNDS_DIR = "rounds"
KEEP_ROUNDS = 2


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


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_run_file(run_dir: Path, info: dict) -> None:
    write_json_atomic(run_dir / RUN_FILE, info)


def read_run_file(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a synthfed run directory (no {RUN_FILE})")
    return json.loads(path.read_text())


def save_round(run_dir: Path, spec: ModelSpec, ckpt: RoundCheckpoint) -> Path:
    run_dir = Path(run_dir)
    rounds = run_dir / ROUNDS_DIR
    rounds.mkdir(parents=True, exist_ok=True)
    final = rounds / round_name(ckpt.server_round)
    tmp = rounds / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
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
        for cid, local in ckpt.local_states.items():
            tensors = {f"model.{k}": v for k, v in local.items()}
            tensors.update({f"ema.{k}": v for k, v in ckpt.local_emas[cid].items()})
            save_file(_contiguous(tensors), str(tmp / "clients" / client_file(cid)))
    state = {
        "round": ckpt.server_round,
        "ema_steps": {str(k): v for k, v in ckpt.ema_steps.items()},
        "history": ckpt.history,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if ckpt.ledger is not None:
        (tmp / "ledger.json").write_text(json.dumps(ckpt.ledger, indent=2))
    publish_dir_atomic(tmp, final)
    write_bytes_atomic(run_dir / LATEST_FILE, final.name.encode())
    _prune(rounds, keep=KEEP_ROUNDS)
    return final


def write_model_privacy(round_dir: Path, run_dir: Path, server_round: int, ledger: dict | None) -> None:
    """Write ``privacy.json`` into each model folder of ``round_dir``: a folder
    copied out of the run keeps its guarantee (or its lack of one). The run's
    public settings come from run.json, the figures from ``ledger`` only."""
    from synthfed.card import model_folder_statement
    from synthfed.config import PERSONALIZED_STRATEGIES

    run_file = Path(run_dir) / RUN_FILE
    config = json.loads(run_file.read_text())["config"] if run_file.is_file() else {}
    for folder in sorted((Path(round_dir) / "global").glob("*")):
        if not folder.is_dir():
            continue
        statement = model_folder_statement(
            ledger, config, run_name=Path(run_dir).resolve().name, server_round=server_round, weights=folder.name,
            shared_only=config.get("strategy") in PERSONALIZED_STRATEGIES,
        )
        write_json_atomic(folder / MODEL_PRIVACY_FILE, statement)


def _prune(rounds: Path, *, keep: int) -> None:
    done = sorted(p for p in rounds.iterdir() if p.is_dir() and p.name.startswith("round-"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_round_dir(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    latest = run_dir / LATEST_FILE
    if not latest.is_file():
        return None
    path = run_dir / ROUNDS_DIR / latest.read_text().strip()
    if not (path / "state.json").is_file():
        raise RuntimeError(f"{latest} names {path.name}, which is incomplete; the run directory is damaged")
    return path


def load_round(round_dir: Path, spec: ModelSpec, *, shared_keys: set[str], local_keys: set[str]) -> RoundCheckpoint:
    round_dir = Path(round_dir)
    state = json.loads((round_dir / "state.json").read_text())
    global_state: dict[str, torch.Tensor] = {}
    global_ema: dict[str, torch.Tensor] = {}
    if shared_keys:
        g = load_file(str(_weights_file(round_dir / "global" / "model")))
        e = load_file(str(_weights_file(round_dir / "global" / "ema")))
        global_state = {k: g[k] for k in shared_keys}
        global_ema = {k: e[k] for k in shared_keys}
    local_states: dict[int, dict[str, torch.Tensor]] = {}
    local_emas: dict[int, dict[str, torch.Tensor]] = {}
    clients = round_dir / "clients"
    if local_keys and clients.is_dir():
        for f in sorted(clients.glob("client-*.safetensors")):
            cid = int(f.stem.split("-")[1])
            t = load_file(str(f))
            local_states[cid] = {k[len("model."):]: v for k, v in t.items() if k.startswith("model.")}
            local_emas[cid] = {k[len("ema."):]: v for k, v in t.items() if k.startswith("ema.")}
    ledger_path = round_dir / "ledger.json"
    return RoundCheckpoint(
        server_round=int(state["round"]),
        global_state=global_state,
        global_ema=global_ema,
        local_states=local_states,
        local_emas=local_emas,
        ema_steps={int(k): int(v) for k, v in state["ema_steps"].items()},
        history=list(state["history"]),
        ledger=json.loads(ledger_path.read_text()) if ledger_path.is_file() else None,
    )


def _weights_file(model_dir: Path) -> Path:
    path = model_dir / "diffusion_pytorch_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return path
