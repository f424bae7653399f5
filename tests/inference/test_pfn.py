"""PFN training, prediction, checkpoints (save/load/resume) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from uqkit._io import save_tensors
from uqkit.cli import main
from uqkit.inference import PFN
from uqkit.inference.pfn import PFNConfig, TrainConfig, train_pfn
from uqkit.inference.pfn.train import context_weights, learning_rate
from uqkit.models.pfn_priors import ClassificationSimulator, GPSimulator

TINY = PFNConfig(max_input_dim=1, num_outputs=30, d_model=32, num_heads=2, num_layers=2, d_ff=64)
PRIOR = GPSimulator(lengthscale=0.3, outputscale=1.0, noise=0.01)


def _train(path, steps: int, **kwargs) -> PFN:
    cfg = TrainConfig(steps=steps, batch_size=16, seq_len=30, max_context=20, lr=3e-3, warmup=10,
                      checkpoint_every=kwargs.pop("checkpoint_every", 50), border_datasets=100)
    return train_pfn(PRIOR, path, cfg, TINY, progress=False, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[PFN, object]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("pfn") / "tiny.safetensors"
    return _train(path, 150), path


def test_trained_pfn_beats_the_prior_predictive(trained):
    pfn, _ = trained
    g = torch.Generator().manual_seed(123)
    x, y = PRIOR.sample(100, 20, generator=g)
    diffs = []
    for xb, yb in zip(x, y):
        lp = pfn.predict(xb[:12], yb[:12], xb[12:]).log_prob(yb[12:])
        assert lp.shape == (8,)
        prior_lp = torch.from_numpy(stats.norm(0, math.sqrt(PRIOR.outputscale + PRIOR.noise)).logpdf(yb[12:].numpy()))
        diffs.append(float((prior_lp - lp).mean()))  # NLL(pfn) - NLL(prior predictive)
    d = torch.tensor(diffs)
    mcse = float(d.std() / math.sqrt(len(d)))
    assert float(d.mean()) < -4 * mcse, (float(d.mean()), mcse)


def test_save_load_roundtrip_and_prior_info(trained, tmp_path):
    pfn, _ = trained
    path = tmp_path / "exported.safetensors"
    pfn.save(path)
    again = PFN.load(path)
    x = torch.rand(5, 1)
    y = torch.randn(5)
    torch.testing.assert_close(again.predict(x, y, x).log_prob(y), pfn.predict(x, y, x).log_prob(y))
    info = again.prior_info
    assert info["kernel"] == "rbf" and info["lengthscale"] == 0.3 and info["outputscale"] == 1.0
    assert info["noise"] == 0.01 and info["input_dim"] == 1 and info["input_range"] == [0.0, 1.0]
    assert info["max_context"] == 20
    assert again.training_info["steps"] == 150
    empty = again.predict(torch.zeros(0, 1), torch.zeros(0), x).log_prob(y)  # no context: the prior predictive
    assert empty.shape == (5,) and bool(torch.isfinite(empty).all())


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _train(tmp_path / "a.safetensors", 6, checkpoint_every=3)
    first = tmp_path / "b.safetensors"
    cfg = TrainConfig(steps=6, batch_size=16, seq_len=30, max_context=20, lr=3e-3, warmup=10,
                      checkpoint_every=3, border_datasets=100)
    # an interrupted run: stop after the step-3 checkpoint by training only 3 steps of the same schedule
    _interrupt_after(first, cfg, 3)
    resumed = train_pfn(PRIOR, first, cfg, TINY, resume=True, progress=False)
    for (name, a), (_, b) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.training_info["steps"] == 6


def _interrupt_after(path, cfg: TrainConfig, steps: int) -> None:
    """Run ``cfg`` but raise out of the loop after ``steps`` steps (the checkpoint stays on disk)."""
    calls = {"n": 0}
    original = PRIOR.sample

    def sample(*args, **kwargs):
        if calls["n"] == steps + 1:  # +1: the border sample
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    PRIOR.sample = sample
    try:
        with pytest.raises(KeyboardInterrupt):
            train_pfn(PRIOR, path, cfg, TINY, progress=False)
    finally:
        del PRIOR.sample


def test_schedule_and_context_weights():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, seq_len=30, max_context=20)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(55, cfg) == pytest.approx(0.5) and learning_rate(100, cfg) == pytest.approx(0.0)
    w = context_weights(cfg)
    assert w.shape == (21,) and float(w.sum()) == pytest.approx(1.0)
    assert float(w[20] / w[0]) == pytest.approx(30 / 10)
    uniform = context_weights(TrainConfig(steps=100, seq_len=30, max_context=20, context_power=0.0))
    torch.testing.assert_close(uniform, torch.full((21,), 1 / 21, dtype=torch.float64))


def test_fine_tuning_starts_from_the_checkpoint_weights(trained, tmp_path):
    pfn, path = trained
    cfg = TrainConfig(steps=2, batch_size=4, seq_len=30, max_context=20, lr=0.0, warmup=1, seed=5)
    # a zero learning rate leaves the copied weights and borders untouched
    tuned = train_pfn(PRIOR, tmp_path / "ft.safetensors", cfg, TINY, init_from=path, progress=False)
    for (name, a), (_, b) in zip(pfn.net.state_dict().items(), tuned.net.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(tuned.borders, pfn.borders) and tuned.training_info["init_from"] == str(path)
    assert PFN.load(tmp_path / "ft.safetensors").training_info["steps"] == 2
    other = GPSimulator(lengthscale=0.5, outputscale=1.0, noise=0.01)
    with pytest.raises(ValueError, match="init_from: the checkpoint's prior"):
        train_pfn(other, tmp_path / "bad.safetensors", cfg, TINY, init_from=path, progress=False)


def test_classification_variant_trains_and_predicts(tmp_path):
    sim = ClassificationSimulator(PRIOR, num_classes=2)
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=30, max_context=20, warmup=1, border_datasets=10)
    model = PFNConfig(max_input_dim=1, num_outputs=2, d_model=16, num_heads=2, num_layers=1, d_ff=32)
    pfn = train_pfn(sim, tmp_path / "c.safetensors", cfg, model, progress=False)
    x = torch.rand(6, 1)
    pred = PFN.load(tmp_path / "c.safetensors").predict(x, torch.tensor([0.0, 1, 1, 0, 1, 0]), x[:4])
    assert pred.task == "classification" and pred.log_prob(torch.tensor([0, 1, 1, 0])).shape == (4,)
    assert pfn.prior_info["num_classes"] == 2


def test_bad_input_is_refused_clearly(trained, tmp_path):
    pfn, path = trained
    x, y = torch.rand(5, 1), torch.randn(5)
    with pytest.raises(ValueError, match="x_train: this PFN supports contexts of at most 20 points"):
        pfn.predict(torch.rand(21, 1), torch.randn(21), x)
    with pytest.raises(ValueError, match="x_train: this PFN takes inputs of 1..1 dimensions, got 2"):
        pfn.predict(torch.rand(5, 2), y, torch.rand(3, 2))
    with pytest.raises(ValueError, match="x_test: this PFN takes inputs of 1..1 dimensions, got 2"):
        pfn.predict(x, y, torch.rand(3, 2))
    bad = x.clone()
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match="x_train"):
        pfn.predict(bad, y, x)
    with pytest.raises(ValueError, match="y_train"):
        pfn.predict(x, torch.tensor([0.0, 1, float("nan"), 0, 0]), x)
    with pytest.raises(ValueError, match="y_train: targets must lie near the prior's range"):
        pfn.predict(x, y * 1000, x)
    with pytest.raises(ValueError, match="x_test: inputs must lie in the prior's input_range"):
        pfn.predict(x, y, x + 3)
    with pytest.raises(ValueError, match="y_train"):
        pfn.predict(x, torch.randn(4), x)
    # test targets far outside the borders: the half-normal tails give a finite, very low log density
    lp = pfn.predict(x, y, x).log_prob(torch.full((5,), 1e3))
    assert bool(torch.isfinite(lp).all()) and float(lp.max()) < -1e4


def test_foreign_and_unknown_checkpoints_are_refused(trained, tmp_path):
    _, path = trained
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a uqkit file"):
        PFN.load(junk)
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"w": torch.zeros(2)}, kind="uqkit-posterior")
    with pytest.raises(ValueError, match="is not a uqkit-pfn file"):
        PFN.load(other)
    with pytest.raises(ValueError, match="name: expected one of"):
        PFN.pretrained("bert")
    with pytest.raises(ValueError, match="resume: the checkpoint's training config"):
        _train(path, 151, resume=True)


def test_cli_train_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.safetensors"
    args = ["pfn", "train", "--prior", "gp", "--steps", "2", "--out", str(out), "--seq-len", "20", "--max-context",
            "10", "--d-model", "16", "--layers", "1", "--buckets", "20", "--batch-size", "2", "--warmup", "1"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert PFN.load(out).training_info["steps"] == 2
    tuned = tmp_path / "tuned.safetensors"
    result = runner.invoke(main, [*args[:7], str(tuned), *args[8:], "--init-from", str(out), "--context-power", "0"])
    assert result.exit_code == 0, result.output
    assert PFN.load(tuned).training_info["init_from"] == str(out)
    assert torch.equal(PFN.load(tuned).borders, PFN.load(out).borders)
    bad = runner.invoke(main, ["pfn", "train", "--prior", "nope", "--steps", "2", "--out", str(out)])
    assert bad.exit_code == 2 and "error: prior: expected one of" in bad.output
    foreign = tmp_path / "f.safetensors"
    foreign.write_bytes(b"junk")
    bad = runner.invoke(main, [*args[:7], str(foreign), *args[8:], "--resume"])
    assert bad.exit_code == 2 and "error: path:" in bad.output


@pytest.mark.parametrize("name", ["gp", "gp-hyper"])
def test_pretrained_checkpoints_load_with_their_prior_info(name):
    from uqkit.inference.pfn.pfn import CHECKPOINT_DIR

    if not (CHECKPOINT_DIR / f"{name}.safetensors").is_file():
        pytest.skip(f"the {name} checkpoint is not shipped in this checkout")
    pfn = PFN.pretrained(name)
    info = pfn.prior_info
    assert info["kernel"] == "rbf" and info["input_range"] == [0.0, 1.0] and info["max_context"] >= 100
    if name == "gp":
        assert info["input_dim"] == 1 and {"lengthscale", "outputscale", "noise"} <= set(info)
    else:
        assert info["input_dim"] == [1, 5] and set(info["hyperpriors"]) == {"lengthscale", "outputscale", "noise"}
    assert pfn.training_info["steps"] > 0 and "uqkit pfn train" in pfn.training_info["command"]
    # it has learnt something: on fresh data from a GP with lengthscale 0.3 it beats the marginal N(0, 1.01)
    g = torch.Generator().manual_seed(99)
    x, y = PRIOR.sample(40, 40, generator=g)
    d = torch.tensor([float((-pfn.predict(xb[:30], yb[:30], xb[30:]).log_prob(yb[30:])
                             + torch.from_numpy(stats.norm(0, math.sqrt(1.01)).logpdf(yb[30:].numpy()))).mean())
                      for xb, yb in zip(x, y)])
    assert float(d.mean()) < -4 * float(d.std()) / math.sqrt(len(d))
