"""Piecewise-linear and piecewise-quadratic maps of [0, 1] onto itself (Müller et al. 2019,
"Neural Importance Sampling"), as pure functions and as element-wise maps.

Both maps are the CDF y = F(x) of a density q on [0, 1], so log|dy/dx| = log q(x):

* **piecewise-linear**: K bins of width 1/K, q piecewise constant with bin masses
  Q = softmax(θ). In bin b, with α = xK − b ∈ [0, 1], y = Σ_{j<b} Q_j + α Q_b and
  log|dy/dx| = log(K Q_b).
* **piecewise-quadratic**: K bins of widths W = softmax(θ_w) and K+1 vertex heights
  V = exp(θ_v) scaled so that the piecewise-linear density through them integrates to one,
  Σ_b W_b (V_b + V_{b+1})/2 = 1. In bin b, with α = (x − X_b)/W_b, q = V_b + α(V_{b+1} − V_b)
  and y = Y_b + W_b [α V_b + α²(V_{b+1} − V_b)/2] (a quadratic).

θ = 0 gives the identity for both. Floors keep every density positive (no infinite log-det):
a fraction ``min_density`` of the mass is spread uniformly, so q ≥ ``min_density`` everywhere,
and (quadratic) a fraction ``min_width`` of the width, so W_b ≥ ``min_width``/K.

Numerics. Each bin is written from its *upper* edge, with β = 1 − α the fraction of the bin
still to go: y = U_b − W_b·R(β), R(β) = β (q + V_{b+1})/2 the mass left in the bin (per unit
width; R = β Q_b K for the linear map). The cumulative edges are exact at both ends (the first is
the first mass itself, the last is set to 1), so F(0) = 0 and F(1) = 1 exactly and the output
never leaves [0, 1]: a uniform base on the box keeps a finite log-density at the ends. The
density at a point is q = β V_b + (1 − β) V_{b+1}, a sum of non-negative terms, never rounded
to zero. The quadratic inverse solves R(β) = r for β in [0, 1] as

    β = 2r / (V_{b+1} + √Δ),   Δ = q² = V_{b+1}² − 2(V_{b+1} − V_b) r,

whose denominator is at least V_{b+1} > 0 (no cancellation); Δ itself is computed as a sum of
non-negative terms, V_{b+1}² + 2(V_b − V_{b+1}) r when the density falls across the bin and
V_b² + 2(V_{b+1} − V_b)(M̂_b − r) when it rises (M̂_b − r the mass already passed), so √Δ and
its gradient stay finite for any parameters.

Layout: plain — x (…,) and θ (…, P), the parameters on the last axis — as couplings,
autoregressive layers and :class:`~nfapps.transforms.elementwise.Elementwise` pass them.

A VEGAS-like separable adaptive grid (Lepage 1978) is ``Elementwise(d, PiecewiseLinearMap(K))``:
a learnable histogram of K bins per dimension, trained by maximum likelihood like any flow
(``NSF(d, bounded=True, pre_map=K)`` puts one in front of a bounded spline flow).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .maps import ElementwiseMap

DEFAULT_MIN_DENSITY = 1e-3
DEFAULT_MIN_WIDTH = 1e-3


def floored_softmax(unnormalized: Tensor, floor: float) -> Tensor:
    """(1 − floor)·softmax(u) + floor/K over the last axis: sums to one, every entry ≥ floor/K."""
    p = F.softmax(unnormalized, dim=-1)
    return p.mul(1 - floor).add_(floor / unnormalized.shape[-1])


def upper_edges(masses: Tensor) -> Tensor:
    """Upper bin edges U_b = Σ_{j≤b} m_j (…, K) of masses summing to one: U_0 = m_0 and
    U_{K−1} = 1 exactly, and no interior edge above 1 (cumulative rounding cannot leave [0, 1])."""
    interior = masses[..., :-1].cumsum(dim=-1).clamp(max=1.0)
    return torch.cat([interior, masses.new_ones(()).expand(*masses.shape[:-1], 1)], dim=-1)


def _take(values: Tensor, index: Tensor) -> Tensor:
    """values[..., index] for an index of the leading shape (…,); ``values`` may have size 1 where
    the index has more (shared rows, see :func:`_shared_rows`)."""
    values = values.expand(*index.shape, values.shape[-1])
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def _shared_rows(params: Tensor) -> Tensor:
    """``params`` with each leading axis that is a broadcast (stride 0, as ``Elementwise`` passes
    its per-feature parameters for every point) cut to size 1, when no gradient is recorded:
    the per-bin work (softmax, cumulative sums) is then done once per feature instead of once per
    point, with the same values. With gradients the full tensor is kept, so that training
    accumulates its gradients exactly as before."""
    if torch.is_grad_enabled() and params.requires_grad:
        return params
    index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                  for stride, size in zip(params.stride()[:-1], params.shape[:-1]))
    return params[index]


def bin_index(edges: Tensor, values: Tensor) -> Tensor:
    """How many of the sorted ``edges`` (…, E) lie at or below each of ``values`` (…): the bin
    of each value. Edges given per value are compared all at once; edges shared by all values
    of a feature (leading axes of size 1 but the last, as a pre-map's are) are searched by
    bisection, log₂ E gathers instead of E comparisons per value."""
    shared = values.dim() >= 1 and edges.dim() == values.dim() + 1 and edges.shape[-2] == values.shape[-1] \
        and math.prod(edges.shape[:-2]) == 1 and values.numel() > values.shape[-1]
    if not shared:
        return (edges <= values.unsqueeze(-1)).sum(dim=-1)
    features, count = values.shape[-1], edges.shape[-1]
    width = 1 << count.bit_length()  # a power of two above E: padded with +inf, never at or below
    table = torch.cat([edges.reshape(features, count), edges.new_full((features, width - count), math.inf)], dim=1)
    flat = values.reshape(-1, features).t().contiguous()  # (features, points): gathers along the points
    index = torch.zeros(flat.shape, dtype=torch.long, device=flat.device)
    step = width // 2
    # invariant: edges[: index] ≤ value; the probe, edge index + step − 1 (read from the table
    # shifted by step − 1), decides the next bit of the count
    while step:
        index.add_(table[:, step - 1 :].gather(1, index) <= flat, alpha=step)
        step //= 2
    return index.t().reshape(values.shape)


def piecewise_linear(
    x: Tensor, unnormalized: Tensor, inverse: bool = False, min_density: float = DEFAULT_MIN_DENSITY
) -> tuple[Tensor, Tensor]:
    """CDF of the piecewise-constant density with K equal bins and masses from ``unnormalized``
    (…, K), on [0, 1] (inputs are clamped into it), or its inverse.

    Returns the mapped values and the element-wise log|dy/dx| = log(K Q_b) of the forward map at
    the point (negated for the inverse).
    """
    k = unnormalized.shape[-1]
    masses = floored_softmax(_shared_rows(unnormalized), min_density)
    upper = upper_edges(masses)
    if inverse:
        yc = x.clamp(0.0, 1.0)
        b = bin_index(upper[..., :-1], yc)
        q_b = _take(masses, b)
        beta = ((_take(upper, b) - yc) / q_b).clamp(0.0, 1.0)
        out = ((b + 1).to(x.dtype) - beta) / k
    else:
        scaled = x.clamp(0.0, 1.0) * k
        b = scaled.detach().floor().long().clamp_(0, k - 1)
        beta = ((b + 1).to(x.dtype) - scaled).clamp(0.0, 1.0)
        q_b = _take(masses, b)
        out = _take(upper, b) - beta * q_b
    logabsdet = q_b.log() + math.log(k)
    return out, -logabsdet if inverse else logabsdet


def quadratic_knots(
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    min_width: float = DEFAULT_MIN_WIDTH,
    min_density: float = DEFAULT_MIN_DENSITY,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bin widths W (…, K), vertex densities V (…, K+1), bin masses M (…, K) and the upper bin
    edges on both axes, X_{b+1} and Y_{b+1} (…, K), of the piecewise-quadratic map.

    V = (1 − min_density)·exp(θ_v)/Σ_b W_b (exp θ_{v,b} + exp θ_{v,b+1})/2 + min_density, the
    exponentials taken relative to their maximum (the normalisation cancels the shift, so no
    overflow and the gradient is exact).
    """
    widths = floored_softmax(unnormalized_widths, min_width)
    v = (unnormalized_heights - unnormalized_heights.amax(dim=-1, keepdim=True).detach()).exp()
    total = (widths * (v[..., :-1] + v[..., 1:])).sum(dim=-1, keepdim=True) * 0.5
    heights = (v / total).mul(1 - min_density).add_(min_density)
    masses = widths * ((heights[..., :-1] + heights[..., 1:]) * 0.5)
    return widths, heights, masses, upper_edges(widths), upper_edges(masses)


def piecewise_quadratic(
    x: Tensor,
    unnormalized_widths: Tensor,
    unnormalized_heights: Tensor,
    inverse: bool = False,
    min_width: float = DEFAULT_MIN_WIDTH,
    min_density: float = DEFAULT_MIN_DENSITY,
) -> tuple[Tensor, Tensor]:
    """CDF of the piecewise-linear density with K bins of widths from ``unnormalized_widths``
    (…, K) and vertex heights from ``unnormalized_heights`` (…, K+1), on [0, 1] (inputs are
    clamped into it), or its inverse.

    Returns the mapped values and the element-wise log|dy/dx| = log q(x) of the forward map at
    the point (negated for the inverse).
    """
    widths, heights, _, x_upper, y_upper = quadratic_knots(
        unnormalized_widths, unnormalized_heights, min_width, min_density
    )
    xc = x.clamp(0.0, 1.0)
    b = bin_index((y_upper if inverse else x_upper)[..., :-1], xc)
    w_b = _take(widths, b)
    v = heights.gather(-1, torch.stack((b, b + 1), dim=-1))
    v_b, v_b1 = v[..., 0], v[..., 1]
    if inverse:
        y_b1 = _take(y_upper, b)
        y_b = torch.where(b > 0, _take(y_upper, (b - 1).clamp_(min=0)), 0.0)
        left = (y_b1 - xc) / w_b  # mass still to go in the bin, per unit width (r ≥ 0)
        passed = (xc - y_b) / w_b  # mass already passed (M̂_b − r ≥ 0)
        rising = v_b1 >= v_b
        discriminant = torch.where(
            rising,
            torch.addcmul(v_b.square(), v_b1 - v_b, passed, value=2),
            torch.addcmul(v_b1.square(), v_b - v_b1, left, value=2),
        )
        beta = (2 * left / (v_b1 + discriminant.sqrt())).clamp(0.0, 1.0)
        out = _take(x_upper, b) - beta * w_b
    else:
        beta = ((_take(x_upper, b) - xc) / w_b).clamp(0.0, 1.0)
    density = torch.addcmul(beta * v_b, 1 - beta, v_b1)
    if not inverse:
        out = _take(y_upper, b) - w_b * (beta * (density + v_b1) * 0.5)
    logabsdet = density.log()
    return out, -logabsdet if inverse else logabsdet


def _check(bins: int, **fractions: float) -> int:
    if bins < 1:
        raise ValueError(f"a piecewise map needs at least one bin, got bins={bins}")
    for name, value in fractions.items():
        if not 0 < value < 1:  # a zero floor would allow empty bins: infinite log-dets
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    return int(bins)


class PiecewiseLinearMap(ElementwiseMap):
    """CDF of a piecewise-constant density on [0, 1] with ``bins`` equal bins (Müller et al. 2019).

    θ holds K logits of the bin masses Q = (1 − ε)·softmax(θ) + ε/K (ε = ``min_density``, so
    the density K·Q_b ≥ ε); θ = 0 gives the identity. ``Elementwise(d, PiecewiseLinearMap(K))``
    is a VEGAS-like separable adaptive grid: a learnable K-bin histogram per dimension.
    """

    def __init__(self, bins: int = 8, min_density: float = DEFAULT_MIN_DENSITY) -> None:
        self.bins = self.num_params = _check(bins, min_density=min_density)
        self.min_density = float(min_density)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return piecewise_linear(x, params, False, self.min_density)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return piecewise_linear(y, params, True, self.min_density)

    def __repr__(self) -> str:
        return f"PiecewiseLinearMap(bins={self.bins}, min_density={self.min_density})"


class PiecewiseQuadraticMap(ElementwiseMap):
    """CDF of a continuous piecewise-linear density on [0, 1] with ``bins`` learned bins
    (Müller et al. 2019).

    θ holds K width logits, then K+1 log vertex heights (P = 2K + 1); widths are
    (1 − ε_w)·softmax + ε_w/K (ε_w = ``min_width``) and the heights are normalised so that the
    density integrates to one, with a floor of ``min_density``. θ = 0 gives the identity.
    """

    def __init__(
        self, bins: int = 8, min_width: float = DEFAULT_MIN_WIDTH, min_density: float = DEFAULT_MIN_DENSITY
    ) -> None:
        self.bins = _check(bins, min_width=min_width, min_density=min_density)
        self.num_params = 2 * self.bins + 1
        self.min_width, self.min_density = float(min_width), float(min_density)

    def _transform(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        k = self.bins
        return piecewise_quadratic(x, params[..., :k], params[..., k:], inverse, self.min_width, self.min_density)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._transform(y, params, inverse=True)

    def __repr__(self) -> str:
        return f"PiecewiseQuadraticMap(bins={self.bins}, min_width={self.min_width}, min_density={self.min_density})"


__all__ = [
    "PiecewiseLinearMap",
    "PiecewiseQuadraticMap",
    "bin_index",
    "floored_softmax",
    "piecewise_linear",
    "piecewise_quadratic",
    "quadratic_knots",
    "upper_edges",
]
