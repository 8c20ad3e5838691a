"""PFDM's forward-noise mechanism: clip, then upload x_{t0} once.

A client clips each image x to L2 norm ≤ C and uploads
x̃ = √ᾱ_{t0} x + √(1−ᾱ_{t0}) z, z ~ N(0, I). Scaled by 1/√ᾱ_{t0} that is
x + σ_eff z with σ_eff = √((1−ᾱ_{t0})/ᾱ_{t0}): a Gaussian mechanism with
``Gaussian.noise_multiplier`` σ_eff / C (noise std per unit of the per-record
L2 bound). Replacing one record moves the upload by up to 2C, and the
replace-one accountant models exactly that (ledger format 1 stored σ_eff / (2C)).
m noised copies of the same image compose (m releases).
Labels go with the upload: either protected by k-ary randomized response
(pure ε_label-DP, composed in the ledger) or declared public.

``choose_t0`` is the accountant picking the hand-off timestep: the smallest t0
of the forward schedule (least noise, most left to the shared model) whose
composed replace-one PLD upper bound meets the client's (ε, δ)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from synthfed.privacy.accountant import EpsilonReport, Gaussian, RandomizedResponse, compute_epsilon
from synthfed.privacy.calibration import CalibrationError


def upload_noise_multiplier(alpha_bar: float, *, clip_norm: float) -> float:
    """``Gaussian.noise_multiplier`` of an upload at a step with cumulative ᾱ: σ_eff / C.

    Not σ_eff / (2C): the replace-one accountant itself accounts for a
    replacement moving the clipped image by up to 2C."""
    return math.sqrt((1.0 - alpha_bar) / alpha_bar) / clip_norm


def upload_mechanisms(alpha_bar: float, *, clip_norm: float, copies: int, label_epsilon: float | None) -> list:
    mechs: list = [Gaussian(noise_multiplier=upload_noise_multiplier(alpha_bar, clip_norm=clip_norm), count=copies)]
    if label_epsilon is not None:
        mechs.append(RandomizedResponse(epsilon=label_epsilon, count=1))
    return mechs


@dataclass(frozen=True)
class T0Choice:
    t0: int
    noise_multiplier: float
    report: EpsilonReport
    mechanisms: tuple


def upload_epsilon(alphas_cumprod: torch.Tensor, t0: int, *, delta: float, clip_norm: float, copies: int,
                   label_epsilon: float | None) -> EpsilonReport:
    mechs = upload_mechanisms(float(alphas_cumprod[t0]), clip_norm=clip_norm, copies=copies, label_epsilon=label_epsilon)
    return compute_epsilon(mechs, delta=delta)


def choose_t0(
    alphas_cumprod: torch.Tensor,
    *,
    epsilon: float,
    delta: float,
    clip_norm: float,
    copies: int = 1,
    label_epsilon: float | None = None,
) -> T0Choice:
    """Smallest t0 whose upload (and label release) meets (ε, δ). ε falls as t0
    grows (more noise), so a bisection over the schedule's steps finds it."""
    if label_epsilon is not None and label_epsilon >= epsilon:
        raise CalibrationError(f"--label-epsilon {label_epsilon:g} leaves no budget of --epsilon {epsilon:g} for the images")
    T = alphas_cumprod.numel()

    def ok(t: int) -> bool:
        return upload_epsilon(alphas_cumprod, t, delta=delta, clip_norm=clip_norm, copies=copies,
                              label_epsilon=label_epsilon).epsilon_upper <= epsilon

    # The last usable t0 leaves the shared model at least one step (t0 < T-1).
    if not ok(T - 2):
        report = upload_epsilon(alphas_cumprod, T - 2, delta=delta, clip_norm=clip_norm, copies=copies, label_epsilon=label_epsilon)
        raise CalibrationError(
            f"even the noisiest hand-off step (t0={T - 2}) gives epsilon {report.epsilon_upper:.4g} > {epsilon:g}: "
            "use fewer --upload-copies, a smaller --clip-norm, a longer schedule or a larger epsilon"
        )
    lo, hi = -1, T - 2  # ok(hi) holds; ok(lo) is treated as failing
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    mechs = upload_mechanisms(float(alphas_cumprod[hi]), clip_norm=clip_norm, copies=copies, label_epsilon=label_epsilon)
    return T0Choice(t0=hi, noise_multiplier=mechs[0].noise_multiplier, report=compute_epsilon(mechs, delta=delta),
                    mechanisms=tuple(mechs))


def t0_curve(alphas_cumprod: torch.Tensor, *, delta: float, clip_norm: float, copies: int = 1,
             label_epsilon: float | None = None, points: int = 12) -> list[tuple[int, float, float]]:
    """(t0, noise multiplier, ε upper) at evenly spaced hand-off steps."""
    T = alphas_cumprod.numel()
    steps = sorted({int(round(i * (T - 2) / (points - 1))) for i in range(points)})
    rows = []
    for t in steps:
        rep = upload_epsilon(alphas_cumprod, t, delta=delta, clip_norm=clip_norm, copies=copies, label_epsilon=label_epsilon)
        rows.append((t, upload_noise_multiplier(float(alphas_cumprod[t]), clip_norm=clip_norm), rep.epsilon_upper))
    return rows


def clip_images(x: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale each image down to L2 norm ≤ C (images already inside the ball are unchanged)."""
    norms = x.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (clip_norm / norms).clamp(max=1.0)
    return x * factor.view(-1, *([1] * (x.dim() - 1)))


def randomized_response(labels: torch.Tensor, *, num_classes: int, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """k-ary randomized response: keep the label with probability e^ε/(e^ε+k−1),
    otherwise report one of the k−1 others uniformly (ε-DP per label)."""
    k = num_classes
    keep_p = math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    keep = torch.rand(labels.shape, generator=generator) < keep_p
    other = (labels + torch.randint(1, k, labels.shape, generator=generator)) % k
    return torch.where(keep, labels, other)


def make_uploads(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha_bar: float,
    clip_norm: float,
    copies: int,
    num_classes: int,
    label_epsilon: float | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What leaves a client: m noised copies of each clipped image (and its
    label, randomized unless declared public). Deterministic given the
    generator, so a resumed run re-creates the same release."""
    x = clip_images(images, clip_norm).repeat_interleave(copies, dim=0)
    noise = torch.randn(x.shape, generator=generator)
    uploads = math.sqrt(alpha_bar) * x + math.sqrt(1.0 - alpha_bar) * noise
    y = labels
    if label_epsilon is not None:
        y = randomized_response(labels, num_classes=num_classes, epsilon=label_epsilon, generator=generator)
    return uploads, y.repeat_interleave(copies, dim=0)
