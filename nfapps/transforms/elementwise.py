"""Element-wise transforms: fixed affine maps, logit/sigmoid, and learnable per-feature maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nets import MLP
from .base import Inverse, Transform, sum_except_batch
from .maps import ElementwiseMap


class Affine(Transform):
    """z = scale ⊙ x + shift with fixed shift and (non-zero) scale; log|det| = Σ log|scale|.

    Example: ``Affine(shift=-2.5, scale=0.5)`` with a N(0, 1) base is exactly N(5, 2).
    """

    def __init__(self, shift: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype())
        if (scale == 0).any():
            raise ValueError("an affine transform needs a non-zero scale to be invertible")
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.get_default_dtype()))
        self.register_buffer("scale", scale)

    def _ladj(self, x: Tensor) -> Tensor:
        return sum_except_batch(self.scale.abs().log().expand_as(x))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, self._ladj(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (z - self.shift) / self.scale, -self._ladj(z)


class Logit(Transform):
    """z = logit(m + (1 − 2m)·x) for x ∈ [0, 1]; the margin m keeps z finite at x = 0 or 1.

    log|dz/dx| = log(1 − 2m) − log u − log(1 − u), u = m + (1 − 2m)x. Its inverse is the
    sigmoid (see :func:`Sigmoid`).
    """

    def __init__(self, margin: float = 1e-6) -> None:
        super().__init__()
        if not 0 <= margin < 0.5:
            raise ValueError(f"logit margin must be in [0, 0.5), got {margin}")
        self.margin = float(margin)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = self.margin + (1 - 2 * self.margin) * x
        z = u.log() - (-u).log1p()
        ladj = math.log1p(-2 * self.margin) - u.log() - (-u).log1p()
        return z, sum_except_batch(ladj)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = torch.sigmoid(z)
        x = (u - self.margin) / (1 - 2 * self.margin)
        # log u + log(1 − u) = −softplus(−z) − softplus(z), stable for any z.
        ladj = -F.softplus(-z) - F.softplus(z) - math.log1p(-2 * self.margin)
        return x, sum_except_batch(ladj)


def Sigmoid(margin: float = 1e-6) -> Transform:
    """z = (σ(x) − m)/(1 − 2m): the inverse of :class:`Logit`, mapping ℝ onto [0, 1]."""
    return Inverse(Logit(margin))


class Elementwise(Transform):
    """z_i = τ(x_i; θ_i) with a learnable θ per feature, or θ = MLP(c) with a context.

    With a spline τ this is a separable, per-dimension adaptive map; with
    ``PiecewiseLinearMap(K)`` it is exactly a VEGAS-like grid, a learnable K-bin histogram per
    dimension of [0, 1]^d; with an affine τ it is a learnable diagonal scale and shift.
    """

    def __init__(self, features: int, elementwise: ElementwiseMap, context: int = 0, hidden=(64,)) -> None:
        super().__init__()
        self.features = features
        self.elementwise = elementwise
        if context:
            self.conditioner: nn.Module | None = MLP(context, features * elementwise.num_params, hidden)
            self.params = None
        else:
            self.conditioner = None
            self.params = nn.Parameter(torch.zeros(features, elementwise.num_params))

    def _theta(self, x: Tensor, context: Tensor | None) -> Tensor:
        if self.conditioner is None:
            return self.params.expand(x.shape[0], -1, -1)
        return self.conditioner(context).view(x.shape[0], self.features, self.elementwise.num_params)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.elementwise.forward(x, self._theta(x, context))
        return z, ladj.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self.elementwise.inverse(z, self._theta(z, context))
        return x, ladj.sum(dim=1)
