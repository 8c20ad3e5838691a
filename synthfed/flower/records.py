"""What travels between ServerApp and ClientApp, and nothing more.

Train messages use Flower's FitIns/FitRes record layout, the one its SecAgg+
workflow and client mod speak, so the same ClientApp serves plain and
secure aggregation. Parameters are a list of arrays; both ends derive the key
order from the run's strategy (sorted shared keys: weights, then their EMA),
so names never need to travel. Local (head) entries are never in the list.

Query messages carry the run's configuration to a node and bring back what
the server may know of it: its client id, record count, image shape, class
names. Never a record, nor a hash of the records (the node checks its own
data did not change)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

SYNTHFED = "synthfed"  # the config record of a query


def state_to_parameters(keys: Sequence[str], state: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> Parameters:
    arrays = [state[k].detach().cpu().numpy() for k in keys] + [ema[k].detach().cpu().numpy() for k in keys]
    return ndarrays_to_parameters(arrays)


def parameters_to_state(keys: Sequence[str], parameters: Parameters, dtypes: dict[str, torch.dtype] | None = None
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    arrays = parameters_to_ndarrays(parameters)
    if len(arrays) != 2 * len(keys):
        raise ValueError(f"expected {2 * len(keys)} arrays (weights and EMA of {len(keys)} shared entries), "
                         f"got {len(arrays)}: server and node disagree on the model or strategy")

    def tensor(k: str, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(a, copy=True))
        return t if dtypes is None else t.to(dtypes[k])

    state = {k: tensor(k, a) for k, a in zip(keys, arrays[: len(keys)])}
    ema = {k: tensor(k, a) for k, a in zip(keys, arrays[len(keys):])}
    return state, ema


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
