"""MAML (Finn, Abbeel & Levine, ICML 2017), first- or second-order, through the shared episode interface.

Meta-parameters: the initial weights ``theta_0 [P]`` and the likelihood's parameters (a learned noise
level for regression). For each episode, ``inner_steps`` gradient steps on the support set's mean NLL,
``theta_{t+1} = theta_t - inner_lr * grad``, then the loss is the query set's summed NLL at the
adapted weights. Second order (``first_order=False``) differentiates through the inner gradients, so
autograd keeps every inner step's graph and memory grows with ``inner_steps``; first order treats
each inner gradient as a constant. Prediction adapts to the support set and returns the
likelihood's predictive at the adapted weights (one draw: MAML is a point estimate).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from uqkit._checks import check_positive
from uqkit.calibration.predictive import Predictive
from uqkit.data.episodes import Episodes
from uqkit.inference.meta.base import MetaLearner
from uqkit.models.likelihoods import Likelihood


class MAML(MetaLearner):
    """Model-agnostic meta-learning (module docstring).

    Args:
        net: network ``[N, D_in] -> [N, out]``; its initial weights initialise ``theta_0``.
        likelihood: `uqkit.models.Gaussian` or `uqkit.models.Categorical`.
        inner_steps: adaptation steps in training (>= 1).
        inner_lr: adaptation step size on the mean support NLL.
        first_order: drop second derivatives (first-order MAML).
        test_inner_steps: adaptation steps at prediction time (default: ``inner_steps``).
        adapted: name prefixes of the parameters adapted per episode; None means all (the rest are
            shared, as in ANIL).
    """

    def __init__(self, net: nn.Module, likelihood: Likelihood, *, inner_steps: int = 1, inner_lr: float = 0.01,
                 first_order: bool = False, test_inner_steps: int | None = None,
                 adapted: Sequence[str] | None = None) -> None:
        super().__init__(net, likelihood, adapted)
        for name, value in (("inner_steps", inner_steps), ("test_inner_steps", test_inner_steps or inner_steps)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps or inner_steps
        self.inner_lr = check_positive(inner_lr, "inner_lr")
        self.first_order = first_order
        self.theta0 = nn.Parameter(self.flat.initial())

    def adapt(self, episodes: Episodes, steps: int, *, keep_graph: bool) -> Tensor:
        """``[B, P]`` weights after ``steps`` inner steps on each support set."""
        theta = self.theta0.expand(len(episodes), -1)
        step_grad = vmap(grad(self.mean_nll))
        for _ in range(steps):
            g = step_grad(theta, episodes.support_x, episodes.support_y)
            theta = theta - self.inner_lr * (g if keep_graph else g.detach())
        return theta

    def loss(self, episodes: Episodes, *, generator: torch.Generator, num_episodes_total: int) -> Tensor:
        """Query NLL at the adapted weights, summed over query points, averaged over episodes (nats)."""
        theta = self.adapt(episodes, self.inner_steps, keep_graph=not self.first_order)
        return vmap(self.nll)(theta, episodes.query_x, episodes.query_y).mean()

    def predict(self, episodes: Episodes, *, num_samples: int = 1, generator: torch.Generator) -> Predictive:
        """Predictive at the adapted weights (``num_samples`` is ignored: one point estimate)."""
        episodes = self.check_episodes(episodes)
        theta = self.adapt(episodes, self.test_inner_steps, keep_graph=False).detach()
        return self.query_predictive(theta.unsqueeze(0), episodes)
