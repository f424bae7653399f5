"""Ray backend overhead and strong scaling: 8 ensemble members and 8 SGHMC chains.

    python benchmarks/bench_scale.py [--epochs 60] [--steps 4000] [--json]

For each job the same work runs three ways in one process: locally one task after another, on a
local Ray with 1 worker CPU, and on a local Ray with 2 worker CPUs. Each Ray job runs twice: first
on cold workers (a worker process starts and imports torch and uqkit), then on the warm workers a
long-lived cluster keeps. The overhead of the backend is ``(ray_1 - local) / local`` (task start-up,
serialisation, result transfer; Ray's own start-up is timed separately, once per session); strong
scaling is ``ray_1 / ray_2`` (warm). The 64-worker projection
assumes the tasks are independent and of equal length (as members and chains are):
``T(W) = ceil(tasks / W) * t_task + tasks * o_task / W + o_start``, with ``t_task`` the local time
per task, ``o_task`` the measured Ray overhead per task and ``o_start`` the job's constant overhead,
so it is an upper bound on speed-up that ignores cluster scheduling and network transfer beyond
what this machine shows.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
from _common import context, context_str

from uqkit.inference.ensemble import fit_ensemble
from uqkit.inference.fit import fit
from uqkit.models import MLP, Gaussian, HeteroscedasticGaussian, IsotropicGaussian, ModelSpec
from uqkit.parallel import connect_ray

NUM_TASKS = 8


def make_data(n: int = 2000, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    y = torch.sin(x[:, 0]) + x[:, 1:].sum(-1) * 0.1 + 0.1 * torch.randn(n, generator=generator)
    return x, y


def ensemble_job(epochs: int) -> Callable[[str], object]:
    x, y = make_data()
    spec = ModelSpec(MLP(x.shape[1], [50, 50], 2, "relu"), IsotropicGaussian(1.0), HeteroscedasticGaussian(), x.shape[0])
    return lambda backend: fit_ensemble(spec, (x, y), num_members=NUM_TASKS, num_epochs=epochs, batch_size=100,
                                        vectorize=False, backend=backend, progress=False)


def chains_job(steps: int) -> Callable[[str], object]:
    x, y = make_data()
    spec = ModelSpec(MLP(x.shape[1], [50], 1), IsotropicGaussian(1.0), Gaussian(0.1), x.shape[0])
    return lambda backend: fit(spec, (x, y), engine="sghmc", num_chains=NUM_TASKS, num_warmup=steps // 2,
                               num_samples=steps // 20, thinning=10, batch_size=32, step_size=1e-3,
                               backend=backend, progress=False)


def timed(job: Callable[[str], object], backend: str) -> float:
    start = time.perf_counter()
    job(backend)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60, help="epochs per ensemble member")
    parser.add_argument("--steps", type=int, default=4000, help="SGHMC steps per chain")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = {"ensemble (8 members)": ensemble_job(args.epochs), "SGHMC (8 chains)": chains_job(args.steps)}
    local = {name: timed(job, "local") for name, job in jobs.items()}
    ray_times: dict[int, dict[str, float]] = {}
    cold_times: dict[int, dict[str, float]] = {}
    startup: dict[int, float] = {}
    for cpus in (1, 2):
        start = time.perf_counter()
        ray = connect_ray(num_cpus=cpus)
        startup[cpus] = time.perf_counter() - start
        cold = {name: timed(job, "ray") for name, job in jobs.items()}  # workers start and import uqkit
        ray_times[cpus] = {name: timed(job, "ray") for name, job in jobs.items()}  # the same jobs on warm workers
        cold_times[cpus] = cold
        ray.shutdown()
    for name in jobs:
        t_local, t1, t2 = local[name], ray_times[1][name], ray_times[2][name]
        overhead = (t1 - t_local) / t_local
        per_task = t_local / NUM_TASKS
        o_task = max(t1 - t_local, 0.0) / NUM_TASKS
        projected_64 = math.ceil(NUM_TASKS * 8 / 64) * per_task + NUM_TASKS * 8 * o_task / 64
        cold_overhead = (cold_times[1][name] - t_local) / t_local
        row = {"job": name, "local_s": t_local, "ray_1cpu_s": t1, "ray_2cpu_s": t2, "overhead": overhead,
               "ray_1cpu_cold_s": cold_times[1][name], "overhead_cold": cold_overhead,
               "speedup_2": t1 / t2, "ray_startup_s": startup[1],
               "projected_64_workers_for_64_tasks_s": projected_64,
               "projected_speedup_64": NUM_TASKS * 8 * per_task / projected_64, **context()}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name}: local {t_local:.1f} s, Ray 1 CPU {t1:.1f} s warm (overhead {100 * overhead:+.1f}%; "
                  f"first run with cold workers {cold_times[1][name]:.1f} s, {100 * cold_overhead:+.1f}%), "
                  f"Ray 2 CPUs {t2:.1f} s (speed-up {t1 / t2:.2f}x); Ray start-up {startup[1]:.1f} s; "
                  f"projected 64 tasks on 64 workers {projected_64:.1f} s = {row['projected_speedup_64']:.1f}x "
                  f"[{context_str()}]")


if __name__ == "__main__":
    main()
