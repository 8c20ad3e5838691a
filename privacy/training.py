"""The privacy side of a training run: calibration, DP-SGD steppers, ledger.

``PrivateTraining.plan`` turns ``--epsilon/--delta`` into a noise multiplier
per client *before* training, for the most steps the client could take
(every round, every local epoch: partial participation is not assumed to
amplify anything), so the target holds whatever rounds it is sampled in. The
ledger then records what actually ran, and the engine asks ``may_train``
before each round, so a client stops before a round that would exceed its
budget (with calibrated noise that never happens; it guards resumed or
extended runs).

Crash safety: the ledger is saved inside each round's checkpoint. A round in
flight at a crash is re-run on resume with the same seeds, hence the same
Poisson batches and the same Gaussian noise: it is the same release, not a
second one, so nothing is spent twice and nothing that was released is
forgotten (the discarded attempt was never published)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.privacy.accountant import SubsampledGaussian
from synthfed.privacy.calibration import default_delta, find_noise_multiplier, validate_privacy_target
from synthfed.privacy.dp_sgd import DPSGDStepper
from synthfed.privacy.ledger import ClientLedger, PrivacyLedger


DP_SGD_NOTE = "DP-SGD local training"


@dataclass(frozen=True)
class ClientNoise:
    num_records: int
    delta: float
    sampling_rate: float
    steps_per_round: int
    planned_steps: int
    noise_multiplier: float


class PrivateTraining:
    def __init__(self, config: TrainConfig, noise: dict[int, ClientNoise], ledger: PrivacyLedger) -> None:
        self.config = config
        self.noise = noise
        self.ledger = ledger

    @classmethod
    def plan(cls, config: TrainConfig, fed: FederatedData, *, epsilon: float | None = None) -> "PrivateTraining":
        """DP-SGD noise for ``epsilon`` (default ``config.epsilon``) per client."""
        return cls.plan_clients(
            config, {cid: len(data) for cid, data in enumerate(fed.clients)}, epsilon=epsilon,
            names={cid: name for cid, name in enumerate(fed.client_names)},
        )

    @classmethod
    def plan_clients(
        cls, config: TrainConfig, sizes: dict[int, int], *, epsilon: float | None = None, names: dict[int, str] | None = None
    ) -> "PrivateTraining":
        """The plan for the clients of ``sizes`` (id -> number of records). The
        noise of a client depends only on its own size and the run's plan, so a
        Flower node plans for itself alone and gets what the simulation gets."""
        epsilon = config.epsilon if epsilon is None else epsilon
        assert epsilon is not None
        noise: dict[int, ClientNoise] = {}
        clients: dict[str, ClientLedger] = {}
        for cid, n in sizes.items():
            delta = config.delta if config.delta is not None else default_delta(n)
            validate_privacy_target(epsilon=epsilon, delta=delta, n=n)
            if config.batch_size > n:
                name = (names or {}).get(cid, str(cid))
                raise ValueError(f"client {name} has {n} records, fewer than --batch-size {config.batch_size}")
            q = config.batch_size / n
            per_round = config.epochs_per_round() * math.ceil(1.0 / q)
            planned = config.rounds * per_round
            sigma = find_noise_multiplier(target_epsilon=epsilon, delta=delta, sampling_rate=q, steps=planned)
            noise[cid] = ClientNoise(n, delta, q, per_round, planned, sigma)
            clients[str(cid)] = ClientLedger(
                client_id=str(cid), num_records=n, delta=delta, epsilon_budget=epsilon, entries=[]
            )
        return cls(config, noise, PrivacyLedger(clients=clients))

    def may_train(self, cid: int, *, server_round: int) -> bool:
        nz = self.noise[cid]
        round_mechanism = SubsampledGaussian(
            noise_multiplier=nz.noise_multiplier, sampling_rate=nz.sampling_rate, steps=nz.steps_per_round
        )
        return not self.ledger.clients[str(cid)].would_exceed([round_mechanism])

    def stepper_factory(self, cid: int, generator: torch.Generator):
        nz = self.noise[cid]

        def make(model):
            return DPSGDStepper(
                model,
                lr=self.config.lr,
                expected_batch_size=self.config.batch_size,
                num_records=nz.num_records,
                noise_multiplier=nz.noise_multiplier,
                max_grad_norm=self.config.max_grad_norm,
                generator=generator,
            )

        return make

    def record(self, cid: int, *, server_round: int, mechanisms: list) -> None:
        for m in mechanisms:
            self.ledger.clients[str(cid)].record(m, round=server_round, note=DP_SGD_NOTE)

    def ledger_dict(self) -> dict:
        return self.ledger.to_dict()

    def restore(self, ledger: dict | None) -> None:
        if ledger is None:
            raise RuntimeError("the checkpoint of a private run has no privacy ledger; refusing to resume blind")
        restored = PrivacyLedger.from_dict(ledger)
        if set(restored.clients) != set(self.ledger.clients):
            raise RuntimeError("the saved privacy ledger lists other clients than this run")
        self.ledger = restored
