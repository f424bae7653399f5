"""The `fit` driver: determinism, thinning, chains, checkpoint/resume, NUTS dispatch, bad input."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import uqkit.inference.cyclical  # noqa: F401
import uqkit.inference.sghmc  # noqa: F401
import uqkit.inference.sgld  # noqa: F401
from uqkit.inference.fit import fit
from uqkit.inference.posterior import Posterior
from uqkit.models.likelihoods import Categorical, Gaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import HierarchicalLayerwiseGaussian, LayerwiseGaussian
from uqkit.models.spec import ModelSpec
from uqkit.registry import get_engine

RUN = {"num_warmup": 6, "num_samples": 4, "thinning": 2, "batch_size": 5, "progress": False}


class _Crashing(nn.Module):
    """An MLP whose forward raises once it has run ``fail_after`` times (None: never)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = MLP(2, [4], 1)
        self.in_features = 2
        self.calls, self.fail_after = 0, None

    def forward(self, x):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return self.body(x)


def _data(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, torch.sin(x[:, 0]) + 0.1 * torch.randn(n, generator=g)


def _spec(net=None, n=20):
    return ModelSpec(net or MLP(2, [4], 1), HierarchicalLayerwiseGaussian(), Gaussian(0.3, learn_noise=True), n)


def _equal(a: Posterior, b: Posterior) -> bool:
    return (a.draws.keys() == b.draws.keys() and all(torch.equal(a.draws[k], b.draws[k]) for k in a.draws)
            and all(torch.equal(a.sample_stats[k], b.sample_stats[k]) for k in a.sample_stats))


@pytest.mark.parametrize("engine", ["sgld", "sghmc", "cyclical"])
def test_shapes_stats_meta_and_predict(engine):
    options = {"cyclical": {"cycle_length": 4}, "sgld": {"step_size": 1e-3}}.get(engine, {})
    post = fit(_spec(), _data(), engine=engine, num_chains=2, seed=1, **RUN, **options)
    assert post.draws["layers.0.weight"].shape == (2, 4, 4, 2)
    assert post.draws["likelihood.log_noise_std"].shape == (2, 4)
    assert post.sample_stats["log_density"].shape == (2, 4) and bool(torch.isfinite(post.sample_stats["log_density"]).all())
    assert post.meta["engine"] == engine and post.meta["seed"] == 1 and post.meta["wall_time_s"] >= 0
    pred = post.predict(torch.zeros(3, 2))
    assert pred.num_draws == 8 and pred.num_points == 3


def test_same_seed_same_draws_different_seed_different_draws():
    a = fit(_spec(), _data(), seed=3, num_chains=2, **RUN)
    b = fit(_spec(), _data(), seed=3, num_chains=2, **RUN)
    c = fit(_spec(), _data(), seed=4, num_chains=2, **RUN)
    assert _equal(a, b) and not torch.equal(a.draws["layers.0.weight"], c.draws["layers.0.weight"])


def test_chain_does_not_depend_on_num_chains():
    one = fit(_spec(), _data(), seed=5, num_chains=1, **RUN)
    two = fit(_spec(), _data(), seed=5, num_chains=2, **RUN)
    assert all(torch.equal(one.draws[k][0], two.draws[k][0]) for k in one.draws)


def test_thinning_keeps_every_kth_step():
    run = dict(RUN, thinning=1, num_samples=6)
    dense = fit(_spec(), _data(), seed=6, **run)
    thin = fit(_spec(), _data(), seed=6, **dict(run, thinning=3, num_samples=2))
    assert all(torch.equal(thin.draws[k][0], dense.draws[k][0, [2, 5]]) for k in dense.draws)


def test_cyclical_keeps_only_sampling_steps():
    engine = get_engine("cyclical", cycle_length=10, exploration=0.5, step_size=1e-3)
    post = fit(_spec(), _data(), engine=engine, num_warmup=0, num_samples=10, thinning=1, batch_size=5, progress=False)
    expected = [engine.schedule(k)[0] for cycle in range(2) for k in range(10 * cycle + 5, 10 * cycle + 10)]
    assert all(engine.schedule(k)[1] for k in range(5, 10)) and not any(engine.schedule(k)[1] for k in range(5))
    torch.testing.assert_close(post.sample_stats["step_size"][0], torch.tensor(expected))


# Each chain takes 6 + 4 * 2 = 14 steps (one forward each): crash in chain 0's warmup, its sampling, in chain 1.
@pytest.mark.parametrize("crash_after", [5, 11, 20])
def test_resume_after_a_crash_is_bit_identical(tmp_path, crash_after):
    run = dict(RUN, num_chains=2, seed=7, checkpoint_every=4)
    reference = fit(_spec(_Crashing()), _data(), **run)
    net = _Crashing()
    spec = _spec(net)
    net.calls, net.fail_after = 0, crash_after
    path = tmp_path / "run.ckpt"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(spec, _data(), checkpoint=path, **run)
    assert path.exists()
    net.fail_after = None
    resumed = fit(spec, _data(), checkpoint=path, **run)
    assert resumed.meta["resumed"] and _equal(reference, resumed)
    again = fit(spec, _data(), checkpoint=path, **run)  # a finished checkpoint returns the same draws
    assert _equal(reference, again)


def test_resume_with_a_shuffling_dataloader(tmp_path):
    x, y = _data()

    def loader():
        return DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0))

    run = dict(RUN, batch_size=None, num_chains=2, seed=8, checkpoint_every=3)
    reference = fit(_spec(_Crashing()), loader(), **run)
    net = _Crashing()
    spec = _spec(net)
    net.calls, net.fail_after = 0, 22
    with pytest.raises(RuntimeError):
        fit(spec, loader(), checkpoint=tmp_path / "c", **run)
    net.fail_after = None
    assert _equal(reference, fit(spec, loader(), checkpoint=tmp_path / "c", **run))
    assert _equal(reference, fit(_spec(_Crashing()), loader(), **run))


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "garbage"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="^checkpoint: .*not a uqkit file"):
        fit(_spec(), _data(), checkpoint=bad, **RUN)
    foreign = tmp_path / "posterior"
    fit(_spec(), _data(), **RUN).save(foreign)
    with pytest.raises(ValueError, match="^checkpoint: .*not a uqkit.fit-checkpoint"):
        fit(_spec(), _data(), checkpoint=foreign, **RUN)
    mine = tmp_path / "mine"
    fit(_spec(), _data(), checkpoint=mine, seed=0, **RUN)
    with pytest.raises(ValueError, match="^checkpoint: .*different run"):
        fit(_spec(), _data(), checkpoint=mine, seed=1, **RUN)


def test_nan_in_data_is_refused_before_the_first_step_naming_the_engine():
    x, y = _data()
    x[7, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^x: expected finite values.*\(engine sghmc\)$"):
        fit(_spec(), (x, y), **RUN)


def test_classification_with_integer_labels_and_progress_bar(capsys):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    spec = ModelSpec(MLP(2, [4], 3), LayerwiseGaussian(), Categorical(), 30)
    post = fit(spec, (x, y), **dict(RUN, progress=True, num_warmup=60))
    assert post.predict(x).probs.shape == (4, 30, 3)
    assert "fit[sghmc]" in capsys.readouterr().err


def test_full_batch_engines_dispatch_to_sample(monkeypatch):
    spec, (x, y) = _spec(), _data()
    calls = {}

    def fake_sample(log_density, init, **kwargs):
        calls.update(kwargs, init=init)
        z = init.clone().requires_grad_()
        values = log_density(z)
        flat = init[1]
        names = list(spec.param_template())
        sizes = [spec.param_template()[k].numel() for k in names]
        params = {k: c.reshape(spec.param_template()[k].shape) for k, c in zip(names, flat.split(sizes))}
        torch.testing.assert_close(values[1], spec.log_prior(params) + spec.log_likelihood(params, (x, y)))
        torch.autograd.grad(values.sum(), z)  # differentiable over the chains' batch
        draws = init.unsqueeze(1).expand(-1, 3, -1).detach()
        return Posterior(draws=draws, sample_stats={"divergent": torch.zeros(2, 3, dtype=torch.bool)}, meta={"method": "nuts"})

    monkeypatch.setitem(sys.modules, "uqkit.inference.sample", types.SimpleNamespace(sample=fake_sample))
    post = fit(spec, (x, y), engine="nuts", num_chains=2, num_samples=3, num_warmup=5, thinning=1, progress=False,
               max_tree_depth=6)
    assert calls["init"].shape == (2, sum(v.numel() for v in spec.param_template().values()))
    assert calls["method"] == "nuts" and calls["max_tree_depth"] == 6 and calls["num_warmup"] == 5
    assert post.draws["layers.0.weight"].shape == (2, 3, 4, 2) and post.meta["engine"] == "nuts"
    assert post.predict(x).num_draws == 6


def test_nuts_end_to_end():
    pytest.importorskip("uqkit.inference.sample")
    post = fit(ModelSpec(MLP(2, [3], 1), LayerwiseGaussian(), Gaussian(0.3), 20), _data(), engine="nuts",
               num_chains=2, num_warmup=30, num_samples=10, thinning=1, progress=False, max_tree_depth=4)
    assert post.draws["layers.0.weight"].shape == (2, 10, 3, 2)
    assert bool(torch.isfinite(post.draws["layers.0.weight"]).all()) and post.predict(torch.zeros(4, 2)).num_draws == 20
    # the traced gradient is autograd's bit for bit, so turning it off changes nothing but speed
    untraced = fit(ModelSpec(MLP(2, [3], 1), LayerwiseGaussian(), Gaussian(0.3), 20), _data(), engine="nuts",
                   num_chains=2, num_warmup=30, num_samples=10, thinning=1, progress=False, max_tree_depth=4,
                   trace_gradient=False)
    assert post.meta["traced_gradient"] and not untraced.meta["traced_gradient"]
    for name, draws in post.draws.items():
        assert torch.equal(draws, untraced.draws[name]), name


@pytest.mark.parametrize("kwargs, error, match", [
    ({"num_samples": 0}, ValueError, "^num_samples:"),
    ({"num_chains": 0}, ValueError, "^num_chains:"),
    ({"thinning": 0}, ValueError, "^thinning:"),
    ({"num_warmup": -1}, ValueError, "^num_warmup:"),
    ({"checkpoint_every": 0}, ValueError, "^checkpoint_every:"),
    ({"batch_size": 0}, ValueError, "^batch_size:"),
    ({"batch_size": 21}, ValueError, "^batch_size:"),
    ({"num_samples": 2.5}, TypeError, "^num_samples:"),
    ({"seed": -1}, ValueError, "^seed:"),
    ({"engine": "nuts"}, ValueError, "^batch_size: nuts uses the full data set"),
    ({"engine": "nope"}, ValueError, "^engine: unknown engine"),
    ({"step_size": -0.1}, ValueError, "^step_size:"),
    ({"engine": get_engine("sgld"), "step_size": 0.1}, TypeError, "^engine_options:"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(_spec(), _data(), **{**RUN, **kwargs})


def test_bad_data():
    with pytest.raises(TypeError, match="^data:"):
        fit(_spec(), torch.zeros(20, 2), **RUN)
    with pytest.raises(ValueError, match="^data: x holds 10 points but spec.num_data is 20"):
        fit(_spec(), _data(10), **RUN)
    with pytest.raises(ValueError, match="^y:"):
        fit(_spec(), (_data()[0], torch.zeros(19)), **RUN)
    x, y = _data()
    with pytest.raises(ValueError, match="^data: a shuffling DataLoader needs generator"):
        fit(_spec(), DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True), **dict(RUN, batch_size=None))
    with pytest.raises(ValueError, match="^batch_size:"):
        fit(_spec(), DataLoader(TensorDataset(x, y), batch_size=5), **RUN)
    with pytest.raises(TypeError, match="^spec:"):
        fit("spec", (x, y), **RUN)


def test_full_batch_engines_refuse_a_float32_network():
    import torch

    from uqkit.inference.fit import fit
    from uqkit.models import MLP, Gaussian, IsotropicGaussian, ModelSpec

    x = torch.randn(20, 2, dtype=torch.float32)
    spec = ModelSpec(MLP(2, [4], 1).float(), IsotropicGaussian(1.0), Gaussian(0.1), num_data=20)
    with pytest.raises(ValueError, match="spec: nuts runs in float64"):
        fit(spec, (x, x.sum(1)), engine="nuts", num_warmup=5, num_samples=5, progress=False)
