"""Shared fixtures: deterministic torch on CPU."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
