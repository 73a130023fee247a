"""Masked autoregressive transforms (Papamakarios et al. 2017, MAF; Durkan et al. 2019, NSF-AR).

z_i = τ(x_i; θ_i(x_{<i}, c)) in a given feature order, with θ from a MADE network, so the
density direction x → z takes one pass and log|det ∂z/∂x| = Σ_i log|τ'(x_i)| (triangular
Jacobian). The inverse is sequential: D passes, the i-th fixing the i-th feature in the order.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..nets import MADE
from .base import Transform
from .maps import ElementwiseMap


class MaskedAutoregressive(Transform):
    """z_i = τ(x_i; θ_i(x_{<i}, c)) for the autoregressive ``order`` (default 0, 1, …, D−1)."""

    def __init__(
        self,
        features: int,
        elementwise: ElementwiseMap,
        context: int = 0,
        hidden: Sequence[int] = (128, 128),
        order: Sequence[int] | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.features = features
        self.elementwise = elementwise
        self.made = MADE(features, elementwise.num_params, context, hidden, order, activation)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.elementwise.forward(x, self.made(x, context))
        return z, ladj.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z.new_zeros(z.shape)
        for _ in range(self.features):
            x, ladj = self.elementwise.inverse(z, self.made(x, context))
        return x, ladj.sum(dim=1)
