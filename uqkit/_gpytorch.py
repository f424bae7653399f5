"""gpytorch, imported once without the DeprecationWarning its dependency linear_operator raises at import."""

from __future__ import annotations

import warnings
from types import ModuleType


def import_gpytorch() -> ModuleType:
    """The ``gpytorch`` module; linear_operator's import-time ``torch.jit.script`` deprecation is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import gpytorch
    return gpytorch
