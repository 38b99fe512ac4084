"""Shared pytest fixtures: devices (CUDA cases skip without a GPU) and seeded generators."""

from __future__ import annotations

import pytest
import torch

# Tests use tiny tensors: intra-op threads only add OpenMP spin-waits on a shared 2-core box.
torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Run a test once per available device."""
    return torch.device(request.param)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fixed seed."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
