"""Kill and resume (issue 11, part 2): a `uqkit.fit` run in a subprocess is SIGKILLed at random points
(fixed seeds), resumed from its checkpoint until it finishes, and must give exactly the draws of an
uninterrupted run: none lost, none duplicated, bit for bit.

The kill points are drawn from a seeded generator as delays after the worker reports that it is
about to start sampling; a kill that lands after the run has finished does not count as a kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from uqkit.inference.posterior import Posterior

#: Long enough (a few seconds) for kills to land inside the run; checkpoints every few dozen steps.
RUNS = {
    "sghmc": {"num_chains": 2, "num_samples": 60, "num_warmup": 400, "thinning": 20, "batch_size": 8,
              "checkpoint_every": 37, "step_size": 0.01},
    "nuts": {"num_chains": 2, "num_samples": 40, "num_warmup": 40, "thinning": 1, "checkpoint_every": 7,
             "max_tree_depth": 6},
}
SCRIPT = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
          "from test_kill_resume import worker; worker(*sys.argv[1:])")


def fit_and_save(engine: str, checkpoint: str, out: str) -> None:
    """The run under test: a small BNN regression, ``engine`` with ``RUNS[engine]``, saved to ``out``."""
    import uqkit
    from uqkit.models.likelihoods import Gaussian
    from uqkit.models.nets import MLP
    from uqkit.models.priors import IsotropicGaussian
    from uqkit.models.spec import ModelSpec

    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, 24, dtype=torch.float64)[:, None]
    y = torch.sin(2 * x) + 0.1 * torch.randn(24, 1, generator=g, dtype=torch.float64)
    spec = ModelSpec(MLP(1, [6], 1).double(), IsotropicGaussian(1.0), Gaussian(noise_std=0.1), num_data=24)
    post = uqkit.fit(spec, (x, y), engine=engine, checkpoint=checkpoint or None, progress=False, seed=3, **RUNS[engine])
    post.save(out)


def worker(engine: str, checkpoint: str, out: str) -> None:
    """Subprocess entry point: one thread, float64, announce the start, run."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    print("ready", flush=True)
    fit_and_save(engine, checkpoint, out)


def _start(engine: str, checkpoint: str, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, engine, checkpoint, str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _run_with_kills(tmp_path: Path, engine: str, *, seed: int, max_delay: float, num_kills: int) -> tuple[Posterior, int]:
    """Run to the end, SIGKILLing the worker up to ``num_kills`` times; returns the posterior and the kills that landed."""
    checkpoint, out = tmp_path / f"{engine}.ckpt", tmp_path / f"{engine}-resumed.post"
    rng = np.random.default_rng(seed)
    landed = 0
    for _ in range(num_kills + 1):
        proc = _start(engine, str(checkpoint), out)
        if landed < num_kills:
            time.sleep(float(rng.uniform(0.0, max_delay)))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                if out.exists():  # the kill came after the run wrote its (atomic) result, while it was exiting
                    break
                landed += 1
                continue
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        break
    # A kill inside a checkpoint write leaves its temporary file behind (SIGKILL runs no cleanup; the
    # rename never happened, so the checkpoint is the previous complete one); the run's last checkpoint
    # write deleted such leftovers.
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    return Posterior.load(out), landed


def _reference(tmp_path: Path, engine: str) -> Posterior:
    """The uninterrupted run, in this process (same code, one thread, float64: the same arithmetic)."""
    out = tmp_path / f"{engine}-reference.post"
    fit_and_save(engine, "", str(out))
    return Posterior.load(out)


def _assert_identical(resumed: Posterior, reference: Posterior, engine: str) -> None:
    options = RUNS[engine]
    assert set(resumed.draws) == set(reference.draws)
    for name, ref in reference.draws.items():
        got = resumed.draws[name]
        assert got.shape == (options["num_chains"], options["num_samples"], *ref.shape[2:])
        differ = (got != ref).flatten(2).any(-1).nonzero().tolist()  # [chain, draw] pairs
        assert not differ, f"{engine}: draws of {name!r} differ after kill and resume at [chain, draw] {differ[:5]}"
    for name, ref in reference.sample_stats.items():
        assert torch.equal(resumed.sample_stats[name], ref), f"{engine}: sample_stats {name!r} differ"


def _check(tmp_path: Path, engine: str, *, seed: int, max_delay: float, num_kills: int) -> int:
    reference = _reference(tmp_path, engine)
    resumed, landed = _run_with_kills(tmp_path, engine, seed=seed, max_delay=max_delay, num_kills=num_kills)
    _assert_identical(resumed, reference, engine)
    print(f"\n{engine}: {landed} kills landed (seed {seed}), 0 draws lost or duplicated")
    return landed


def test_sghmc_survives_a_kill(tmp_path) -> None:
    _check(tmp_path, "sghmc", seed=0, max_delay=1.0, num_kills=1)  # whether or not the kill lands mid-run


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["sghmc", "nuts"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_repeated_kills(tmp_path, engine: str, seed: int) -> None:
    landed = _check(tmp_path, engine, seed=seed, max_delay=2.0, num_kills=4)
    assert landed >= 1, "no kill landed inside the run; lengthen the run or shorten the delays"


def test_loaded_tensors_are_aligned_like_fresh_ones(tmp_path) -> None:
    """Resumed state must sit at torch's 64-byte alignment: vectorised kernels round differently on
    tensors that view a file's bytes at varying offsets, which made a resumed run drift by an ulp."""
    from uqkit._io import load_tensors, save_tensors

    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.randn(5, 3), "b": torch.randn(7), "c": torch.randn(100, 6)}, kind="test")
    for _ in range(3):
        tensors, _ = load_tensors(path, kind="test")
        assert all(t.data_ptr() % 64 == 0 for t in tensors.values())


def test_next_write_removes_temp_files_left_by_killed_writes(tmp_path, monkeypatch) -> None:
    """A SIGKILL inside `save_tensors` leaves ``.<name>.XXXXXXXX.tmp``; the next successful write of the same
    file deletes exactly those (the names `tempfile.mkstemp` gives it), nothing else."""
    import uqkit._io as io

    path = tmp_path / "run.ckpt"
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda src, dst: (seen.append(Path(src).name), real_replace(src, dst)))
    io.save_tensors(path, {"a": torch.zeros(2)}, kind="test")  # the real temporary name, for the pattern
    monkeypatch.undo()
    left_behind = [".run.ckpt.k3_9xq0a.tmp", seen[0]]
    keep = [".run.ckpt.tmp", ".run.ckpt.abc.tmp", ".run.ckpt.ABCDEFGH.tmp", ".run.ckpt.x.abcd1234.tmp",  # other patterns
            ".other.ckpt.abcd1234.tmp", ".run.ckpt.abcd1234.tmp.bak", "run.ckpt.abcd1234.tmp"]  # other targets
    for name in left_behind + keep:
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / ".run.ckpt.dir12345.tmp").mkdir()  # not a file: left alone
    io.save_tensors(path, {"a": torch.ones(2)}, kind="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, ".run.ckpt.dir12345.tmp", "run.ckpt"])
    assert torch.equal(io.load_tensors(path, kind="test")[0]["a"], torch.ones(2))
