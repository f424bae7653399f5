"""`ModelSpec`: a network, a weight prior, a likelihood and the data size, as pure functions of ``Params``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from uqkit.calibration.predictive import Predictive
from uqkit.models.likelihoods import PREFIX, Likelihood
from uqkit.models.priors import Prior

Params = dict[str, Tensor]
Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A Bayesian model ``p(theta) prod_i p(y_i | net(x_i; theta))`` over any ``nn.Module``.

    Parameters are a flat dict (``net.named_parameters()`` names, plus ``"likelihood.*"`` for
    likelihood parameters such as a learned noise level); the module's own tensors are never used or
    modified, the net is evaluated with ``torch.func.functional_call``.

    Args:
        net: the network; its output ``[B, out]`` must fit the likelihood. Checked at construction
            with a dummy input when the net has an integer ``in_features`` attribute, otherwise at the
            first forward pass.
        prior: weight prior over the net's parameters.
        likelihood: observation model.
        num_data: N, the number of training points (scales minibatch log-likelihoods).
    """

    net: nn.Module
    prior: Prior
    likelihood: Likelihood
    num_data: int

    def __post_init__(self) -> None:
        if not isinstance(self.net, nn.Module):
            raise TypeError(f"net: expected a torch.nn.Module, got {type(self.net).__name__}")
        if not isinstance(self.prior, Prior):
            raise TypeError(f"prior: expected a Prior (log_prob, sample, state, with_state), got {type(self.prior).__name__}")
        if not isinstance(self.likelihood, Likelihood):
            raise TypeError(f"likelihood: expected a Likelihood, got {type(self.likelihood).__name__}")
        if isinstance(self.num_data, bool) or not isinstance(self.num_data, int) or self.num_data < 1:
            raise ValueError(f"num_data: expected a positive integer, got {self.num_data!r}")
        # functional_call's pass that unties shared tensors costs 20-40 us a call; most nets share none.
        object.__setattr__(self, "_tie_weights", _has_tied_tensors(self.net))
        in_features = getattr(self.net, "in_features", None)
        if isinstance(in_features, int):
            with torch.no_grad():
                self.forward(self.param_template(), torch.zeros(2, in_features, dtype=self.dtype))

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the net's parameters."""
        return next((p.dtype for p in self.net.parameters()), torch.get_default_dtype())

    def param_template(self) -> Params:
        """The net's current parameters (detached) and the likelihood's initial ones."""
        params = {k: p.detach() for k, p in self.net.named_parameters()}
        params.update({PREFIX + k: v for k, v in self.likelihood.init_params(self.dtype).items()})
        return params

    def split(self, params: Params) -> tuple[Params, Params]:
        """``(net parameters, likelihood parameters without the prefix)``."""
        net = {k: v for k, v in params.items() if not k.startswith(PREFIX)}
        lik = {k[len(PREFIX):]: v for k, v in params.items() if k.startswith(PREFIX)}
        return net, lik

    def init_params(self, *, generator: torch.Generator) -> Params:
        """A draw of the net's weights from the prior, and the likelihood's initial parameters."""
        net, lik = self.split(self.param_template())
        draw = self.prior.sample(1, generator=generator, template=net)
        return {**{k: v[0] for k, v in draw.items()}, **{PREFIX + k: v for k, v in lik.items()}}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Net output ``[B, out]`` at inputs ``x [B, ...]`` with weights ``params``."""
        return self._net_output(self.split(params)[0], x)

    def _net_output(self, net_params: Params, x: Tensor) -> Tensor:
        """`forward` from the net's parameters alone (without the likelihood's)."""
        out = functional_call(self.net, net_params, (x,), tie_weights=self._tie_weights)
        self.likelihood.check_output(tuple(out.shape))
        return out

    def log_prior(self, params: Params, *, prior: Prior | None = None) -> Tensor:
        """Scalar ``log p(theta)`` (``prior`` overrides ``self.prior``, e.g. a Gibbs-updated one)."""
        return (prior or self.prior).log_prob(self.split(params)[0])

    def log_likelihood(self, params: Params, batch: Batch) -> Tensor:
        """Scalar ``sum_b log p(y_b | x_b, theta)`` over the batch."""
        x, y = batch
        net, lik = self.split(params)
        return self.likelihood.log_prob(self._net_output(net, x), y, lik).sum()

    def log_joint(self, params: Params, batch: Batch, *, prior: Prior | None = None) -> Tensor:
        """Unbiased minibatch estimate of ``log p(theta) + sum_{i<=N} log p(y_i | x_i, theta)``.

        ``log_prior + num_data / B * log_likelihood(batch)``: its average over all minibatches of a
        partition of the data equals the full-data log joint.
        """
        batch_size = batch[0].shape[0]
        return self.log_prior(params, prior=prior) + (self.num_data / batch_size) * self.log_likelihood(params, batch)

    def log_joint_and_grad(self, params: Params, batch: Batch, *, prior: Prior | None = None) -> tuple[Tensor, Params]:
        """`log_joint` (detached scalar) and its gradient with respect to every parameter.

        A prior with a closed-form gradient (`AnalyticGradPrior`) adds it in place into the
        likelihood's gradient, which spares autograd a graph over every weight; otherwise everything
        goes through autograd.
        """
        prior = prior or self.prior
        # The method itself, not `isinstance(prior, AnalyticGradPrior)`: a runtime Protocol check
        # inspects every member and costs more than the prior's arithmetic on a small net.
        add_prior_grad_ = getattr(prior, "add_grad_log_prob_", None)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        if add_prior_grad_ is None:
            value = self.log_joint(leaves, batch, prior=prior)
            return value.detach(), dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))
        log_lik = (self.num_data / batch[0].shape[0]) * self.log_likelihood(leaves, batch)
        grads = dict(zip(leaves, _unaliased(torch.autograd.grad(log_lik, list(leaves.values())))))
        with torch.no_grad():
            net = self.split(params)[0]
            add_prior_grad_(net, grads)
            return prior.log_prob(net) + log_lik.detach(), grads

    def sample_functions(self, x: Tensor, num: int, *, generator: torch.Generator) -> Tensor:
        """``[num, N, out]`` prior draws of the net output at inputs ``x [N, ...]``."""
        net, _ = self.split(self.param_template())
        draws = self.prior.sample(num, generator=generator, template=net)
        return self._batched_forward(draws, x)

    def predict(self, draws: Params, x: Tensor) -> Predictive:
        """Posterior predictive at ``x [N, ...]`` from parameter draws with leading ``[S]``."""
        outputs = self._batched_forward(self.split(draws)[0], x)
        return self.likelihood.predictive(outputs, self.split(draws)[1])

    def _batched_forward(self, draws: Params, x: Tensor) -> Tensor:
        """``[S, N, out]`` outputs for net-parameter draws with leading ``[S]``."""
        with torch.no_grad():
            return torch.vmap(lambda p: self.forward(p, x))(draws)


def _has_tied_tensors(net: nn.Module) -> bool:
    """Whether some parameter or buffer of ``net`` is registered under several names."""
    tensors = [t for _, t in net.named_parameters(remove_duplicate=False)]
    tensors += [t for _, t in net.named_buffers(remove_duplicate=False)]
    return len({id(t) for t in tensors}) < len(tensors)


def _unaliased(grads: tuple[Tensor, ...]) -> list[Tensor]:
    """The gradients, with a copy wherever autograd returned one tensor for several inputs (it does,
    e.g., for ``a`` and ``b`` in ``a + b``), so that adding to one in place leaves the others alone."""
    seen: set[int] = set()
    out = []
    for g in grads:
        out.append(g.clone() if g.data_ptr() in seen else g)
        seen.add(g.data_ptr())
    return out
