"""Conformance checks every minibatch engine in the registry must pass."""

from __future__ import annotations

import pytest
import torch

import uqkit.inference.cyclical  # noqa: F401  (registers the engines)
import uqkit.inference.sghmc  # noqa: F401
import uqkit.inference.sgld  # noqa: F401
from uqkit._io import load_tensors, save_tensors
from uqkit.inference.base import StepInfo, Trace, state_from_tensors, state_to_tensors
from uqkit.models.likelihoods import Gaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import HierarchicalLayerwiseGaussian
from uqkit.models.spec import ModelSpec
from uqkit.registry import ENGINES

MINIBATCH_ENGINES = sorted(name for name, cls in ENGINES.items() if getattr(cls, "minibatch", False))
# Small cycles and frequent Gibbs updates so that ten steps cross every code path.
OPTIONS = {"cyclical": {"cycle_length": 4, "exploration": 0.5, "step_size": 1e-3}, "sgld": {"step_size": 1e-3}}


def _setup(name: str, dtype=torch.float64, gibbs_every: int = 3):
    torch.manual_seed(0)  # only the module's own (unused) initial weights
    net = MLP(2, [5], 1).to(dtype)
    spec = ModelSpec(net, HierarchicalLayerwiseGaussian(), Gaussian(0.5, learn_noise=True), num_data=40)
    engine = ENGINES[name](**OPTIONS.get(name, {}), gibbs_every=gibbs_every)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g, dtype=dtype)
    y = torch.sin(x.sum(1))
    batches = [(x[i], y[i]) for i in torch.randperm(40, generator=g).split(8)] * 2
    return spec, engine, batches


def _tensors(state) -> dict[str, torch.Tensor]:
    return state_to_tensors(state)


def _assert_same(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_the_registry_has_the_minibatch_engines():
    assert {"sgld", "sghmc", "cyclical"} <= set(MINIBATCH_ENGINES)


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes_survive_init_and_step(name, dtype):
    spec, engine, batches = _setup(name, dtype)
    g = torch.Generator().manual_seed(1)
    state = engine.init(spec, spec.init_params(generator=g), generator=g)
    before = _tensors(state)
    for batch in batches[:4]:
        state, info = engine.step(spec, state, batch, generator=g, warmup=True)
        assert isinstance(info, StepInfo) and info.log_density.ndim == 0 and info.log_density.dtype == dtype
    after = _tensors(state)
    for k, v in after.items():
        if k in before:
            assert v.shape == before[k].shape and v.dtype == before[k].dtype, k
    assert after["step"] == 4
    assert all(v.dtype == dtype for k, v in state.params.items())


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
def test_same_generator_state_gives_identical_step_and_leaves_the_input_alone(name):
    spec, engine, batches = _setup(name, gibbs_every=1)
    g = torch.Generator().manual_seed(2)
    state = engine.init(spec, spec.init_params(generator=g), generator=g)
    state, _ = engine.step(spec, state, batches[0], generator=g, warmup=True)
    snapshot = {k: v.clone() for k, v in _tensors(state).items()}
    rng = g.get_state()
    a, info_a = engine.step(spec, state, batches[1], generator=g, warmup=True)
    g.set_state(rng)
    b, info_b = engine.step(spec, state, batches[1], generator=g, warmup=True)
    _assert_same(a, b)
    assert torch.equal(info_a.log_density, info_b.log_density)
    assert all(torch.equal(v, snapshot[k]) for k, v in _tensors(state).items())  # input state not modified


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
def test_ten_steps_equal_five_plus_checkpoint_plus_five(name, tmp_path):
    spec, engine, batches = _setup(name)

    def run(state, g, steps):
        for i in steps:
            state, _ = engine.step(spec, state, batches[i], generator=g, warmup=i < 6)
        return state

    g = torch.Generator().manual_seed(3)
    init = engine.init(spec, spec.init_params(generator=g), generator=g)
    rng0 = g.get_state()
    straight = run(init, g, range(10))

    g.set_state(rng0)
    half = run(init, g, range(5))
    save_tensors(tmp_path / "ck", {**_tensors(half), "rng": g.get_state()}, kind="test")
    tensors, _ = load_tensors(tmp_path / "ck", kind="test")
    g2 = torch.Generator()
    g2.set_state(tensors.pop("rng"))
    resumed = run(state_from_tensors(init, tensors), g2, range(5, 10))
    _assert_same(straight, resumed)


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
def test_nan_in_a_batch_names_the_engine_and_the_step(name):
    spec, engine, batches = _setup(name)
    g = torch.Generator().manual_seed(4)
    state = engine.init(spec, spec.init_params(generator=g), generator=g)
    for batch in batches[:2]:
        state, _ = engine.step(spec, state, batch, generator=g)
    x, y = batches[2]
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name}: step 2: .*NaN"):
        engine.step(spec, state, (x, y), generator=g)
    with pytest.raises(ValueError, match=rf"^{name}: step 2: .*batch"):
        engine.step(spec, state, None, generator=g)


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
def test_posterior_predict_is_correctly_shaped(name):
    spec, engine, batches = _setup(name)
    g = torch.Generator().manual_seed(5)
    chains = []
    for _ in range(2):
        state = engine.init(spec, spec.init_params(generator=g), generator=g)
        kept = []
        for batch in batches[:3]:
            state, _ = engine.step(spec, state, batch, generator=g)
            kept.append(state.params)
        chains.append({k: torch.stack([p[k] for p in kept]) for k in kept[0]})
    draws = {k: torch.stack([c[k] for c in chains]) for k in chains[0]}
    stats = {"log_density": torch.zeros(2, 3)}
    post = engine.posterior(spec, Trace(draws, stats))
    assert post.num_chains == 2 and post.num_draws == 3 and post.meta["engine"] == name
    pred = post.predict(torch.randn(7, 2, generator=g))
    assert pred.task == "regression" and pred.num_draws == 6 and pred.num_points == 7


@pytest.mark.parametrize("name", MINIBATCH_ENGINES)
@pytest.mark.parametrize("option, value", [("step_size", 0.0), ("step_size", -1e-3), ("step_size", float("inf")),
                                           ("temperature", -1.0), ("gibbs_every", -1)])
def test_bad_hyperparameters(name, option, value):
    with pytest.raises(ValueError, match=f"^{option}:"):
        ENGINES[name](**{option: value})
