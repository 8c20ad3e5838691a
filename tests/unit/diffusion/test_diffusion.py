"""The noise schedule, the loss and the samplers against closed forms."""

import numpy as np
import pytest
import torch

from synthfed.diffusion import NoiseSchedule, model_eps_fn, per_example_loss, q_sample, rows_loss, sample, to_uint8
from synthfed.model import ModelSpec, build_unet


def test_alphas_cumprod_matches_the_closed_form_of_the_linear_schedule():
    # Prepare
    sched = NoiseSchedule(num_train_timesteps=500, beta_start=1e-4, beta_end=0.02)
    betas = np.linspace(1e-4, 0.02, 500, dtype=np.float64)
    # Execute
    got = sched.alphas_cumprod().double().numpy()
    # Assert: ᾱ_t = Π_{s<=t} (1 - β_s)
    np.testing.assert_allclose(got, np.cumprod(1 - betas), rtol=1e-5)


def test_samplers_use_the_same_alphas_as_training():
    sched = NoiseSchedule(num_train_timesteps=200)
    assert torch.allclose(sched.ddim().alphas_cumprod, sched.alphas_cumprod())
    assert torch.allclose(sched.ddpm(variance_type="fixed_large").alphas_cumprod, sched.alphas_cumprod())


def test_q_sample_is_the_forward_process():
    acp = NoiseSchedule(num_train_timesteps=10).alphas_cumprod()
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([0, 9])
    xt = q_sample(x0, t, eps, acp)
    for i in range(2):
        a = float(acp[t[i]])
        torch.testing.assert_close(xt[i], a**0.5 * x0[i] + (1 - a) ** 0.5 * eps[i])


class _Linear(torch.nn.Module):
    """A stand-in denoiser with a known output: ε̂ = w · x_t (per pixel)."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))

    def forward(self, x, t, class_labels=None):
        return type("Out", (), {"sample": self.w * x})()


def test_loss_equals_a_hand_computation_for_fixed_noise():
    # Prepare
    acp = NoiseSchedule(num_train_timesteps=100).alphas_cumprod()
    model = _Linear(0.5)
    x0 = torch.tensor([[[[1.0, -1.0]]], [[[0.0, 2.0]]]])  # (2,1,1,2)
    eps = torch.tensor([[[[0.5, 0.5]]], [[[-1.0, 1.0]]]])
    t = torch.tensor([10, 90])
    # Execute
    got = rows_loss(model, x0, torch.zeros(2, dtype=torch.long), t, eps, acp)
    # Assert: mean over pixels of (0.5 x_t - ε)^2 with x_t written out by hand
    expected = []
    for i in range(2):
        a = float(acp[t[i]])
        xt = [a**0.5 * float(x0[i].flatten()[j]) + (1 - a) ** 0.5 * float(eps[i].flatten()[j]) for j in range(2)]
        expected.append(sum((0.5 * xt[j] - float(eps[i].flatten()[j])) ** 2 for j in range(2)) / 2)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_per_example_loss_averages_its_multiplicity_draws():
    acp = NoiseSchedule(num_train_timesteps=100).alphas_cumprod()
    model = _Linear(0.3)
    x0 = torch.randn(3, 1, 2, 2)
    g = torch.Generator().manual_seed(1)
    loss = per_example_loss(model, x0, torch.zeros(3, dtype=torch.long), alphas_cumprod=acp, multiplicity=4, generator=g)
    assert loss.shape == (3,)
    # The same draws, redone by hand
    g = torch.Generator().manual_seed(1)
    x = x0.repeat_interleave(4, 0)
    t = torch.randint(0, 100, (12,), generator=g)
    eps = torch.randn(x.shape, generator=g)
    rows = rows_loss(model, x, torch.zeros(12, dtype=torch.long), t, eps, acp)
    torch.testing.assert_close(loss, rows.view(3, 4).mean(1))


def test_timestep_range_restricts_t():
    from synthfed.diffusion import draw_rows

    _, _, t, _ = draw_rows(torch.zeros(500, 1, 2, 2), torch.zeros(500, dtype=torch.long), num_train_timesteps=100,
                           multiplicity=1, generator=torch.Generator().manual_seed(0), timestep_range=(40, 60))
    assert int(t.min()) >= 40 and int(t.max()) < 60


@pytest.mark.parametrize("sampler,steps", [("ddim", 5), ("ddpm", 20)])
def test_sampling_is_seeded_class_conditional_and_in_range(sampler, steps):
    spec = ModelSpec(preset="tiny", image_size=8, channels=1, num_classes=3, class_names=("a", "b", "c"))
    model = build_unet(spec).eval()
    sched = NoiseSchedule(num_train_timesteps=20)
    labels = torch.tensor([0, 1, 2])
    run = lambda: sample(model_eps_fn(model, guidance_scale=1.0, null_label=3), labels=labels, image_shape=(1, 8, 8),
                         schedule=sched, sampler=sampler, num_steps=steps, generator=torch.Generator().manual_seed(3))
    a, b = run(), run()
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert to_uint8(a).dtype == torch.uint8


def test_ddim_with_a_perfect_denoiser_recovers_the_data_point():
    # With ε̂ the true noise of a single known x0, deterministic DDIM must land on x0.
    sched = NoiseSchedule(num_train_timesteps=100)
    acp = sched.alphas_cumprod()
    x0 = torch.full((1, 1, 2, 2), 0.3)

    def oracle(x, t, labels):
        a = float(acp[t])
        return (x - a**0.5 * x0) / (1 - a) ** 0.5

    out = sample(oracle, labels=torch.tensor([0]), image_shape=(1, 2, 2), schedule=sched, sampler="ddim", num_steps=10,
                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
