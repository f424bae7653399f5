"""`PFN`: a trained prior-data fitted network; one forward pass gives the posterior predictive.

``PFN.pretrained("gp")`` / ``PFN.pretrained("gp-hyper")`` load the checkpoints shipped in
``uqkit/inference/pfn/checkpoints`` (how each was trained is recorded in its ``training_info`` and in
``checkpoints/README.md``); `PFN.load` / `PFN.save` read and write safetensors files tagged
``uqkit-pfn`` (other files are refused, nothing is unpickled).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from uqkit._checks import as_tensor, check_float, check_same_length
from uqkit._io import load_tensors, save_tensors
from uqkit.calibration.predictive import Predictive
from uqkit.inference.pfn.bar import BarDistribution
from uqkit.inference.pfn.model import PFNConfig, PFNTransformer

KIND = "uqkit-pfn"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
PRETRAINED = ("gp", "gp-hyper")
#: Targets may exceed the outermost bucket borders by this fraction of their span (tails extrapolate).
Y_MARGIN = 0.5
#: Inputs may exceed ``input_range`` by this fraction of its width.
X_MARGIN = 0.25
_QUERY_CHUNK = 2048


class PFN:
    """A trained PFN transformer plus its bucket borders and the prior it was trained on.

    Args:
        net: the trained `PFNTransformer` (float32).
        borders: ``[K + 1]`` bar-distribution borders (regression) or None (classification).
        prior_info: the prior's description (`uqkit.models.pfn_priors`) plus ``max_context``.
    """

    def __init__(self, net: PFNTransformer, borders: Tensor | None, prior_info: dict[str, Any]) -> None:
        self.net = net.float().eval()
        self.borders = None if borders is None else borders.to(torch.float64)
        self.prior_info = dict(prior_info)
        self.training_info: dict[str, Any] = {}

    @property
    def task(self) -> str:
        return "regression" if self.borders is not None else "classification"

    @property
    def input_dims(self) -> tuple[int, int]:
        d = self.prior_info["input_dim"]
        return (d, d) if isinstance(d, int) else (int(d[0]), int(d[1]))

    def predict(self, x_train: object, y_train: object, x_test: object) -> Predictive:
        """Posterior predictive at ``x_test`` given the context ``(x_train, y_train)``, in one forward pass.

        Args:
            x_train: ``[n, d]`` context inputs inside the prior's ``input_range`` (``n`` may be 0).
            y_train: ``[n]`` context targets (the prior's units; within the bucket borders' range
                widened by half its span on each side).
            x_test: ``[m, d]`` query inputs.

        Returns:
            A `Predictive` (one draw): a `BarDistribution` per query for regression, class logits for
            classification; ``log_prob(y_test)`` is ``[m]``.
        """
        xtr, ytr, xte = self._check_inputs(x_train, y_train, x_test)
        with torch.no_grad():
            logits = torch.cat([self.net(xtr[None], ytr[None], chunk[None])[0]
                                for chunk in xte.split(_QUERY_CHUNK)]).to(torch.float64)
        if self.borders is None:
            return Predictive.from_logits(logits)
        return Predictive.from_distribution(BarDistribution(logits.unsqueeze(0), self.borders))

    def _check_inputs(self, x_train: object, y_train: object, x_test: object) -> tuple[Tensor, Tensor, Tensor]:
        xtr = _as_matrix(x_train, "x_train")
        xte = check_float(x_test, "x_test", ndim=2)
        ytr = _as_vector(y_train, "y_train")
        check_same_length("x_train", xtr, "y_train", ytr)
        lo, hi = self.input_dims
        for name, x in (("x_train", xtr), ("x_test", xte)):
            if not lo <= x.shape[1] <= hi:
                raise ValueError(f"{name}: this PFN takes inputs of {lo}..{hi} dimensions, got {x.shape[1]}")
        if xtr.shape[0] and xtr.shape[1] != xte.shape[1]:
            raise ValueError(f"x_test: expected {xtr.shape[1]} columns like x_train, got {xte.shape[1]}")
        max_context = int(self.prior_info["max_context"])
        if xtr.shape[0] > max_context:
            raise ValueError(f"x_train: this PFN supports contexts of at most {max_context} points, got {xtr.shape[0]}")
        a, b = self.prior_info["input_range"]
        slack = X_MARGIN * (b - a)
        for name, x in (("x_train", xtr), ("x_test", xte)):
            if x.numel() and (float(x.min()) < a - slack or float(x.max()) > b + slack):
                raise ValueError(f"{name}: inputs must lie in the prior's input_range [{a}, {b}] "
                                 f"(rescale them); found [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        if self.borders is not None and ytr.numel():
            b0, bk = float(self.borders[0]), float(self.borders[-1])
            slack = Y_MARGIN * (bk - b0)
            if float(ytr.min()) < b0 - slack or float(ytr.max()) > bk + slack:
                raise ValueError(f"y_train: targets must lie near the prior's range [{b0:.3g}, {bk:.3g}] "
                                 f"(standardise them); found [{float(ytr.min()):.3g}, {float(ytr.max()):.3g}]")
        return xtr.float(), ytr.float(), xte.float()

    # --------------------------------------------------------------------------------- files
    @classmethod
    def pretrained(cls, name: str) -> PFN:
        """A shipped checkpoint: ``"gp"`` (RBF GP, fixed hyperparameters, 1-D) or ``"gp-hyper"``."""
        if name not in PRETRAINED:
            raise ValueError(f"name: expected one of {list(PRETRAINED)}, got {name!r}")
        return cls.load(CHECKPOINT_DIR / f"{name}.safetensors")

    @classmethod
    def load(cls, path: str | Path) -> PFN:
        """Read a checkpoint written by `save` or by training; refuses files that are not PFN checkpoints."""
        tensors, meta = load_tensors(path, kind=KIND)
        try:
            config = PFNConfig(**json.loads(meta["config"]))
            prior_info = json.loads(meta["prior_info"])
            net = PFNTransformer(config)
            net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        except (KeyError, TypeError, RuntimeError, json.JSONDecodeError) as err:
            raise ValueError(f"path: {path} is not a valid PFN checkpoint ({err})") from None
        pfn = cls(net, tensors.get("borders"), prior_info)
        pfn.training_info = json.loads(meta.get("training", "{}"))
        return pfn

    def save(self, path: str | Path) -> None:
        """Write the weights, borders and metadata (no optimiser state) to ``path`` as safetensors."""
        write_checkpoint(path, self.net, self.borders, self.prior_info, self.net.config, training=self.training_info)


def write_checkpoint(path: str | Path, net: PFNTransformer, borders: Tensor | None, prior_info: dict[str, Any],
                     config: PFNConfig, *, training: dict[str, Any], extra_tensors: dict[str, Tensor] | None = None,
                     extra_meta: dict[str, str] | None = None) -> None:
    """Write a ``uqkit-pfn`` safetensors file (``model.*`` weights, ``borders``, JSON metadata)."""
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    if borders is not None:
        tensors["borders"] = borders
    tensors.update(extra_tensors or {})
    meta = {"config": json.dumps(config.to_dict()), "prior_info": json.dumps(prior_info),
            "training": json.dumps(training), **(extra_meta or {})}
    save_tensors(path, tensors, kind=KIND, meta=meta)


def _as_matrix(x: object, name: str) -> Tensor:
    """``[n, d]`` finite floats; an empty context may be given as ``[0, d]``."""
    t = as_tensor(x, name)
    if t.ndim == 2 and t.shape[0] == 0:
        return t.to(torch.float64)
    return check_float(x, name, ndim=2)


def _as_vector(y: object, name: str) -> Tensor:
    t = as_tensor(y, name)
    if t.ndim == 1 and t.shape[0] == 0:
        return t.to(torch.float64)
    return check_float(y, name, ndim=1)
