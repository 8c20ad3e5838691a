"""The Flower engine: the one round loop (``synthfed.federated.loop``) over nodes.

``FlowerServer`` keeps track of the nodes (which node is which client, who is
alive, what each told about itself), opens the run directory the way the
simulation does (``synthfed.run_dir``), and runs ``RoundLoop`` with a Flower
transport (``synthfed.flower.transport``): the same ``Strategy``, the same
seeds, the same client code and aggregation in client-id order, so a Flower
run gives the simulation's weights (SecAgg+ quantizes: within its stated step).

What the server holds: the shared weights, the round history, and per node
only what ``query`` returned (id, size, shape, class names). It never holds a
ledger or a local head; those stay on the nodes (``synthfed.flower.node``).

Failures: a node that errors, dies or times out is a failed client of that
round; the round still completes when at least min(min-clients, chosen) replied.
Otherwise the run stops with its last complete round on disk (resume later).

At the end of a personalized run (fedper, fedrep, local, pfdm) every node
that served it gets the final shared weights (``deliver_final``), so that it
can sample its own model at home (``synthfed flower generate``). That costs
no privacy budget (nothing comes back but the round stored) and changes
nothing the run computed; a node that is down then is noted, not fatal."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from collections.abc import Callable

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from synthfed.checkpoint import latest_round_dir, load_round
from synthfed.config import PERSONALIZED_STRATEGIES, TrainConfig
from synthfed.federated.loop import RoundFailed, RoundLoop, ServerState  # noqa: F401  (RoundFailed: re-exported)
from synthfed.federated.setup import build_strategy, initial_state, spec_from_shape
from synthfed.flower.records import (
    DELIVER_TYPE,
    content_to_fitres,
    delivery_content,
    fitins_to_content,
    query_content,
    read_description,
)
from synthfed.flower.run_config import FlowerOptions
from synthfed.flower.transport import FlowerTransport
from synthfed.progress import Message as Note
from synthfed.run_dir import open_run_dir
from synthfed.run_info import RunInfo
from synthfed.progress import Progress, TaskAdvanced, null_progress


REPLY_POLL = 0.25  # seconds between asks for replies (Flower's send_and_receive waits 3 s between asks)


def _replies_by_destination(grid: Grid, msgs: list[Message], timeout: float | None) -> dict[int, Message]:
    """Replies keyed by the node each message went to. Matched by message id:
    an error reply for a dead node comes from the SuperLink, not from the node.
    Asked for every REPLY_POLL s (one small request to the SuperLink each)."""
    grid.push_messages(msgs)
    sent = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}  # ids are given on push
    pending, replies = set(sent), []
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {r.metadata.reply_to_message_id for r in got}
        if pending and deadline is not None and time.monotonic() >= deadline:
            break
        if pending:
            time.sleep(REPLY_POLL)
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
        """Connected nodes this server may address: with ``allowed-nodes``, only
        those (Flower's Control API lets anyone who reaches it register a node)."""
        live = set(self.grid.get_node_ids())
        allowed = self.options.allowed_node_ids
        return live if allowed is None else live & allowed

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
        ok, failures = self.ask(targets, fitins_to_content(fitins), MessageType.TRAIN)
        return {cid: content_to_fitres(reply.content) for cid, reply in ok.items()}, failures

    def ask(self, targets: dict[int, int], content, message_type: str) -> tuple[dict[int, Message], dict[int, str]]:
        """The same content to every target node (a copy each, as over the wire):
        (replies by client, why each other client failed)."""
        msgs = [Message(copy.deepcopy(content), dst_node_id=nid, message_type=message_type)
                for nid in targets.values()]
        replies = _replies_by_destination(self.grid, msgs, self.options.round_timeout or None) if msgs else {}
        ok, failures = {}, {}
        for cid, nid in targets.items():
            reply = replies.get(nid)
            if reply is None:
                failures[cid] = "no reply (timeout)"
            elif reply.has_error():
                failures[cid] = str(reply.error.reason)
            else:
                ok[cid] = reply
        return ok, failures

    # -- the run ---------------------------------------------------------------
    def run(self) -> dict:
        """The whole run, owning the run directory (one server per run directory)."""
        from synthfed.locking import run_lock

        with run_lock(self.options.run_dir, "synthfed flower run"):
            return self._run()

    def _run(self) -> dict:
        config = self.config
        self.connect()
        d = self.described[min(self.described)]
        spec = spec_from_shape(config, (d["channels"], d["height"], d["width"]), d["class-names"])
        if config.strategy == "pfdm":
            from synthfed.flower.pfdm_server import run_pfdm_flower

            return run_pfdm_flower(self, spec)
        _, init = initial_state(config, spec)
        strategy = build_strategy(config, config.num_clients, list(init))
        keys = sorted(k for k in init if strategy.is_shared(k))
        state = ServerState(global_state={k: init[k] for k in keys}, global_ema={k: init[k].clone() for k in keys},
                            history=[])
        run_dir = Path(self.options.run_dir)
        state.history, state.next_round = self.open_run_dir(run_dir, spec)
        if state.next_round > 1:
            ckpt = load_round(latest_round_dir(run_dir), spec, shared_keys=set(keys), local_keys=set())
            state.global_state = ckpt.global_state or state.global_state
            state.global_ema = ckpt.global_ema or state.global_ema
        transport = FlowerTransport(self, keys=keys, like={k: init[k] for k in keys})
        return self.run_loop(strategy, transport, state, run_dir, spec)

    def run_loop(self, strategy, transport, state: ServerState, run_dir: Path, spec, *, t0: int | None = None) -> dict:
        """The one round loop over this server's nodes, then (personalized runs)
        the final shared weights to every node that served the run."""
        loop = RoundLoop(strategy=strategy, transport=transport, run_dir=run_dir, spec=spec,
                         num_clients=self.config.num_clients, seed=self.config.seed,
                         min_clients=self.options.min_clients, progress=self.progress)
        last_dir = loop.run(state, rounds=self.config.rounds)
        self.deliver_final(state, t0=t0)
        return {"run_dir": str(run_dir), "last_round_dir": str(last_dir), "history": state.history}

    def deliver_final(self, state: ServerState, *, t0: int | None = None) -> dict[int, str]:
        """Send the final shared weights (and their EMA; PFDM: the shared
        denoiser and t0; ``local``: none) to each node that served a finished
        personalized run. Sent again when a finished run is resumed: the node
        stores the same round again. Returns why each client did not store them."""
        final = state.next_round - 1
        if self.config.strategy not in PERSONALIZED_STRATEGIES or final < self.config.rounds or final < 1:
            return {}
        targets, failures = self.targets(sorted(self.nodes))
        content = delivery_content(run_name=self.options.run_name, config_json=self.config_json, server_round=final,
                                   state=state.global_state, ema=state.global_ema, t0=t0)
        failures.update(self.ask(targets, content, DELIVER_TYPE)[1])
        for cid, why in sorted(failures.items()):
            self.progress(Note(f"final weights of round {final}: client {cid} did not store them ({why}); it cannot "
                               "sample its model until it does (resume the finished run to send them again)", "warning"))
        stored = sorted(set(targets) - set(failures))
        if stored:
            self.progress(Note(f"final weights of round {final} stored by clients {', '.join(map(str, stored))}"))
        return failures

    def open_run_dir(self, run_dir, spec, extra: dict | None = None) -> tuple[list[dict], int]:
        """(history, first round to run): a new run directory, or the one to resume."""
        sizes = {cid: int(d["num-examples"]) for cid, d in self.described.items()}
        info = RunInfo.for_flower(self.config.to_dict(), spec.to_dict(), sizes, run_name=self.options.run_name,
                                  secagg=self.options.secagg, **(extra or {}))
        latest = open_run_dir(run_dir, info, resume=self.options.resume, resume_flag="resume=true",
                              check=lambda saved: saved.check_same_run(info, resume_hint="Flower run"))
        if latest is None:
            return [], 1
        state = json.loads((latest / "state.json").read_text())
        self.progress(Note(f"resuming {run_dir} after round {state['round']}"))
        return list(state["history"]), int(state["round"]) + 1


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
