"""Input checks that turn bad data into one clear ``ValueError`` instead of a deep shape error."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def as_tensor(x, name: str, like: Tensor) -> Tensor:
    """Convert arrays/lists to a tensor with the dtype and device of ``like``."""
    if isinstance(x, Tensor):
        if not (x.is_floating_point() and x.dtype == like.dtype and x.device == like.device):
            x = x.to(device=like.device, dtype=like.dtype)
        return x
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=like.dtype, device=like.device)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or numeric array, got {type(x).__name__}: {err}") from None


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or ±inf, naming the first offending row."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        raise ValueError(
            f"{name} contains NaN or inf (first at row {row}: {x[row].flatten()[:8].tolist()}); "
            "remove or impute non-finite rows first"
        )


def check_batch(x, event_shape: tuple[int, ...], like: Tensor, name: str = "x") -> Tensor:
    """Check a batch of shape ``(batch, *event_shape)``: right shape, non-empty, finite."""
    x = as_tensor(x, name, like)
    expected = "(batch, " + ", ".join(map(str, event_shape)) + ")"
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape):
        what = f"{x.shape[-1]} features" if len(event_shape) == 1 and x.dim() == 2 else f"shape {tuple(x.shape)}"
        raise ValueError(f"{name} has {what}, but the flow expects shape {expected}; reshape or select the right columns")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); pass at least one sample")
    check_finite(x, name)
    return x


def check_context(context, batch: int, context_features: int, like: Tensor, name: str = "context") -> Tensor | None:
    """Check a context of shape ``(batch, context_features)`` for a flow that needs one (or none)."""
    if context_features == 0:
        if context is not None:
            raise ValueError(f"this flow is unconditional but a {name} was given; build it with context=<width> or drop the {name}")
        return None
    if context is None:
        raise ValueError(f"this flow is conditional: pass a {name} of shape (batch, {context_features})")
    context = as_tensor(context, name, like)
    if context.dim() == 1 and context_features == 1:
        context = context[:, None]
    if context.dim() != 2 or context.shape[1] != context_features:
        raise ValueError(
            f"{name} has shape {tuple(context.shape)}, but the flow expects (batch, {context_features})"
        )
    if batch >= 0 and context.shape[0] != batch:
        raise ValueError(f"{name} has {context.shape[0]} rows but the input has {batch}; give one context row per sample")
    check_finite(context, name)
    return context
