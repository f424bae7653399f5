"""`uqkit.parallel.run_tasks`: same results on both backends, retries after a killed worker, resume, errors."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from uqkit.parallel import run_tasks


def noisy_square(task: int, report, *, num_steps: int = 4) -> dict[str, Tensor]:
    """A seeded task: its result depends on ``task`` only."""
    generator = torch.Generator().manual_seed(1000 + task)
    total = torch.zeros(())
    for _ in range(num_steps):
        total = total + torch.randn((), generator=generator)
        report(1)
    return {"value": torch.tensor(float(task)) ** 2 + total}


def dies_once(task: int, report, *, marker_dir: str) -> dict[str, Tensor]:
    """Kill this worker process the first time task 1 runs (a crashed node), then succeed."""
    marker = Path(marker_dir) / f"started-{task}"
    if task == 1 and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    (Path(marker_dir) / f"finished-{task}").touch()
    return noisy_square(task, report)


def counts_runs(task: int, report, *, marker_dir: str) -> dict[str, Tensor]:
    """Record every run of a task, failing on task 2 when asked to (an interrupted run)."""
    with open(Path(marker_dir) / f"runs-{task}", "a") as log:
        log.write("run\n")
    if task == 2 and (Path(marker_dir) / "fail").exists():
        raise RuntimeError("interrupted")
    return noisy_square(task, report)


def test_local_results_in_task_order():
    results = run_tasks(noisy_square, [3, 1, 2], progress=False)
    again = run_tasks(noisy_square, [2], progress=False)
    assert [r["value"].item() for r in results][2] == again[0]["value"].item()
    assert len(results) == 3


def test_checkpoint_dir_reruns_only_unfinished_tasks(tmp_path):
    fn = functools.partial(counts_runs, marker_dir=str(tmp_path))
    (tmp_path / "fail").touch()
    with pytest.raises(RuntimeError, match="interrupted"):
        run_tasks(fn, [0, 1, 2, 3], checkpoint_dir=tmp_path / "ckpt", progress=False)
    (tmp_path / "fail").unlink()
    resumed = run_tasks(fn, [0, 1, 2, 3], checkpoint_dir=tmp_path / "ckpt", progress=False)
    uninterrupted = run_tasks(noisy_square, [0, 1, 2, 3], progress=False)
    assert all(torch.equal(a["value"], b["value"]) for a, b in zip(resumed, uninterrupted))
    runs = {t: (tmp_path / f"runs-{t}").read_text().count("run") for t in range(3)}
    assert runs == {0: 1, 1: 1, 2: 2}  # tasks 0 and 1 finished before the interruption: not recomputed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "dask"}, "backend: expected one of local, ray"),
    ({"backend": "ray", "address": "127.0.0.1:1"}, "address: no Ray cluster reachable"),
    ({"backend": "ray", "address": "nonsense"}, "address: expected 'host:port'"),
])
def test_bad_backend_options(kwargs, message):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=message):
        run_tasks(noisy_square, [0], progress=False, **kwargs)


def test_no_tasks_is_an_error():
    with pytest.raises(ValueError, match="tasks: expected at least one task"):
        run_tasks(noisy_square, [], progress=False)


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'uqkit\[ray\]'"):
        run_tasks(noisy_square, [0], backend="ray", progress=False)


def test_unserialisable_function_is_named():
    pytest.importorskip("ray")
    lock = __import__("threading").Lock()

    def uses_lock(task, report):
        with lock:
            return {"x": torch.zeros(())}

    with pytest.raises(ValueError, match="fn: cannot be sent to Ray workers"):
        run_tasks(uses_lock, [0], backend="ray", progress=False)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    yield ray
    ray.shutdown()


def test_ray_equals_local_and_survives_a_killed_worker(local_ray, tmp_path):
    local = run_tasks(noisy_square, [0, 1, 2, 3], total_steps=16, progress=False)
    on_ray = run_tasks(noisy_square, [0, 1, 2, 3], backend="ray", total_steps=16, progress=False)
    assert all(torch.equal(a["value"], b["value"]) for a, b in zip(local, on_ray))
    fn = functools.partial(dies_once, marker_dir=str(tmp_path))
    survived = run_tasks(fn, [0, 1, 2, 3], backend="ray", progress=False)
    assert (tmp_path / "started-1").exists()  # the worker really was killed once
    assert all(torch.equal(a["value"], b["value"]) for a, b in zip(local, survived))


class KillsItsWorkerOnce(torch.nn.Module):
    """An MLP whose first forward pass in a Ray worker (not the driver) kills that worker."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.marker, self.driver_pid = marker, os.getpid()

    def forward(self, x: Tensor) -> Tensor:
        if os.getpid() != self.driver_pid and not Path(self.marker).exists():
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.body(x)


def test_ensemble_on_ray_equals_local_after_a_killed_worker(local_ray, tmp_path):
    from uqkit.inference.ensemble import fit_ensemble
    from uqkit.models import Gaussian, IsotropicGaussian, ModelSpec

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=generator)
    y = x.sum(-1) + 0.1 * torch.randn(64, generator=generator)
    spec = ModelSpec(KillsItsWorkerOnce(str(tmp_path / "killed")), IsotropicGaussian(1.0), Gaussian(0.1), 64)
    options = {"num_members": 3, "num_epochs": 2, "batch_size": 16, "seed": 5, "progress": False}
    local = fit_ensemble(spec, (x, y), vectorize=False, **options)
    vectorised = fit_ensemble(spec, (x, y), **options)
    on_ray = fit_ensemble(spec, (x, y), backend="ray", **options)
    assert (tmp_path / "killed").exists()  # one worker died mid-fit and its member was retried
    for name, value in local.draws.items():
        assert torch.equal(on_ray.draws[name], value), name
        torch.testing.assert_close(vectorised.draws[name], value, rtol=0, atol=1e-12)


def test_sghmc_chains_on_ray_equal_local_and_resume(local_ray, tmp_path):
    from uqkit.inference.fit import fit
    from uqkit.models import MLP, Gaussian, IsotropicGaussian, ModelSpec

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, generator=generator)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40, generator=generator)
    spec = ModelSpec(MLP(1, [8], 1), IsotropicGaussian(1.0), Gaussian(0.1), 40)
    options = {"engine": "sghmc", "num_chains": 3, "num_warmup": 20, "num_samples": 5, "thinning": 2,
               "batch_size": 10, "seed": 3, "progress": False, "step_size": 1e-3}
    local = fit(spec, (x, y), **options)
    checkpoint = tmp_path / "run.safetensors"
    on_ray = fit(spec, (x, y), backend="ray", checkpoint=checkpoint, **options)
    assert on_ray.meta["backend"] == "ray"
    for name, value in local.draws.items():
        assert torch.equal(on_ray.draws[name], value), name
    assert torch.equal(on_ray.sample_stats["log_density"], local.sample_stats["log_density"])
    finished = sorted(p.name for p in (tmp_path / "run.safetensors.chains").iterdir())
    assert len(finished) == 3
    (tmp_path / "run.safetensors.chains" / finished[1]).unlink()  # as if the run died before chain 1 ended
    resumed = fit(spec, (x, y), backend="ray", checkpoint=checkpoint, **options)
    assert resumed.meta["resumed"]
    for name, value in local.draws.items():
        assert torch.equal(resumed.draws[name], value), name


def test_full_batch_engines_refuse_the_ray_backend():
    from uqkit.inference.fit import fit
    from uqkit.models import MLP, Gaussian, IsotropicGaussian, ModelSpec

    spec = ModelSpec(MLP(1, [4], 1), IsotropicGaussian(1.0), Gaussian(0.1), 8)
    with pytest.raises(ValueError, match="backend: 'ray' runs minibatch-engine chains"):
        fit(spec, (torch.zeros(8, 1), torch.zeros(8)), engine="nuts", backend="ray", progress=False)
