"""The Flower engine: the simulation's round loop, with nodes instead of calls.

``FlowerServer`` drives the same ``Strategy`` (``configure_fit`` /
``aggregate_fit``) and writes the same run directory as the in-process engine;
only the client call goes over Flower's ``Grid``. Same seeds, same sampling,
same client code, and results aggregated in client-id order, so a Flower run
gives the simulation's weights (SecAgg+ quantizes: within its stated step).

What the server holds: the shared weights, the round history, and per node
only what ``query`` returned (id, size, shape, class names). It never holds a
ledger or a local head; those stay on the nodes (``synthfed.flower.node``).

Failures: a node that errors, dies or times out is a failed client of that
round; the round still completes when at least min(min-clients, chosen) replied.
Otherwise the run stops with its last complete round on disk (resume later)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from synthfed.checkpoint import RoundCheckpoint, latest_round_dir, load_round, read_run_file, save_round, write_run_file
from synthfed.config import TrainConfig
from synthfed.federated.simulation import build_strategy, initial_state, spec_from_shape
from synthfed.federated.strategy import FitResult
from synthfed.flower.records import (
    content_to_fitres,
    fitins_to_content,
    parameters_to_state,
    query_content,
    read_description,
    state_to_parameters,
    train_ins,
)
from synthfed.flower.run_config import FlowerOptions
from synthfed.progress import Message as Note
from synthfed.progress import Progress, TaskAdvanced, TaskFinished, TaskStarted, null_progress


class RoundFailed(RuntimeError):
    """Too few clients replied; the last complete round is kept."""


@dataclass
class RoundOutcome:
    """What came back from a round: results to aggregate (one per client, or
    one secure sum under SecAgg+), who contributed, who failed and why."""

    results: list[FitResult]
    replied: list[int]
    failures: dict[int, str]
    metrics: dict[int, dict] = field(default_factory=dict)


def _replies_by_destination(grid: Grid, msgs: list[Message], timeout: float | None) -> dict[int, Message]:
    """Replies keyed by the node each message went to. Matched by message id:
    an error reply for a dead node comes from the SuperLink, not from the node."""
    replies = list(grid.send_and_receive(msgs, timeout=timeout))
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}  # ids are given on push
    return {sent[r.metadata.reply_to_message_id]: r for r in replies}


class FlowerServer:
    def __init__(self, grid: Grid, config: TrainConfig, options: FlowerOptions, *, context=None,
                 progress: Progress = null_progress) -> None:
        self.grid = grid
        self.config = config
        self.options = options
        self.context = context
        self.progress = progress
        self.config_json = json.dumps(config.to_dict(), sort_keys=True)
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.described: dict[int, dict] = {}  # client id -> what its node told
        self.node_ids_seen: set[int] = set()

    # -- nodes ---------------------------------------------------------------
    def _query(self, node_ids: list[int]) -> None:
        if not node_ids:
            return
        msgs = [Message(query_content(run_name=self.options.run_name, config_json=self.config_json),
                        dst_node_id=nid, message_type=MessageType.QUERY) for nid in node_ids]
        self.node_ids_seen.update(node_ids)
        for nid, reply in _replies_by_destination(self.grid, msgs, self.options.node_wait).items():
            if reply.has_error():
                self.progress(Note(f"node {nid} refused the run: {reply.error.reason}", "warning"))
                continue
            d = read_description(reply.content)
            cid = int(d["client-id"])
            if cid in self.nodes and self.nodes[cid] != nid and self.nodes[cid] in self._live():
                raise RuntimeError(f"two nodes claim client {cid} ({self.nodes[cid]} and {nid}); "
                                   "give each SuperNode its own partition-id")
            if cid in self.described and self.described[cid]["num-examples"] != d["num-examples"]:
                raise RuntimeError(f"client {cid} came back with another number of records than it started with")
            self.nodes[cid] = nid
            self.described[cid] = d

    def _live(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def connect(self) -> None:
        """Wait for ``clients`` nodes (or ``node-wait`` seconds), then query them."""
        want = self.config.num_clients
        deadline = time.monotonic() + self.options.node_wait
        while len(self._live()) < want and time.monotonic() < deadline:
            time.sleep(0.5)
        self._query(sorted(self._live()))
        if not self.nodes:
            raise RuntimeError("no node accepted the run")
        shapes = {(d["channels"], d["height"], d["width"]) for d in self.described.values()}
        names = {d["class-names"] for d in self.described.values()}
        if len(shapes) != 1 or len(names) != 1:
            raise RuntimeError(f"nodes disagree on image shape {sorted(shapes)} or class names; "
                               "give every node the same --image-size and the same classes")
        self.progress(Note(f"{len(self.nodes)} of {want} clients connected: "
                           + ", ".join(f"client {c} (n={self.described[c]['num-examples']})" for c in sorted(self.nodes))))

    def refresh(self) -> None:
        """Query nodes that joined since (a restarted SuperNode gets a new id)."""
        new = sorted(self._live() - self.node_ids_seen)
        self._query(new)

    # -- one round -------------------------------------------------------------
    def targets(self, chosen: list[int]) -> tuple[dict[int, int], dict[int, str]]:
        """(client id -> node id for the chosen clients with a live node, failures
        for the others); nodes that joined since are queried first."""
        self.refresh()
        live = self._live()
        targets = {cid: self.nodes[cid] for cid in chosen if cid in self.nodes and self.nodes[cid] in live}
        return targets, {cid: "no node connected" for cid in chosen if cid not in targets}

    def train(self, targets: dict[int, int], fitins) -> tuple[dict[int, object], dict[int, str]]:
        """Send the same train instruction to every target: (FitRes by client, failures)."""
        content = fitins_to_content(fitins)
        msgs = [Message(copy.deepcopy(content), dst_node_id=nid, message_type=MessageType.TRAIN)
                for nid in targets.values()]
        by_node = {nid: cid for cid, nid in targets.items()}
        replies = _replies_by_destination(self.grid, msgs, self.options.round_timeout or None)
        ok, failures = {}, {}
        for nid, cid in by_node.items():
            reply = replies.get(nid)
            if reply is None:
                failures[cid] = "no reply (timeout)"
            elif reply.has_error():
                failures[cid] = str(reply.error.reason)
            else:
                ok[cid] = content_to_fitres(reply.content)
        return ok, failures

    def fit_plain(self, server_round: int, targets: dict[int, int], parameters, keys, dtypes) -> RoundOutcome:
        ok, failures = self.train(targets, train_ins(parameters, server_round=server_round,
                                                     run_name=self.options.run_name, config_json=self.config_json))
        results = []
        for cid, fitres in sorted(ok.items()):
            if fitres.num_examples == 0:
                failures[cid] = "skipped: privacy budget spent"
                continue
            state, ema = parameters_to_state(keys, fitres.parameters, dtypes)
            shared = dict(state)
            shared.update({f"ema::{k}": v for k, v in ema.items()})
            results.append(FitResult(client_id=cid, num_examples=fitres.num_examples, shared=shared,
                                     metrics=dict(fitres.metrics)))
        return RoundOutcome(results=results, replied=[r.client_id for r in results], failures=failures,
                            metrics={r.client_id: r.metrics for r in results})

    # -- the run ---------------------------------------------------------------
    def run(self) -> dict:
        """The whole run, owning the run directory (one server per run directory)."""
        from synthfed.locking import run_lock

        with run_lock(self.options.run_dir, "synthfed flower run"):
            return self._run()

    def _run(self) -> dict:
        config, options = self.config, self.options
        self.connect()
        any_cid = min(self.described)
        d = self.described[any_cid]
        spec = spec_from_shape(config, (d["channels"], d["height"], d["width"]), d["class-names"])
        if config.strategy == "pfdm":
            from synthfed.flower.pfdm_server import run_pfdm_flower

            return run_pfdm_flower(self, spec)
        _, init = initial_state(config, spec)
        strategy = build_strategy(config, config.num_clients, list(init))
        keys = sorted(k for k in init if strategy.is_shared(k))
        dtypes = {k: init[k].dtype for k in keys}
        global_state = {k: init[k] for k in keys}
        global_ema = {k: init[k].clone() for k in keys}
        run_dir = Path(options.run_dir)
        history, start = self.open_run_dir(run_dir, spec)
        if start > 1:
            ckpt = load_round(latest_round_dir(run_dir), spec, shared_keys=set(keys), local_keys=set())
            global_state, global_ema = ckpt.global_state or global_state, ckpt.global_ema or global_ema
        self.progress(TaskStarted("round", "rounds", config.rounds))
        if start > 1:
            self.progress(TaskAdvanced("round", start - 1))
        last_dir = None
        for server_round in range(start, config.rounds + 1):
            rng = np.random.default_rng([config.seed, server_round])
            chosen = strategy.configure_fit(server_round=server_round, client_ids=range(config.num_clients), rng=rng)
            targets, failures = self.targets(chosen)
            parameters = state_to_parameters(keys, global_state, global_ema)
            if options.secagg:
                from synthfed.flower.secagg import fit_secagg

                outcome = fit_secagg(self, server_round, targets, parameters, keys, dtypes)
            else:
                outcome = self.fit_plain(server_round, targets, parameters, keys, dtypes)
            failures.update(outcome.failures)
            for cid, why in sorted(failures.items()):
                self.progress(Note(f"round {server_round}: client {cid} failed: {why}", "warning"))
            need = min(options.min_clients, len(chosen))
            if len(outcome.replied) < need:
                raise RoundFailed(f"round {server_round}: {len(outcome.replied)} of {len(chosen)} clients replied, "
                                  f"fewer than min-clients {need}; the run stops after round {server_round - 1} "
                                  "(resume later)")
            results = sorted(outcome.results, key=lambda r: r.client_id)
            if results and keys:
                current = {**global_state, **{f"ema::{k}": v for k, v in global_ema.items()}}
                merged = strategy.aggregate_fit(server_round=server_round, results=results, current=current)
                global_state = {k: merged[k] for k in keys}
                global_ema = {k: merged[f"ema::{k}"] for k in keys}
            losses = [float(m["loss"]) for m in outcome.metrics.values() if m.get("loss") == m.get("loss")]
            history.append({
                "round": server_round, "chosen": chosen, "replied": sorted(outcome.replied),
                "failed": {str(c): w for c, w in sorted(failures.items())},
                "clients": {str(c): m for c, m in sorted(outcome.metrics.items())},
                "mean_loss": float(np.mean(losses)) if losses else None,
            })
            last_dir = save_round(run_dir, spec, RoundCheckpoint(
                server_round=server_round, global_state=global_state, global_ema=global_ema, local_states={},
                local_emas={}, ema_steps={}, history=history, ledger=None))
            self.progress(TaskAdvanced("round", 1, {"round": server_round, "loss": history[-1]["mean_loss"]}))
        self.progress(TaskFinished("round"))
        return {"run_dir": str(run_dir), "last_round_dir": str(last_dir), "history": history}

    def open_run_dir(self, run_dir, spec, extra: dict | None = None) -> tuple[list[dict], int]:
        """(history, first round to run): a new run directory, or the one to resume."""
        latest = latest_round_dir(run_dir) if run_dir.exists() else None
        if latest is not None and not self.options.resume:
            raise FileExistsError(f"{run_dir} already holds a run; set resume=true to continue it")
        if latest is not None:
            info = read_run_file(run_dir)
            if info["config"] != self.config.to_dict() or info["flower"]["run-name"] != self.options.run_name:
                raise RuntimeError("resume with the configuration and run-name the run started with")
            state = json.loads((latest / "state.json").read_text())
            self.progress(Note(f"resuming {run_dir} after round {state['round']}"))
            return list(state["history"]), int(state["round"]) + 1
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(run_dir, {
            "format": 1,
            "engine": "flower",
            "config": self.config.to_dict(),
            "model": spec.to_dict(),
            "data": "held by the Flower nodes",
            "flower": {"run-name": self.options.run_name, "secagg": self.options.secagg},
            "clients": [{"id": cid, "n": int(d["num-examples"])} for cid, d in sorted(self.described.items())],
            **(extra or {}),
        })
        return [], 1


def log_progress(*, info: Callable[[str], None], warn: Callable[[str], None]) -> Progress:
    """The ServerApp's progress: one log line per round and per note."""
    started = {"t": time.monotonic()}

    def report(event) -> None:
        if isinstance(event, Note):
            (warn if event.level == "warning" else info)(event.text)
        elif isinstance(event, TaskAdvanced) and event.info and "round" in event.info:
            info(f"round {event.info['round']} done, mean loss {event.info.get('loss')}, "
                f"{time.monotonic() - started['t']:.1f} s")

    return report
