"""Monte Carlo standard error checks for samplers (after BlackJAX's ``MonteCarloStandardErrorTest``).

An estimate from correlated draws is compared with the truth (or with another sampler's estimate)
in units of its Monte Carlo standard error, sd/√ESS, with ESS from arviz. The critical z is
two-sided and Bonferroni-corrected over every compared quantity, so ``p_value`` is the probability
that a correct sampler fails the whole check.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from torch import Tensor


def mcse_mean(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Monte Carlo standard error ``[K]`` of each quantity in ``samples [chain, draw, K]``.

    MCSE = sd/√ESS with arviz's ESS for the mean (``method="mean"``).
    """
    import arviz as az

    samples = np.asarray(samples, dtype=np.float64)
    ess = np.asarray(az.ess(az.convert_to_dataset(samples), method="mean")["x"].values).reshape(-1)
    flat = samples.reshape(-1, samples.shape[-1])
    return flat.mean(0), flat.std(0, ddof=1) / np.sqrt(ess)


def _assert_z(names: list[str], z: np.ndarray, p_value: float) -> np.ndarray:
    critical = stats.norm.ppf(1 - p_value / (2 * len(z)))
    if not np.all(z < critical):  # NaN fails too
        worst = np.argsort(-np.nan_to_num(z, nan=np.inf))[:10]
        table = ", ".join(f"{names[i]}: z={z[i]:.2f}" for i in worst)
        raise AssertionError(
            f"MCSE check failed: critical z={critical:.2f} (p={p_value}, {len(z)} tests); worst: {table}"
        )
    return z


def assert_mcse_close(
    draws: Tensor | np.ndarray,
    true_mean: Tensor | np.ndarray,
    true_var: Tensor | np.ndarray | None = None,
    true_corr: Tensor | np.ndarray | None = None,
    *,
    p_value: float = 0.01,
) -> np.ndarray:
    """Assert |estimate − truth| < z·MCSE for every mean, variance and correlation given.

    Means use the draws; variances the draws of (x − μ)²; correlations the draws of
    (x_i − μ_i)(x_j − μ_j)/(σ_i σ_j) for i < j (μ, σ the true values, so each quantity's expectation
    is exactly the target).

    Args:
        draws: ``[chain, draw, D]``.
        true_mean: ``[D]``; true_var: ``[D]``; true_corr: ``[D, D]`` (needs ``true_var``).
        p_value: family-wise false-failure probability (Bonferroni over all compared quantities).

    Returns:
        the z-scores ``[K]`` (means, then variances, then correlations).
    """
    x = np.asarray(draws, dtype=np.float64)
    mu = np.asarray(true_mean, dtype=np.float64)
    quantities, truths, names = [x], [mu], [f"mean[{i}]" for i in range(len(mu))]
    if true_var is not None:
        var = np.asarray(true_var, dtype=np.float64)
        quantities.append((x - mu) ** 2)
        truths.append(var)
        names += [f"var[{i}]" for i in range(len(var))]
        if true_corr is not None:
            std = (x - mu) / np.sqrt(var)
            i, j = np.triu_indices(len(mu), k=1)
            quantities.append(std[..., i] * std[..., j])
            truths.append(np.asarray(true_corr, dtype=np.float64)[i, j])
            names += [f"corr[{a},{b}]" for a, b in zip(i, j)]
    estimate, mcse = mcse_mean(np.concatenate(quantities, axis=-1))
    return _assert_z(names, np.abs(estimate - np.concatenate(truths)) / mcse, p_value)


def assert_means_agree(
    draws_a: Tensor | np.ndarray, draws_b: Tensor | np.ndarray, *, p_value: float = 0.01
) -> np.ndarray:
    """Assert two samplers' posterior means agree: |m_a − m_b| < z·√(MCSE_a² + MCSE_b²) per coordinate.

    Args:
        draws_a, draws_b: ``[chain, draw, D]`` (chain and draw counts may differ).

    Returns:
        the z-scores ``[D]``.
    """
    mean_a, se_a = mcse_mean(np.asarray(draws_a, dtype=np.float64))
    mean_b, se_b = mcse_mean(np.asarray(draws_b, dtype=np.float64))
    z = np.abs(mean_a - mean_b) / np.sqrt(se_a**2 + se_b**2)
    return _assert_z([f"mean[{i}]" for i in range(len(z))], z, p_value)
