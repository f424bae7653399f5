"""Shared test settings: float64 by default, a ``seed`` fixture swept by ``UQKIT_TEST_SEEDS=0-19``."""

from __future__ import annotations

import os

import pytest
import torch


def _seeds() -> list[int]:
    spec = os.environ.get("UQKIT_TEST_SEEDS", "0")
    if "-" in spec:
        lo, hi = spec.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in spec.split(",")]


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: one intra-op thread avoids OpenMP spin-waits when the 2 cores are busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(params=_seeds())
def seed(request) -> int:
    """The test seed: 0 by default; every seed in UQKIT_TEST_SEEDS must pass."""
    return request.param


@pytest.fixture
def generator(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
