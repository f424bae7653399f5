"""Prototypical networks (Snell, Swersky & Zemel, NeurIPS 2017) through the shared episode interface.

Classification: the network embeds inputs, each class's prototype is the mean embedding of its
support points, and the query logits are minus the squared Euclidean distances to the prototypes.

Regression has no classes, so there are no class prototypes; we define the natural extension in
which every support point is its own prototype carrying its target: a kernel-weighted prototype
regressor (Nadaraya-Watson in the learned embedding). For a query ``x`` the weights are
``w_k = softmax_k(-||e(x) - e(x_k)||^2)`` over the support points, and the predictive is Gaussian with
mean ``sum_k w_k y_k`` and variance ``sum_k w_k (y_k - mean)^2 + noise^2``, the noise std learned
(the Gaussian likelihood's ``learn_noise``) or fixed. It can only interpolate between support targets,
which is why it does badly on lines that extend beyond the support points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uqkit.calibration.predictive import Predictive
from uqkit.data.episodes import Episodes
from uqkit.inference.meta.base import MetaLearner
from uqkit.models.likelihoods import Categorical, Gaussian, Likelihood


class ProtoNet(MetaLearner):
    """Prototypical network (module docstring).

    Args:
        net: embedding network ``[N, D_in] -> [N, E]``.
        likelihood: `uqkit.models.Categorical` (classification) or `uqkit.models.Gaussian` (regression).
    """

    def __init__(self, net: nn.Module, likelihood: Likelihood) -> None:
        if not isinstance(likelihood, (Categorical, Gaussian)):
            raise TypeError(f"likelihood: ProtoNet supports Categorical or Gaussian, got {type(likelihood).__name__}")
        super().__init__(net, likelihood)
        self.embedding = net

    def check_episodes(self, episodes: object) -> Episodes:
        if not isinstance(episodes, Episodes):
            raise TypeError(f"episodes: expected uqkit.data.Episodes, got {type(episodes).__name__}")
        if episodes.task != self.task:
            raise ValueError(f"episodes: this learner's likelihood is for {self.task}, got {episodes.task} episodes")
        return episodes

    def _query_distribution(self, episodes: Episodes) -> tuple[Tensor, ...]:
        """Classification: logits ``[B, Q, C]``; regression: mean and variance ``[B, Q]``."""
        b, k, d = episodes.support_x.shape
        q = episodes.num_query
        emb = self.embedding(torch.cat([episodes.support_x, episodes.query_x], 1).reshape(b * (k + q), d))
        emb = emb.reshape(b, k + q, -1)
        support, query = emb[:, :k], emb[:, k:]
        if self.task == "classification":
            onehot = F.one_hot(episodes.support_y, episodes.num_classes).to(emb.dtype)  # [B, K, C]
            counts = onehot.sum(1).clamp(min=1).unsqueeze(-1)
            prototypes = onehot.mT @ support / counts  # [B, C, E]
            return (-torch.cdist(query, prototypes).square(),)
        weights = torch.softmax(-torch.cdist(query, support).square(), dim=-1)  # [B, Q, K]
        y = episodes.support_y.unsqueeze(1)
        mean = (weights * y).sum(-1)
        var = (weights * (y - mean.unsqueeze(-1)).square()).sum(-1) + self.noise_std().square()
        return mean, var

    def loss(self, episodes: Episodes, *, generator: torch.Generator, num_episodes_total: int) -> Tensor:
        """Query NLL summed over query points, averaged over episodes (nats)."""
        out = self._query_distribution(episodes)
        if self.task == "classification":
            return F.cross_entropy(out[0].flatten(0, 1), episodes.query_y.reshape(-1), reduction="sum") / len(episodes)
        mean, var = out
        return -torch.distributions.Normal(mean, var.sqrt()).log_prob(episodes.query_y).sum() / len(episodes)

    def predict(self, episodes: Episodes, *, num_samples: int = 1, generator: torch.Generator) -> Predictive:
        """Predictive for the query points (``num_samples`` is ignored: the predictive is deterministic)."""
        episodes = self.check_episodes(episodes)
        with torch.no_grad():
            out = self._query_distribution(episodes)
        if self.task == "classification":
            return Predictive.from_logits(out[0].reshape(-1, out[0].shape[-1]))
        return Predictive.gaussian(out[0].reshape(-1), out[1].reshape(-1))
