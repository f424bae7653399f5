"""What every wrapper guarantees: unchanged outputs, an untouched frozen model, save/load, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from uqkit import Posterior, Predictive
from uqkit.wrap import WRAPPERS, FrozenWrapper, state_dict_hash, wrap

METHODS = ("temperature", "laplace", "mahalanobis", "bayescap")
FAST_CAP = {"hidden": 8, "num_blocks": 1, "num_epochs": 3, "batch_size": 16, "progress": False}


@pytest.fixture
def case(request, classifier, regressor, blobs, generator):
    """``(model, x, y, options)`` for the method named by the test's parameter."""
    method = request.param
    if method == "bayescap":
        x = torch.randn(60, 3, generator=generator)
        with torch.no_grad():
            y = regressor(x) + 0.1 * torch.randn(60, 2, generator=generator)
        return method, regressor, x, y, FAST_CAP
    x, y = blobs
    return method, classifier, x, y, {}


def _predictive_tensors(pred: Predictive) -> list[torch.Tensor]:
    if pred.task == "classification":
        return [pred.probs]
    return [pred.dist.loc, pred.dist.scale, pred.dist.beta]


@pytest.mark.parametrize("case", METHODS, indirect=True)
def test_outputs_are_the_frozen_outputs_and_the_model_is_untouched(case):
    method, model, x, y, options = case
    before = state_dict_hash(model)
    wrapped = wrap(model, method, **options).fit(x, y)
    wrapped.train()  # training mode of the wrapper must not reach the frozen model
    out = wrapped(x)
    assert not model.training and all(not m.training for m in model.modules())
    assert torch.equal(out.output, model(x))
    assert state_dict_hash(model) == before
    assert not any(p.requires_grad for p in model.parameters())
    assert isinstance(out.predictive, Predictive) and out.predictive.num_points == len(x)
    scores = wrapped.ood_score(x)
    assert scores.shape == (len(x),) and bool(torch.isfinite(scores).all())


@pytest.mark.parametrize("case", METHODS, indirect=True)
def test_save_load_round_trip_and_refusals(case, tmp_path, generator):
    method, model, x, y, options = case
    wrapped = wrap(model, method, **options).fit(x, y)
    path = tmp_path / "wrapped.safetensors"
    wrapped.save(path)
    for loader in (FrozenWrapper, type(wrapped)):
        loaded = loader.load(path, model)
        assert type(loaded) is type(wrapped) and loaded.options() == wrapped.options()
        for a, b in zip(_predictive_tensors(loaded(x).predictive), _predictive_tensors(wrapped(x).predictive)):
            assert torch.equal(a, b)
        assert torch.equal(loaded.ood_score(x), wrapped.ood_score(x))
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters())[0].add_(1e-3)
    with pytest.raises(ValueError, match="^path: .*different model"):
        FrozenWrapper.load(path, other)
    wrong = next(cls for name, cls in WRAPPERS.items() if name != method)
    with pytest.raises(ValueError, match=f"^path: .*holds method '{method}'"):
        wrong.load(path, model)
    posterior_file = tmp_path / "posterior.safetensors"
    Posterior(draws=torch.zeros(1, 2, 3)).save(posterior_file)
    with pytest.raises(ValueError, match="^path: .*not a uqkit.wrap/1 file"):
        FrozenWrapper.load(posterior_file, model)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="^path: "):
        FrozenWrapper.load(garbage, model)


@pytest.mark.parametrize("case", ["temperature", "laplace", "mahalanobis"], indirect=True)
def test_fitting_from_a_loader_equals_fitting_from_tensors(case):
    method, model, x, y, options = case
    from_tensors = wrap(model, method, **options).fit(x, y)
    from_loader = wrap(model, method, **options).fit(DataLoader(TensorDataset(x, y), batch_size=16))
    for a, b in zip(_predictive_tensors(from_loader(x).predictive), _predictive_tensors(from_tensors(x).predictive)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(from_loader.ood_score(x), from_tensors.ood_score(x), rtol=1e-9, atol=1e-12)


def test_wrap_rejects_bad_models_methods_and_options(classifier):
    with pytest.raises(TypeError, match="^model: expected a torch.nn.Module, got function"):
        wrap(lambda x: x, "temperature")
    with pytest.raises(ValueError, match="^method: expected one of 'bayescap', 'laplace', 'mahalanobis', 'temperature'"):
        wrap(classifier, "dropout")
    with pytest.raises(TypeError, match="^options: method 'laplace' takes no option 'num_epochs'"):
        wrap(classifier, "laplace", num_epochs=3)
    with pytest.raises(ValueError, match="^link_approx: expected one of 'scaled', 'probit', 'mc'"):
        wrap(classifier, "laplace", link_approx="sampling")
    with pytest.raises(ValueError, match="^prior_precision: expected a number > 0 or 'evidence'"):
        wrap(classifier, "laplace", prior_precision="marglik")
    with pytest.raises(ValueError, match="^train_fraction: expected a fraction in \\(0, 1\\]"):
        wrap(classifier, "bayescap", train_fraction=1.5)


def test_unknown_layer_names_list_the_available_ones(classifier):
    with pytest.raises(ValueError, match="^layer: the model has no layer named 'fc9'; available layers: '0', '1', '2', '3', '4'"):
        wrap(classifier, "mahalanobis", layer="fc9")
    with pytest.raises(ValueError, match="^last_layer: expected an nn.Linear, '2' is a Tanh"):
        wrap(classifier, "laplace", last_layer="2")


def test_nan_outputs_and_missing_targets_raise(classifier, blobs):
    x, y = blobs
    bad = x.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="^data: expected finite values"):
        wrap(classifier, "temperature").fit(bad, y)
    fitted = wrap(classifier, "mahalanobis").fit(x, y)
    with pytest.raises(ValueError, match="^x: expected finite values"):
        fitted(bad)
    broken = torch.nn.Sequential(classifier, torch.nn.Threshold(100.0, float("nan")))  # NaN from finite inputs
    with pytest.raises(ValueError, match="^model: the frozen model's output has .* NaN or inf values"):
        wrap(broken, "temperature").fit(x, y)
    with pytest.raises(ValueError, match="^y: the 'laplace' method needs targets"):
        wrap(classifier, "laplace").fit(x)
    with pytest.raises(ValueError, match="^y: expected length 120 to match data, got 119"):
        wrap(classifier, "laplace").fit(x, y[:-1])
    with pytest.raises(ValueError, match="^y: pass targets inside the loader's"):
        wrap(classifier, "laplace").fit(DataLoader(TensorDataset(x, y), batch_size=16), y)
    with pytest.raises(ValueError, match="^TemperatureWrapper: call fit"):
        wrap(classifier, "temperature")(x)
    with pytest.raises(TypeError, match="^data: expected a tensor, a numpy array or an iterable"):
        wrap(classifier, "temperature").fit(3.0, y)


def test_non_tensor_outputs_are_refused(build):
    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x), x

    model = build(TupleOut)
    with pytest.raises(TypeError, match="^model: expected the frozen model to return a tensor, got tuple"):
        wrap(model, "temperature").fit(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_every_method_is_registered():
    assert set(WRAPPERS) == set(METHODS)
