"""Engine registry: ``@register_engine("name")`` on a config dataclass, ``get_engine("name", **options)``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")

ENGINES: dict[str, type] = {}


def register_engine(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator that makes an engine available to `uqkit.fit` and `get_engine` under ``name``."""

    def deco(cls: type[T]) -> type[T]:
        if name in ENGINES and ENGINES[name] is not cls:
            raise ValueError(f"engine name {name!r} is already registered by {ENGINES[name].__name__}")
        ENGINES[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def get_engine(name: str, **options: Any) -> Any:
    """Build the engine registered under ``name`` with its hyperparameters."""
    import uqkit.inference  # noqa: F401  (registers the built-in engines)

    if name not in ENGINES:
        raise ValueError(f"engine: unknown engine {name!r}; known engines: {', '.join(sorted(ENGINES)) or 'none'}")
    check_engine_options(name, options)
    try:
        return ENGINES[name](**options)
    except TypeError as err:
        raise TypeError(f"engine {name!r}: {err}") from None


def check_engine_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse options that the registered engine ``name`` does not take (engines that are dataclasses)."""
    if name in ENGINES and is_dataclass(ENGINES[name]):
        check_options(name, [f.name for f in fields(ENGINES[name]) if f.init], options)


def check_options(owner: str, known: Iterable[str], options: Mapping[str, Any]) -> None:
    """Refuse options that ``owner`` (an engine or trainer) does not take, naming them and listing its options."""
    known = list(known)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"engine_options: {owner!r} takes no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(known)}")
