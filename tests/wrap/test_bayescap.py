"""BayesCap: the cap learns the error law of a frozen model, on vectors and images; shapes and fractions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uqkit.wrap import BayesCap, wrap

FAST = {"hidden": 8, "num_blocks": 1, "num_epochs": 2, "batch_size": 16, "progress": False}


class CountingIdentity(nn.Module):
    """Returns its input; counts the rows it has seen (in a plain attribute, outside the state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows_seen += len(x)
        return x


def _heteroscedastic(num_points: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen outputs ``y_hat ~ U(-2, 2)`` and truths ``y = y_hat + sd * eps`` with ``sd = 0.05 + 0.1 (y_hat + 2)``."""
    y_hat = 4 * torch.rand(num_points, 1, generator=generator) - 2
    sd = 0.05 + 0.1 * (y_hat + 2)
    return y_hat, y_hat + sd * torch.randn(num_points, 1, generator=generator), sd


def test_cap_learns_a_heteroscedastic_error_law(generator):
    """The frozen model's error sd grows with its output; the cap, seeing only the output, must learn that.

    On fresh data the cap is compared with the oracle Gaussian (true sd) and the best constant-variance
    Gaussian: it must capture most of the oracle's NLL advantage (0.22 nats) over the constant fit. The
    standard error of a mean NLL difference over 4000 points is about 0.01 nats; the bound leaves 0.05.
    """
    y_hat, y, _ = _heteroscedastic(1000, generator)
    cap = BayesCap(nn.Identity(), num_epochs=30, progress=False, seed=1).fit(y_hat, y)
    y_hat_test, y_test, sd_test = _heteroscedastic(4000, generator)
    out = cap(y_hat_test)
    assert torch.equal(out.output, y_hat_test)
    nll_cap = -out.predictive.log_prob(y_test).mean()
    err = y_test - y_hat_test
    nll_oracle = -torch.distributions.Normal(0, sd_test).log_prob(err).mean()
    nll_constant = -torch.distributions.Normal(0, err.std()).log_prob(err).mean()
    gain = (nll_constant - nll_cap) / (nll_constant - nll_oracle)
    assert float(gain) > 0.75, f"cap NLL {float(nll_cap):.3f}, oracle {float(nll_oracle):.3f}, constant {float(nll_constant):.3f}"
    corr = torch.corrcoef(torch.stack([out.predictive.variance().sqrt().flatten(), sd_test.flatten()]))[0, 1]
    assert float(corr) > 0.8  # 0.89 to 0.996 over seeds 0-19


def test_conv_cap_on_images_and_ood_score_is_mean_variance(generator):
    images = torch.rand(40, 2, 5, 5, generator=generator)
    targets = images + 0.1 * torch.randn(images.shape, generator=generator)
    cap = wrap(nn.Identity(), "bayescap", **FAST).fit(images, targets)
    assert isinstance(cap.caps_[0].stem[0], nn.Conv2d)
    out = cap(images[:7])
    assert out.predictive.dist.batch_shape == (1, 7, 50)
    assert torch.equal(out.predictive.mean(), images[:7].reshape(7, 50))
    torch.testing.assert_close(cap.ood_score(images[:7]), out.predictive.variance().mean(-1))
    # A fully convolutional cap takes other image sizes with the same channels, not other channels.
    assert cap.ood_score(torch.rand(3, 2, 7, 6, generator=generator)).shape == (3,)
    with pytest.raises(ValueError, match=r"^model: output of shape \(3, 1, 5, 5\) does not match the cap's expected shape \[N, 2, H, W\]"):
        cap(torch.rand(3, 1, 5, 5, generator=generator))


def test_ood_score_variants_against_scipy_gennorm_variance(generator, tmp_path):
    """Paper score: mean over a sample's elements of the GGD variance; variant: their quantile. Both from the
    cap's (alpha, beta) through scipy's gennorm variance and numpy's mean / quantile (linear interpolation)."""
    images = torch.rand(30, 1, 4, 4, generator=generator)
    targets = images + 0.1 * torch.randn(images.shape, generator=generator)
    mean_cap = wrap(nn.Identity(), "bayescap", **FAST).fit(images, targets)
    _, alpha, beta = (t.detach().reshape(30, -1).numpy() for t in mean_cap.cap_outputs(images))
    variance = stats.gennorm.var(beta, scale=alpha)
    np.testing.assert_allclose(mean_cap.ood_score(images).numpy(), variance.mean(-1), rtol=1e-10)
    for q in (0.0, 0.9, 1.0):
        cap = wrap(nn.Identity(), "bayescap", ood_quantile=q, **FAST).fit(images, targets)  # same seed, same cap
        np.testing.assert_allclose(cap.ood_score(images).numpy(), np.quantile(variance, q, axis=-1), rtol=1e-10)
    cap.save(tmp_path / "cap.safetensors")
    assert BayesCap.load(tmp_path / "cap.safetensors", nn.Identity()).ood_quantile == 1.0
    with pytest.raises(ValueError, match=r"^ood_quantile: expected a fraction in \[0, 1\], got 1.5"):
        wrap(nn.Identity(), "bayescap", ood_quantile=1.5)


def test_shape_errors(generator):
    x = torch.randn(30, 2, generator=generator)
    cap = wrap(nn.Identity(), "bayescap", **FAST).fit(x, x + 0.1)
    with pytest.raises(ValueError, match=r"^model: output of shape \(4, 3\) does not match the cap's expected shape \[N, 2\]"):
        cap(torch.randn(4, 3, generator=generator))
    with pytest.raises(ValueError, match=r"^y: expected the frozen output's shape \(30, 2\), got \(30, 1\)"):
        wrap(nn.Identity(), "bayescap", **FAST).fit(x, x[:, :1])
    with pytest.raises(ValueError, match=r"^model: expected outputs of shape \[N, D\] \(mlp cap\) or \[N, C, H, W\] \(conv cap\)"):
        wrap(nn.Identity(), "bayescap", **FAST).fit(x.reshape(30, 2, 1), x.reshape(30, 2, 1))
    with pytest.raises(ValueError, match=r"^model: expected outputs of shape \[N, C, H, W\] for the 'conv' cap, got \(30, 2\)"):
        wrap(nn.Identity(), "bayescap", cap="conv", **FAST).fit(x, x)


@pytest.mark.parametrize("use_loader", [False, True])
def test_train_fraction_runs_the_model_on_that_share_only(generator, use_loader):
    x = torch.randn(100, 2, generator=generator)
    model = CountingIdentity()
    data = (DataLoader(TensorDataset(x, x), batch_size=10),) if use_loader else (x, x)
    cap = BayesCap(model, train_fraction=0.25, val_fraction=0.2, **FAST).fit(*data)
    assert model.rows_seen == (30 if use_loader else 25)  # 3 of 10 batches, or 25 of 100 rows
    assert len(cap.history_) == 1 and len(cap.history_[0]["val_loss"]) == FAST["num_epochs"]


def test_training_is_reproducible_and_keeps_the_best_epoch(generator):
    y_hat, y, _ = _heteroscedastic(200, generator)
    options = dict(FAST, num_epochs=6)
    a = BayesCap(nn.Identity(), seed=4, **options).fit(y_hat, y)
    b = BayesCap(nn.Identity(), seed=4, **options).fit(y_hat, y)
    assert torch.equal(a.ood_score(y_hat), b.ood_score(y_hat))
    best = min(a.history_[0]["val_loss"])
    num_val = math.floor(0.1 * 200)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(4))
    assert a._mean_loss(a.caps_[0], y_hat[order[:num_val]], y[order[:num_val]]) == best
    with torch.no_grad():  # the batched mean is the mean over all validation elements, up to float32 rounding
        assert float(a._loss(a.caps_[0], y_hat[order[:num_val]], y[order[:num_val]])) == pytest.approx(best, rel=1e-6)


def test_linear_residual_variant_trains(generator):
    y_hat, y, _ = _heteroscedastic(100, generator)
    cap = BayesCap(nn.Identity(), ggd_residual="linear", **FAST).fit(y_hat, y)
    assert bool(torch.isfinite(cap.ood_score(y_hat)).all())


def test_ensemble_of_caps_is_a_mixture_centred_on_the_frozen_output(generator, tmp_path):
    """K caps: each trained as one cap would be from its own stream (cap k of the ensemble differs from cap 0),
    the predictive is the equal-weight mixture of their GGDs shifted by ``mu_k - mean(mu)``, its variance is the
    law of total variance, and the OOD score is the per-sample mean of that; save/load keeps every cap."""
    images = torch.rand(40, 1, 4, 4, generator=generator)
    targets = images + 0.1 * torch.randn(images.shape, generator=generator)
    single = wrap(nn.Identity(), "bayescap", **FAST).fit(images, targets)
    ensemble = wrap(nn.Identity(), "bayescap", num_caps=3, **FAST).fit(images, targets)
    assert len(ensemble.caps_) == 3 and len(ensemble.history_) == 3
    # Cap 0 of the ensemble is the single cap (same seed, same stream); the others differ.
    for a, b in zip(single.caps_[0].parameters(), ensemble.caps_[0].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(ensemble.caps_[0].stem[0].weight, ensemble.caps_[1].stem[0].weight)

    x = images[:5]
    out = ensemble(x)
    assert torch.equal(out.output, x)
    mu, alpha, beta = (t.detach().reshape(3, 5, 16).double() for t in ensemble.cap_outputs(x))
    loc = x.reshape(1, 5, 16).double() + mu - mu.mean(0)
    dist = out.predictive.dist
    torch.testing.assert_close(dist.loc.double(), loc, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.predictive.mean().double(), x.reshape(5, 16).double(), rtol=0, atol=1e-6)
    aleatoric = torch.from_numpy(stats.gennorm.var(beta.numpy(), scale=alpha.numpy())).mean(0)
    spread = mu.var(0, correction=0)
    torch.testing.assert_close(out.predictive.variance().double(), aleatoric + spread, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.predictive.epistemic_variance().double(), spread, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(ensemble.ood_score(x).double(), (aleatoric + spread).mean(-1), rtol=1e-5, atol=0)
    assert bool((spread > 0).all())

    ensemble.save(tmp_path / "caps.safetensors")
    loaded = BayesCap.load(tmp_path / "caps.safetensors", nn.Identity())
    assert loaded.num_caps == 3
    assert torch.equal(loaded.ood_score(x), ensemble.ood_score(x))


def test_beta_min_bounds_the_shape(generator):
    """Every predicted shape is at least ``beta_min`` (it is added to a softplus); the floor is validated."""
    y_hat, y, _ = _heteroscedastic(100, generator)
    cap = BayesCap(nn.Identity(), beta_min=0.5, **FAST).fit(y_hat, y)
    far = torch.linspace(-1e3, 1e3, 101).unsqueeze(-1)  # far outside the fitted outputs
    assert float(cap.cap_outputs(far)[2].detach().min()) >= 0.5
    for bad in (0.0, -1.0, 2.0, float("nan")):
        with pytest.raises(ValueError, match="^beta_min: "):
            BayesCap(nn.Identity(), beta_min=bad)
    with pytest.raises(ValueError, match="^num_caps: "):
        BayesCap(nn.Identity(), num_caps=0)


def test_single_cap_files_from_before_num_caps_still_load(generator, tmp_path):
    """Files written before ``num_caps`` existed store one cap under "cap." and no ``num_caps``/``beta_min`` option."""
    y_hat, y, _ = _heteroscedastic(60, generator)
    cap = BayesCap(nn.Identity(), **FAST).fit(y_hat, y)
    cap.save(tmp_path / "new.safetensors")
    tensors = load_file(tmp_path / "new.safetensors")
    with safe_open(tmp_path / "new.safetensors", "pt") as f:
        meta = dict(f.metadata())
    options = json.loads(meta["options"])
    del options["num_caps"], options["beta_min"]
    meta["options"] = json.dumps(options)
    legacy = {(f"cap.{k[len('caps.0.'):]}" if k.startswith("caps.0.") else k): v for k, v in tensors.items()}
    save_file(legacy, tmp_path / "old.safetensors", metadata=meta)
    loaded = BayesCap.load(tmp_path / "old.safetensors", nn.Identity())
    assert loaded.num_caps == 1
    assert torch.equal(loaded.ood_score(y_hat), cap.ood_score(y_hat))
