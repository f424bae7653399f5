"""Recalibrators against independent fits: scipy optimisers, sklearn isotonic/logistic regression, numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from uqkit.calibration import recalibrate as rc
from uqkit.calibration import recalibrate_regression as rr
from uqkit.calibration import regression as reg
from uqkit.calibration.classification import ece
from uqkit.calibration.predictive import Predictive


def _np_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(-special.log_softmax(logits, axis=-1)[np.arange(len(labels)), labels].mean())


def _noisy_classification(generator, num_points=400, num_classes=4, temperature=2.5):
    """Logits that are ``temperature`` times too sharp for the labels drawn from them."""
    logits = 3 * torch.randn(num_points, num_classes, generator=generator)
    labels = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(-1)
    return logits, labels


def _train_overconfident_mlp(seed: int):
    """A float32 MLP overfitted to 300 digits (800 full-batch Adam steps, no weight decay); logits on
    a 600-image validation split and the 897-image test split."""
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, val, test = perm[:300], perm[300:900], perm[900:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(64, 64, dtype=torch.float32), torch.nn.ReLU(), torch.nn.Linear(64, 10, dtype=torch.float32)
        )
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(800):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[train]), y[train]).backward()
        optimizer.step()
    with torch.no_grad():
        return net(x[val]), y[val], net(x[test]), y[test]


def test_temperature_scaling_fixes_an_overconfident_mlp(seed):
    val_logits, val_y, test_logits, test_y = _train_overconfident_mlp(seed)
    scaler = rc.TemperatureScaler().fit(val_logits, val_y)
    assert scaler.temperature_ > 1  # overconfident: the fitted temperature softens

    def fn(t):
        return _np_nll(val_logits.double().numpy() / t, val_y.numpy())

    reference = optimize.minimize_scalar(fn, bounds=(0.05, 20), method="bounded", options={"xatol": 1e-10}).x
    assert scaler.temperature_ == pytest.approx(reference, rel=1e-6)

    before, after = torch.softmax(test_logits, -1), scaler.predict_proba(test_logits)
    assert float(ece(after, test_y)) < float(ece(before, test_y))
    z_test = test_logits.double().numpy()
    assert _np_nll(z_test / scaler.temperature_, test_y.numpy()) < _np_nll(z_test, test_y.numpy())
    assert torch.equal(after.argmax(-1), before.argmax(-1))  # accuracy identical


def test_temperature_transform_keeps_per_draw_logits_and_argmax(generator):
    logits = 4 * torch.randn(3, 50, 5, generator=generator)
    log_w = torch.tensor([0.1, -0.5, 0.4])
    true_probs = Predictive.from_logits(logits / 3, log_weights=log_w).mixture_probs()
    labels = torch.multinomial(true_probs, 1, generator=generator).squeeze(-1)
    pred = Predictive.from_logits(logits, log_weights=log_w)
    scaler = rc.TemperatureScaler().fit(pred, labels)
    out = scaler.transform(pred)
    torch.testing.assert_close(out.logits, logits / scaler.temperature_, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.log_weights, log_w)
    assert torch.equal(out.probs.argmax(-1), pred.probs.argmax(-1))

    # The mixture NLL it minimised, written independently with scipy.
    w = special.softmax(log_w.numpy())

    def mixture_nll(t):
        log_p = special.log_softmax(logits.numpy() / t, axis=-1)[:, np.arange(50), labels.numpy()]
        return float(-special.logsumexp(log_p + np.log(w)[:, None], axis=0).mean())

    reference = optimize.minimize_scalar(mixture_nll, bounds=(0.05, 50), method="bounded", options={"xatol": 1e-10}).x
    assert scaler.temperature_ == pytest.approx(reference, rel=1e-6)


def test_temperature_scaling_of_probabilities_equals_logits(generator):
    logits, labels = _noisy_classification(generator)
    from_logits = rc.TemperatureScaler().fit(logits, labels)
    from_probs = rc.TemperatureScaler().fit(Predictive.from_probs(torch.softmax(logits, -1)), labels)
    assert from_probs.temperature_ == pytest.approx(from_logits.temperature_, rel=1e-8)


def test_vector_scaling_matches_scipy_bfgs(generator):
    logits, labels = _noisy_classification(generator)
    scaler = rc.VectorScaler().fit(logits.numpy(), labels.numpy())
    z, y = logits.numpy(), labels.numpy()

    def loss(theta):
        return _np_nll(z * theta[:4] + theta[4:], y)

    reference = optimize.minimize(loss, np.r_[np.ones(4), np.zeros(4)], method="BFGS", options={"gtol": 1e-10})
    fitted = scaler.predict_proba(logits).numpy()
    expected = special.softmax(z * reference.x[:4] + reference.x[4:], axis=-1)
    np.testing.assert_allclose(fitted, expected, atol=1e-6)  # bias is defined up to a constant; compare probabilities
    assert loss(np.r_[scaler.weight_.numpy(), scaler.bias_.numpy()]) == pytest.approx(reference.fun, abs=1e-10)


def test_platt_scaling_matches_unpenalised_logistic_regression(generator):
    logits = torch.randn(500, 2, generator=generator) * 2
    log_odds = logits[:, 1] - logits[:, 0]
    labels = (torch.rand(500, generator=generator) < torch.sigmoid(0.4 * log_odds - 0.3)).long()
    scaler = rc.PlattScaler().fit(logits, labels)
    reference = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(log_odds.numpy()[:, None], labels.numpy())
    assert scaler.coef_ == pytest.approx(reference.coef_[0, 0], rel=1e-6)
    assert scaler.intercept_ == pytest.approx(reference.intercept_[0], rel=1e-6, abs=1e-8)
    expected = reference.predict_proba(log_odds.numpy()[:, None])
    np.testing.assert_allclose(scaler.predict_proba(logits).numpy(), expected, atol=1e-7)


def test_isotonic_top_label_matches_sklearn(generator):
    logits, labels = _noisy_classification(generator)
    new_logits = 3 * torch.randn(100, 4, generator=generator)
    calibrator = rc.IsotonicCalibrator().fit(logits, labels)
    probs, new_probs = torch.softmax(logits, -1).numpy(), torch.softmax(new_logits, -1).numpy()
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
    iso.fit(probs.max(-1), (probs.argmax(-1) == labels.numpy()).astype(float))
    out = calibrator.predict_proba(new_logits).numpy()
    top = new_probs.argmax(-1)
    np.testing.assert_allclose(out[np.arange(100), top], iso.predict(new_probs.max(-1)), atol=1e-12)
    _check_rescaled_others(out, new_probs, top)


def test_histogram_binning_matches_numpy(generator):
    logits, labels = _noisy_classification(generator, num_points=300)
    calibrator = rc.HistogramBinning(num_bins=10).fit(logits, labels)
    probs = torch.softmax(logits, -1).numpy()
    conf, correct = probs.max(-1), probs.argmax(-1) == labels.numpy()
    edges = np.unique(np.quantile(conf, np.arange(1, 10) / 10, method="lower"))
    edges = edges[edges < conf.max()]
    np.testing.assert_allclose(calibrator.bin_edges_.numpy(), edges, rtol=0)
    index = np.digitize(conf, edges, right=True)  # right-closed bins
    accuracy = np.array([correct[index == b].mean() for b in range(len(edges) + 1)])
    np.testing.assert_allclose(calibrator.bin_values_.numpy(), accuracy, rtol=1e-15)
    assert np.bincount(index).min() >= 300 // 10 - 1  # equal mass
    new_probs = torch.softmax(3 * torch.randn(60, 4, generator=generator), -1)
    out = calibrator.predict_proba(new_probs.log()).numpy()
    top = new_probs.numpy().argmax(-1)
    expected_top = accuracy[np.digitize(new_probs.numpy().max(-1), edges, right=True)]
    np.testing.assert_allclose(out[np.arange(60), top], expected_top, rtol=1e-15)
    _check_rescaled_others(out, new_probs.numpy(), top)


def _check_rescaled_others(out: np.ndarray, probs: np.ndarray, top: np.ndarray) -> None:
    """Rows sum to 1 and the non-top classes keep their proportions."""
    np.testing.assert_allclose(out.sum(-1), 1, atol=1e-12)
    rows = np.arange(len(top))
    mask = np.ones_like(probs, dtype=bool)
    mask[rows, top] = False
    others_out = out[mask].reshape(len(top), -1)
    others_in = probs[mask].reshape(len(top), -1)
    keep = others_out.sum(-1) > 0  # rows recalibrated to a certain top label have nothing to compare
    assert keep.sum() > len(top) // 2
    share_out = others_out[keep] / others_out[keep].sum(-1, keepdims=True)
    np.testing.assert_allclose(share_out, others_in[keep] / others_in[keep].sum(-1, keepdims=True), rtol=1e-10)


def test_top_label_transform_and_certain_rows():
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3]])
    calibrator = rc.HistogramBinning(num_bins=1).fit(Predictive.from_probs(probs), torch.tensor([1, 1]))
    out = calibrator.transform(Predictive.from_probs(probs))
    assert out.logits is None and out.num_draws == 1
    # One bin with accuracy 1/2; the certain row spreads the remaining 1/2 uniformly.
    torch.testing.assert_close(out.probs[0], torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.5, 0.3]]))


def test_variance_scaler_closed_form_single_gaussian(generator):
    mean, sd = torch.randn(300, 2, generator=generator), torch.rand(300, 2, generator=generator) + 0.3
    y = mean + 1.7 * sd * torch.randn(300, 2, generator=generator)
    pred = Predictive.gaussian(mean[None], sd[None] ** 2)
    scaler = rr.VarianceScaler().fit(pred, y)
    assert scaler.scale_ == pytest.approx(float(np.mean(((y - mean) / sd).numpy() ** 2)), rel=1e-12)
    out = scaler.transform(pred)
    torch.testing.assert_close(out.variance(), scaler.scale_ * pred.variance())
    torch.testing.assert_close(out.mean(), pred.mean())


def test_variance_scaler_mixture_matches_scipy(generator):
    num_draws = 3
    mean = torch.randn(num_draws, 200, generator=generator)
    var = torch.rand(num_draws, 200, generator=generator) + 0.1
    log_w = torch.tensor([0.0, 0.5, -0.5])
    pred = Predictive.gaussian(mean, var, log_weights=log_w)
    y = pred.mean() + 2.0 * pred.variance().sqrt() * torch.randn(200, generator=generator)
    scaler = rr.VarianceScaler().fit(pred, y)

    w, m = special.softmax(log_w.numpy()), pred.mean().numpy()

    def nll(log_s):
        s = np.exp(log_s)
        loc = m + s * (mean.numpy() - m)
        log_dens = stats.norm.logpdf(y.numpy(), loc, s * np.sqrt(var.numpy()))
        return -special.logsumexp(np.log(w)[:, None] + log_dens, axis=0).mean()

    reference = optimize.minimize_scalar(nll, bracket=(-1, 1), tol=1e-12).x
    assert scaler.scale_ == pytest.approx(np.exp(2 * reference), rel=1e-6)
    out = scaler.transform(pred)
    torch.testing.assert_close(out.variance(), scaler.scale_ * pred.variance())
    torch.testing.assert_close(out.mean(), pred.mean())


def test_isotonic_regression_recalibrates_a_too_narrow_gaussian(seed):
    generator = torch.Generator().manual_seed(2000 + seed)
    n = 4000

    def simulate():
        mean = 2 * torch.randn(n, generator=generator)
        y = mean + 2 * torch.randn(n, generator=generator)  # true sd 2; the model says 1 (variance 4x too small)
        return Predictive.gaussian(mean, torch.ones(n)), y

    (pred_val, y_val), (pred_test, y_test) = simulate(), simulate()
    calibrator = rr.IsotonicRegressionCalibrator().fit(pred_val, y_val)
    recalibrated = calibrator.transform(pred_test)
    # R is the interpolated empirical CDF of the validation PITs (within 1/n of it), so with probability
    # >= 1 - 2e-4 the test KS statistic is below the two DKW radii plus 2/n.
    dkw = np.sqrt(np.log(2 / 1e-4) / (2 * n))
    bound = 2 * dkw + 2 / n
    ks_before = stats.kstest(reg.pit(pred_test, y_test).numpy(), "uniform").statistic
    ks_after = stats.kstest(reg.pit(recalibrated, y_test).numpy(), "uniform").statistic
    assert ks_before > bound > ks_after
    for level in (0.5, 0.9):
        # The interval's coverage errs by at most twice the CDF error, plus binomial noise.
        tolerance = 2 * (dkw + 1 / n) + 4 * np.sqrt(level * (1 - level) / n)
        assert abs(float(reg.interval_coverage(recalibrated, y_test, level)) - level) < tolerance


def test_recalibrated_distribution_with_identity_map_is_the_base(generator):
    pred = Predictive.gaussian(torch.randn(2, 6, generator=generator), torch.rand(2, 6, generator=generator) + 0.5)
    dist = rr.RecalibratedDistribution(pred, torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]))
    out = Predictive.from_distribution(dist)
    y = torch.randn(6, generator=generator)
    torch.testing.assert_close(out.cdf(y), pred.cdf(y), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out.log_prob(y), pred.log_prob(y), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(out.quantile(0.8), pred.quantile(0.8), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.mean(), pred.mean(), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(out.variance(), pred.variance(), rtol=1e-6, atol=0)
    assert float(reg.crps(out, y)) == pytest.approx(float(reg.crps(pred, y)), rel=1e-7)


def test_recalibrated_distribution_against_scipy(generator):
    knots_x = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    knots_y = torch.tensor([0.0, 0.05, 0.5, 0.97, 1.0])
    mean, sd = torch.tensor([0.3, -1.0]), torch.tensor([1.5, 0.7])
    out = Predictive.from_distribution(rr.RecalibratedDistribution(Predictive.gaussian(mean, sd**2), knots_x, knots_y))
    kx, ky = knots_x.numpy(), knots_y.numpy()
    y = torch.tensor([0.9, -1.3])
    expected_cdf = np.interp(stats.norm.cdf(y.numpy(), mean.numpy(), sd.numpy()), kx, ky)
    np.testing.assert_allclose(out.cdf(y).numpy(), expected_cdf, rtol=1e-12)
    slopes = np.diff(ky) / np.diff(kx)  # R' is constant between the base quantiles of the knots
    for i in range(2):
        m, s = float(mean[i]), float(sd[i])
        edges = [-np.inf, *(m + s * stats.norm.ppf(kx[1:-1])), np.inf]

        def moment(power, m=m, s=s, edges=edges):
            total = 0.0
            for a, b, c in zip(edges[:-1], edges[1:], slopes, strict=True):
                total += c * integrate.quad(lambda z: z**power * stats.norm.pdf(z, m, s), a, b, epsabs=1e-13)[0]
            return total

        first, second = moment(1), moment(2)
        # Simpson's rule loses its O(h^4) order at the kinks of R: about 1e-5 relative (class docstring).
        assert float(out.mean()[i]) == pytest.approx(first, abs=1e-5 * s)
        assert float(out.variance()[i]) == pytest.approx(second - first**2, rel=5e-5)
        q = optimize.brentq(lambda z: np.interp(stats.norm.cdf(z, m, s), kx, ky) - 0.75, -30, 30, xtol=1e-13)  # noqa: B023
        assert float(out.quantile(0.75)[i]) == pytest.approx(q, rel=1e-9)


@pytest.mark.parametrize(
    "make",
    [rc.TemperatureScaler, rc.VectorScaler, rc.PlattScaler, rc.HistogramBinning, rc.IsotonicCalibrator],
)
def test_classification_recalibrators_refuse_use_before_fit(make):
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        make().predict_proba(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="is not fitted yet"):  # NotFittedError is a ValueError
        make().transform(torch.zeros(3, 2))


@pytest.mark.parametrize("make", [rr.VarianceScaler, rr.IsotonicRegressionCalibrator])
def test_regression_recalibrators_refuse_use_before_fit(make):
    with pytest.raises(NotFittedError, match="is not fitted yet"):
        make().transform(Predictive.gaussian(torch.zeros(3), torch.ones(3)))


def test_bad_inputs_raise_clear_errors():
    logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 1])
    regression = Predictive.gaussian(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="^labels: expected labels in"):
        rc.TemperatureScaler().fit(logits, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="^labels: expected 4 labels"):
        rc.IsotonicCalibrator().fit(logits, labels[:3])
    with pytest.raises(ValueError, match="^init: expected a finite number > 0"):
        rc.TemperatureScaler(init=-1.0).fit(logits, labels)
    with pytest.raises(ValueError, match="^max_iter: expected a positive integer"):
        rc.TemperatureScaler(max_iter=0).fit(logits, labels)
    with pytest.raises(ValueError, match="^num_bins: expected a positive integer"):
        rc.HistogramBinning(num_bins=0).fit(logits, labels)
    with pytest.raises(ValueError, match="^logits: PlattScaler needs exactly 2 classes"):
        rc.PlattScaler().fit(logits, labels)
    with pytest.raises(ValueError, match="^logits: expected logits or a classification Predictive"):
        rc.VectorScaler().fit(regression, labels)
    with pytest.raises(ValueError, match="^logits: expected finite values"):
        rc.TemperatureScaler().fit(torch.full((4, 3), float("nan")), labels)
    with pytest.raises(ValueError, match="^pred: expected a regression Predictive"):
        rr.IsotonicRegressionCalibrator().fit(Predictive.from_logits(logits), torch.zeros(4))
    with pytest.raises(ValueError, match="^pred: VarianceScaler needs a Gaussian"):
        laplace = Predictive.from_distribution(torch.distributions.Laplace(torch.zeros(1, 4), torch.ones(1, 4)))
        rr.VarianceScaler().fit(laplace, torch.zeros(4))
    with pytest.raises(ValueError, match=r"^y: expected shape \(4,\)"):
        rr.VarianceScaler().fit(regression, torch.zeros(3))
