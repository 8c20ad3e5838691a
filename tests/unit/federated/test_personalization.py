"""Backbone/head strategies and the PFDM timestep split."""

import json
import math

import pytest
import torch
from prv_accountant import GaussianMechanism, PRVAccountant
from safetensors.torch import load_file

from shared_keys import copy_simulation_keys
from synthfed.config import TrainConfig
from synthfed.diffusion import NoiseSchedule
from synthfed.federated.backbone_head import BackboneHead
from synthfed.federated.client import LocalTraining, client_update
from synthfed.diffusion import pfdm_sample
from synthfed.federated.split import HEAD_PRESETS, SplitError, split_parameters
from synthfed.federated.strategy import FitResult
from synthfed.generation import generate_dataset, load_generator
from synthfed.model import ModelSpec, build_unet
from synthfed.privacy.calibration import analytic_gaussian_epsilon
from synthfed.privacy.forward_noise import choose_t0, clip_images, randomized_response, upload_noise_multiplier
from synthfed.training import train

SPEC = ModelSpec(preset="tiny", image_size=8, channels=1, num_classes=3, class_names=("a", "b", "c"))
TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, alpha=1.0, batch_size=64, num_train_timesteps=1000,
            max_client_size=200)


@pytest.mark.parametrize("head", sorted(HEAD_PRESETS))
def test_every_head_preset_splits_every_parameter_exactly_once(head):
    keys = list(build_unet(SPEC).state_dict())
    split = split_parameters(keys, head)
    assert split.shared | split.local == set(keys)
    assert not split.shared & split.local
    assert split.local and split.shared


@pytest.mark.parametrize("head,message", [("nothing_like_this.*", "match no parameter"), ("*", "whole model")])
def test_bad_splits_are_rejected_clearly(head, message):
    with pytest.raises(SplitError, match=message):
        split_parameters(list(build_unet(SPEC).state_dict()), head)


def test_aggregation_averages_the_backbone_exactly_and_refuses_heads():
    split = split_parameters(["body.w", "head.w"], "head.*")
    strategy = BackboneHead(clients_per_round=2, split=split)
    results = [FitResult(client_id=0, num_examples=2, shared={"body.w": torch.tensor([3.0])}),
               FitResult(client_id=1, num_examples=6, shared={"body.w": torch.tensor([7.0])})]
    new = strategy.aggregate_fit(server_round=1, results=results, current={})
    torch.testing.assert_close(new["body.w"], torch.tensor([6.0]))  # (2·3 + 6·7) / 8
    assert "head.w" not in new
    leaky = [FitResult(client_id=0, num_examples=1, shared={"body.w": torch.zeros(1), "head.w": torch.zeros(1)})]
    with pytest.raises(RuntimeError, match="heads never leave"):
        strategy.aggregate_fit(server_round=1, results=leaky, current={})


def test_fedper_run_keeps_heads_local_and_the_backbone_global(tmp_path):
    # Prepare / Execute
    config = TrainConfig(**TINY, strategy="fedper", head="out", rounds=2).validate()
    result = train(config, tmp_path / "r")
    # Assert: each client stores only its head; global holds the averaged backbone
    model = build_unet(ModelSpec(preset="tiny", image_size=8, channels=1, num_classes=10, class_names=tuple("0123456789")))
    split = split_parameters(list(model.state_dict()), "out")
    heads = [load_file(str(p)) for p in sorted((result.last_round_dir / "clients").iterdir())]
    assert len(heads) == 2
    for h in heads:
        assert {k.split(".", 1)[1] for k in h} == set(split.local)
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0] if k.startswith("model."))
    # Memory of what persists: backbone once + K heads
    head_bytes = sum(v.numel() * v.element_size() for k, v in heads[0].items() if k.startswith("model."))
    all_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert head_bytes < 0.05 * all_bytes


def test_fedrep_head_phase_leaves_the_backbone_untouched():
    torch.manual_seed(0)
    model = build_unet(SPEC)
    keys = list(model.state_dict())
    split = split_parameters(keys, "up")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = LocalTraining(epochs=1, batch_size=8, lr=1e-2, label_dropout=0.0, null_label=3, ema_decay=0.9,
                         phases=(("head", 1, frozenset(split.local)),))
    update = client_update(model, state=state, ema=state, ema_step=0, images=torch.randn(16, 1, 8, 8),
                           labels=torch.randint(0, 3, (16,)), plan=plan,
                           alphas_cumprod=NoiseSchedule(num_train_timesteps=50).alphas_cumprod(),
                           generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert all(torch.equal(update.state[k], state[k]) for k in split.shared)
    assert any(not torch.equal(update.state[k], state[k]) for k in split.local)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("epsilon,copies,clip", [(10.0, 1, 8.0), (3.0, 2, 8.0), (8.0, 1, 28.0)])
def test_chosen_t0_meets_epsilon_on_the_exact_gaussian_and_t0_minus_1_does_not(epsilon, copies, clip):
    # Prepare
    acp = NoiseSchedule(num_train_timesteps=1000).alphas_cumprod()
    delta = 1e-5
    # Execute
    choice = choose_t0(acp, epsilon=epsilon, delta=delta, clip_norm=clip, copies=copies)

    def exact(t):  # independent of the accountant: Balle & Wang's exact curve, the upload moving by up to 2C
        sigma_eff = math.sqrt((1 - float(acp[t])) / float(acp[t]))
        return analytic_gaussian_epsilon(noise_multiplier=sigma_eff / (2 * clip), delta=delta, count=copies)

    def add_remove(t):  # prv-accountant, a Gaussian of sensitivity 2C: add/remove of a 2C step is the same pair
        sigma = math.sqrt((1 - float(acp[t])) / float(acp[t])) / (2 * clip)
        acc = PRVAccountant(prvs=GaussianMechanism(noise_multiplier=sigma), max_self_compositions=copies,
                            eps_error=0.01, delta_error=delta / 1000)
        return acc.compute_epsilon(delta=delta, num_self_compositions=[copies])[1]

    # Assert: the accountant's bound sits within its error above the exact figure, which meets epsilon at t0
    # and not (beyond that error) one step earlier
    assert exact(choice.t0) <= choice.report.epsilon_upper <= epsilon
    assert choice.report.epsilon_upper - exact(choice.t0) <= 0.01
    assert exact(choice.t0 - 1) > epsilon - 0.01
    assert add_remove(choice.t0) == pytest.approx(exact(choice.t0), abs=0.01)
    assert choice.noise_multiplier == pytest.approx(upload_noise_multiplier(float(acp[choice.t0]), clip_norm=clip))
    assert choice.noise_multiplier == pytest.approx(math.sqrt((1 - float(acp[choice.t0])) / float(acp[choice.t0])) / clip)


def test_clipping_and_randomized_response():
    x = torch.randn(50, 1, 4, 4) * 3
    clipped = clip_images(x, 2.0)
    assert float(clipped.flatten(1).norm(dim=1).max()) <= 2.0 + 1e-5
    small = torch.full((1, 1, 2, 2), 0.1)
    assert torch.equal(clip_images(small, 2.0), small)
    labels = torch.zeros(20000, dtype=torch.long)
    rr = randomized_response(labels, num_classes=10, epsilon=1.0, generator=torch.Generator().manual_seed(0))
    keep = math.e / (math.e + 9)
    assert abs(float((rr == 0).float().mean()) - keep) < 0.01


def test_pfdm_sampler_hands_over_at_t0():
    # Prepare: two fake denoisers that record the timesteps they are asked about
    calls = {"shared": [], "client": []}

    def fake(name):
        def eps(x, t, labels):
            calls[name].append(t)
            return torch.zeros_like(x)
        return eps

    schedule = NoiseSchedule(num_train_timesteps=1000)
    # Execute
    for sampler, steps in (("ddim", 20), ("ddpm", 1000)):
        calls = {"shared": [], "client": []}
        pfdm_sample(fake("shared"), fake("client"), labels=torch.zeros(2, dtype=torch.long), image_shape=(1, 4, 4),
                    schedule=schedule, t0=600, sampler=sampler, num_steps=steps, generator=torch.Generator().manual_seed(0))
        # Assert: the shared model only above t0, the client's only at or below it
        assert calls["shared"] and calls["client"]
        assert min(calls["shared"]) > 600 and max(calls["shared"]) <= 999
        assert max(calls["client"]) <= 600 and min(calls["client"]) >= 0
        if sampler == "ddpm":
            assert sorted(calls["shared"] + calls["client"]) == list(range(1000))


def test_pfdm_end_to_end_ledger_generation_and_honest_status(tmp_path):
    config = TrainConfig(**TINY, strategy="pfdm", epsilon=10.0, public_labels=True, rounds=1).validate()
    result = train(config, tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    ledger = json.loads((result.last_round_dir / "ledger.json").read_text())
    for client in ledger["clients"].values():
        assert [e["mechanism"]["kind"] for e in client["entries"]] == ["gaussian"]
    with pytest.raises(ValueError, match="--client"):
        load_generator(result.run_dir)
    gen = load_generator(result.run_dir, client=1)
    assert gen.handover[1] == info["pfdm"]["t0"]
    assert gen.privacy["differentially_private"] is False  # the local denoiser saw raw data
    assert "NOT differentially private" in gen.privacy["statement"]
    out = generate_dataset(gen, tmp_path / "g", per_class=1, num_steps=4, allow_non_private=True)
    assert len(list((out / "images").glob("*.png"))) == 10  # beside them: metadata.csv (Hugging Face imagefolder)


def test_pfdm_with_local_dp_sgd_is_dp_and_resumes_with_the_same_ledger(tmp_path):
    config = TrainConfig(**TINY, strategy="pfdm", epsilon=10.0, label_epsilon=1.0, local_epsilon=5.0, rounds=2).validate()
    full = train(config, tmp_path / "full")
    copy_simulation_keys(tmp_path / "full", tmp_path / "crash")  # the same secret noise, as a backup restores
    train(config, tmp_path / "crash", stop_after_round=1)
    resumed = train(config, tmp_path / "crash", resume=True)
    a = json.loads((full.last_round_dir / "ledger.json").read_text())
    b = json.loads((resumed.last_round_dir / "ledger.json").read_text())
    assert a == b
    kinds = sorted({e["mechanism"]["kind"] for e in a["clients"]["0"]["entries"]})
    assert kinds == ["gaussian", "randomized_response", "subsampled_gaussian"]
    gen = load_generator(full.run_dir, client=0)
    assert gen.privacy["differentially_private"] is True
    for row in gen.privacy["clients"]:
        assert row["eps_upper"] <= row["budget"] + 1e-9
