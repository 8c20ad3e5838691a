"""One round's averaging under Flower's SecAgg+ (Bell et al. 2020).

Flower's ``SecAggPlusWorkflow`` runs the protocol (key setup, secret shares,
masked and quantized uploads, unmasking, recovery of dropped clients' masks)
and hands the *sum* of the weighted updates to a legacy ``Strategy``. This
module is that strategy's thin adapter: it sends our FitIns to the round's
nodes and takes back the average. The server never sees one client's update.

Precision: every parameter is clipped to ``[-secagg-clip, secagg-clip]`` and
quantized to 2**22 levels before masking, so the average is exact up to
about ``2 * clip / 2**22`` per entry (~4e-6 at the default clip 8) times the
number of clients; weights larger than the clip would be clipped, which we
check before the round rather than let it pass silently."""

from __future__ import annotations

from flwr.app import ConfigRecord
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from synthfed.federated.loop import BUDGET_SPENT, RoundOutcome
from synthfed.federated.strategy import FitResult
from synthfed.flower.records import parameters_to_state, train_ins

SECURE_SUM = -1  # client id of the one result a SecAgg+ round yields


class _RoundAdapter(LegacyStrategy):
    """configure_fit: our chosen nodes; aggregate_fit: keep the unmasked average."""

    def __init__(self, proxies: list[tuple[GridClientProxy, FitIns]]) -> None:
        self.proxies = proxies
        self.average: Parameters | None = None
        self.replies: list[tuple[int, int, dict]] = []  # (node id, num_examples, metrics)

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.proxies

    def aggregate_fit(self, server_round, results, failures):
        # SecAgg+ sets every result's parameters to the same unmasked average.
        self.replies = [(proxy.node_id, res.num_examples, dict(res.metrics)) for proxy, res in results]
        live = [res for _, res in results if res.num_examples > 0]
        if live:
            self.average = live[0].parameters
        return self.average, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


def fit_secagg(server, server_round: int, targets: dict[int, int], parameters: Parameters, keys, like):
    options = server.options
    biggest = max((abs(a).max() for a in parameters_to_ndarrays(parameters) if a.size), default=0.0)
    if biggest >= options.secagg_clip:
        raise RuntimeError(f"a shared weight has magnitude {biggest:.3g}, beyond secagg-clip {options.secagg_clip}: "
                           "SecAgg+ would clip it; raise secagg-clip")
    fitins = train_ins(parameters, server_round=server_round, run_name=options.run_name, config_json=server.config_json)
    run_id = server.context.run_id if server.context is not None else 0
    proxies = [(GridClientProxy(nid, server.grid, run_id), fitins) for cid, nid in sorted(targets.items())]
    adapter = _RoundAdapter(proxies)
    context = LegacyContext(server.context, strategy=adapter)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, keep_input=True)
    n = len(targets)
    shares = options.secagg_shares if options.secagg_shares <= 1 else int(options.secagg_shares)
    threshold = options.secagg_threshold if options.secagg_threshold <= 1 else int(options.secagg_threshold)
    max_weight = max(int(server.described[cid]["num-examples"]) for cid in targets)
    workflow = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold, max_weight=max_weight,
                                  clipping_range=options.secagg_clip,
                                  timeout=options.round_timeout or None)
    if n >= 2:
        workflow(server.grid, context)
    cid_of = {nid: cid for cid, nid in targets.items()}
    replied = [cid_of[nid] for nid, num, _ in adapter.replies if num > 0]
    failures = {cid: "dropped out of the SecAgg+ round" for cid in targets if cid not in
                {cid_of[nid] for nid, _, _ in adapter.replies}}
    failures.update({cid_of[nid]: BUDGET_SPENT for nid, num, _ in adapter.replies if num == 0})
    if n < 2:
        failures.update({cid: "SecAgg+ needs at least 2 clients in a round" for cid in targets})
    metrics = {cid_of[nid]: m for nid, num, m in adapter.replies if num > 0}
    results = []
    if adapter.average is not None and replied:
        state, ema = parameters_to_state(keys, adapter.average, like)
        shared = dict(state)
        shared.update({f"ema::{k}": v for k, v in ema.items()})
        total = sum(num for _, num, _ in adapter.replies)
        results = [FitResult(client_id=SECURE_SUM, num_examples=total, shared=shared, metrics={})]
    return RoundOutcome(results=results, metrics=metrics, failures=failures)
