"""DP central images, the warm start they feed, --init-from, --local-steps, physical batching and the DP recipe."""

import json
import math

import numpy as np
import pytest
import torch

from shared_keys import copy_simulation_keys
from synthfed.config import ConfigError, TrainConfig
from synthfed.federated.setup import initial_state, spec_from_shape
from synthfed.model.presets import save_model
from synthfed.privacy.accountant import compute_epsilon
from synthfed.privacy.calibration import analytic_gaussian_epsilon
from synthfed.privacy.central import CENTRAL_NOTE, ClassGaussians, clip_rows, release_central_stats
from synthfed.privacy.ledger import PrivacyLedger
from synthfed.privacy.mechanisms import Gaussian
from synthfed.privacy.noise_keys import NoiseKey
from synthfed.privacy.planner import plan_dp_sgd
from synthfed.privacy.training import PrivateTraining
from synthfed.training import train

TINY = dict(data="digits", image_size=8, preset="tiny", num_clients=2, alpha=1.0, batch_size=64, max_client_size=200,
            num_train_timesteps=50, rounds=1, local_steps=2, epsilon=8.0, warm_start="central", warm_start_steps=3)


def _released_vector(images, labels, clip, moments="cov"):
    """The noise-free query as one flat vector in the mechanism's units
    (image sums, second moments / C, counts x C): the space the Gaussian is added in."""
    st = release_central_stats(images, labels, num_classes=3, clip=clip, noise_multiplier=0.0, moments=moments,
                               generator=torch.Generator().manual_seed(0))
    parts = [st.sums.ravel(), st.counts * clip]
    if st.second is not None:
        parts.append(st.second.ravel() / clip)
    return np.concatenate(parts)


@pytest.mark.parametrize("moments,bound", [("cov", math.sqrt(3)), ("mean", math.sqrt(2))])
def test_replacing_one_record_moves_the_query_by_at_most_twice_the_per_record_bound(moments, bound):
    # Prepare: the adversary's worst neighbour: an extreme image of another class replaces one record
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 4, 4, generator=gen) * 2 - 1
    labels = torch.randint(0, 3, (40,), generator=gen)
    clip = 2.5
    neighbour_images, neighbour_labels = images.clone(), labels.clone()
    neighbour_images[0] = -torch.ones(1, 4, 4)  # norm 4 > clip: clipped
    neighbour_labels[0] = (labels[0] + 1) % 3
    # Execute
    moved = np.linalg.norm(_released_vector(images, labels, clip, moments)
                           - _released_vector(neighbour_images, neighbour_labels, clip, moments))
    # Assert: within 2 x sqrt(3) C (cov) or 2 x sqrt(2) C (mean); and close to it for this extreme pair
    assert moved <= 2 * bound * clip * (1 + 1e-9)
    assert moved > 0.5 * bound * clip


def test_noise_free_release_is_the_per_class_sums_of_clipped_images():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(30, 1, 3, 3, generator=gen) * 2 - 1
    labels = torch.randint(0, 3, (30,), generator=gen)
    st = release_central_stats(images, labels, num_classes=3, clip=1.0, noise_multiplier=0.0, moments="cov",
                               generator=torch.Generator())
    x = images.reshape(30, -1).double()
    x = x * torch.clamp(1.0 / x.norm(dim=1, keepdim=True), max=1.0)  # a per-example loop would do the same
    for k in range(3):
        rows = x[labels == k]
        assert np.allclose(st.sums[k], rows.sum(0).numpy())
        assert np.allclose(st.second[k], (rows.T @ rows).numpy())
        assert st.counts[k] == pytest.approx(int((labels == k).sum()))


def test_release_noise_has_the_planned_std():
    images = torch.zeros(10, 1, 8, 8)
    labels = torch.zeros(10, dtype=torch.long)
    sigma, clip = 1.7, 3.0
    st = release_central_stats(images, labels, num_classes=3, clip=clip, noise_multiplier=sigma, moments="cov",
                               generator=torch.Generator().manual_seed(2))
    # (3 x 64 x 64 second-moment entries, symmetrised: off-diagonal std / sqrt(2), diagonal std as drawn)
    diag = np.concatenate([np.diag(m) for m in st.second])
    expected = sigma * math.sqrt(3) * clip
    assert np.std(st.sums) == pytest.approx(expected, rel=0.15)
    assert np.std(diag / clip) == pytest.approx(expected, rel=0.1)


def test_class_gaussians_from_exact_stats_reproduce_mean_and_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.2, (4000, 4)) @ np.diag([1.0, 0.5, 0.2, 0.1]) + 0.1
    images = torch.from_numpy(x).float().reshape(4000, 1, 2, 2)
    labels = torch.zeros(4000, dtype=torch.long)
    st = release_central_stats(images, labels, num_classes=1, clip=10.0, noise_multiplier=0.0, moments="cov",
                               generator=torch.Generator())
    g = ClassGaussians.from_stats(st, rank=4)
    draws = g.sample(np.zeros(20000, dtype=int), rng).reshape(20000, -1)
    assert np.allclose(draws.mean(0), x.mean(0), atol=0.01)
    assert np.allclose(np.cov(draws.T), np.cov(x.T), atol=0.004)


def test_clip_rows_bounds_every_norm():
    x = torch.randn(50, 9) * 5
    assert float(clip_rows(x, 1.5).norm(dim=1).max()) <= 1.5 + 1e-6
    small = torch.full((1, 9), 0.1)
    assert torch.equal(clip_rows(small, 1.5), small)


def test_a_server_that_knows_the_seed_cannot_remove_the_noise():
    # Prepare: a client's release with its secret key
    from synthfed.data import load_source

    data = load_source("digits", split="train").resized(8).subset(np.arange(300))
    images, labels = data.to_tensor()
    config = TrainConfig(**{**TINY, "seed": 123}).validate()
    privacy = PrivateTraining.plan_clients(config, {0: len(images)})
    key = NoiseKey.generate()
    released = privacy.release_central(0, images, labels, num_classes=10, noise_key=key)
    exact = release_central_stats(images, labels, num_classes=10, clip=8.0, noise_multiplier=0.0, moments="cov",
                                  generator=torch.Generator())
    std = privacy.noise[0].central_noise * math.sqrt(3) * 8.0
    # Execute: the attacker redraws the noise from the public run seed and subtracts it
    guess = release_central_stats(images * 0, labels, num_classes=10, clip=8.0,
                                  noise_multiplier=privacy.noise[0].central_noise, moments="cov",
                                  generator=torch.Generator().manual_seed(config.seed))
    recovered = released.sums - (guess.sums - 0.0)
    # Assert: off by the order of the noise std; with the key itself the subtraction is exact (the test can fail)
    assert np.abs(recovered - exact.sums).std() > 0.5 * std
    with_key = release_central_stats(images * 0, labels, num_classes=10, clip=8.0,
                                     noise_multiplier=privacy.noise[0].central_noise, moments="cov",
                                     generator=key.generator("central-images", 0))
    assert np.allclose(released.sums - with_key.sums, exact.sums, atol=1e-6)


def test_a_release_asked_again_is_the_same_release_and_not_counted_twice():
    from synthfed.data import load_source

    data = load_source("digits", split="train").resized(8).subset(np.arange(200))
    images, labels = data.to_tensor()
    privacy = PrivateTraining.plan_clients(TrainConfig(**TINY).validate(), {0: len(images)})
    key = NoiseKey.generate()
    first = privacy.release_central(0, images, labels, num_classes=10, noise_key=key)
    again = privacy.release_central(0, images, labels, num_classes=10, noise_key=key)
    entries = [e for e in privacy.ledger.clients["0"].entries if e.note == CENTRAL_NOTE]
    assert len(entries) == 1
    assert np.array_equal(first.sums, again.sums)


def test_plan_gives_the_central_release_its_share_and_the_composition_meets_epsilon():
    config = TrainConfig(**{**TINY, "local_steps": None, "rounds": 2, "warm_start_share": 0.4}).validate()
    (nz,) = plan_dp_sgd(config, {0: 500}).values()
    # the central noise alone spends 0.4 x epsilon: checked against the exact analytic Gaussian curve
    # (replace-one: the output moves by 2 x the per-record bound, so noise / distance = sigma / 2)
    alone = analytic_gaussian_epsilon(noise_multiplier=nz.central_noise / 2, delta=nz.delta)
    assert alone == pytest.approx(0.4 * 8.0, abs=0.05)
    both = compute_epsilon(nz.planned_mechanisms(), delta=nz.delta).epsilon_upper
    assert 8.0 - 0.1 < both <= 8.0
    without = plan_dp_sgd(config.replace(warm_start="none"), {0: 500})[0]
    assert nz.noise_multiplier > without.noise_multiplier  # DP-SGD pays for the central images


def test_a_warm_started_run_records_the_central_release_and_spends_what_it_planned(tmp_path):
    config = TrainConfig(**TINY).validate()
    result = train(config, tmp_path / "r")
    ledger = PrivacyLedger.from_dict(json.loads((result.last_round_dir / "ledger.json").read_text()))
    plans = plan_dp_sgd(config, {int(c): ledger.clients[c].num_records for c in ledger.clients})
    for cid, client in ledger.clients.items():
        central = [e for e in client.entries if e.note == CENTRAL_NOTE]
        assert [e.round for e in central] == [0]
        assert central[0].mechanism == Gaussian(plans[int(cid)].central_noise, 1)
        sgd = [e.mechanism for e in client.entries if e.note != CENTRAL_NOTE]
        assert sum(m.steps for m in sgd) == 2  # --local-steps 2, one round
        assert client.spent().epsilon_upper <= 8.0


def test_warm_start_moves_the_weights_and_a_restart_repeats_it_exactly(tmp_path):
    config = TrainConfig(**{**TINY, "warm_start_steps": 4}).validate()
    a = train(config, tmp_path / "a")
    copy_simulation_keys(tmp_path / "a", tmp_path / "b")
    b = train(config, tmp_path / "b")
    from safetensors.torch import load_file

    wa = load_file(next((a.last_round_dir / "global" / "model").glob("*.safetensors")))
    wb = load_file(next((b.last_round_dir / "global" / "model").glob("*.safetensors")))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    cold = train(config.replace(warm_start="none", lr=config.lr), tmp_path / "cold")
    wc = load_file(next((cold.last_round_dir / "global" / "model").glob("*.safetensors")))
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_local_clients_pretrain_on_their_own_release_only(tmp_path, monkeypatch):
    import synthfed.federated.warm_start as ws

    seen = []
    real = ws.pretrain_on_stats

    def spy(model, **kw):
        seen.append(float(kw["stats"].counts.sum()))
        return real(model, **kw)

    monkeypatch.setattr(ws, "pretrain_on_stats", spy)
    train(TrainConfig(**{**TINY, "strategy": "local"}).validate(), tmp_path / "local")
    pooled = list(seen)
    seen.clear()
    copy_simulation_keys(tmp_path / "local", tmp_path / "fedavg")  # the same secret noise: the same releases
    train(TrainConfig(**TINY).validate(), tmp_path / "fedavg")
    assert len(pooled) == 2 and len(seen) == 1
    assert seen[0] == pytest.approx(sum(pooled), rel=1e-9)  # FedAvg pools the same two releases


def test_init_from_starts_from_the_folder_and_refuses_another_shape(tmp_path):
    config = TrainConfig(**{**TINY, "epsilon": None, "warm_start": "none"}).validate()
    spec = spec_from_shape(config, (1, 8, 8), [str(i) for i in range(10)])
    model, init = initial_state(config.replace(seed=5), spec)
    save_model(model, spec, tmp_path / "public")
    _, loaded = initial_state(config.replace(init_from=str(tmp_path / "public")), spec)
    assert all(torch.equal(loaded[k], init[k]) for k in init)
    other = spec_from_shape(config.replace(preset="small"), (1, 8, 8), [str(i) for i in range(10)])
    from synthfed.errors import UsageError

    with pytest.raises(UsageError, match=r"another shape: preset tiny \(this run: small\)"):
        initial_state(config.replace(preset="small", init_from=str(tmp_path / "public")), other)
    with pytest.raises(UsageError, match="not a synthfed model folder"):
        initial_state(config.replace(init_from=str(tmp_path)), spec)


def test_physical_batching_changes_neither_the_update_nor_the_accounting():
    from synthfed.diffusion.schedule import NoiseSchedule
    from synthfed.model.presets import ModelSpec, build_unet
    from synthfed.privacy.dp_sgd import DPSGDStepper
    from synthfed.diffusion.loss import rows_loss

    spec = ModelSpec(preset="tiny", image_size=8, channels=1, num_classes=3, class_names=("a", "b", "c"))
    acp = NoiseSchedule(num_train_timesteps=50).alphas_cumprod()
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    t, noise = torch.randint(0, 50, (10,)), torch.randn(10, 1, 8, 8)
    results = []
    for physical in (None, 3):
        torch.manual_seed(0)
        model = build_unet(spec).train()
        stepper = DPSGDStepper(model, lr=1e-2, expected_batch_size=10, num_records=40, noise_multiplier=1.0,
                               max_grad_norm=0.5, generator=torch.Generator().manual_seed(9),
                               physical_batch_size=physical)

        def loss(xb, yb, _x=x):
            idx = [int((_x.flatten(1) == row).all(1).nonzero()[0]) for row in xb.flatten(1)]
            return rows_loss(model, xb, yb, t[idx], noise[idx], acp), 1

        stepper.step(loss, x, y)
        results.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, stepper.mechanisms(1)))
        stepper.close()
    (a, ma), (b, mb) = results
    assert ma == mb
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_local_steps_take_exactly_that_many_steps_and_the_plan_counts_them():
    config = TrainConfig(**{**TINY, "warm_start": "none", "local_steps": 3, "rounds": 2}).validate()
    (nz,) = plan_dp_sgd(config, {0: 500}).values()
    assert (nz.steps_per_round, nz.planned_steps) == (3, 6)
    fedrep = TrainConfig(**{**TINY, "warm_start": "none", "local_steps": 3, "strategy": "fedrep"}).validate()
    assert plan_dp_sgd(fedrep, {0: 500})[0].steps_per_round == 6  # head and body phases


@pytest.mark.parametrize("changes,message", [
    ({"epsilon": None}, "give --epsilon"),
    ({"strategy": "pfdm", "public_labels": True, "local_steps": None}, "pfdm"),
    ({"warm_start_share": 1.0}, "warm-start-share"),
    ({"warm_start": "dp"}, "--warm-start must be one of"),
    ({"init_from": "x"}, "exclude each other"),
    ({"physical_batch_size": 0}, "physical-batch-size"),
])
def test_bad_warm_start_options_are_refused_at_the_edge(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{**TINY, **changes}).validate()


def test_the_dp_recipe_fills_only_what_the_user_left_out():
    from synthfed.recipes import DP_RECIPE, recipe_changes, resolve_warm_start

    assert resolve_warm_start("auto", private=True, strategy="fedavg", engine="simulation") == "central"
    assert resolve_warm_start("auto", private=False, strategy="fedavg", engine="simulation") == "none"
    assert resolve_warm_start("auto", private=True, strategy="pfdm", engine="simulation") == "none"
    assert resolve_warm_start("auto", private=True, strategy="fedavg", engine="flower") == "none"
    assert resolve_warm_start("none", private=True, strategy="fedavg", engine="simulation") == "none"
    fields = TrainConfig(**TINY).to_dict()
    assert recipe_changes(fields, explicit=set()) == {"lr": DP_RECIPE["lr"]}
    assert recipe_changes(fields, explicit={"lr"}) == {}
    assert recipe_changes({**fields, "warm_start": "none"}, explicit=set()) == {}


def test_cli_train_under_epsilon_uses_the_recipe_and_says_so(tmp_path):
    from typer.testing import CliRunner

    from synthfed.cli.app import app

    runner = CliRunner()
    args = ["train", "--data", "digits", "--image-size", "8", "--preset", "tiny", "--clients", "2", "--timesteps", "20",
            "--batch-size", "64", "--rounds", "1", "--local-steps", "1", "--max-client-size", "150"]
    result = runner.invoke(app, [*args, "--epsilon", "8", "--warm-start-steps", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: DP recipe")]
    assert len(notes) == 1 and "--warm-start central" in notes[0] and "--lr 0.001" in notes[0]
    info = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert (info["warm_start"], info["lr"]) == ("central", 0.001)
    explicit = runner.invoke(app, [*args, "--epsilon", "8", "--warm-start-steps", "2", "--lr", "0.0005",
                                   "--out", str(tmp_path / "r2")])
    assert explicit.exit_code == 0, explicit.output
    assert json.loads((tmp_path / "r2" / "run.json").read_text())["config"]["lr"] == 0.0005
    refused = runner.invoke(app, [*args, "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r3")])
    assert refused.exit_code == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "--init-from" in refused.stderr


def test_pretrain_then_init_from_costs_no_budget_and_the_card_names_the_folder(tmp_path):
    from typer.testing import CliRunner

    from synthfed.cli.app import app

    runner = CliRunner()
    shape = ["--data", "digits", "--image-size", "8", "--preset", "tiny", "--timesteps", "20"]
    pre = runner.invoke(app, ["pretrain", *shape, "--epochs", "1", "--out", str(tmp_path / "public")])
    assert pre.exit_code == 0, pre.output
    run = runner.invoke(app, ["train", *shape, "--clients", "2", "--rounds", "1", "--local-steps", "1",
                              "--batch-size", "64", "--epsilon", "8", "--init-from", str(tmp_path / "public" / "model"),
                              "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.output
    assert "DP recipe" not in run.stderr  # public weights replace the central images
    ledger = PrivacyLedger.from_dict(json.loads(next((tmp_path / "run" / "rounds").glob("round-*/ledger.json")).read_text()))
    for client in ledger.clients.values():  # only DP-SGD: the public weights are not a release of this data
        assert [e.note for e in client.entries] == ["DP-SGD local training"]
        assert client.spent().epsilon_upper <= 8.0
    gen = runner.invoke(app, ["generate", str(tmp_path / "run"), "--out", str(tmp_path / "data"), "--per-class", "1",
                              "--steps", "2"])
    assert gen.exit_code == 0, gen.output
    card = (tmp_path / "data" / "README.md").read_text()
    assert "initialised from the model folder 'model'" in card and str(tmp_path) not in card


def test_pretraining_labels_follow_the_noisy_class_counts():
    from synthfed.privacy.central import CentralStats

    stats = CentralStats(sums=np.zeros((3, 4)), second=None, counts=np.array([300.0, -2.0, 100.0]), image_shape=(1, 2, 2))
    labels = ClassGaussians.from_stats(stats, rank=0).draw_labels(4000, np.random.default_rng(0))
    assert not (labels == 1).any()  # a negative noisy count: an absent class gets no draws
    assert (labels == 0).mean() == pytest.approx(0.75, abs=0.03)


def test_pretraining_takes_exactly_the_warm_start_steps():
    from synthfed.federated.warm_start import pretrain_on_stats
    from synthfed.privacy.central import CentralStats

    config = TrainConfig(**{**TINY, "warm_start_steps": 5}).validate()
    spec = spec_from_shape(config, (1, 8, 8), [str(i) for i in range(10)])
    model, init = initial_state(config, spec)
    stats = CentralStats(sums=np.zeros((10, 64)), second=None, counts=np.full(10, 50.0), image_shape=(1, 8, 8))
    _, _, ema_step = pretrain_on_stats(model, config=config, spec=spec, state=init, stats=stats, seed=0,
                                       device=torch.device("cpu"))
    assert ema_step == 5
