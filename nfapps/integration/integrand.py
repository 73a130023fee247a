"""Turn a user's function into a checked, batched integrand on the unit hypercube.

A user integrates f over a box Π[aᵢ, bᵢ]; the sampler works on u ∈ [0, 1]^d with
x = a + (b − a) ⊙ u, so ∫ f(x) dx = V·∫ f(a + (b − a)u) du with V = Π(bᵢ − aᵢ).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class IntegrandError(ValueError):
    """The integrand raised, returned the wrong shape, or returned a non-finite value."""


class UnitCubeIntegrand:
    """g(u) = V·f(a + (b − a)u) on [0, 1]^d, evaluated in float64, with its output checked.

    ``f`` takes points of shape (n, d) — a torch tensor, or a NumPy array when ``backend`` is
    "numpy" ("auto" tries torch first and falls back to NumPy if f raises or returns an array).
    """

    def __init__(self, f: Callable, dim: int, bounds: Sequence[Sequence[float]] | None = None, backend: str = "auto") -> None:
        if not callable(f):
            raise ValueError(f"the integrand must be callable, got {type(f).__name__}")
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if backend not in ("auto", "torch", "numpy"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
        self.f, self.dim, self.backend = f, int(dim), backend
        if bounds is None:
            bounds = [(0.0, 1.0)] * self.dim
        bounds = np.asarray(bounds, dtype=np.float64)
        if bounds.shape != (self.dim, 2):
            raise ValueError(f"bounds must be {self.dim} pairs (low, high), one per dimension; got shape {bounds.shape}")
        if not np.isfinite(bounds).all() or not (bounds[:, 1] > bounds[:, 0]).all():
            bad = int(np.argmax(~(np.isfinite(bounds).all(1) & (bounds[:, 1] > bounds[:, 0]))))
            raise ValueError(f"bounds of dimension {bad} are {bounds[bad].tolist()}: need finite low < high")
        self.low = torch.as_tensor(bounds[:, 0])
        self.width = torch.as_tensor(bounds[:, 1] - bounds[:, 0])
        self.volume = float(np.prod(bounds[:, 1] - bounds[:, 0]))

    def to_box(self, u: Tensor) -> Tensor:
        u = u.to(torch.float64)
        return self.low.to(u.device) + self.width.to(u.device) * u

    def _call(self, x: Tensor):
        if self.backend == "numpy":
            return self.f(x.cpu().numpy())
        try:
            value = self.f(x)
        except Exception:
            if self.backend == "torch":
                raise
            return self.f(x.cpu().numpy())
        return value

    def __call__(self, u: Tensor) -> Tensor:
        """V·f(x(u)) as float64 of shape (n,), on u's device."""
        x = self.to_box(u)
        try:
            value = self._call(x)
        except Exception as err:
            raise IntegrandError(f"the integrand raised {type(err).__name__}: {err} (on a batch of shape {tuple(x.shape)})") from err
        value = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).to(device=u.device, dtype=torch.float64)
        if value.shape != (x.shape[0],):
            value = value.reshape(-1) if value.numel() == x.shape[0] else value
            if value.shape != (x.shape[0],):
                raise IntegrandError(
                    f"the integrand returned shape {tuple(value.shape)} for {x.shape[0]} points; "
                    "it must return one value per point, shape (n,)"
                )
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise IntegrandError(f"the integrand returned {float(value[i])} at x = {x[i].tolist()}; it must be finite everywhere in the box")
        return value * self.volume


def load_callable(spec: str) -> Callable:
    """``module:function`` or ``path/to/file.py:function`` → the function."""
    if ":" not in spec:
        raise ValueError(f"integrand {spec!r} must look like module:function or path/to/file.py:function")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"integrand file {where} does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            raise ValueError(f"could not import {where}: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"could not import module {where!r}: {err}") from err
    try:
        fn = getattr(module, name)
    except AttributeError:
        raise ValueError(f"{where} has no function {name!r}") from None
    if not callable(fn):
        raise ValueError(f"{spec} is not callable")
    return fn


__all__ = ["UnitCubeIntegrand", "IntegrandError", "load_callable"]
