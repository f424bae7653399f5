"""Tutorial: the same script on a laptop and on a Ray cluster.

    python tutorials/scale_out.py                          # everything in this process
    python tutorials/scale_out.py --backend ray            # a Ray started on this machine
    python tutorials/scale_out.py --backend ray --address HEAD:6379   # an existing Ray cluster

Independent pieces of work (ensemble members, SG-MCMC chains, benchmark splits) go to Ray through
one argument; nothing else in the code changes. The line that changes is

    post = fit(spec, data, engine="ensemble", num_members=8, ..., backend=BACKEND, address=ADDRESS)

and the draws do not depend on where they ran: member m and chain c take their random streams
from ``(seed, m)`` / ``(seed, c)``, so both backends give the same posterior (this script checks
it when run with ``--backend ray --check``). On a cluster, every node needs uqkit installed, and
Ray re-runs a task whose worker died; with ``checkpoint=`` a restarted run keeps finished chains.

Needs ``pip install 'uqkit[ray]'`` for ``--backend ray``. Runs in about a minute on two CPU cores
(most of it Ray's start-up when ``--backend ray``).
"""

from __future__ import annotations

import argparse
import time

import torch

from uqkit import evaluate
from uqkit.data import load_sklearn
from uqkit.inference.fit import fit
from uqkit.models import MLP, Gaussian, HeteroscedasticGaussian, IsotropicGaussian, ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=("local", "ray"))
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start Ray here)")
    parser.add_argument("--check", action="store_true", help="also run locally and compare the draws")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)

    data = load_sklearn("diabetes", test_fraction=0.25, seed=0)
    n, d = data.x_train.shape
    ensemble_spec = ModelSpec(MLP(d, [50], 2, "relu"), IsotropicGaussian(1.0), HeteroscedasticGaussian(), n)
    bnn_spec = ModelSpec(MLP(d, [50], 1), IsotropicGaussian(1.0), Gaussian(0.7, learn_noise=True), n)

    runs = {
        "ensemble": lambda backend: fit(ensemble_spec, (data.x_train, data.y_train), engine="ensemble",
                                        num_members=8, num_epochs=100, batch_size=32, lr=3e-3, seed=0,
                                        vectorize=False, progress=False, backend=backend, address=args.address),
        "sghmc": lambda backend: fit(bnn_spec, (data.x_train, data.y_train), engine="sghmc", num_chains=4,
                                     num_warmup=1000, num_samples=40, thinning=25, batch_size=32,
                                     step_size=1e-2, seed=0, progress=False, backend=backend,
                                     address=args.address),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        post = run(args.backend)
        seconds = time.perf_counter() - start
        report = evaluate(post.predict(data.x_test), data.y_test, title=f"{name} on diabetes ({args.backend})")
        print(f"{name} [{args.backend}]: {seconds:.1f} s, test NLL {report.metrics['nll']:.3f}, "
              f"RMSE {report.metrics['rmse']:.3f} (standardised units)")
        if args.check and args.backend != "local":
            local = run("local")
            same = all(torch.equal(local.draws[k], post.draws[k]) for k in post.draws)
            print(f"  same draws as backend='local': {same}")


if __name__ == "__main__":
    main()
