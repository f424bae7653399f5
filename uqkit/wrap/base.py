"""The frozen-model wrapper: its forward returns the frozen output unchanged plus a `Predictive`.

Every method (`BayesCap`, `TemperatureWrapper`, `LastLayerLaplace`, `MahalanobisWrapper`)
subclasses `FrozenWrapper`, which owns what they share: guarding the frozen model (eval mode, no
gradients, never modified), running it batch by batch with an optional forward hook on one layer,
the fit data handling (tensors or a loader of ``(x, y)`` batches), and save/load to safetensors.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from uqkit._checks import as_tensor, check_float, check_positive, check_same_length
from uqkit._io import load_tensors, save_tensors
from uqkit.calibration.predictive import Predictive

#: Every wrapper class, by method name; filled by subclassing `FrozenWrapper`.
WRAPPERS: dict[str, type[FrozenWrapper]] = {}

_FILE_KIND = "uqkit.wrap/1"
_MAX_LISTED_LAYERS = 40


@dataclass(frozen=True)
class WrappedOutput:
    """What a wrapped model returns.

    Attributes:
        output: the frozen model's output, the very tensor it returned (bit-identical).
        predictive: the uncertainty the method adds, as a `Predictive`.
    """

    output: Tensor
    predictive: Predictive


@dataclass(frozen=True)
class FrozenBatch:
    """The frozen model run over fitting data: ``output [N, ...]``, ``target [N, ...]`` or None, hooked ``features``."""

    output: Tensor
    target: Tensor | None
    features: Tensor | None


def state_dict_hash(model: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor in ``model.state_dict()``."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        if isinstance(value, Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(value.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def freeze(model: object) -> nn.Module:
    """Put ``model`` in eval mode with gradients off; a `TypeError` unless it is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    return model.eval().requires_grad_(False)


def find_layer(model: nn.Module, name: str, arg: str) -> nn.Module:
    """The submodule called ``name``; a `ValueError` naming ``arg`` and listing the names otherwise."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or name not in modules:
        names = [n for n in modules if n]
        shown = ", ".join(repr(n) for n in names[:_MAX_LISTED_LAYERS])
        more = f" and {len(names) - _MAX_LISTED_LAYERS} more" if len(names) > _MAX_LISTED_LAYERS else ""
        raise ValueError(f"{arg}: the model has no layer named {name!r}; available layers: {shown or 'none'}{more}")
    return modules[name]


def last_linear_name(model: nn.Module, arg: str) -> str:
    """Name of the last ``nn.Linear`` in ``model.named_modules()`` order."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{arg}: the model has no nn.Linear layer; pass {arg}=NAME of the layer to use")
    return names[-1]


class LayerTap:
    """Records a layer's input (``take="input"``) or output during forward passes inside a ``with`` block.

    Args:
        layer: the hooked submodule.
        take: record its "input" (first positional argument) or its "output".
        name: the layer's name, for messages.
        gives_output: the layer's output must be the model's output (checked by `features`).
    """

    def __init__(self, layer: nn.Module, take: Literal["input", "output"], *, name: str, gives_output: bool = False) -> None:
        self.layer, self.take, self.name, self.gives_output = layer, take, name, gives_output
        self.input: Tensor | None = None
        self.output: Tensor | None = None

    def __enter__(self) -> LayerTap:
        self._handle = self.layer.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.input = inputs[0] if inputs else None
        self.output = output

    def features(self, model_output: Tensor) -> Tensor:
        """The recorded tensor, after checking the hook fired (and, if asked, produced ``model_output``)."""
        value = self.input if self.take == "input" else self.output
        if not isinstance(value, Tensor):
            raise ValueError(
                f"layer: expected layer {self.name!r} to run and its {self.take} to be a tensor, got {type(value).__name__}"
            )
        if self.gives_output and not (isinstance(self.output, Tensor) and torch.equal(self.output, model_output)):
            raise ValueError(
                f"model: expected its output to be the output of its last layer {self.name!r} (the logits), "
                "but they differ; pass last_layer=NAME of the nn.Linear that produces the output"
            )
        return value


class FrozenWrapper(nn.Module):
    """Base of every wrapper: a frozen model plus what a method fits on top of it.

    Subclasses pass ``method=`` when subclassing, take their options as keyword arguments stored
    under the same names (saved with the fitted state), and implement `fit`, `_predictive`,
    `_fitted_tensors` and `_restore`; they may override `_ood_score` and `_tap`.
    """

    method: ClassVar[str]

    def __init_subclass__(cls, *, method: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.method = method
        WRAPPERS[method] = cls

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = freeze(model)
        self.fitted_ = False

    # ----------------------------------------------------------------------------- public API
    def fit(self, data: object, y: object = None) -> FrozenWrapper:
        """Fit what the method needs on ``(data, y)`` tensors or a loader of ``(x, y)`` batches; returns self."""
        raise NotImplementedError

    def forward(self, x: Any) -> WrappedOutput:
        """The frozen model's output on ``x`` (unchanged) and the method's `Predictive`."""
        self._require_fitted()
        with torch.no_grad():
            output, features = self._run(x)
            return WrappedOutput(output, self._predictive(output, features))

    def ood_score(self, x: Any) -> Tensor:
        """``[N]`` out-of-distribution scores, higher = more likely out of distribution."""
        self._require_fitted()
        with torch.no_grad():
            output, features = self._run(x)
            return self._ood_score(output, features)

    def train(self, mode: bool = True) -> FrozenWrapper:
        """Set the method's own layers' mode; the frozen model always stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def options(self) -> dict[str, Any]:
        """The options the wrapper was built with, by name."""
        names = list(inspect.signature(type(self).__init__).parameters)[2:]  # skip self, model
        return {name: getattr(self, name) for name in names}

    def save(self, path: str | Path) -> None:
        """Write the fitted state and options (not the frozen model) to a safetensors file, atomically."""
        self._require_fitted()
        meta = {"method": self.method, "options": json.dumps(self.options()), "model_hash": state_dict_hash(self.model)}
        save_tensors(path, self._fitted_tensors(), kind=_FILE_KIND, meta=meta)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module) -> FrozenWrapper:
        """Rebuild a wrapper saved by `save` around the same frozen ``model``.

        Refuses files that are not uqkit wrapper files, files of another method (when called on a
        subclass) and files fitted to a model whose state dict differs.
        """
        tensors, meta = load_tensors(path, kind=_FILE_KIND)
        method = meta.get("method", "")
        if method not in WRAPPERS or (cls is not FrozenWrapper and method != cls.method):
            want = "a uqkit wrapper" if cls is FrozenWrapper else f"a {cls.method!r} wrapper"
            raise ValueError(f"path: {path} holds method {method!r}, expected {want}")
        wrapper = WRAPPERS[method](model, **json.loads(meta["options"]))
        if meta.get("model_hash") != state_dict_hash(wrapper.model):
            raise ValueError(f"path: {path} was fitted to a different model (its state-dict hash differs)")
        wrapper._restore(tensors)
        wrapper.fitted_ = True
        return wrapper

    # ----------------------------------------------------------------------- for subclasses
    def _tap(self) -> LayerTap | None:
        """The layer whose input or output `_run` records as features; None for none."""
        return None

    def _predictive(self, output: Tensor, features: Tensor | None) -> Predictive:
        raise NotImplementedError

    def _ood_score(self, output: Tensor, features: Tensor | None) -> Tensor:
        return self._predictive(output, features).entropy()

    def _fitted_tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _restore(self, tensors: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def _run(self, x: Any) -> tuple[Tensor, Tensor | None]:
        """One frozen forward pass: the output, checked finite, and the tapped features (if any)."""
        if isinstance(x, Tensor) and x.is_floating_point():
            check_float(x, "x")
        tap = self._tap()
        if tap is None:
            output = self.model(x)
        else:
            with tap:
                output = self.model(x)
        if not isinstance(output, Tensor):
            raise TypeError(f"model: expected the frozen model to return a tensor, got {type(output).__name__}")
        if output.is_floating_point() and not bool(torch.isfinite(output).all()):
            bad = int((~torch.isfinite(output)).sum())
            raise ValueError(f"model: the frozen model's output has {bad} NaN or inf values on this input")
        return output, None if tap is None else tap.features(output)

    def _collect(
        self,
        data: object,
        y: object,
        *,
        batch_size: int,
        need_target: bool,
        fraction: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> FrozenBatch:
        """Run the frozen model over the fitting data (a random ``fraction`` of it) and concatenate.

        With tensors, ``fraction`` keeps that share of the rows; with a loader, that share of its
        batches (chosen before any forward pass, so the rest are never run through the model).
        """
        outputs, targets, features = [], [], []
        with torch.no_grad():
            for xb, yb in _batches(data, y, batch_size=batch_size, fraction=fraction, generator=generator):
                if need_target and yb is None:
                    raise ValueError(f"y: the {self.method!r} method needs targets: fit(x, y) or a loader of (x, y) batches")
                output, feats = self._run(xb)
                if yb is not None:
                    yb = as_tensor(yb, "y")
                    check_same_length("output", output, "y", yb)
                    targets.append(yb)
                outputs.append(output)
                if feats is not None:
                    features.append(feats)
        if not outputs:
            raise ValueError("data: expected at least one batch of fitting data, got none")
        if targets and len(targets) != len(outputs):
            raise ValueError("y: expected targets in every batch or in none")
        return FrozenBatch(
            output=torch.cat(outputs),
            target=torch.cat(targets) if targets else None,
            features=torch.cat(features) if features else None,
        )

    def _require_fitted(self) -> None:
        if not self.fitted_:
            raise ValueError(f"{type(self).__name__}: call fit(...) (or load a fitted file) before using the wrapper")


def check_count(value: object, name: str, *, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_fraction(value: float, name: str, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    """A number in (0, 1] (optionally [0, ...] and/or [..., 1))."""
    v = check_positive(value, name, allow_zero=allow_zero)
    if v > 1 or (v == 1 and not allow_one):
        lo, hi = "[0" if allow_zero else "(0", "1]" if allow_one else "1)"
        raise ValueError(f"{name}: expected a fraction in {lo}, {hi}, got {value!r}")
    return v


def _batches(
    data: object, y: object, *, batch_size: int, fraction: float, generator: torch.Generator | None
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(x, y)`` batches from tensors (rows shuffled then cut) or from an iterable of batches."""
    if isinstance(data, (Tensor, np.ndarray)):
        x = as_tensor(data, "data")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"data: expected an array with one row per sample (at least one), got shape {tuple(x.shape)}")
        if x.is_floating_point():
            check_float(x, "data")
        target = None
        if y is not None:
            target = as_tensor(y, "y")
            check_same_length("data", x, "y", target)
        rows = torch.arange(x.shape[0])
        if fraction < 1:
            keep = max(1, math.ceil(fraction * x.shape[0]))
            rows = torch.randperm(x.shape[0], generator=generator)[:keep].sort().values
        for idx in rows.split(batch_size):
            yield x[idx], None if target is None else target[idx]
        return
    if not hasattr(data, "__iter__"):
        raise TypeError(
            f"data: expected a tensor, a numpy array or an iterable of (x, y) batches, got {type(data).__name__}"
        )
    if y is not None:
        raise ValueError("y: pass targets inside the loader's (x, y) batches, not separately")
    keep = None
    if fraction < 1:
        if not hasattr(data, "__len__"):
            raise ValueError("data: a loader without len() can only be used with a fraction of 1")
        num_batches = len(data)  # type: ignore[arg-type]
        chosen = torch.randperm(num_batches, generator=generator)[: max(1, math.ceil(fraction * num_batches))]
        keep = set(chosen.tolist())
    for i, batch in enumerate(data):  # type: ignore[union-attr]
        if keep is not None and i not in keep:
            continue
        if isinstance(batch, (tuple, list)):
            if len(batch) not in (1, 2):
                raise ValueError(f"data: expected batches (x,) or (x, y), got a batch of {len(batch)} items")
            yield batch[0], batch[1] if len(batch) == 2 else None
        else:
            yield batch, None
