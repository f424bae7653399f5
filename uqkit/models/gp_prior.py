"""`GPPrior`: zero-mean Gaussian-process priors over functions on gpytorch kernels, sampled in float64.

Draws are ``f = L z`` with ``L L^T = K(x, x) + jitter I`` (one batched Cholesky per input batch element,
or per function draw when hyperparameters are resampled) and ``z ~ N(0, I)`` from a ``torch.Generator``.
With ``hyperpriors`` every function draw has its own lengthscale / outputscale, drawn from the given
distributions (a hierarchical GP, as the target prior of Tran et al. 2022, METHODS.md section 1).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from uqkit._checks import check_float, check_positive
from uqkit._gpytorch import import_gpytorch

#: Hyperparameters that may carry a hyperprior, and the gpytorch raw-parameter name they set.
_HYPER_PARAMS = {"lengthscale": "raw_lengthscale", "outputscale": "raw_outputscale"}
_JITTER_GROWTH = 10.0


@contextlib.contextmanager
def forked_rng(generator: torch.Generator) -> Iterator[None]:
    """Run torch's global-RNG samplers (``Distribution.sample``/``rsample``) seeded from ``generator``.

    The global RNG state is saved and restored around the block, so callers' streams are untouched and
    the draws are reproducible from ``generator`` alone.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class GPPrior:
    """A zero-mean GP prior ``f ~ GP(0, k)`` over functions of ``d`` inputs.

    Args:
        kernel: any gpytorch kernel (RBF, Matern, Periodic, ScaleKernel, sums and products, ARD);
            copied and cast to float64, the caller's kernel is never modified.
        hyperpriors: optional ``{"lengthscale": dist, "outputscale": dist}``; each function draw gets
            its own value drawn from ``dist`` (shape ``[]`` or broadcastable to the kernel's raw
            parameter, e.g. ``[d]`` for ARD) for every sub-kernel holding that hyperparameter.
        jitter: variance added to the diagonal of every covariance (> 0).
        max_jitter: largest jitter tried when a Cholesky fails (multiplying by 10 each time); beyond
            it a ``ValueError`` is raised. Escalation above ``jitter`` gives a warning naming the value.
    """

    def __init__(self, kernel: nn.Module, *, hyperpriors: dict[str, torch.distributions.Distribution] | None = None,
                 jitter: float = 1e-6, max_jitter: float = 1e-2) -> None:
        gpytorch = import_gpytorch()
        if not isinstance(kernel, gpytorch.kernels.Kernel):
            raise TypeError(f"kernel: expected a gpytorch.kernels.Kernel, got {type(kernel).__name__}")
        self.jitter = check_positive(jitter, "jitter")
        self.max_jitter = check_positive(max_jitter, "max_jitter")
        if self.max_jitter < self.jitter:
            raise ValueError(f"max_jitter: expected a value >= jitter ({jitter}), got {max_jitter}")
        self.kernel = copy.deepcopy(kernel).double().requires_grad_(False)
        self.hyperpriors = dict(hyperpriors or {})
        for key, dist in self.hyperpriors.items():
            if key not in _HYPER_PARAMS:
                raise ValueError(f"hyperpriors: expected keys among {sorted(_HYPER_PARAMS)}, got {key!r}")
            if not isinstance(dist, torch.distributions.Distribution):
                raise TypeError(f"hyperpriors: expected a torch Distribution for {key!r}, got {type(dist).__name__}")
            if not self._owners(key):
                raise ValueError(f"hyperpriors: the kernel {type(kernel).__name__} has no {key!r} to resample")

    def covariance(self, x: Tensor) -> Tensor:
        """The kernel matrix ``K(x, x)`` (without jitter): ``[n, n]`` for ``x [n, d]``, ``[B, n, n]`` for ``[B, n, d]``."""
        x = self._check_x(x)
        with torch.no_grad():
            return self.kernel(x, x).to_dense()

    def sample_functions(self, x: Tensor, num: int, *, generator: torch.Generator) -> Tensor:
        """``num`` prior draws of ``f(x)`` in float64.

        Args:
            x: inputs ``[n, d]`` or a batch of input sets ``[B, n, d]``.
            num: number of function draws (>= 1).
            generator: source of randomness (hyperparameters and Gaussian draws).

        Returns:
            ``[num, n]`` for ``x [n, d]``; ``[B, num, n]`` for ``x [B, n, d]``. With hyperpriors every
            (input set, draw) pair has its own hyperparameters.
        """
        x = self._check_x(x)
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num: expected a positive integer, got {num!r}")
        batched = x.ndim == 3
        xb = x if batched else x.unsqueeze(0)  # [B, n, d]
        num_sets, n = xb.shape[0], xb.shape[1]
        with torch.no_grad():
            if self.hyperpriors:  # one covariance per (batch element, draw): [B * num, n, n]
                kernel = self._resampled_kernel(num_sets * num, generator)
                x_rep = xb.unsqueeze(1).expand(num_sets, num, n, xb.shape[-1]).reshape(num_sets * num, n, -1)
                chol = self._cholesky(kernel(x_rep, x_rep).to_dense())
                z = torch.randn(num_sets * num, n, 1, generator=generator, dtype=torch.float64)
                draws = (chol @ z).reshape(num_sets, num, n)
            else:  # one covariance per batch element, all draws from its Cholesky factor
                chol = self._cholesky(self.kernel(xb, xb).to_dense())
                z = torch.randn(num_sets, n, num, generator=generator, dtype=torch.float64)
                draws = (chol @ z).transpose(-1, -2)
        return draws if batched else draws[0]

    def info(self) -> dict[str, object]:
        """Kernel structure, current hyperparameters (constrained values) and hyperpriors, JSON-friendly."""
        params = {}
        for name, _ in self.kernel.named_parameters():
            module_name, _, raw = name.rpartition(".")
            public = raw.removeprefix("raw_")
            module = self.kernel.get_submodule(module_name) if module_name else self.kernel
            value = getattr(module, public, None)
            if isinstance(value, Tensor):
                params[f"{module_name}.{public}" if module_name else public] = value.detach().flatten().tolist()
        return {
            "kernel": repr(self.kernel).replace("\n", " "),
            "hyperparameters": params,
            "hyperpriors": {k: repr(v) for k, v in self.hyperpriors.items()},
            "jitter": self.jitter,
            "max_jitter": self.max_jitter,
        }

    def __repr__(self) -> str:
        info = self.info()
        hyper = f", hyperpriors={info['hyperpriors']}" if self.hyperpriors else ""
        return f"GPPrior({type(self.kernel).__name__}, hyperparameters={info['hyperparameters']}{hyper})"

    def _check_x(self, x: object) -> Tensor:
        t = check_float(x, "x", ndim=(2, 3)).to(torch.float64)
        if t.shape[-2] < 1 or t.shape[-1] < 1:
            raise ValueError(f"x: expected at least one point and one feature, got shape {tuple(t.shape)}")
        return t

    def _owners(self, key: str) -> list[tuple[nn.Module, str]]:
        """Sub-kernels holding the raw parameter of hyperparameter ``key``, with its name there."""
        raw = _HYPER_PARAMS[key]
        return [(m, raw) for m in self.kernel.modules() if raw in m._parameters]

    def _resampled_kernel(self, count: int, generator: torch.Generator) -> nn.Module:
        """A copy of the kernel whose hyperpriored raw parameters carry a leading batch ``[count]``."""
        kernel = copy.deepcopy(self.kernel)
        owners = {id(m): m for m in self.kernel.modules()}
        copies = dict(zip(owners, kernel.modules()))
        with forked_rng(generator):
            for key, dist in self.hyperpriors.items():
                for module, raw in self._owners(key):
                    target = copies[id(module)]
                    shape = target._parameters[raw].shape
                    value = dist.sample((count,)).to(torch.float64)
                    value = value.reshape(count, *([1] * max(0, len(shape) - value.ndim + 1)), *value.shape[1:])
                    try:
                        value = torch.broadcast_to(value, (count, *shape))
                    except RuntimeError:
                        raise ValueError(f"hyperpriors: a {key!r} draw of shape {tuple(value.shape[1:])} does not "
                                         f"fit the kernel's {raw} of shape {tuple(shape)}") from None
                    if not bool((value > 0).all()):
                        raise ValueError(f"hyperpriors: expected positive {key!r} draws, got a value <= 0")
                    constraint = getattr(target, f"{raw}_constraint")
                    setattr(target, raw, nn.Parameter(constraint.inverse_transform(value), requires_grad=False))
        return kernel

    def _cholesky(self, cov: Tensor) -> Tensor:
        """Lower Cholesky factors of ``cov [..., n, n] + jitter I``, escalating the jitter where needed."""
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
        jitter = self.jitter
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        escalated = int((info > 0).sum())  # matrices that needed more than the base jitter
        while bool((info > 0).any()):
            if jitter * _JITTER_GROWTH > self.max_jitter * (1 + 1e-9):
                raise ValueError(
                    f"kernel: the covariance is not positive definite even with jitter {jitter:.3g} on the diagonal "
                    f"(max_jitter={self.max_jitter:.3g}); check the kernel and its hyperparameters, or remove duplicate inputs")
            jitter *= _JITTER_GROWTH
            failed = info > 0
            chol_retry, info_retry = torch.linalg.cholesky_ex(cov[failed] + jitter * eye)
            chol[failed], info[failed] = chol_retry, info_retry
        if jitter > self.jitter:
            warnings.warn(f"GPPrior: covariance not positive definite with jitter {self.jitter:.3g}; used jitter up to "
                          f"{jitter:.3g} for {escalated} of {info.numel()} matrices", RuntimeWarning, stacklevel=3)
        return chol
