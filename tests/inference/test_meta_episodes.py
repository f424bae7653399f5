"""Episode generators: SineLine functions and ranges, class-split digits episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from uqkit.data.episodes import DigitsFewShot, PrototypeFewShot, SineLine


def test_sineline_tasks_are_sines_or_lines_in_range(generator):
    """Noise-free tasks fit exactly in span{x, 1} (lines) or span{sin x, cos x} (sines), with stated ranges."""
    eps = SineLine(noise_std=0.0).sample(200, 5, 15, generator=generator)
    x = torch.cat([eps.support_x, eps.query_x], 1)[..., 0].numpy()
    y = torch.cat([eps.support_y, eps.query_y], 1).numpy()
    assert x.min() >= -5 and x.max() <= 5
    kinds = []
    for xi, yi in zip(x, y):
        fits = {}
        for kind, basis in (("line", np.c_[xi, np.ones_like(xi)]), ("sine", np.c_[np.sin(xi), np.cos(xi)])):
            coef = np.linalg.lstsq(basis, yi, rcond=None)[0]
            fits[kind] = (np.abs(basis @ coef - yi).max(), coef)
        kind = min(fits, key=lambda k: fits[k][0])
        assert fits[kind][0] < 1e-9
        coef = fits[kind][1]
        if kind == "line":
            assert abs(coef[0]) <= 3 and abs(coef[1]) <= 3
        else:  # a sin(x - p) = a cos(p) sin x - a sin(p) cos x, with p in [0, pi]: the cos coefficient is <= 0
            assert 0.1 <= np.hypot(*coef) <= 5 and coef[1] <= 1e-12
        kinds.append(kind)
    assert 60 < kinds.count("sine") < 140  # prob_sine = 0.5: 200 tasks, |deviation| < 2.8 binomial SDs


def test_sineline_noise_level():
    clean = SineLine(noise_std=0.0).sample(50, 5, 5, generator=torch.Generator().manual_seed(3))
    noisy = SineLine().sample(50, 5, 5, generator=torch.Generator().manual_seed(3))
    resid = (noisy.support_y - clean.support_y).reshape(-1)
    assert abs(resid.std().item() - 0.3) < 4 * 0.3 / np.sqrt(2 * (resid.numel() - 1))


def test_digits_episodes_use_their_split_classes(generator):
    data = load_digits()
    lookup = {row.tobytes(): label for row, label in zip((data.data / 16.0).astype(np.float64), data.target)}
    eps = DigitsFewShot("test", num_ways=5).sample(4, 2, 3, generator=generator)
    assert eps.support_x.shape == (4, 10, 64) and eps.query_x.shape == (4, 15, 64) and eps.num_classes == 5
    for b in range(4):
        labels = {}
        for xs, ys in ((eps.support_x[b], eps.support_y[b]), (eps.query_x[b], eps.query_y[b])):
            for row, label in zip(xs.numpy(), ys.tolist()):
                digit = lookup[row.tobytes()]
                assert digit >= 5
                assert labels.setdefault(label, digit) == digit  # one digit per episode label
        assert sorted(labels) == list(range(5))
        assert eps.support_y[b].bincount().tolist() == [2] * 5


def test_prototype_episodes_follow_the_stated_generator(generator):
    """With almost no spread and no noise every example is the rendering of one prototype of its split: one
    prototype per episode label, distinct across labels, and the splits' prototypes are disjoint."""
    tasks = {split: PrototypeFewShot(split, spread=1e-9, noise_std=0.0) for split in ("train", "val", "test")}
    assert [len(t.prototypes) for t in tasks.values()] == [64, 16, 20]
    all_protos = torch.cat([t.prototypes for t in tasks.values()])
    assert torch.cdist(all_protos, all_protos).add(torch.eye(100)).min() > 0.1
    test = tasks["test"]
    w1, b1, w2 = test.w1.numpy(), test.b1.numpy(), test.w2.numpy()
    rendered = np.tanh(test.prototypes.numpy() @ w1 + b1) @ w2  # [20, F], independent of render()
    eps = test.sample(6, 2, 3, generator=generator)
    assert eps.support_x.shape == (6, 10, 32) and eps.query_x.shape == (6, 15, 32) and eps.num_classes == 5
    for b in range(6):
        xs = torch.cat([eps.support_x[b], eps.query_x[b]]).numpy()
        ys = torch.cat([eps.support_y[b], eps.query_y[b]]).tolist()
        dist = np.linalg.norm(xs[:, None] - rendered[None], axis=-1)
        assert dist.min(1).max() < 1e-6
        owner = dict(zip(ys, dist.argmin(1)))
        assert all(owner[y] == k for y, k in zip(ys, dist.argmin(1))) and len(set(owner.values())) == 5
    clean = PrototypeFewShot("test", noise_std=0.0).sample(100, 1, 1, generator=torch.Generator().manual_seed(3))
    noisy = PrototypeFewShot("test", noise_std=0.5).sample(100, 1, 1, generator=torch.Generator().manual_seed(3))
    resid = (noisy.support_x - clean.support_x).reshape(-1)  # same draws: only the feature noise differs
    assert abs(resid.std().item() - 0.5) < 4 * 0.5 / np.sqrt(2 * (resid.numel() - 1))


def test_generator_errors():
    with pytest.raises(ValueError, match="split"):
        DigitsFewShot("val")
    with pytest.raises(ValueError, match="num_ways"):
        DigitsFewShot("train", num_ways=6)
    with pytest.raises(ValueError, match="num_support"):
        SineLine().sample(2, 0, 3, generator=torch.Generator())
    with pytest.raises(ValueError, match="^split"):
        PrototypeFewShot("validation")
    with pytest.raises(ValueError, match="^num_ways"):
        PrototypeFewShot("val", num_ways=17)
    with pytest.raises(ValueError, match="^spread"):
        PrototypeFewShot("train", spread=0.0)
