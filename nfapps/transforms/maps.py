"""Element-wise monotone maps y = τ(x; θ) parameterised by a conditioner's output θ.

Couplings and autoregressive layers differ only in how θ is computed; the element-wise map
is shared. Each map takes ``params`` with a trailing axis of size ``num_params`` and returns
the output and the element-wise log|dτ/dx| (same shape as x).
"""

from __future__ import annotations

import math

from torch import Tensor


def soft_clamp(u: Tensor, bound: float) -> Tensor:
    """Smoothly bound u to (−bound, bound): bound·(2/π)·atan(u/bound); ≈ u near 0."""
    return (2.0 * bound / math.pi) * (u / bound).atan()


class ElementwiseMap:
    """Interface of an element-wise bijection with ``num_params`` parameters per element."""

    num_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class AffineMap(ElementwiseMap):
    """y = x·exp(s) + t with s = soft_clamp(θ₁, bound), t = θ₀; log|dy/dx| = s.

    Bounding the log-scale keeps exp(±s) ≤ e^bound, so inverting far outside the training
    range stays accurate (no overflow, no 1e17 round-trip errors).
    """

    num_params = 2

    def __init__(self, bound: float = 2.0) -> None:
        self.bound = float(bound)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = params[..., 0], soft_clamp(params[..., 1], self.bound)
        return x * log_scale.exp() + shift, log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = params[..., 0], soft_clamp(params[..., 1], self.bound)
        return (y - shift) * (-log_scale).exp(), -log_scale
