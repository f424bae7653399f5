"""Few-shot episodes: the shared container and two generators we can make locally.

* `Episodes`: a batch of ``B`` episodes with equal shapes, ``support_x [B, K, D_in]``,
  ``support_y [B, K]``, ``query_x [B, Q, D_in]``, ``query_y [B, Q]``; built by `Episodes.stack`,
  which checks every episode.
* `SineLine`: 1-D regression tasks, half sines ``y = a sin(x - p)`` with ``a ~ U[0.1, 5]``,
  ``p ~ U[0, pi]``, half lines ``y = s x + c`` with ``s, c ~ U[-3, 3]``; ``x ~ U[-5, 5]`` and Gaussian
  noise of std 0.3 (the SineLine setting of Finn, Xu & Levine, "Probabilistic MAML", NeurIPS 2018).
* `DigitsFewShot`: N-way K-shot classification from scikit-learn's bundled 8x8 digits (1797 images,
  pixels scaled to [0, 1]), with disjoint class sets for meta-training (digits 0-4) and testing
  (digits 5-9); labels are permuted at random within each episode.
* `PrototypeFewShot`: N-way K-shot classification from a stated generator with many classes (so that
  meta-validation can use classes of its own): a fixed random renderer ``g(z) = tanh(z W1 + b1) W2``
  maps latent points to features, class ``k`` has a prototype ``c_k ~ N(0, I)`` in the latent space,
  and an example of class ``k`` is ``g(c_k + spread e) + noise_std e'`` (``e, e'`` standard normal).
  Classes 0-63 are for meta-training, 64-79 for meta-validation and 80-99 for testing (the
  64/16/20 class counts of miniImageNet, Ravi & Larochelle 2017).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from uqkit._checks import check_float, check_labels, check_positive

Task = str  # "regression" or "classification"


@dataclass(frozen=True)
class Episodes:
    """``B`` episodes with equal shapes (see the module docstring); build with `stack`.

    Attributes:
        support_x, support_y, query_x, query_y: the tensors, episode-major.
        task: "regression" (float targets) or "classification" (long labels in ``[0, num_classes)``).
        num_classes: classes per episode (classification), else None.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    task: Task
    num_classes: int | None = None

    def __post_init__(self) -> None:
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        if sx.ndim != 3 or qx.ndim != 3 or sy.shape != sx.shape[:2] or qy.shape != qx.shape[:2] \
                or qx.shape[0] != sx.shape[0] or qx.shape[2] != sx.shape[2]:
            raise ValueError("episodes: expected support_x [B, K, D], support_y [B, K], query_x [B, Q, D], query_y [B, Q]; "
                             f"got {tuple(sx.shape)}, {tuple(sy.shape)}, {tuple(qx.shape)}, {tuple(qy.shape)}")
        if sx.shape[0] == 0 or sx.shape[1] == 0 or qx.shape[1] == 0:
            raise ValueError(f"episodes: expected at least one episode, support point and query point, got B={sx.shape[0]}, "
                             f"K={sx.shape[1]}, Q={qx.shape[1]}")
        for name, t in zip(_NAMES, (sx, sy, qx, qy)):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name}: expected finite values, found NaN or inf")
        if self.task == "classification":
            for name, t in (("support_y", sy), ("query_y", qy)):
                if t.is_floating_point() or int(t.min()) < 0 or int(t.max()) >= (self.num_classes or 0):
                    raise ValueError(f"{name}: expected integer labels in [0, {self.num_classes}) for classification")

    @classmethod
    def stack(cls, episodes: Sequence[tuple[object, object, object, object]], *, task: Task,
              num_classes: int | None = None) -> Episodes:
        """Validate and stack ``(support_x, support_y, query_x, query_y)`` tuples.

        ``x`` may be ``[K]`` (one input feature) or ``[K, D_in]``. Raises ``ValueError`` for empty
        support sets, NaN, shapes that differ between episodes, or bad labels.
        """
        if task not in ("regression", "classification"):
            raise ValueError(f"task: expected 'regression' or 'classification', got {task!r}")
        if task == "classification" and (num_classes is None or num_classes < 2):
            raise ValueError(f"num_classes: expected an integer >= 2 for classification, got {num_classes}")
        if len(episodes) == 0:
            raise ValueError("episodes: expected at least one episode")
        parts: list[list[Tensor]] = [[], [], [], []]
        for i, episode in enumerate(episodes):
            if len(episode) != 4:
                raise ValueError(f"episodes: episode {i} must be (support_x, support_y, query_x, query_y)")
            for j, t in enumerate(_episode_tensors(episode, i, task, num_classes)):
                if parts[j] and t.shape != parts[j][0].shape:
                    raise ValueError(f"episodes: episode {i} {_NAMES[j]} has shape {tuple(t.shape)}, "
                                     f"but episode 0 has {tuple(parts[j][0].shape)}; all episodes in a batch need equal shapes")
                parts[j].append(t)
        return cls(*(torch.stack(p) for p in parts), task=task, num_classes=num_classes)

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, index: slice | Tensor) -> Episodes:
        """A sub-batch (slice or index tensor)."""
        return Episodes(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index],
                        self.task, self.num_classes)

    @property
    def num_support(self) -> int:
        return self.support_x.shape[1]

    @property
    def num_query(self) -> int:
        return self.query_x.shape[1]

    def flat_query_y(self) -> Tensor:
        """``[B * Q]`` query targets in episode order (matching the learners' predictives)."""
        return self.query_y.reshape(-1)


_NAMES = ("support_x", "support_y", "query_x", "query_y")


def _episode_tensors(episode: tuple[object, ...], index: int, task: Task, num_classes: int | None) -> list[Tensor]:
    sx, sy, qx, qy = episode
    out = []
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        tag = f"episode {index} {name}"
        xt = check_float(x, f"{name}_x ({tag})", ndim=(1, 2))
        xt = xt.unsqueeze(-1) if xt.ndim == 1 else xt
        if task == "regression":
            yt = check_float(y, f"{name}_y ({tag})", ndim=1).to(xt.dtype)
        else:
            yt = check_labels(y, f"{name}_y ({tag})", num_classes=num_classes)
        if yt.shape[0] != xt.shape[0]:
            raise ValueError(f"{name}_y ({tag}): expected {xt.shape[0]} targets to match {name}_x, got {yt.shape[0]}")
        out += [xt, yt]
    return out


@dataclass(frozen=True)
class SineLine:
    """Sine-or-line 1-D regression tasks (module docstring); ranges and noise are the fields."""

    x_range: tuple[float, float] = (-5.0, 5.0)
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    slope: tuple[float, float] = (-3.0, 3.0)
    intercept: tuple[float, float] = (-3.0, 3.0)
    noise_std: float = 0.3
    prob_sine: float = 0.5

    def sample(self, num_episodes: int, num_support: int, num_query: int, *, generator: torch.Generator) -> Episodes:
        """``num_episodes`` tasks with ``num_support`` / ``num_query`` noisy points each (float64 by default dtype)."""
        _check_counts(num_episodes=num_episodes, num_support=num_support, num_query=num_query)
        b, n = num_episodes, num_support + num_query
        dtype = torch.get_default_dtype()

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(*shape, generator=generator, dtype=dtype)

        x = uniform(self.x_range, b, n)
        is_sine = torch.rand(b, 1, generator=generator, dtype=dtype) < self.prob_sine
        sine = uniform(self.amplitude, b, 1) * torch.sin(x - uniform(self.phase, b, 1))
        line = uniform(self.slope, b, 1) * x + uniform(self.intercept, b, 1)
        y = torch.where(is_sine, sine, line) + self.noise_std * torch.randn(b, n, generator=generator, dtype=dtype)
        return Episodes(x[:, :num_support, None], y[:, :num_support], x[:, num_support:, None], y[:, num_support:],
                        "regression")


class DigitsFewShot:
    """N-way K-shot episodes from the bundled scikit-learn digits, with a class split (module docstring).

    Args:
        split: "train" (digits 0-4) or "test" (digits 5-9).
        num_ways: classes per episode (<= 5).
    """

    CLASSES = {"train": (0, 1, 2, 3, 4), "test": (5, 6, 7, 8, 9)}

    def __init__(self, split: str = "train", num_ways: int = 5) -> None:
        from sklearn.datasets import load_digits

        if split not in self.CLASSES:
            raise ValueError(f"split: expected one of {sorted(self.CLASSES)}, got {split!r}")
        classes = self.CLASSES[split]
        if not 2 <= num_ways <= len(classes):
            raise ValueError(f"num_ways: expected 2..{len(classes)}, got {num_ways}")
        data = load_digits()
        x = torch.as_tensor(data.data / 16.0, dtype=torch.get_default_dtype())
        y = torch.as_tensor(data.target)
        self.num_ways = num_ways
        self.by_class = [x[y == c] for c in classes]

    @property
    def num_features(self) -> int:
        return self.by_class[0].shape[1]

    def sample(self, num_episodes: int, num_shots: int, num_query: int, *, generator: torch.Generator) -> Episodes:
        """``num_episodes`` episodes with ``num_shots`` support and ``num_query`` query images per class."""
        _check_counts(num_episodes=num_episodes, num_support=num_shots, num_query=num_query)
        per_class = num_shots + num_query
        if per_class > min(len(c) for c in self.by_class):
            raise ValueError(f"num_shots + num_query: at most {min(len(c) for c in self.by_class)} images per class")
        sx, sy, qx, qy = [], [], [], []
        for _ in range(num_episodes):
            chosen = torch.randperm(len(self.by_class), generator=generator)[: self.num_ways]
            xs, ys = [], []
            for label, c in enumerate(chosen.tolist()):
                pool = self.by_class[c]
                xs.append(pool[torch.randperm(len(pool), generator=generator)[:per_class]])
                ys.append(torch.full((per_class,), label))
            x, y = torch.stack(xs), torch.stack(ys)  # [W, per_class, F], [W, per_class]
            sx.append(x[:, :num_shots].reshape(-1, x.shape[-1]))
            sy.append(y[:, :num_shots].reshape(-1))
            qx.append(x[:, num_shots:].reshape(-1, x.shape[-1]))
            qy.append(y[:, num_shots:].reshape(-1))
        return Episodes(torch.stack(sx), torch.stack(sy), torch.stack(qx), torch.stack(qy), "classification",
                        self.num_ways)


class PrototypeFewShot:
    """N-way K-shot episodes from the prototype generator of the module docstring, with a class split.

    Args:
        split: "train" (classes 0-63), "val" (64-79) or "test" (80-99).
        num_ways: classes per episode (2..16).
        latent: dimension of the latent space.
        features: dimension of the inputs.
        hidden: width of the renderer's tanh layer.
        spread: standard deviation of an example around its class prototype, latent units.
        noise_std: standard deviation of the feature noise.
        seed: seed of the renderer and of the 100 prototypes (the same for every split).
    """

    SPLITS = {"train": range(0, 64), "val": range(64, 80), "test": range(80, 100)}

    def __init__(self, split: str = "train", num_ways: int = 5, *, latent: int = 8, features: int = 32,
                 hidden: int = 32, spread: float = 1.0, noise_std: float = 0.1, seed: int = 0) -> None:
        if split not in self.SPLITS:
            raise ValueError(f"split: expected one of {sorted(self.SPLITS)}, got {split!r}")
        if not isinstance(num_ways, int) or not 2 <= num_ways <= 16:
            raise ValueError(f"num_ways: expected an integer in 2..16, got {num_ways!r}")
        _check_counts(latent=latent, features=features, hidden=hidden)
        self.spread, self.noise_std = check_positive(spread, "spread"), check_positive(noise_std, "noise_std", allow_zero=True)
        gen = torch.Generator().manual_seed(seed)
        dtype = torch.get_default_dtype()
        self.w1 = torch.randn(latent, hidden, generator=gen, dtype=dtype) / math.sqrt(latent)
        self.b1 = 0.5 * torch.randn(hidden, generator=gen, dtype=dtype)
        self.w2 = torch.randn(hidden, features, generator=gen, dtype=dtype) / math.sqrt(hidden)
        prototypes = torch.randn(100, latent, generator=gen, dtype=dtype)
        self.prototypes = prototypes[self.SPLITS[split].start:self.SPLITS[split].stop]
        self.num_ways = num_ways

    @property
    def num_features(self) -> int:
        return self.w2.shape[1]

    def render(self, z: Tensor) -> Tensor:
        """Noise-free features ``g(z)`` ``[..., features]`` of latent points ``z [..., latent]``."""
        return torch.tanh(z @ self.w1 + self.b1) @ self.w2

    def sample(self, num_episodes: int, num_shots: int, num_query: int, *, generator: torch.Generator) -> Episodes:
        """``num_episodes`` episodes with ``num_shots`` support and ``num_query`` query examples per class."""
        _check_counts(num_episodes=num_episodes, num_support=num_shots, num_query=num_query)
        b, w, n = num_episodes, self.num_ways, num_shots + num_query
        dtype = self.w1.dtype
        chosen = torch.rand(b, len(self.prototypes), generator=generator, dtype=dtype).argsort(-1)[:, :w]  # [B, W]
        spread = self.spread * torch.randn(b, w, n, self.w1.shape[0], generator=generator, dtype=dtype)
        z = self.prototypes[chosen].unsqueeze(2) + spread
        x = self.render(z) + self.noise_std * torch.randn(b, w, n, self.num_features, generator=generator, dtype=dtype)
        y = torch.arange(w).view(1, w, 1).expand(b, w, n)
        return Episodes(x[:, :, :num_shots].reshape(b, -1, self.num_features), y[:, :, :num_shots].reshape(b, -1),
                        x[:, :, num_shots:].reshape(b, -1, self.num_features), y[:, :, num_shots:].reshape(b, -1),
                        "classification", w)


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
