"""Safe loading (issue 11, part 3): every loader refuses a crafted pickle without running it, and
refuses uqkit files of the wrong kind with a clear message.

The payload's ``__reduce__`` calls ``open(marker, "w")``: if any loader unpickled it, the marker
file would exist. Each loader gets a raw pickle, a ``torch.save`` archive and a ``.npz`` with a
pickled object array, all holding the payload, and a valid safetensors file of another uqkit kind.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import uqkit
from uqkit._io import save_tensors
from uqkit.cli import main as cli_main
from uqkit.inference.ensemble import load_ensemble
from uqkit.inference.mc_dropout import load_mc_dropout
from uqkit.inference.posterior import Posterior
from uqkit.models.likelihoods import Gaussian
from uqkit.models.nets import MLP
from uqkit.models.priors import IsotropicGaussian
from uqkit.models.spec import ModelSpec
from uqkit.wrap import FrozenWrapper


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def spec() -> ModelSpec:
    torch.manual_seed(0)  # module initialisation only
    return ModelSpec(MLP(2, [3], 1).double(), IsotropicGaussian(1.0), Gaussian(noise_std=0.5), num_data=8)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(8, 2)
    return x, x.sum(-1, keepdim=True)


class Loader(NamedTuple):
    name: str
    kind_hint: str  # what the refusal message names
    load: Callable[[Path], object]


def _optional_loaders() -> list[Loader]:
    """Loaders of engines that may not exist yet (PFN, matched priors, variational posteriors)."""
    out = []
    try:
        from uqkit.inference.pfn import PFN

        out.append(Loader("PFN.load", "path", PFN.load))
    except ImportError:
        pass
    try:
        from uqkit.models.wasserstein import MatchResult

        out.append(Loader("MatchResult.load (fitted prior)", "path", MatchResult.load))
    except ImportError:
        pass
    try:
        from uqkit.inference.mfvi import load_variational

        out.append(Loader("load_variational", "path", lambda p: load_variational(p, spec())))
    except ImportError:
        pass
    return out


LOADERS = [
    Loader("Posterior.load", "path", Posterior.load),
    Loader("FrozenWrapper.load", "path", lambda p: FrozenWrapper.load(p, nn.Linear(4, 3).double())),
    Loader("load_ensemble", "path", lambda p: load_ensemble(p, spec())),
    Loader("load_mc_dropout", "path", lambda p: load_mc_dropout(p, spec())),
    Loader("fit checkpoint", "checkpoint", lambda p: uqkit.fit(spec(), data(), engine="sgld", num_samples=2,
                                                                 num_warmup=1, checkpoint=p, progress=False)),
    Loader("sample checkpoint", "checkpoint", lambda p: uqkit.sample(lambda z: -(z**2).sum(-1), torch.zeros(2),
                                                                       num_chains=2, num_warmup=2, num_samples=2,
                                                                       checkpoint=p, progress=False)),
    *_optional_loaders(),
]


def _evil_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {"raw pickle": tmp_path / "evil.pkl", "torch.save": tmp_path / "evil.pt", "npz": tmp_path / "evil.npz"}
    files["raw pickle"].write_bytes(pickle.dumps({"draws": Payload(marker)}))
    torch.save({"draws": Payload(marker)}, files["torch.save"])
    np.savez(files["npz"], draws=np.array([Payload(marker)], dtype=object))
    return files


@pytest.mark.parametrize("loader", LOADERS, ids=[ld.name for ld in LOADERS])
def test_crafted_pickles_are_refused_unexecuted(tmp_path, loader: Loader) -> None:
    marker = tmp_path / "pwned"
    for what, path in _evil_files(tmp_path, marker).items():
        with pytest.raises(ValueError, match=f"^{loader.kind_hint}: .*not a"):
            loader.load(path)
        assert not marker.exists(), f"{loader.name} ran the payload of a {what} file"


@pytest.mark.parametrize("loader", LOADERS, ids=[ld.name for ld in LOADERS])
def test_files_of_another_kind_are_refused(tmp_path, loader: Loader) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_tensors(foreign, {"x": torch.zeros(2)}, kind="someone.elses-kind/1")
    with pytest.raises(ValueError, match=f"^{loader.kind_hint}: .*not a .* file \\(found kind 'someone.elses-kind/1'\\)"):
        loader.load(foreign)
    missing = tmp_path / "absent.safetensors"
    if loader.kind_hint == "path":  # a missing checkpoint means "start a new run"
        with pytest.raises(ValueError, match="^path: no such file"):
            loader.load(missing)


def test_cli_prediction_files_are_refused_unexecuted(tmp_path) -> None:
    marker = tmp_path / "pwned"
    files = _evil_files(tmp_path, marker)
    good = tmp_path / "good.npz"
    np.savez(good, logits=np.zeros((4, 2)), labels=np.array([0, 1, 0, 1]))
    runner = CliRunner()
    for what, path in files.items():
        for args in (["report", str(path), "--out", str(tmp_path / "o")],
                     ["report", str(good), "--out", str(tmp_path / "o"), "--recalibrate", "temperature",
                      "--validation", str(path)]):
            result = runner.invoke(cli_main, args)
            assert result.exit_code == 2, (what, result.output)
            assert "not a readable .npz file of numeric arrays" in result.output and "Traceback" not in result.output
            assert not marker.exists(), f"the CLI ran the payload of a {what} file"


def test_save_is_atomic_and_synced(tmp_path, monkeypatch) -> None:
    """`save_tensors` fsyncs the temporary file before renaming it over the target, and a failed write
    leaves the previous file intact and no temporary behind."""
    import os

    import uqkit._io as io_mod

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(io_mod.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(io_mod.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    target = tmp_path / "post.safetensors"
    Posterior(draws=torch.zeros(1, 2, 3)).save(target)
    assert calls[:2] == ["fsync", "replace"]

    def failing_replace(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(io_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        Posterior(draws=torch.ones(1, 2, 3)).save(target)
    assert torch.equal(Posterior.load(target).draws, torch.zeros(1, 2, 3))
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_saved_files_get_the_umask_permissions_of_a_plain_open(tmp_path) -> None:
    """mkstemp's owner-only 0600 must not leak onto saved files (shipped checkpoints must be readable)."""
    import os
    import stat

    old = os.umask(0o027)
    try:
        target = tmp_path / "post.safetensors"
        Posterior(draws=torch.zeros(1, 2, 3)).save(target)
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o640
