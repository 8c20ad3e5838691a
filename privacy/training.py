"""The privacy side of a training run: the plan, DP-SGD steppers, the ledger.

``PrivateTraining.plan`` turns ``--epsilon/--delta`` into a noise multiplier
per client before training (``synthfed.privacy.planner``: the same plan
``privacy calibrate`` prints). The ledger then records what actually ran,
and the engine asks ``may_train`` before each round, so a client stops before
a round that would exceed its budget (with calibrated noise that never
happens; it guards resumed or extended runs).

Crash safety and repeated requests: every DP-SGD entry carries a digest of the
round's inputs (``synthfed.privacy.releases``). A round redone after a crash
starts from the same inputs and the same secret key stream, so it is the same
release, not counted twice; a round asked again with other inputs draws fresh
noise (the next attempt's stream) and is counted as a new release."""

from __future__ import annotations

import math

import torch

from synthfed.config import TrainConfig
from synthfed.data import FederatedData
from synthfed.privacy.central import CENTRAL_NOTE, CentralStats, default_moments, release_central_stats
from synthfed.privacy.dp_sgd import DPSGDStepper
from synthfed.privacy.ledger import ClientLedger, PrivacyLedger
from synthfed.privacy.planner import ClientNoise, plan_dp_sgd
from synthfed.privacy.noise_keys import NoiseKey
from synthfed.privacy.releases import inputs_digest, release_attempt


DP_SGD_NOTE = "DP-SGD local training"


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
        noise = plan_dp_sgd(config, sizes, epsilon=epsilon, names=names)
        epsilon = config.epsilon if epsilon is None else epsilon
        clients = {
            str(cid): ClientLedger(client_id=str(cid), num_records=nz.num_records, delta=nz.delta,
                                   epsilon_budget=epsilon, entries=[])
            for cid, nz in noise.items()
        }
        return cls(config, noise, PrivacyLedger(clients=clients))

    def may_train(self, cid: int, *, server_round: int) -> bool:
        return not self.ledger.clients[str(cid)].would_exceed([self.noise[cid].round_mechanism()])

    def release_attempt(self, cid: int, *, server_round: int, digest: str) -> tuple[int, bool]:
        """(attempt, already recorded) of client ``cid``'s DP-SGD release in this round from these inputs."""
        return release_attempt(self.ledger.clients[str(cid)], round=server_round, digest=digest,
                               is_kind=lambda note: note == DP_SGD_NOTE)

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
                physical_batch_size=self.config.physical_batch_size,
            )

        return make

    def release_central(self, cid: int, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                        noise_key: NoiseKey) -> CentralStats:
        """Client ``cid``'s one release of DP class moments (``synthfed.privacy.central``),
        recorded in its ledger as round 0. Asked again with the same plan (a run
        restarted before its first checkpoint) it is the same release from the
        same key stream, not counted twice."""
        nz = self.noise[cid]
        dim = int(images[0].numel())
        clip = self.config.warm_start_clip or math.sqrt(dim)
        moments = default_moments(dim)
        digest = inputs_digest("central-images", clip, moments, nz.central_noise)
        ledger = self.ledger.clients[str(cid)]
        attempt, released = release_attempt(ledger, round=0, digest=digest, is_kind=lambda note: note == CENTRAL_NOTE)
        stats = release_central_stats(
            images, labels, num_classes=num_classes, clip=clip, noise_multiplier=nz.central_noise, moments=moments,
            generator=noise_key.generator("central-images", attempt),
        )
        if not released:
            ledger.record(nz.central_mechanism(), round=0, note=CENTRAL_NOTE, inputs=digest)
        return stats

    def record(self, cid: int, *, server_round: int, mechanisms: list, inputs: str = "") -> None:
        for m in mechanisms:
            self.ledger.clients[str(cid)].record(m, round=server_round, note=DP_SGD_NOTE, inputs=inputs)

    def ledger_dict(self) -> dict:
        return self.ledger.to_dict()

    def restore(self, ledger: dict | None) -> None:
        if ledger is None:
            raise RuntimeError("the checkpoint of a private run has no privacy ledger; refusing to resume blind")
        restored = PrivacyLedger.from_dict(ledger)
        if set(restored.clients) != set(self.ledger.clients):
            raise RuntimeError("the saved privacy ledger lists other clients than this run")
        self.ledger = restored
