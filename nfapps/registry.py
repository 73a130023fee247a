"""Registry of flow builders, so a saved flow records how to rebuild itself.

A builder is a function ``(**kwargs) -> Flow``. Decorating it with :func:`register_builder`
stores ``{"builder": name, "kwargs": kwargs}`` on every flow it returns; :func:`nfapps.load`
looks the name up here and calls the builder again before loading the weights.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

BUILDERS: dict[str, Callable[..., Any]] = {}


def register_builder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name``; the flows it returns remember their build arguments."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def build(*args: Any, **kwargs: Any):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()  # record defaults too: a later default change cannot alter a saved flow
            arguments: dict[str, Any] = {}
            for key, value in bound.arguments.items():
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                else:
                    arguments[key] = value
            flow = fn(*args, **kwargs)
            flow.config = {"builder": name, "kwargs": _plain(arguments)}
            return flow

        if name in BUILDERS and BUILDERS[name].__wrapped__ is not fn:  # type: ignore[attr-defined]
            raise ValueError(f"a flow builder named {name!r} is already registered")
        BUILDERS[name] = build
        return build

    return decorate


def _plain(value: Any) -> Any:
    """Keep build arguments to plain, safely loadable types (tuples become lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str):
        return value
    # numpy scalars become the built-in bool / int / float they stand for
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"builder argument {value!r} of type {type(value).__name__} cannot be saved; "
        "use plain numbers, strings, lists or dicts"
    )
