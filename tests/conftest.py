"""Shared test set-up: small, deterministic, single-threaded.

One intra-op thread: the tests use tiny models where threading buys nothing,
and it keeps timings stable when other work shares the 2 cores."""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SYNTHFED_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
