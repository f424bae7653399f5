"""The episode interface shared by the meta-learners: a flat-weight network, likelihood terms and the training loop.

Every learner is an ``nn.Module`` with ``loss(episodes, *, generator, num_episodes_total) -> scalar``
(a mean over the batch's episodes, to minimise) and ``predict(episodes, *, num_samples, generator)
-> Predictive`` over the query points of all episodes, flattened in episode order (``[B * Q]``, the
order of `Episodes.flat_query_y`). `MetaLearner.fit` runs Adam over freshly sampled episode batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from tqdm.auto import trange

from uqkit.calibration.predictive import Predictive
from uqkit.data.episodes import Episodes
from uqkit.models.likelihoods import Categorical, Likelihood

#: ``sampler(num_episodes, generator) -> Episodes``: where meta-training draws its episode batches.
EpisodeSampler = Callable[[int, torch.Generator], Episodes]


class FlatNet:
    """Evaluate ``net`` at a flat vector ``theta [P]`` of its episode-specific (adapted) parameters.

    Args:
        net: the network.
        adapted: name prefixes of the parameters that ``theta`` holds (in ``named_parameters`` order),
            e.g. ``["layers.4."]`` for the last layer of an `uqkit.models.MLP`; None means all. The
            other parameters are shared by all episodes and read from ``net`` itself.
    """

    def __init__(self, net: nn.Module, adapted: Sequence[str] | None = None) -> None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
        params = {n: p for n, p in net.named_parameters() if adapted is None or any(n.startswith(a) for a in adapted)}
        if not params:
            raise ValueError(f"adapted: no parameter of net matches {adapted!r}" if adapted else "net: expected a network with parameters")
        self.net = net
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numels = [p.numel() for p in params.values()]

    @property
    def num_params(self) -> int:
        return sum(self.numels)

    def initial(self) -> Tensor:
        """``[P]`` the network's current weights, flattened (detached copy)."""
        params = dict(self.net.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """``theta [P]``, ``x [N, D_in]`` -> outputs ``[N, out]``."""
        leaves = theta.split(self.numels)
        params = {n: t.view(s) for n, t, s in zip(self.names, leaves, self.shapes)}
        return functional_call(self.net, params, (x,))


class MetaLearner(nn.Module):
    """Base class: holds the network (as `FlatNet`), the likelihood and its learned parameters.

    Args:
        net: maps ``[N, D_in]`` inputs to ``[N, out]`` outputs of the likelihood.
        likelihood: e.g. `uqkit.models.Gaussian` (regression) or `uqkit.models.Categorical` (classification).
        adapted: name prefixes of the episode-specific parameters (`FlatNet`); None means all. The
            others are meta-learned point estimates shared by every episode (as in ANIL, or the
            paper's adapted head on a fixed backbone).
    """

    def __init__(self, net: nn.Module, likelihood: Likelihood, adapted: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(likelihood, Likelihood):
            raise TypeError(f"likelihood: expected a uqkit Likelihood, got {type(likelihood).__name__}")
        self.flat = FlatNet(net, adapted)
        adapted_names = set(self.flat.names)
        # Shared parameters are trained by the meta-optimiser; adapted ones live in the learner's own state.
        self.shared = nn.ParameterList([p for n, p in net.named_parameters() if n not in adapted_names])
        self.likelihood = likelihood
        dtype = self.flat.initial().dtype
        self.lik_params = nn.ParameterDict({k: nn.Parameter(v) for k, v in likelihood.init_params(dtype).items()})
        self.task = "classification" if isinstance(likelihood, Categorical) else "regression"

    # ---------------------------------------------------------------------- per-episode likelihood
    def point_log_lik(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``[N]`` log-likelihood of each of one episode's points (``theta [P]``, ``x [N, D]``, ``y [N]``), nats."""
        return self.likelihood.log_prob(self.flat(theta, x), y, dict(self.lik_params))

    def nll(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Summed negative log-likelihood of one episode's points (``theta [P]``, ``x [N, D]``, ``y [N]``), nats."""
        return -self.point_log_lik(theta, x, y).sum()

    def noise_std(self) -> Tensor:
        """Scalar observation noise standard deviation of a `uqkit.models.Gaussian` likelihood (learned or fixed)."""
        if self.likelihood.learn_noise:
            return self.lik_params["log_noise_std"].exp()
        return torch.tensor(self.likelihood.noise_std, dtype=self.flat.initial().dtype)

    def mean_nll(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """`nll` divided by the number of points (the inner-loop loss)."""
        return self.nll(theta, x, y) / x.shape[0]

    def gauss_newton_factor(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """``F`` ``[N * out, P]`` with ``F^T F`` the generalised Gauss-Newton matrix of `nll` at ``theta`` (`gauss_newton`).

        Row block ``n`` is ``B_n^T J_n`` with ``H_n = B_n B_n^T``. For the categorical likelihood
        ``H_n = diag(p) - p p^T`` and ``B_n = diag(sqrt p) - p sqrt(p)^T`` (using ``sum p = 1``), which
        stays differentiable where ``H_n``'s eigenvalues repeat; otherwise ``B_n`` comes from the
        eigendecomposition of ``H_n`` (negative rounding-level eigenvalues clipped to zero).
        """
        outputs = self.flat(theta, x)  # [N, out]
        jac = vmap(jacrev(lambda t, xi: self.flat(t, xi.unsqueeze(0)).squeeze(0)), in_dims=(None, 0))(theta, x)
        lik = dict(self.lik_params)

        def point_nll(f: Tensor, yi: Tensor) -> Tensor:
            return -self.likelihood.log_prob(f.unsqueeze(0), yi.unsqueeze(0), lik).sum()

        if isinstance(self.likelihood, Categorical):
            probs = outputs.softmax(-1)
            root = torch.diag_embed(probs.sqrt()) - probs.unsqueeze(-1) * probs.sqrt().unsqueeze(-2)
        else:
            hess = vmap(jacrev(jacrev(point_nll)))(outputs, y)  # [N, out, out]; reverse-over-reverse (no forward AD)
            values, vectors = torch.linalg.eigh(hess)
            root = vectors * values.clamp(min=0).sqrt().unsqueeze(-2)  # B_n, [N, out, out]
        return torch.einsum("nok,nop->nkp", root, jac).reshape(-1, jac.shape[-1])

    def gauss_newton(self, theta: Tensor, x: Tensor, y: Tensor, *, diagonal: bool = True) -> Tensor:
        """Generalised Gauss-Newton matrix ``sum_n J_n^T H_n J_n`` of `nll` at ``theta``: its diagonal ``[P]`` or all ``[P, P]``.

        ``J_n = d f(x_n) / d theta`` ``[out, P]`` and ``H_n`` ``[out, out]`` the Hessian of
        ``-log p(y_n | f)`` in the output ``f``. It equals the Hessian of `nll` for a model linear in
        ``theta`` with a Gaussian likelihood, and the Fisher information for the Gaussian and categorical
        likelihoods; unlike the Hessian it is never negative.
        """
        factor = self.gauss_newton_factor(theta, x, y)
        return factor.square().sum(0) if diagonal else factor.mT @ factor

    def query_predictive(self, thetas: Tensor, episodes: Episodes) -> Predictive:
        """Predictive mixture over weight draws ``thetas [S, B, P]`` for the query points ``[B * Q]``."""
        outputs = vmap(vmap(self.flat))(thetas, episodes.query_x.expand(thetas.shape[0], *episodes.query_x.shape))
        s, b, q, out = outputs.shape
        return self.likelihood.predictive(outputs.reshape(s, b * q, out), {k: v.detach() for k, v in self.lik_params.items()})

    def check_episodes(self, episodes: object) -> Episodes:
        """Raise unless ``episodes`` is an `Episodes` batch of this learner's task and input width."""
        if not isinstance(episodes, Episodes):
            raise TypeError(f"episodes: expected uqkit.data.Episodes, got {type(episodes).__name__}")
        if episodes.task != self.task:
            raise ValueError(f"episodes: this learner's likelihood is for {self.task}, got {episodes.task} episodes")
        try:
            out = self.flat(self.flat.initial(), episodes.support_x[0, :1])
        except RuntimeError as err:
            raise ValueError(f"episodes: inputs of width {episodes.support_x.shape[-1]} do not fit net: {err}") from None
        self.likelihood.check_output(tuple(out.shape))
        return episodes

    # --------------------------------------------------------------------------------- interface
    def loss(self, episodes: Episodes, *, generator: torch.Generator, num_episodes_total: int) -> Tensor:
        """Scalar training loss averaged over the batch's episodes."""
        raise NotImplementedError

    def predict(self, episodes: Episodes, *, num_samples: int = 10, generator: torch.Generator) -> Predictive:
        """Predictive for every query point, adapted to each episode's support set."""
        raise NotImplementedError

    def fit(self, sampler: EpisodeSampler, *, num_iterations: int, meta_batch: int = 16, lr: float = 1e-3,
            generator: torch.Generator, validation: Episodes | None = None, validate_every: int = 100,
            progress: bool = False) -> list[float]:
        """Meta-train with Adam on ``num_iterations`` batches of ``meta_batch`` fresh episodes; returns the losses.

        With ``validation`` episodes, every ``validate_every`` iterations (and at the end) the query NLL per
        point of `predict` on them is recorded in ``validation_curve`` as ``(iteration, nll)``, and the
        learner ends with the parameters of the lowest one (early stopping). Validation predictions use
        their own generator (seed 0), so every checkpoint sees the same draws and the training stream
        is unchanged.
        """
        for name, value in (("num_iterations", num_iterations), ("meta_batch", meta_batch), ("validate_every", validate_every)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if validation is not None:
            validation = self.check_episodes(validation)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        total = num_iterations * meta_batch
        losses = []
        self.validation_curve: list[tuple[int, float]] = []
        best: tuple[float, dict[str, Tensor]] | None = None
        for step in trange(num_iterations, disable=not progress, desc=type(self).__name__):
            episodes = self.check_episodes(sampler(meta_batch, generator))
            loss = self.loss(episodes, generator=generator, num_episodes_total=total)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if validation is not None and ((step + 1) % validate_every == 0 or step + 1 == num_iterations):
                nll = self.validation_nll(validation)
                self.validation_curve.append((step + 1, nll))
                if best is None or nll < best[0]:
                    best = (nll, {k: v.detach().clone() for k, v in self.state_dict().items()})
        if best is not None:
            self.load_state_dict(best[1])
        return losses

    def validation_nll(self, episodes: Episodes) -> float:
        """Mean query negative log predictive density (nats per point) of `predict` on ``episodes``."""
        pred = self.predict(episodes, generator=torch.Generator().manual_seed(0))
        return -float(pred.log_prob(episodes.flat_query_y()).mean())
