"""Prior simulators for PFN training: each call yields a batch of synthetic datasets ``(x, y)``.

Every simulator has the same interface (`PriorSimulator`):
``sample(batch, num_points, *, generator, input_dim=None) -> (x [B, n, d], y [B, n])`` with
``x ~ U(input_range)^d`` drawn independently per dataset, plus `info()`, a JSON-ready description
that a PFN checkpoint stores as its ``prior_info``. Simulators are used by `uqkit.inference.pfn`.

Priors follow Müller et al., "Transformers Can Do Bayesian Inference" (ICLR 2022), section 5 and
the automl/PFNs ``priors`` package (GP, GP with hyperpriors, BNN, binarised classification).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import LogNormal

from uqkit._checks import check_positive
from uqkit._gpytorch import import_gpytorch
from uqkit.models.gp_prior import GPPrior
from uqkit.models.spec import ModelSpec


class PriorSimulator:
    """Base class: draws ``x`` uniformly in ``input_range`` and leaves ``y`` to `sample_y`."""

    task = "regression"

    def __init__(self, input_dims: tuple[int, int], input_range: tuple[float, float] = (0.0, 1.0)) -> None:
        lo, hi = int(input_dims[0]), int(input_dims[1])
        if not 1 <= lo <= hi:
            raise ValueError(f"input_dims: expected 1 <= min <= max, got {input_dims}")
        if not float(input_range[0]) < float(input_range[1]):
            raise ValueError(f"input_range: expected (low, high) with low < high, got {input_range}")
        self.input_dims = (lo, hi)
        self.input_range = (float(input_range[0]), float(input_range[1]))

    def sample(self, batch: int, num_points: int, *, generator: torch.Generator,
               input_dim: int | None = None) -> tuple[Tensor, Tensor]:
        """``(x [B, n, d], y [B, n])`` in float64; ``d`` is drawn uniformly from ``input_dims`` if not given."""
        if batch < 1 or num_points < 1:
            raise ValueError(f"batch, num_points: expected positive sizes, got {batch}, {num_points}")
        lo, hi = self.input_dims
        if input_dim is None:
            input_dim = int(torch.randint(lo, hi + 1, (), generator=generator))
        elif not lo <= input_dim <= hi:
            raise ValueError(f"input_dim: expected an integer in [{lo}, {hi}], got {input_dim}")
        a, b = self.input_range
        x = a + (b - a) * torch.rand(batch, num_points, input_dim, generator=generator, dtype=torch.float64)
        return x, self.sample_y(x, generator=generator)

    def sample_y(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        """``[B, n]`` targets at inputs ``x [B, n, d]``."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """JSON-ready description of the prior (kernel, hyperparameters or hyperpriors, input range)."""
        lo, hi = self.input_dims
        return {"input_dim": lo if lo == hi else [lo, hi], "input_range": list(self.input_range)}


def rbf_kernel(lengthscale: float = 1.0, outputscale: float = 1.0):
    """gpytorch ``ScaleKernel(RBFKernel())`` with the given lengthscale and outputscale (a variance)."""
    gpytorch = import_gpytorch()
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    kernel.base_kernel.lengthscale = lengthscale
    kernel.outputscale = outputscale
    return kernel


class GPSimulator(PriorSimulator):
    """RBF Gaussian-process prior with fixed hyperparameters: ``y ~ N(0, K + noise I)``.

    Sampled exactly through `uqkit.models.gp_prior.GPPrior` with the noise variance as its jitter.

    Args:
        lengthscale: RBF lengthscale (input units).
        outputscale: signal variance.
        noise: observation-noise variance.
        input_dim: input dimension ``d``.
        input_range: each input coordinate is uniform on this interval.
    """

    def __init__(self, lengthscale: float, outputscale: float, noise: float, *, input_dim: int = 1,
                 input_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__((input_dim, input_dim), input_range)
        self.lengthscale = check_positive(lengthscale, "lengthscale")
        self.outputscale = check_positive(outputscale, "outputscale")
        self.noise = check_positive(noise, "noise")
        self.gp = GPPrior(rbf_kernel(self.lengthscale, self.outputscale), jitter=self.noise, max_jitter=self.noise)

    def sample_y(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        return self.gp.sample_functions(x, 1, generator=generator)[:, 0]

    def info(self) -> dict[str, Any]:
        return {"prior": "gp", "kernel": "rbf", "lengthscale": self.lengthscale, "outputscale": self.outputscale,
                "noise": self.noise, **super().info()}


class GPHyperSimulator(PriorSimulator):
    """RBF GP whose hyperparameters are redrawn for every dataset from log-normal hyperpriors.

    ``log lengthscale ~ N(mu_l, s_l)``, ``log outputscale ~ N(mu_o, s_o)`` and
    ``noise = noise_floor + exp(N(mu_n, s_n))`` (outputscale and noise are variances; the floor keeps
    the Cholesky factorisations well conditioned). Functions come from
    `uqkit.models.gp_prior.GPPrior` with the floor as its jitter; the rest of the noise is added here.

    Args:
        hyperpriors: ``{"lengthscale": (mu, sigma), "outputscale": (mu, sigma), "noise": (mu, sigma)}``,
            the mean and standard deviation of each log hyperparameter.
        input_dims: ``(min, max)`` input dimension; ``d`` is drawn uniformly per batch.
        noise_floor: variance added to every dataset's sampled noise.
    """

    NAMES = ("lengthscale", "outputscale", "noise")

    def __init__(self, hyperpriors: dict[str, tuple[float, float]], *, input_dims: tuple[int, int] = (1, 5),
                 input_range: tuple[float, float] = (0.0, 1.0), noise_floor: float = 1e-4) -> None:
        super().__init__(input_dims, input_range)
        if set(hyperpriors) != set(self.NAMES):
            raise ValueError(f"hyperpriors: expected keys {list(self.NAMES)}, got {sorted(hyperpriors)}")
        self.hyperpriors = {k: (float(hyperpriors[k][0]), check_positive(hyperpriors[k][1], f"hyperpriors[{k!r}]"))
                            for k in self.NAMES}
        self.noise_floor = check_positive(noise_floor, "noise_floor")
        lognormal = {k: LogNormal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
                     for k, (m, s) in self.hyperpriors.items()}
        self.gp = GPPrior(rbf_kernel(), hyperpriors={k: lognormal[k] for k in ("lengthscale", "outputscale")},
                          jitter=self.noise_floor, max_jitter=self.noise_floor)

    def log_hyperprior(self) -> tuple[Tensor, Tensor]:
        """Means and standard deviations ``[3]`` (float64, in `NAMES` order) of the log hyperparameters."""
        mean, std = zip(*(self.hyperpriors[k] for k in self.NAMES))
        return torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)

    def sample_y(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        f = self.gp.sample_functions(x, 1, generator=generator)[:, 0]
        mu, s = self.hyperpriors["noise"]
        z = torch.randn(f.shape[0], 1, generator=generator, dtype=torch.float64)
        extra_noise = torch.exp(mu + s * z)
        return f + extra_noise.sqrt() * torch.randn(f.shape, generator=generator, dtype=torch.float64)

    def info(self) -> dict[str, Any]:
        return {"prior": "gp-hyper", "kernel": "rbf",
                "hyperpriors": {k: {"family": "lognormal", "log_mean": m, "log_std": s}
                                for k, (m, s) in self.hyperpriors.items()},
                "noise_floor": self.noise_floor, **super().info()}


class BNNSimulator(PriorSimulator):
    """Functions drawn from a Bayesian network prior (`ModelSpec.sample_functions`) plus Gaussian noise.

    Args:
        spec: a regression `ModelSpec` whose net maps ``[n, d]`` to ``[n, 1]``.
        noise: observation-noise variance.
        input_dim: the net's input dimension.
    """

    def __init__(self, spec: ModelSpec, noise: float, *, input_dim: int,
                 input_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__((input_dim, input_dim), input_range)
        self.spec = spec
        self.noise = check_positive(noise, "noise")

    def sample_y(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        dtype = next(self.spec.net.parameters()).dtype
        f = torch.stack([self.spec.sample_functions(xb.to(dtype), 1, generator=generator)[0, :, 0] for xb in x])
        f = f.to(torch.float64)
        return f + math.sqrt(self.noise) * torch.randn(f.shape, generator=generator, dtype=torch.float64)

    def info(self) -> dict[str, Any]:
        return {"prior": "bnn", "net": type(self.spec.net).__name__, "noise": self.noise, **super().info()}


class ClassificationSimulator(PriorSimulator):
    """Classification datasets from a regression prior: ``y`` is cut at its per-dataset quantiles.

    With ``num_classes = C`` the labels are ``0 .. C-1`` by which of the ``C`` equal-mass bins of the
    dataset's own targets a point falls in (``C = 2``: above/below the median, the PFN paper's
    binarised prior).

    Args:
        base: the regression simulator.
        num_classes: number of classes ``C >= 2``.
    """

    task = "classification"

    def __init__(self, base: PriorSimulator, num_classes: int = 2) -> None:
        super().__init__(base.input_dims, base.input_range)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
        self.base = base
        self.num_classes = int(num_classes)

    def sample_y(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        y = self.base.sample_y(x, generator=generator)
        levels = torch.arange(1, self.num_classes, dtype=y.dtype) / self.num_classes
        cuts = torch.quantile(y, levels, dim=1).T  # [B, C-1]
        return (y.unsqueeze(-1) > cuts.unsqueeze(1)).sum(-1).to(y.dtype)

    def info(self) -> dict[str, Any]:
        return {**self.base.info(), "task": "classification", "num_classes": self.num_classes}


#: The priors of the shipped checkpoints (``uqkit pfn train --prior NAME``).
PRESETS: dict[str, Any] = {
    "gp": lambda: GPSimulator(lengthscale=0.3, outputscale=1.0, noise=0.01, input_dim=1),
    "gp-hyper": lambda: GPHyperSimulator(
        {"lengthscale": (math.log(0.4), 0.5), "outputscale": (0.0, 0.5), "noise": (math.log(0.02), 1.0)},
        input_dims=(1, 5)),
    "gp-classification": lambda: ClassificationSimulator(
        GPSimulator(lengthscale=0.3, outputscale=1.0, noise=0.01, input_dim=1), num_classes=2),
}


def prior_by_name(name: str) -> PriorSimulator:
    """A new simulator for one of `PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"prior: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()
