"""DP-SGD client steps through Opacus, safe on diffusers U-Nets.

Per-example gradients come from Opacus's ``GradSampleModule`` hooks; clipping,
Gaussian noise and the Adam step from its ``DPOptimizer``; batches from Poisson
sampling with rate q = B / n (what the accountant assumes). Two things are
ours, both for correctness:

* the **contiguous-input fix**: Conv2d layers after attention blocks receive
  strided (channels-last) input, for which Opacus's conv grad sampler silently
  returns all-zero per-sample gradients (DESIGN.md §4) — clipping norms are
  then under-estimated and the privacy guarantee is void. A forward pre-hook
  makes every Conv2d input contiguous.
* **noise multiplicity** (DPDM): each example is expanded to m rows with
  independent (t, noise); Opacus returns one gradient per row and we sum each
  example's m rows (each scaled 1/m) *before* clipping, so one example is
  still one clipped unit of sensitivity C.

Per-example gradients are cast to fp32 before Opacus computes the norms and
sums, so the clipping bound holds on exactly the summed vectors whatever
``--precision`` the forward pass used. Large logical batches are processed in
physical chunks with Opacus's skip-step mechanism (what ``BatchMemoryManager``
does): clip-and-accumulate per chunk, noise once per logical step."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from synthfed.model.presets import add_contiguous_inputs  # the fix; tests patch this name here
from synthfed.privacy.accountant import SubsampledGaussian


def poisson_batches(n: int, *, sampling_rate: float, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Each record joins each batch independently with probability q: batch
    sizes vary (and may be 0), which is what the subsampled Gaussian
    accountant assumes."""
    for _ in range(steps):
        mask = torch.rand(n, generator=generator, device=generator.device) < sampling_rate
        yield mask.nonzero(as_tuple=False).flatten()


class DPSGDStepper:
    """A ``Stepper`` (see ``synthfed.federated.client``) that runs DP-SGD."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        expected_batch_size: int,
        num_records: int,
        noise_multiplier: float,
        max_grad_norm: float,
        generator: torch.Generator,
        physical_batch_size: int | None = None,
    ) -> None:
        if expected_batch_size > num_records:
            raise ValueError("the expected batch size cannot exceed the number of records")
        self.model = model
        self.num_records = num_records
        self.expected_batch_size = expected_batch_size
        self.sampling_rate = expected_batch_size / num_records
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.physical_batch_size = physical_batch_size
        self.generator = generator
        self._fix_handles = add_contiguous_inputs(model)
        # loss_reduction="sum" on the module: per-row gradients are exactly the
        # gradients of the loss we backpropagate (no hidden rescaling by the
        # row count); the optimizer then averages by the *expected* batch size.
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = DPOptimizer(
            torch.optim.Adam(self.params, lr=lr),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
        )

    def steps_per_epoch(self, n: int) -> int:
        return math.ceil(1.0 / self.sampling_rate)

    def batch_indices(self, n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        return poisson_batches(n, sampling_rate=self.sampling_rate, steps=self.steps_per_epoch(n), generator=generator)

    def _group_rows(self, num_examples: int, multiplicity: int) -> None:
        for p in self.params:
            gs = p.grad_sample
            if gs is None:
                raise RuntimeError("a parameter got no per-sample gradient; DP-SGD cannot bound its sensitivity")
            gs = gs.float()
            if multiplicity > 1:
                gs = gs.view(num_examples, multiplicity, *gs.shape[1:]).sum(dim=1)
            p.grad_sample = gs

    def _empty_grad_samples(self) -> None:
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=torch.float32, device=p.device)

    def _backward(self, rows_loss_fn, x: torch.Tensor, y: torch.Tensor) -> float:
        """Forward and backward one chunk; leaves fp32 per-example gradients in
        ``p.grad_sample``. Returns the chunk's summed per-example loss."""
        if x.shape[0] == 0:
            # An empty Poisson batch still releases noise: the step happens.
            self._empty_grad_samples()
            return 0.0
        rows, multiplicity = rows_loss_fn(x, y)
        with warnings.catch_warnings():
            # Opacus's module backward hooks fire on the first layer, whose input
            # (the noisy image) needs no gradient; PyTorch warns, harmlessly.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            (rows.sum() / multiplicity).backward()
        self._group_rows(x.shape[0], multiplicity)
        return float(rows.detach().sum()) / multiplicity

    def per_example_gradients(self, rows_loss_fn, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unclipped per-example gradients this stepper would clip (for
        tests against a per-example loop, and for audits)."""
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(rows_loss_fn, x, y)
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = {names[id(p)]: p.grad_sample.detach().clone() for p in self.params}
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def step(self, rows_loss_fn, x: torch.Tensor, y: torch.Tensor) -> float:
        """One logical DP-SGD step over the Poisson batch (x, y)."""
        size = self.physical_batch_size or max(1, x.shape[0])
        chunks = list(zip(x.split(size), y.split(size))) if x.shape[0] > 0 else [(x, y)]
        total, count = 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        for i, (xc, yc) in enumerate(chunks):
            total += self._backward(rows_loss_fn, xc, yc)
            count += xc.shape[0]
            self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total / count if count else float("nan")

    def mechanisms(self, steps: int) -> list:
        if steps == 0:
            return []
        return [SubsampledGaussian(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, steps=steps)]

    def close(self) -> None:
        """Leave the model as it came: no Opacus hooks, no fix hooks, no grads."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None
            if hasattr(p, "grad_sample"):
                del p.grad_sample
            if hasattr(p, "summed_grad"):
                del p.summed_grad
        self.gsm._close()
        for h in self._fix_handles:
            h.remove()
