"""The `sample` driver: result layout, determinism, thinning, bad input, checkpoint and resume."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest
import torch

from uqkit._io import save_tensors
from uqkit.inference.posterior import Posterior
from uqkit.inference.sample import sample
from uqkit.testing.targets import correlated_gaussian

TARGET = correlated_gaussian(3)


def _run(**kwargs):
    options = {"num_warmup": 40, "num_samples": 30, "seed": 0, "progress": False, **kwargs}
    return sample(TARGET.log_density, options.pop("init", torch.zeros(3)), **options)


@pytest.mark.parametrize("method", ["nuts", "hmc"])
def test_result_layout(method):
    post = _run(method=method, num_chains=3)
    assert isinstance(post, Posterior)
    assert post.draws.shape == (3, 30, 3) and post.draws.dtype == torch.float64
    expected = {"log_density", "accept_prob", "step_size", "num_steps", "divergent", "energy"}
    assert set(post.sample_stats) == expected | ({"tree_depth"} if method == "nuts" else set())
    for value in post.sample_stats.values():
        assert value.shape == (3, 30)
    assert post.sample_stats["divergent"].dtype == torch.bool
    torch.testing.assert_close(post.sample_stats["log_density"], TARGET.log_density(post.draws))
    assert post.meta["method"] == method and post.meta["seed"] == 0 and post.meta["num_warmup"] == 40
    assert post.meta["num_divergent"] == int(post.sample_stats["divergent"].sum())
    assert post.meta["wall_time_s"] > 0


def test_diagnostics_are_arviz():
    post = _run(num_samples=200)
    idata = post.to_arviz()
    assert idata.posterior["z"].shape == (4, 200, 3)
    assert idata.sample_stats["diverging"].dtype == bool
    summary = post.summary()
    draws = post.draws.numpy()
    expected_rhat = az.rhat(az.convert_to_dataset(draws))["x"].values
    expected_ess = az.ess(az.convert_to_dataset(draws), method="bulk")["x"].values
    np.testing.assert_allclose(summary["r_hat"].to_numpy(), expected_rhat, atol=0.005)  # summary rounds to 2 dp
    np.testing.assert_allclose(summary["ess_bulk"].to_numpy(), expected_ess, atol=0.5)


def test_same_seed_same_draws_bit_for_bit():
    a, b, c = _run(seed=5), _run(seed=5), _run(seed=6)
    assert torch.equal(a.draws, b.draws)
    for key in a.sample_stats:
        assert torch.equal(a.sample_stats[key], b.sample_stats[key])
    assert not torch.equal(a.draws, c.draws)


@pytest.mark.parametrize("method", ["nuts", "hmc"])
def test_traced_gradient_gives_the_same_draws_bit_for_bit(method):
    traced, plain = _run(method=method), _run(method=method, trace_gradient=False)
    assert traced.meta["traced_gradient"] and not plain.meta["traced_gradient"]
    assert torch.equal(traced.draws, plain.draws)
    for key in traced.sample_stats:
        assert torch.equal(traced.sample_stats[key], plain.sample_stats[key])


def test_thinning_keeps_every_kth_transition():
    full = _run(num_samples=12)
    thinned = _run(num_samples=4, thinning=3)
    assert torch.equal(thinned.draws, full.draws[:, 2::3])


def test_shared_init_is_jittered_and_per_chain_init_is_kept():
    post = _run(num_warmup=0, num_samples=1, init=torch.zeros(3))
    assert post.draws.shape == (4, 1, 3)
    init = torch.arange(12.0).reshape(4, 3) / 10
    kept = sample(TARGET.log_density, init, num_warmup=0, num_samples=1, method="hmc", num_steps=1, step_size=1e-12,
                  adapt_step_size=False, progress=False)
    torch.testing.assert_close(kept.draws[:, 0], init)


def _nan_at_init(z):
    return torch.full((z.shape[0],), float("nan")) + 0 * z.sum(-1)


def _inf_at_init(z):
    return torch.full((z.shape[0],), float("inf")) + 0 * z.sum(-1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init": torch.tensor([0.0, float("nan"), 0.0])}, "init"),
        ({"init": torch.zeros(2, 3)}, "init"),
        ({"init": torch.zeros(4, 3, 1)}, "init"),
        ({"log_density": _nan_at_init}, r"log_density \(nuts\)"),
        ({"log_density": _inf_at_init}, r"log_density \(nuts\)"),
        ({"log_density": lambda z: -(z**2).sum()}, r"log_density \(nuts\).*shape"),
        ({"log_density": lambda z: -(z**2)}, r"log_density \(nuts\).*shape"),
        ({"log_density": lambda z: torch.zeros(z.shape[0])}, r"log_density \(nuts\)"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -1.0}, "step_size"),
        ({"target_accept": 0.0}, "target_accept"),
        ({"target_accept": 1.0}, "target_accept"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_chains": 0}, "num_chains"),
        ({"thinning": 0}, "thinning"),
        ({"num_warmup": -1}, "num_warmup"),
        ({"method": "sgld"}, "method"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    options = {"log_density": TARGET.log_density, "init": torch.zeros(3), "num_warmup": 5, "num_samples": 5,
               "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample(options.pop("log_density"), options.pop("init"), **options)


def test_wrong_shape_at_runtime_names_the_engine():
    calls = {"n": 0}

    def flaky(z):
        calls["n"] += 1
        value = TARGET.log_density(z)
        return value if calls["n"] < 20 else value[:1]

    with pytest.raises(ValueError, match=r"log_density \(hmc\).*shape"):  # impure: only autograd sees the change
        sample(flaky, torch.zeros(3), method="hmc", num_warmup=10, num_samples=10, progress=False,
               trace_gradient=False)


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["nuts", "hmc"])
def test_checkpoint_resume_is_bit_identical(tmp_path, method):
    options = {"method": method, "num_warmup": 60, "num_samples": 40, "seed": 1, "progress": False}
    straight = sample(TARGET.log_density, torch.zeros(3), **options)

    calls = {"n": 0}

    def crashing(z):
        calls["n"] += 1
        if calls["n"] > 700:  # dies somewhere in the middle of the run
            raise _Crash("simulated kill")
        return TARGET.log_density(z)

    path = tmp_path / "run.safetensors"
    with pytest.raises(_Crash):  # a traced graph would not run the Python code that crashes
        sample(crashing, torch.zeros(3), checkpoint=path, checkpoint_every=7, trace_gradient=False, **options)
    assert path.exists()
    resumed = sample(TARGET.log_density, torch.zeros(3), checkpoint=path, checkpoint_every=7, **options)
    assert torch.equal(resumed.draws, straight.draws)
    for key, value in straight.sample_stats.items():
        assert torch.equal(resumed.sample_stats[key], value), key
    assert resumed.meta["num_divergent_warmup"] == straight.meta["num_divergent_warmup"]
    again = sample(TARGET.log_density, torch.zeros(3), checkpoint=path, **options)  # finished: read back
    assert torch.equal(again.draws, straight.draws)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"num_chains": 2}, "num_chains"), ({"method": "hmc"}, "method"), ({"init": torch.zeros(4)}, "dim"),
     ({"seed": 9}, "seed")],
)
def test_checkpoint_from_different_arguments_is_refused(tmp_path, change, match):
    path = tmp_path / "run.safetensors"
    _run(checkpoint=path)
    with pytest.raises(ValueError, match=f"checkpoint.*{match}"):
        options = {"checkpoint": path, **change}
        init = options.pop("init", torch.zeros(3))
        log_density = TARGET.log_density if init.shape[-1] == 3 else (lambda z: -0.5 * (z**2).sum(-1))
        sample(log_density, init, num_warmup=40, num_samples=30, progress=False, **options)


def test_foreign_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_tensors(path, {"x": torch.zeros(1)}, kind="something.else/1")
    with pytest.raises(ValueError, match="checkpoint"):
        _run(checkpoint=path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="checkpoint"):
        _run(checkpoint=garbage)
