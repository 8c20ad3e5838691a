"""A Flower ``Grid`` that delivers messages to ClientApps in this process.

Unit tests of the ServerApp logic (sampling, aggregation order, SecAgg+,
failures) without SuperLink and SuperNode processes; the deployment test in
``test_flower_deployment.py`` runs the real ones."""

from __future__ import annotations

import copy
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class LoopbackGrid:
    def __init__(self, client_app, node_configs: dict[int, dict], *, run_config: dict | None = None) -> None:
        self.app = client_app
        # Messages take their run and source from the process's task identity.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config=run_config or {})
            for nid, cfg in node_configs.items()
        }
        self.dead: set[int] = set()
        self.fail_rounds: dict[int, set[int]] = {}  # node id -> rounds whose train messages make it crash
        self.replies: list[Message] = []
        self.sent: list[Message] = []
        self.waiting: dict[str, Message] = {}  # message id -> its reply, until pulled

    def get_node_ids(self):
        return [nid for nid in self.contexts if nid not in self.dead]

    def _deliver(self, msg: Message) -> Message | None:
        nid = msg.metadata.dst_node_id
        if nid in self.dead:  # the SuperLink answers for a node it marked offline
            return Message(Error(code=5, reason="node unavailable (offline)"), reply_to=msg)
        try:
            fitins = msg.content.config_records.get("fitins.config")
            if fitins is not None and int(fitins["round"]) in self.fail_rounds.get(nid, ()):
                raise RuntimeError("node crashed")
            return self.app(msg, self.contexts[nid])
        except Exception as exc:  # the SuperNode turns a ClientApp exception into an error reply
            return Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the real Grid does on push
            self.sent.append(msg)
            # A copy, as over the wire: the sender's records are not the receiver's.
            reply = self._deliver(copy.deepcopy(msg))
            if reply is not None:
                self.replies.append(reply)
                replies.append(reply)
        return replies

    def push_messages(self, messages):
        """Delivered at once; the replies wait to be pulled, as on a SuperLink."""
        ids = []
        for msg in messages:
            for reply in self.send_and_receive([msg]):
                self.waiting[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.waiting.pop(mid) for mid in list(message_ids) if mid in self.waiting]
