"""Tiny frozen models and data shared by the wrapper tests (float64, seeded, no training needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

NUM_CLASSES = 3
NUM_INPUTS = 4


def seeded(module_fn, generator: torch.Generator) -> nn.Module:
    """Build a module with its initialisation drawn from ``generator`` (not the global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return module_fn()


@pytest.fixture
def build(generator):
    """``build(module_fn)``: a module initialised from the test's generator."""
    return lambda module_fn: seeded(module_fn, generator)


@pytest.fixture
def blobs(generator):
    """Three Gaussian classes in 4-D: ``x [120, 4]``, labels ``[120]``."""
    centres = 2.5 * torch.randn(NUM_CLASSES, NUM_INPUTS, generator=generator)
    labels = torch.arange(120) % NUM_CLASSES
    x = centres[labels] + torch.randn(120, NUM_INPUTS, generator=generator)
    return x, labels


@pytest.fixture
def classifier(generator, blobs):
    """A briefly trained MLP with batch norm and dropout (so train-mode mistakes would show), frozen."""
    model = seeded(lambda: nn.Sequential(
        nn.Linear(NUM_INPUTS, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, NUM_CLASSES)
    ), generator)
    x, y = blobs
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture
def regressor(generator):
    """A small MLP regressor ``[N, 3] -> [N, 2]`` with dropout, untrained."""
    return seeded(lambda: nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 2)), generator).eval()
