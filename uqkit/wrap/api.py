"""`wrap`: give a frozen model uncertainty with one of the registered methods."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from uqkit.wrap import bayescap, laplace, mahalanobis, temperature  # noqa: F401  (register the methods)
from uqkit.wrap.base import WRAPPERS, FrozenWrapper, freeze


def wrap(model: nn.Module, method: str, **options: Any) -> FrozenWrapper:
    """Wrap a frozen ``model`` with an uncertainty ``method``; call ``.fit(x, y)`` (or ``.fit(loader)``) next.

    The model is put in eval mode with gradients off and is never modified. Calling the wrapper
    returns ``.output`` (the model's own output, unchanged) and ``.predictive`` (a `Predictive`);
    ``.ood_score(x)`` gives one score per sample (higher = more OOD).

    Args:
        model: the trained model (an ``nn.Module``).
        method: "bayescap" (regression and image-to-image outputs), "temperature", "laplace"
            (last layer) or "mahalanobis" (classifiers).
        **options: the method's options (see `BayesCap`, `TemperatureWrapper`, `LastLayerLaplace`,
            `MahalanobisWrapper`).
    """
    freeze(model)
    if not isinstance(method, str) or method not in WRAPPERS:
        raise ValueError(f"method: expected one of {', '.join(repr(m) for m in sorted(WRAPPERS))}, got {method!r}")
    cls = WRAPPERS[method]
    known = list(inspect.signature(cls.__init__).parameters)[2:]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"options: method {method!r} takes no option {', '.join(map(repr, unknown))}; its options: {', '.join(known)}"
        )
    return cls(model, **options)
