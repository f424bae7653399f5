"""`Posterior` save/load and its safe file format."""

from __future__ import annotations

import pickle

import arviz as az
import numpy as np
import pytest
import torch

from uqkit import Posterior


def _posterior(generator) -> Posterior:
    return Posterior(
        draws={"w": torch.randn(2, 50, 3, generator=generator), "b": torch.randn(2, 50, generator=generator)},
        sample_stats={"divergent": torch.zeros(2, 50, dtype=torch.bool), "log_density": torch.randn(2, 50, generator=generator)},
        meta={"engine": "test", "seed": 3},
    )


def test_save_load_round_trip(tmp_path, generator):
    post = _posterior(generator)
    post.save(tmp_path / "p.safetensors")
    back = Posterior.load(tmp_path / "p.safetensors")
    assert back.meta == post.meta
    for k in post.draws:
        assert torch.equal(back.draws[k], post.draws[k])
    assert torch.equal(back.sample_stats["divergent"], post.sample_stats["divergent"])
    assert back.num_chains == 2 and back.num_draws == 50


def test_to_arviz_matches_arviz_on_the_same_draws(generator):
    post = _posterior(generator)
    idata = post.to_arviz()
    direct = az.rhat(az.from_dict(posterior={"w": post.draws["w"].numpy()}))["w"].values
    np.testing.assert_allclose(az.rhat(idata)["w"].values, direct)
    assert "diverging" in idata.sample_stats


def test_predict_without_model_is_a_clear_error(generator):
    with pytest.raises(ValueError, match="predict: this posterior has no model"):
        _posterior(generator).predict(torch.zeros(3, 1))


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_load_refuses_pickles_without_running_them(tmp_path):
    payload = _Payload()
    payload.target = str(tmp_path / "pwned")
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="not a uqkit file"):
        Posterior.load(bad)
    assert not (tmp_path / "pwned").exists()


def test_load_refuses_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a uqkit.posterior/1 file"):
        Posterior.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="no such file"):
        Posterior.load(tmp_path / "missing.safetensors")
