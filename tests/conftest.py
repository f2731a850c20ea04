"""Shared fixtures: deterministic torch on CPU; Ctrl-C heeded as in a terminal."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent  # the checkout: studies/, search_spaces/, docs/

# Paths by the fitted rule, not by timing, so that every run of a test computes the same thing
# (tests of the tuner turn it on for themselves); subprocesses inherit this.
os.environ.setdefault("CONDCONV_NAS_PATH_TUNING", "0")

# Tests train tiny models, which run fastest on one thread; under pytest-xdist that also leaves
# every other core to the parallel tests (set before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture
def ctrl_c_heeded():
    """Python's own Ctrl-C handler, whatever this process inherited (a background job ignores it)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)
