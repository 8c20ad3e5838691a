"""Run configuration: one frozen dataclass, validated once at the edge.

The CLI (or a config file) builds a ``TrainConfig`` and calls ``validate()``;
the core then trusts it. ``run.json`` stores ``to_dict()`` so that a resumed
run is the run that was started."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

from synthfed.errors import UsageError
from synthfed.model.presets import PRESETS

if TYPE_CHECKING:
    from synthfed.diffusion.schedule import NoiseSchedule

from synthfed.choices import (DDPM_VARIANCES, DEVICES, LAYOUTS, PARTITIONS, PERSONALIZED_STRATEGIES,  # noqa: F401  (re-exported)
                              PRECISIONS, SAMPLERS, STRATEGIES, WARM_STARTS)


class ConfigError(UsageError):
    """An option value that cannot work; the message names the option."""


def check_device(name: str) -> str:
    """``--device``: refused here, at the edge, rather than as a traceback when
    the first tensor moves (and "cuda" must not quietly become the CPU)."""
    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine; use --device auto or cpu")
    return name


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is: data and split, strategy, optimisation,
    model, privacy plan, execution. Build it, call ``validate()`` (it returns
    the config, or raises ``ConfigError`` naming the option), and hand it to
    ``synthfed.train``. The command line's option for each field is listed in
    ``synthfed.settings`` (``--clients`` sets ``num_clients``, ``--timesteps``
    ``num_train_timesteps``; the others are the field's name). ``epsilon``
    None means the run is not differentially private."""

    # data
    data: str = "digits"
    image_size: int | None = None  # None: the dataset's own size
    partition: str = "dirichlet"
    num_clients: int = 4
    alpha: float = 0.5
    min_partition_size: int = 10
    max_client_size: int | None = None  # keep at most this many images per client (CPU-scale experiments)
    # federated plan
    strategy: str = "fedavg"
    rounds: int = 5
    local_epochs: int = 1
    local_steps: int | None = None  # steps per round (each phase) instead of whole epochs: CPU-sized DP-SGD
    participation: float = 1.0  # a fraction in (0, 1], or a whole count of clients > 1
    # optimisation
    batch_size: int = 32
    lr: float = 2e-4
    ema_decay: float = 0.999
    label_dropout: float = 0.1
    precision: str = "fp32"
    # model and diffusion
    preset: str = "small"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # personalization: backbone/head (fedper, fedrep)
    head: str = "up"  # a preset of synthfed.federated.split.HEAD_PRESETS or glob patterns
    head_epochs: int = 1  # FedRep: head-only epochs before the body epochs
    # PFDM: forward-noised uploads at t0, shared high-noise / local low-noise denoisers
    t0: int | None = None  # None: the accountant picks it from --epsilon
    clip_norm: float | None = None  # L2 bound C before upload (sensitivity 2C); None: sqrt(pixels), changes no image
    upload_copies: int = 1  # m noised copies of each image (they compose)
    label_epsilon: float | None = None  # k-ary randomized response on uploaded labels
    public_labels: bool = False  # labels declared public: uploaded as they are
    local_epsilon: float | None = None  # PFDM: DP-SGD for the local low-noise denoisers
    # differential privacy (DP-SGD); epsilon None = not private
    epsilon: float | None = None
    delta: float | None = None
    max_grad_norm: float = 1.0
    noise_multiplicity: int = 1
    physical_batch_size: int | None = None  # DP-SGD: chunk a logical (Poisson) batch; None: one chunk
    # warm start (post-processing of a DP release, or public weights)
    warm_start: str = "none"  # "central": pretrain on DP class moments (synthfed.privacy.central)
    warm_start_share: float = 0.5  # part of epsilon the central images get on their own
    warm_start_steps: int = 1000  # pretraining steps on draws of the class Gaussians
    warm_start_rank: int = 10  # principal directions kept per class
    warm_start_clip: float | None = None  # L2 clip of each image; None: sqrt(#pixels), changes no image
    init_from: str | None = None  # start from a model folder's weights (public pretraining)
    # execution
    device: str = "auto"
    seed: int = 0

    def schedule(self) -> "NoiseSchedule":
        from synthfed.diffusion.schedule import NoiseSchedule  # torch and diffusers: not at CLI start-up

        return NoiseSchedule(
            num_train_timesteps=self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end
        )

    @property
    def private(self) -> bool:
        return self.epsilon is not None

    def clients_per_round(self, num_clients: int) -> int:
        """Clients per round; a count above ``num_clients`` is refused, not
        clamped (the run would silently differ from the one asked for).
        The centralized baseline pools everyone into one client and ignores it."""
        if self.participation > 1:
            count = int(self.participation)
            if count > num_clients and self.strategy != "centralized":
                raise ConfigError(
                    f"--participation {count} asks for {count} clients a round, but the run has only {num_clients} "
                    f"clients; give a count up to {num_clients} or a fraction like 0.5"
                )
            return min(num_clients, count)
        return max(1, round(self.participation * num_clients))

    def epochs_per_round(self) -> int:
        """Local epochs a client trains per round (FedRep adds its head epochs)."""
        return self.local_epochs + (self.head_epochs if self.strategy == "fedrep" else 0)

    def steps_per_round(self, steps_per_epoch: int) -> int:
        """Local steps a client takes per round: ``--local-steps`` in each phase
        (FedRep: head and body), or whole epochs of ``steps_per_epoch``."""
        if self.local_steps is not None:
            return self.local_steps * (2 if self.strategy == "fedrep" else 1)
        return self.epochs_per_round() * steps_per_epoch

    def validate(self) -> "TrainConfig":
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        need(self.strategy in STRATEGIES, f"--strategy must be one of {', '.join(STRATEGIES)}")
        need(self.partition in PARTITIONS, f"--partition must be one of {', '.join(PARTITIONS)}")
        need(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        check_device(self.device)
        need(self.preset in PRESETS, f"--preset must be one of {', '.join(PRESETS)}")
        need(self.num_clients >= 1, "--clients must be at least 1")
        need(self.alpha > 0, "--alpha must be positive")
        need(self.min_partition_size >= 1, "--min-partition-size must be at least 1")
        need(self.max_client_size is None or self.max_client_size >= 1, "--max-client-size must be at least 1")
        need(self.rounds >= 1, "--rounds must be at least 1")
        need(self.local_epochs >= 1, "--local-epochs must be at least 1")
        need(self.local_steps is None or self.local_steps >= 1, "--local-steps must be at least 1")
        need(self.local_steps is None or self.strategy != "pfdm", "--local-steps does not apply to --strategy pfdm")
        need(self.participation > 0, "--participation must be a fraction in (0, 1] or a count >= 1")
        need(
            self.participation <= 1 or float(self.participation).is_integer(),
            "--participation above 1 is a count of clients and must be a whole number",
        )
        need(self.batch_size >= 1, "--batch-size must be at least 1")
        need(0 < self.lr < 1, "--lr must be in (0, 1)")
        need(0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)")
        need(0 <= self.label_dropout < 1, "--label-dropout must be in [0, 1)")
        need(self.image_size is None or self.image_size >= 4, "--image-size must be at least 4")
        if self.image_size is not None:
            self._check_image_size()
        if self.participation > 1 and self.partition != "folders":  # folders: the count is known once loaded
            self.clients_per_round(self.num_clients)
        need(self.num_train_timesteps >= 2, "--timesteps must be at least 2")
        need(0 < self.beta_start < self.beta_end < 1, "need 0 < beta-start < beta-end < 1")
        self._check_dp_sgd(need)
        self._check_warm_start(need)
        self._check_personalization(need)
        return self

    def _check_dp_sgd(self, need) -> None:
        need(self.noise_multiplicity >= 1, "--noise-multiplicity must be at least 1")
        need(self.max_grad_norm > 0, "--max-grad-norm must be positive")
        need(self.epsilon is None or self.epsilon > 0, "--epsilon must be positive")
        need(self.delta is None or 0 < self.delta < 1, "--delta must be in (0, 1)")
        need(self.delta is None or self.epsilon is not None, "--delta needs --epsilon")
        need(
            self.noise_multiplicity == 1 or self.epsilon is not None or self.local_epsilon is not None,
            "--noise-multiplicity only applies to DP-SGD (give --epsilon)",
        )
        need(self.physical_batch_size is None or self.physical_batch_size >= 1, "--physical-batch-size must be at least 1")
        need(self.physical_batch_size is None or self.epsilon is not None or self.local_epsilon is not None,
             "--physical-batch-size only applies to DP-SGD (give --epsilon)")

    def _check_personalization(self, need) -> None:
        need(self.head_epochs >= 1, "--head-epochs must be at least 1")
        need(self.clip_norm is None or self.clip_norm > 0, "--clip-norm must be positive")
        need(self.upload_copies >= 1, "--upload-copies must be at least 1")
        need(self.label_epsilon is None or self.label_epsilon > 0, "--label-epsilon must be positive")
        need(self.local_epsilon is None or self.local_epsilon > 0, "--local-epsilon must be positive")
        need(self.t0 is None or 0 <= self.t0 < self.num_train_timesteps - 1, "--t0 must be in [0, T-1)")
        if self.strategy == "pfdm":
            need(self.epsilon is not None or self.t0 is not None, "pfdm needs --epsilon (the accountant picks t0) or --t0")
            need(self.epsilon is None or self.t0 is None, "give pfdm either --epsilon or --t0, not both")
            need(self.public_labels or self.label_epsilon is not None,
                 "pfdm uploads labels: protect them with --label-epsilon or declare them --public-labels")
            need(not (self.public_labels and self.label_epsilon is not None), "--public-labels and --label-epsilon exclude each other")
            need(self.noise_multiplicity == 1 or self.local_epsilon is not None,
                 "--noise-multiplicity applies to DP-SGD (pfdm: --local-epsilon)")
        else:
            for name, value in (("--t0", self.t0), ("--label-epsilon", self.label_epsilon), ("--local-epsilon", self.local_epsilon)):
                need(value is None, f"{name} applies to --strategy pfdm only")
            need(not self.public_labels, "--public-labels applies to --strategy pfdm only")

    def _check_warm_start(self, need) -> None:
        need(self.warm_start in WARM_STARTS, f"--warm-start must be one of {', '.join(WARM_STARTS)}")
        need(0 < self.warm_start_share < 1, "--warm-start-share must be in (0, 1): DP-SGD needs the rest of epsilon")
        need(self.warm_start_steps >= 1, "--warm-start-steps must be at least 1")
        need(self.warm_start_rank >= 0, "--warm-start-rank must be at least 0")
        need(self.warm_start_clip is None or self.warm_start_clip > 0, "--warm-start-clip must be positive")
        if self.warm_start == "central":
            need(self.epsilon is not None, "--warm-start central releases DP class moments: give --epsilon "
                 "(a non-private run needs no warm start from statistics)")
            need(self.strategy != "pfdm", "--warm-start central does not apply to --strategy pfdm")
        need(not (self.init_from and self.warm_start != "none"), "--init-from and --warm-start exclude each other")

    def _check_image_size(self) -> None:
        from synthfed.model.presets import check_image_size

        try:
            check_image_size(self.preset, self.image_size)
        except ValueError as exc:  # the model's own rule, said as the option it is
            raise ConfigError(f"--image-size {self.image_size}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        return replace(self, **changes)
