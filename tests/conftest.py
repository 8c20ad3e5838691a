"""Shared test set-up: small, deterministic, single-threaded.

Layout: tests/unit/<package>/ (one folder per package of the code; core/ for synthfed's own modules),
tests/integration/ (train -> generate -> audit through the CLI or the API),
tests/flower/ (Flower; the real-process deployment tests are marked ``slow``:
``pytest -m "not slow"`` leaves them out, ``make test`` runs everything).

One intra-op thread: the tests use tiny models where threading buys nothing,
and it keeps timings stable when other work shares the 2 cores."""

import os
import sys
from pathlib import Path

import pytest
import torch

# The shared helpers (shared_keys.py, flower_loopback.py) sit here, beside this
# file; the tests themselves sit in folders that mirror the code.
sys.path.insert(0, str(Path(__file__).resolve().parent))

torch.set_num_threads(int(os.environ.get("SYNTHFED_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
