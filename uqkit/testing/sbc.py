"""Simulation-based calibration (SBC; Talts, Betancourt, Simpson, Vehtari & Gelman 2018, arXiv:1804.06788).

If ``theta ~ prior`` and ``y ~ p(y | theta)``, and a sampler returns exact posterior draws
``theta_1..theta_L ~ p(theta | y)``, then the rank of ``theta`` among them (the number of draws
below it) is uniform on ``{0, ..., L}``, for every parameter. Repeating this over many simulated data
sets and testing the ranks for uniformity checks the whole inference pipeline: a rank histogram
that is U-shaped means over-confident posteriors, hump-shaped under-confident, sloped biased.

MCMC draws must be thinned to roughly independent draws first (autocorrelation alone skews the
ranks); `sbc_ranks` takes ``thinning``. Ties between ``theta`` and a draw (a discrete parameter, a
rejected move that repeats a value) are broken at random, as in Modrák et al. (2023), so the ranks
stay exactly uniform under the null.

Two uniformity tests per parameter are reported: Pearson's chi-square over ``num_bins`` bins of the
ranks (expected counts from the exact discrete uniform), and Kolmogorov-Smirnov on randomised ranks
``(rank + U) / (L + 1)``, which are exactly continuous-uniform under the null. The overall p-value is
Bonferroni-corrected over parameters (and both tests), so a correct sampler fails a check at level
``alpha`` with probability at most ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from uqkit._checks import check_float


@dataclass(frozen=True)
class SBCResult:
    """Ranks of the true parameters and their uniformity tests.

    Attributes:
        ranks: ``[num_simulations, P]`` integers in ``[0, num_draws]``.
        num_draws: L, the posterior draws each rank was taken among (after thinning).
        names: ``[P]`` parameter names.
        num_bins: bins of the chi-square test and the histogram.
        chi2_pvalues: ``[P]`` p-values of the chi-square test of uniform ranks.
        ks_pvalues: ``[P]`` p-values of the KS test of randomised ranks against U(0, 1).
    """

    ranks: np.ndarray
    num_draws: int
    names: tuple[str, ...]
    num_bins: int
    chi2_pvalues: np.ndarray
    ks_pvalues: np.ndarray

    @property
    def p_value(self) -> float:
        """The smallest p-value, Bonferroni-corrected over parameters and both tests (``min(1, 2 P min p)``)."""
        tests = np.concatenate([self.chi2_pvalues, self.ks_pvalues])
        return float(min(1.0, len(tests) * tests.min()))

    def passed(self, alpha: float = 0.01) -> bool:
        """True when the ranks are consistent with uniform at level ``alpha`` (see `p_value`)."""
        return self.p_value > alpha

    def summary(self) -> str:
        """One line per parameter: chi-square and KS p-values, and the overall corrected p-value."""
        rows = [f"{n}: chi2 p={c:.4g}, KS p={k:.4g}" for n, c, k in zip(self.names, self.chi2_pvalues, self.ks_pvalues)]
        return "; ".join(rows) + f" | overall (Bonferroni) p={self.p_value:.4g}"

    def figure(self) -> bytes:
        """The rank histograms as PNG bytes, with the 99% band of a uniform histogram."""
        from uqkit.calibration.figures import rank_histogram

        return rank_histogram(self.ranks, num_draws=self.num_draws, num_bins=self.num_bins, names=self.names)


def sbc_ranks(prior_draws: object, posterior_draws: object, *, thinning: int = 1,
              generator: torch.Generator | None = None) -> Tensor:
    """Rank of each prior draw among its posterior draws.

    Args:
        prior_draws: ``[S, P]`` the parameters each data set was simulated from.
        posterior_draws: ``[S, M, P]`` draws from the posterior of data set ``s``.
        thinning: keep every ``thinning``-th posterior draw (the last of each block), so ``L = M // thinning``.
        generator: breaks ties at random; a fixed one by default.

    Returns:
        ``[S, P]`` integer ranks in ``[0, L]``: draws below the prior draw, plus a uniform share of ties.
    """
    theta = check_float(prior_draws, "prior_draws", ndim=2)
    draws = check_float(posterior_draws, "posterior_draws", ndim=3)
    if draws.shape[0] != theta.shape[0] or draws.shape[2] != theta.shape[1]:
        raise ValueError(f"posterior_draws: expected shape [S={theta.shape[0]}, M, P={theta.shape[1]}] to match "
                         f"prior_draws, got {tuple(draws.shape)}")
    thinning = _count(thinning, "thinning")
    if thinning > draws.shape[1]:
        raise ValueError(f"thinning: expected at most the {draws.shape[1]} posterior draws, got {thinning}")
    draws = draws[:, thinning - 1::thinning].to(theta.dtype)
    below = (draws < theta[:, None]).sum(1)
    ties = (draws == theta[:, None]).sum(1)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    share = (torch.rand(ties.shape, generator=gen, dtype=torch.float64) * (ties + 1)).floor().long()
    return below + share


def sbc_test(ranks: object, num_draws: int, *, num_bins: int | None = None, names: Sequence[str] | None = None,
             generator: torch.Generator | None = None) -> SBCResult:
    """Test ranks ``[S, P]`` in ``[0, num_draws]`` for uniformity (chi-square and KS per parameter).

    Args:
        ranks: ``[S, P]`` integer ranks, e.g. from `sbc_ranks`.
        num_draws: L, the number of posterior draws each rank was taken among.
        num_bins: histogram bins (at most L + 1); default ``min(L + 1, max(2, S // 10))``, so that
            each bin expects about 10 ranks or more (the chi-square approximation needs ~5).
        names: ``[P]`` parameter names; ``theta[0], ...`` by default.
        generator: draws the KS randomisation ``U``; a fixed one by default.
    """
    num_draws = _count(num_draws, "num_draws")
    r = torch.as_tensor(np.asarray(ranks)) if not isinstance(ranks, Tensor) else ranks
    if r.ndim != 2 or r.numel() == 0 or r.is_floating_point() or r.dtype == torch.bool:
        raise ValueError(f"ranks: expected a non-empty 2-D integer array [S, P], got {r.dtype} of shape {tuple(r.shape)}")
    if int(r.min()) < 0 or int(r.max()) > num_draws:
        raise ValueError(f"ranks: expected values in [0, {num_draws}], found [{int(r.min())}, {int(r.max())}]")
    num_sims, num_params = r.shape
    bins = min(num_draws + 1, max(2, num_sims // 10)) if num_bins is None else _count(num_bins, "num_bins", minimum=2)
    if bins > num_draws + 1:
        raise ValueError(f"num_bins: expected at most num_draws + 1 = {num_draws + 1}, got {bins}")
    labels = tuple(names) if names is not None else tuple(f"theta[{j}]" for j in range(num_params))
    if len(labels) != num_params:
        raise ValueError(f"names: expected {num_params} names, got {len(labels)}")
    r_np = r.long().numpy()
    bin_of_rank = (np.arange(num_draws + 1) * bins) // (num_draws + 1)  # rank -> bin, as equal as integers allow
    expected = np.bincount(bin_of_rank, minlength=bins) / (num_draws + 1) * num_sims
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    jitter = torch.rand(r.shape, generator=gen, dtype=torch.float64).numpy()
    chi2_p, ks_p = np.empty(num_params), np.empty(num_params)
    for j in range(num_params):
        observed = np.bincount(bin_of_rank[r_np[:, j]], minlength=bins)
        chi2_p[j] = stats.chisquare(observed, expected).pvalue
        ks_p[j] = stats.kstest((r_np[:, j] + jitter[:, j]) / (num_draws + 1), "uniform").pvalue
    return SBCResult(ranks=r_np, num_draws=num_draws, names=labels, num_bins=bins, chi2_pvalues=chi2_p, ks_pvalues=ks_p)


def simulation_based_calibration(
    prior_sample: Callable[[torch.Generator], Tensor],
    simulate: Callable[[Tensor, torch.Generator], Any],
    posterior_sample: Callable[[Any, int], Tensor],
    *,
    num_simulations: int = 200,
    thinning: int = 1,
    num_bins: int | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SBCResult:
    """Run SBC on any model and inference method, one simulated data set at a time.

    For ``s = 1..num_simulations``: ``theta = prior_sample(g)`` ``[P]``, ``data = simulate(theta, g)``,
    ``draws = posterior_sample(data, seed_s)`` ``[M, P]``; then `sbc_ranks` and `sbc_test`. All
    randomness comes from one ``torch.Generator`` seeded with ``seed`` (and the per-simulation seeds
    it draws), so a run is reproducible.

    Args:
        prior_sample: draws one parameter vector ``[P]`` from the prior.
        simulate: draws a data set given ``theta``.
        posterior_sample: returns posterior draws ``[M, P]`` given the data and an integer seed.
        num_simulations: simulated data sets (>= 2).
        thinning: keep every ``thinning``-th posterior draw (thin MCMC output to about its ESS).
        num_bins, names: see `sbc_test`.
        seed: seeds everything.
        progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    num_simulations = _count(num_simulations, "num_simulations", minimum=2)
    for fn, name in ((prior_sample, "prior_sample"), (simulate, "simulate"), (posterior_sample, "posterior_sample")):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    gen = torch.Generator().manual_seed(_count(seed, "seed", minimum=0))
    thetas, draws = [], []
    for _ in tqdm(range(num_simulations), desc="SBC", disable=not progress):
        theta = check_float(prior_sample(gen), "prior_sample()", ndim=1)
        data = simulate(theta, gen)
        run_seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
        thetas.append(theta)
        draws.append(check_float(posterior_sample(data, run_seed), "posterior_sample()", ndim=2))
    if len({d.shape for d in draws}) != 1:
        raise ValueError(f"posterior_sample(): expected the same shape [M, P] every time, got {sorted({tuple(d.shape) for d in draws})}")
    ranks = sbc_ranks(torch.stack(thetas), torch.stack(draws), thinning=thinning, generator=gen)
    return sbc_test(ranks, draws[0].shape[0] // thinning, num_bins=num_bins, names=names, generator=gen)


def _count(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)
