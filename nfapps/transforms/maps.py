"""Element-wise monotone maps y = τ(x; θ) parameterised by a conditioner's output θ.

Couplings and autoregressive layers differ only in how θ is computed; the element-wise map
is shared. Each map takes ``params`` with a trailing axis of size ``num_params`` and returns
the output and the element-wise log|dτ/dx| (same shape as x).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import splines


def soft_clamp(u: Tensor, bound: float) -> Tensor:
    """Smoothly bound u to (−bound, bound): bound·(2/π)·atan(u/bound); ≈ u near 0."""
    return (2.0 * bound / math.pi) * (u / bound).atan()


class ElementwiseMap:
    """Interface of an element-wise bijection with ``num_params`` parameters per element."""

    num_params: int
    #: The map runs faster with the batch along the fast axis: couplings then pass x as
    #: (features, batch) and θ as (features, batch, num_params) laid out (features, num_params,
    #: batch) — the same logical shapes, transposed. Results never depend on it.
    batch_fastest: bool = False

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
        return torch.addcmul(shift, x, log_scale.exp()), log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        # soft_clamp is odd, so −s comes straight from −θ₁ (no separate negations)
        shift, neg_log_scale = params[..., 0], soft_clamp(-params[..., 1], self.bound)
        return (y - shift) * neg_log_scale.exp(), neg_log_scale


class SplineMap(ElementwiseMap):
    """Monotone rational-quadratic spline with ``bins`` bins (see :mod:`nfapps.transforms.splines`).

    Args:
        bins: number of bins K.
        bound: the spline acts on [−B, B]; ignored when ``bounded``.
        tails: ``"linear"`` (learned boundary slopes continue the spline outside [−B, B]) or
            ``"identity"`` (slope 1 outside, as in Durkan et al.).
        bounded: map [0, 1] onto itself, with learned derivatives at both ends (no tails) —
            the variant for the unit hypercube.

    θ holds K width, K height and K+1 derivative parameters (K−1 for identity tails);
    θ = 0 gives the identity map.
    """

    batch_fastest = True  # softmax and knot search over θ's axis run vectorised over the batch

    def __init__(self, bins: int = 8, bound: float = 5.0, tails: str = "linear", bounded: bool = False) -> None:
        if bins < 1:
            raise ValueError(f"a spline needs at least one bin, got bins={bins}")
        if tails not in ("linear", "identity"):
            raise ValueError(f"tails must be 'linear' or 'identity', got {tails!r}")
        if not bound > 0:
            raise ValueError(f"bound must be positive, got {bound}")
        self.bins, self.bound, self.bounded = int(bins), float(bound), bool(bounded)
        self.identity_tails = tails == "identity" and not bounded
        self.num_params = 3 * self.bins + (-1 if self.identity_tails else 1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unnormalised widths, heights and the positive knot derivatives (…, K+1)."""
        k = self.bins
        derivatives = splines.derivatives_from(params[..., 2 * k :])
        if self.identity_tails:
            ones = derivatives.new_ones((*derivatives.shape[:-1], 1))
            derivatives = torch.cat([ones, derivatives, ones], dim=-1)
        return params[..., :k], params[..., k : 2 * k], derivatives

    def _transform(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        # Same map as splines.(unconstrained_)rational_quadratic(x, *self._split(params)), with θ
        # moved first: the softmax runs once over widths and heights together, off the last axis,
        # and only the two derivatives in use are made positive.
        k = self.bins
        theta = params.movedim(-1, 0)
        p = splines._softmax_first(theta[: 2 * k].unflatten(0, (2, k)))
        box = (0.0, 1.0) if self.bounded else (-self.bound, self.bound)
        edges = splines._edges(p, (box, box), splines.DEFAULT_MIN_BIN)
        derivatives = splines.gather_raw_derivatives(theta, 2 * k, k, self.identity_tails)
        return splines.spline(x, edges, derivatives, inverse, box, tails=not self.bounded)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(y, params, inverse=True)
