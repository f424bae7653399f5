"""SGHMC step time: uqkit vs a bare torch SGD step vs the `posteriors` library's SGHMC, side by side.

Model: MLP 784-200-200-10 (ReLU, float32), categorical likelihood, batch 128 of random data,
N = 60,000 (MNIST-sized). Each timed step is forward + backward + update. Two reference lines:
``torch_sgd_plus_randn`` (an SGD step, then one ``torch.randn`` per weight with a ``torch.Generator``)
is the floor of any SG-MCMC step built on torch's CPU generator, whose Gaussian draw alone costs
about 0.3 SGD steps; ``uqkit_log_joint_and_grad`` is the gradient part of the SGHMC step alone
(forward, backward and the prior's value and gradient). The contestants are interleaved step by
step so that machine load affects them alike; the figures are median wall and median process-CPU
time per step (CPU time is the robust one on a shared, overloaded machine; run with ``--threads 1``
there so that CPU time is not inflated by spinning worker threads).

    python benchmarks/bench_sgmcmc.py [--steps 200] [--rounds 5] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from _common import context_str
from torch.func import functional_call

import uqkit.inference.sghmc  # noqa: F401  (registers the engine)
from uqkit.inference.base import log_joint_and_grad
from uqkit.models.likelihoods import Categorical
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec
from uqkit.registry import get_engine

NUM_DATA, BATCH, NUM_BATCHES = 60_000, 128, 16


def _batches(generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(BATCH, 784, generator=generator), torch.randint(0, 10, (BATCH,), generator=generator))
            for _ in range(NUM_BATCHES)]


def sgd_stepper(batches):
    torch.manual_seed(0)
    model = MLP(784, [200, 200], 10, activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(i: int) -> None:
        x, y = batches[i % NUM_BATCHES]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def randn_stepper():
    """Reference floor: only the Gaussian noise an SG-MCMC step must draw (one per weight)."""
    num_weights = sum(p.numel() for p in MLP(784, [200, 200], 10).parameters())
    generator = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        torch.randn(num_weights, generator=generator)

    return step


def noisy_sgd_stepper(batches):
    """The floor for any SG-MCMC step on torch's CPU generator: a bare SGD step plus the noise draw."""
    sgd, noise = sgd_stepper(batches), randn_stepper()

    def step(i: int) -> None:
        sgd(i)
        noise(i)

    return step


def _uqkit_spec() -> ModelSpec:
    torch.manual_seed(0)
    return ModelSpec(MLP(784, [200, 200], 10, activation="relu"), IsotropicGaussian(1.0), Categorical(), NUM_DATA)


def uqkit_stepper(batches, *, warmup: bool):
    spec = _uqkit_spec()
    engine = get_engine("sghmc", step_size=0.01, mdecay=0.05, gibbs_every=0)
    generator = torch.Generator().manual_seed(0)
    box = [engine.init(spec, spec.param_template(), generator=generator)]

    def step(i: int) -> None:
        box[0], _ = engine.step(spec, box[0], batches[i % NUM_BATCHES], generator=generator, warmup=warmup)

    return step


def uqkit_gradient_stepper(batches):
    """Part of the SGHMC step: the minibatch log joint and its gradient (prior included) alone."""
    spec = _uqkit_spec()
    params = spec.param_template()

    def step(i: int) -> None:
        log_joint_and_grad("sghmc", spec, spec.prior, params, batches[i % NUM_BATCHES], i)

    return step


def posteriors_stepper(batches, *, inplace: bool):
    import posteriors

    torch.manual_seed(0)
    model = MLP(784, [200, 200], 10, activation="relu")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def log_posterior(p, batch):
        x, y = batch
        logits = functional_call(model, p, (x,))
        log_lik = -F.cross_entropy(logits, y, reduction="sum") * (NUM_DATA / x.shape[0])
        log_prior = sum(-0.5 * v.square().sum() for v in p.values())
        return log_lik + log_prior, logits

    transform = posteriors.sgmcmc.sghmc.build(log_posterior, lr=1e-6, alpha=0.05)
    box = [transform.init(params)]

    def step(i: int) -> None:
        box[0], _ = transform.update(box[0], batches[i % NUM_BATCHES], inplace=inplace)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per contestant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    batches = _batches(torch.Generator().manual_seed(0))
    steppers = {"torch_sgd": sgd_stepper(batches), "torch_randn_only": randn_stepper(),
                "torch_sgd_plus_randn": noisy_sgd_stepper(batches),
                "uqkit_log_joint_and_grad": uqkit_gradient_stepper(batches),
                "uqkit_sghmc": uqkit_stepper(batches, warmup=False),
                "uqkit_sghmc_burnin": uqkit_stepper(batches, warmup=True)}
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            steppers["posteriors_sghmc"] = posteriors_stepper(batches, inplace=False)
            steppers["posteriors_sghmc_inplace"] = posteriors_stepper(batches, inplace=True)
    except ImportError:
        print("posteriors is not installed: pip install -c constraints.txt posteriors")
    wall: dict[str, list[float]] = {k: [] for k in steppers}
    cpu: dict[str, list[float]] = {k: [] for k in steppers}
    for name, step in steppers.items():  # warm-up, untimed
        for i in range(20):
            step(i)
    for _ in range(args.rounds):
        for i in range(args.steps):  # interleaved step by step, so load drifts hit every contestant alike
            for name, step in steppers.items():
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                step(i)
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start_wall)
    results = {}
    for label, times in (("wall", wall), ("cpu", cpu)):
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        ratios = {"sghmc_over_sgd": ms["uqkit_sghmc"] / ms["torch_sgd"],
                  "noise_floor_over_sgd": ms["torch_sgd_plus_randn"] / ms["torch_sgd"]}
        if "posteriors_sghmc" in ms:
            ratios["sghmc_over_posteriors"] = ms["uqkit_sghmc"] / min(ms["posteriors_sghmc"], ms["posteriors_sghmc_inplace"])
        results[label] = {"median_step_ms": ms, "ratios": ratios}
    if args.json:
        print(json.dumps({**results, "threads": torch.get_num_threads(), "loadavg": os.getloadavg()}))
        return
    for label, res in results.items():
        ms = res["median_step_ms"]
        print(f"-- median {label} time per step --")
        for name, value in ms.items():
            print(f"{name:>26}: {value:7.3f} ms  ({value / ms['torch_sgd']:.2f}x torch SGD)  {context_str()}")
        print(f"uqkit SGHMC / torch SGD       = {res['ratios']['sghmc_over_sgd']:.2f}  (goal <= 1.2)  {context_str()}")
        floor = res["ratios"]["noise_floor_over_sgd"]
        print(f"(SGD + noise draw) / torch SGD = {floor:.2f}  (the floor)  {context_str()}")
        if "sghmc_over_posteriors" in res["ratios"]:
            print(f"uqkit SGHMC / posteriors best = {res['ratios']['sghmc_over_posteriors']:.2f}  (goal <= 1.0)  {context_str()}")


if __name__ == "__main__":
    main()
