"""What travels between ServerApp and ClientApp, and nothing more.

Train messages use Flower's FitIns/FitRes record layout, the one its SecAgg+
workflow and client mod speak, so the same ClientApp serves plain and
secure aggregation. Parameters are a list of arrays; both ends derive the key
order from the run's strategy (sorted shared keys: weights, then their EMA),
so names never need to travel. Local (head) entries are never in the list.

Query messages carry the run's configuration to a node and bring back what
the server may know of it: its client id, record count, image shape, class
names. Never a record, nor a hash of the records (the node checks its own
data did not change).

After the last round of a personalized run, a ``query.deliver`` message
brings each node the run's final shared weights (by name, with their EMA;
PFDM: the shared high-noise denoiser and t0), so that it can sample its own
model at home. Its reply says only which round the node stored."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

SYNTHFED = "synthfed"  # the config record of a query
DELIVER = "deliver"  # the query action that delivers a run's final shared weights
DELIVER_TYPE = f"{MessageType.QUERY}.{DELIVER}"
_SHARED, _SHARED_EMA = "synthfed.shared", "synthfed.shared-ema"


def state_to_parameters(keys: Sequence[str], state: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> Parameters:
    """One flat array: weights, then EMA, in key order. Flower moves each array
    as its own object (an HTTPS request each way, per node); one array per
    message instead of two per parameter tensor is what keeps a round's
    transfer time small. Both ends know the shapes, so only values travel."""
    parts = [state[k].detach().cpu().reshape(-1) for k in keys] + [ema[k].detach().cpu().reshape(-1) for k in keys]
    flat = np.concatenate([p.numpy() for p in parts]) if parts else np.zeros(0, dtype=np.float32)
    return ndarrays_to_parameters([flat])


def parameters_to_state(keys: Sequence[str], parameters: Parameters, like: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Back to tensors shaped and typed as ``like`` (the receiver's own model)."""
    arrays = parameters_to_ndarrays(parameters)
    if not keys and all(a.size == 0 for a in arrays):  # nothing is shared (PFDM's local stage)
        return {}, {}
    sizes = [like[k].numel() for k in keys]
    if len(arrays) != 1 or arrays[0].ndim != 1 or arrays[0].size != 2 * sum(sizes):
        got = [a.shape for a in arrays][:3]
        raise ValueError(f"expected one array of {2 * sum(sizes)} values (weights and EMA of {len(keys)} shared "
                         f"entries), got {len(arrays)} arrays {got}: server and node disagree on the model or strategy")
    flat = torch.from_numpy(np.array(arrays[0], copy=True))
    pieces = torch.split(flat, sizes + sizes)
    tensors = [piece.reshape(like[k].shape).to(like[k].dtype) for k, piece in zip([*keys, *keys], pieces)]
    return dict(zip(keys, tensors[: len(keys)])), dict(zip(keys, tensors[len(keys):]))


def train_ins(parameters: Parameters, *, server_round: int, run_name: str, config_json: str, stage: str = "fit",
              t0: int | None = None) -> FitIns:
    """``stage``: "fit" (a round of local training) or "upload" (PFDM's release);
    ``t0``: PFDM's hand-off timestep, which each node checks against its budget."""
    config = {"round": server_round, "run-name": run_name, "config": config_json, "stage": stage}
    if t0 is not None:
        config["t0"] = t0
    return FitIns(parameters=parameters, config=config)


def no_parameters() -> Parameters:
    return Parameters(tensors=[], tensor_type="numpy.ndarray")


def fitins_to_content(fitins: FitIns) -> RecordDict:
    return compat.fitins_to_recorddict(fitins, keep_input=True)


def content_to_fitins(content: RecordDict) -> FitIns:
    return compat.recorddict_to_fitins(content, keep_input=True)


def fitres_content(parameters: Parameters, *, num_examples: int, metrics: dict) -> RecordDict:
    clean = {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()}
    return compat.fitres_to_recorddict(
        FitRes(status=Status(code=Code.OK, message=""), parameters=parameters, num_examples=num_examples,
               metrics=clean),
        keep_input=True,
    )


def content_to_fitres(content: RecordDict) -> FitRes:
    return compat.recorddict_to_fitres(content, keep_input=True)


def query_content(*, run_name: str, config_json: str) -> RecordDict:
    return RecordDict({SYNTHFED: ConfigRecord({"run-name": run_name, "config": config_json})})


def read_query(content: RecordDict) -> tuple[str, str]:
    record = content.config_records[SYNTHFED]
    return str(record["run-name"]), str(record["config"])


def description_content(description: dict) -> RecordDict:
    return RecordDict({SYNTHFED: ConfigRecord(description)})


def read_description(content: RecordDict) -> dict:
    d = dict(content.config_records[SYNTHFED])
    d["class-names"] = tuple(json.loads(str(d["class-names"])))
    return d


def delivery_content(*, run_name: str, config_json: str, server_round: int, state: dict[str, torch.Tensor],
                     ema: dict[str, torch.Tensor], t0: int | None = None) -> RecordDict:
    """The final shared weights of round ``server_round`` (empty for ``local``), named."""
    config = {"run-name": run_name, "config": config_json, "round": server_round}
    if t0 is not None:
        config["t0"] = t0
    return RecordDict({SYNTHFED: ConfigRecord(config),
                       _SHARED: ArrayRecord.from_torch_state_dict(dict(sorted(state.items()))),
                       _SHARED_EMA: ArrayRecord.from_torch_state_dict(dict(sorted(ema.items())))})


def read_delivery(content: RecordDict) -> dict:
    """{run_name, config_json, round, t0 (None but for PFDM), state, ema}."""
    record = content.config_records[SYNTHFED]
    return {"run_name": str(record["run-name"]), "config_json": str(record["config"]), "round": int(record["round"]),
            "t0": int(record["t0"]) if "t0" in record else None,
            "state": _tensors(content.array_records[_SHARED]), "ema": _tensors(content.array_records[_SHARED_EMA])}


def _tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def delivery_reply(stored_round: int) -> RecordDict:
    return RecordDict({SYNTHFED: ConfigRecord({"stored-round": stored_round})})
