"""The one privacy planner: (epsilon, delta) and a run's plan -> noise, steps, t0.

``synthfed train``, ``synthfed privacy calibrate``, the Flower node and the
PFDM engine all call these functions with the same ``TrainConfig`` and the
same client sizes (after ``--max-client-size`` and pooling), so what
``calibrate`` prints is exactly what ``train`` would run.

DP-SGD is planned for the most steps a client could take: every round, every
local epoch of every phase (FedRep's head epochs included); partial
participation is not assumed to amplify anything, so the target holds
whatever rounds the client is sampled in. PFDM's t0 is the largest of the
clients' smallest admissible hand-off steps, each at the client's own delta."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from synthfed.config import TrainConfig
from synthfed.privacy.accountant import SubsampledGaussian, compute_epsilon
from synthfed.privacy.calibration import (
    CalibrationError,
    default_delta,
    find_gaussian_noise,
    find_noise_multiplier,
    validate_privacy_target,
)
from synthfed.privacy.central import central_mechanism
from synthfed.privacy.forward_noise import choose_t0, upload_mechanisms


@dataclass(frozen=True)
class ClientNoise:
    """A client's DP-SGD plan: sampling rate, steps and the calibrated noise."""

    num_records: int
    delta: float
    sampling_rate: float
    steps_per_round: int
    planned_steps: int
    noise_multiplier: float
    # --warm-start central: the noise of the one central-images release (None: no warm start)
    central_noise: float | None = None

    def central_mechanism(self):
        from synthfed.privacy.central import central_mechanism

        return None if self.central_noise is None else central_mechanism(self.central_noise)

    def planned_mechanisms(self) -> list:
        """Everything the client plans to release: central images, then its DP-SGD steps."""
        central = self.central_mechanism()
        return ([central] if central is not None else []) + [self.planned_mechanism()]

    def round_mechanism(self) -> SubsampledGaussian:
        return SubsampledGaussian(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate,
                                  steps=self.steps_per_round)

    def planned_mechanism(self) -> SubsampledGaussian:
        return SubsampledGaussian(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate,
                                  steps=self.planned_steps)


def client_delta(config: TrainConfig, n: int) -> float:
    """``--delta`` or, by default, 1/(10 n_k): each client at its own size."""
    return config.delta if config.delta is not None else default_delta(n)


def plan_dp_sgd_client(config: TrainConfig, n: int, *, epsilon: float, name: str = "") -> ClientNoise:
    """DP-SGD noise for one client of ``n`` records meeting ``epsilon`` over the planned steps."""
    delta = client_delta(config, n)
    validate_privacy_target(epsilon=epsilon, delta=delta, n=n)
    if config.batch_size > n:
        raise CalibrationError(f"client {name or '?'} has {n} records, fewer than --batch-size {config.batch_size}")
    q = config.batch_size / n
    per_round = config.steps_per_round(math.ceil(1.0 / q))
    planned = config.rounds * per_round
    central = None
    before: tuple = ()
    if config.warm_start == "central":
        # The central images get their share of epsilon on their own; DP-SGD's
        # noise is then calibrated so that the composition of both meets epsilon.
        central = find_gaussian_noise(target_epsilon=config.warm_start_share * epsilon, delta=delta)
        before = (central_mechanism(central),)
    sigma = find_noise_multiplier(target_epsilon=epsilon, delta=delta, sampling_rate=q, steps=planned, before=before)
    return ClientNoise(n, delta, q, per_round, planned, sigma, central)


def plan_dp_sgd(config: TrainConfig, sizes: dict[int, int], *, epsilon: float | None = None,
                names: dict[int, str] | None = None) -> dict[int, ClientNoise]:
    """Each client's plan; a client's noise depends only on its own size and the
    run's plan, so a Flower node planning for itself gets what the simulation gets."""
    epsilon = config.epsilon if epsilon is None else epsilon
    if epsilon is None:
        raise CalibrationError("no epsilon to plan for")
    return {cid: plan_dp_sgd_client(config, n, epsilon=epsilon, name=(names or {}).get(cid, str(cid)))
            for cid, n in sizes.items()}


def resolve_clip_norm(config: TrainConfig, image_shape: tuple[int, int, int]) -> float:
    """PFDM's per-image clip C; default sqrt(#pixels): the largest norm an image in
    [-1, 1] can have, so clipping changes no image and the hand-off sees the data."""
    return config.clip_norm if config.clip_norm is not None else math.sqrt(float(np.prod(image_shape)))


def plan_t0(config: TrainConfig, sizes: list[int], image_shape: tuple[int, int, int],
            alphas_cumprod: torch.Tensor) -> tuple[int, float]:
    """(t0, C): ``--t0`` if given, else the largest of the clients' smallest
    admissible t0 (each at its own delta), so every client meets its (epsilon, delta)."""
    clip = resolve_clip_norm(config, image_shape)
    if config.t0 is not None:
        return config.t0, clip
    t0 = 0
    for n in sizes:
        choice = choose_t0(alphas_cumprod, epsilon=config.epsilon, delta=client_delta(config, n), clip_norm=clip,
                           copies=config.upload_copies, label_epsilon=config.label_epsilon)
        t0 = max(t0, choice.t0)
    return t0, clip


def pfdm_planned_mechanisms(config: TrainConfig, *, alpha_bar_t0: float, clip: float,
                            sgd: ClientNoise | None) -> list:
    """Everything a PFDM client plans to release: its upload (and labels), plus
    its local DP-SGD steps under ``--local-epsilon``."""
    planned = upload_mechanisms(alpha_bar_t0, clip_norm=clip, copies=config.upload_copies,
                                label_epsilon=config.label_epsilon)
    if sgd is not None:
        planned.append(sgd.planned_mechanism())
    return planned


def pfdm_budget(config: TrainConfig, n: int, *, alpha_bar_t0: float, clip: float, sgd: ClientNoise | None) -> float:
    """The epsilon the client's whole planned composition reaches (its ledger's budget)."""
    planned = pfdm_planned_mechanisms(config, alpha_bar_t0=alpha_bar_t0, clip=clip, sgd=sgd)
    return compute_epsilon(planned, delta=client_delta(config, n)).epsilon_upper
