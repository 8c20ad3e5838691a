"""The train message's weights: one flat array, back to the receiver's shapes bit for bit."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402

from synthfed.flower.records import parameters_to_ndarrays, parameters_to_state, state_to_parameters  # noqa: E402


def test_weights_and_ema_travel_as_one_array_and_come_back_exactly():
    # Prepare: entries of several shapes, values that a cast would change
    g = torch.Generator().manual_seed(0)
    like = {"a.weight": torch.randn(3, 4, 2, 2, generator=g), "a.bias": torch.randn(3, generator=g),
            "b.scale": torch.randn(1, generator=g) * 1e-30}
    keys = sorted(like)
    ema = {k: v * 0.5 + 1e-7 for k, v in like.items()}
    # Execute
    params = state_to_parameters(keys, like, ema)
    state, back_ema = parameters_to_state(keys, params, like)
    # Assert: one array of every value; each entry equal to its source bit for bit, in shape and dtype
    arrays = parameters_to_ndarrays(params)
    assert len(arrays) == 1 and arrays[0].size == 2 * sum(v.numel() for v in like.values())
    for k in keys:
        assert torch.equal(state[k], like[k]) and state[k].dtype == like[k].dtype
        assert torch.equal(back_ema[k], ema[k])


def test_a_message_for_another_model_is_refused():
    like = {"w": torch.zeros(4)}
    params = state_to_parameters(["w"], {"w": torch.zeros(5)}, {"w": torch.zeros(5)})
    with pytest.raises(ValueError, match="disagree on the model"):
        parameters_to_state(["w"], params, like)
