"""Monotone rational-quadratic splines (Durkan et al. 2019, "Neural Spline Flows"), as pure functions.

On [left, right] the map is made of K bins with knots (x_k, y_k) and positive derivatives d_k.
In bin k, with ξ = (x − x_k)/w_k ∈ [0, 1], s_k = h_k/w_k (w_k, h_k the bin width and height):

    y = y_k + h_k·[s_k ξ² + d_k ξ(1−ξ)] / [s_k + (d_{k+1} + d_k − 2 s_k) ξ(1−ξ)]

    dy/dx = s_k²·[d_{k+1} ξ² + 2 s_k ξ(1−ξ) + d_k (1−ξ)²] / [s_k + (d_{k+1} + d_k − 2 s_k) ξ(1−ξ)]²

The inverse solves the quadratic a ξ² + b ξ + c = 0 for the root in [0, 1], written as
ξ = 2c / (−b − √(b² − 4ac)), which is the numerically stable form (no cancellation).

Outside [left, right] (unbounded variant) the tails are linear with the boundary slopes
d_0 and d_K (identity tails when those are fixed to 1), so the map is a C¹ bijection of ℝ.
All computations clamp inputs into the box before the spline arithmetic and select with
``torch.where``, so no NaN or inf reaches outputs or gradients, at the knots or at |x| ≫ B.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MIN_BIN = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def _knots(unnormalized: Tensor, low: float, high: float, min_bin: float) -> tuple[Tensor, Tensor]:
    """Bin edges (…, K+1) from unnormalised sizes (…, K): softmax, a floor of ``min_bin``, cumsum."""
    bins = unnormalized.shape[-1]
    sizes = F.softmax(unnormalized, dim=-1) * (1.0 - min_bin * bins) + min_bin
    inner = torch.cumsum(sizes[..., :-1], dim=-1) * (high - low) + low
    edges = torch.cat([inner.new_full((*inner.shape[:-1], 1), low), inner, inner.new_full((*inner.shape[:-1], 1), high)], dim=-1)
    return edges, edges[..., 1:] - edges[..., :-1]


def derivatives_from(unnormalized: Tensor, min_derivative: float = DEFAULT_MIN_DERIVATIVE) -> Tensor:
    """Positive knot derivatives d = min + softplus(u + c), with c chosen so that u = 0 gives d = 1."""
    offset = math.log(math.expm1(1.0 - min_derivative))
    return F.softplus(unnormalized + offset) + min_derivative


def rational_quadratic(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    left: float = 0.0,
    right: float = 1.0,
    bottom: float = 0.0,
    top: float = 1.0,
    min_bin: float = DEFAULT_MIN_BIN,
) -> tuple[Tensor, Tensor]:
    """Monotone RQ spline from [left, right] onto [bottom, top] (inputs are clamped into the box).

    Args:
        x: inputs (…,) — data for the forward map, outputs of it when ``inverse``.
        widths, heights: unnormalised bin sizes (…, K).
        derivatives: positive derivatives at the K+1 knots (…, K+1).
    Returns:
        The mapped values and the element-wise log|dy/dx| of the forward map at the point
        (negated for the inverse, i.e. log|dx/dy|).
    """
    xs, w = _knots(widths, left, right, min_bin)
    ys, h = _knots(heights, bottom, top, min_bin)
    if inverse:
        x = x.clamp(bottom, top)
        k = torch.searchsorted(ys, x[..., None], right=True) - 1
    else:
        x = x.clamp(left, right)
        k = torch.searchsorted(xs, x[..., None], right=True) - 1
    k = k.clamp_(0, widths.shape[-1] - 1)
    x_k, w_k = xs.gather(-1, k).squeeze(-1), w.gather(-1, k).squeeze(-1)
    y_k, h_k = ys.gather(-1, k).squeeze(-1), h.gather(-1, k).squeeze(-1)
    d_k = derivatives.gather(-1, k).squeeze(-1)
    d_k1 = derivatives.gather(-1, k + 1).squeeze(-1)
    s = h_k / w_k
    slack = d_k1 + d_k - 2 * s

    if inverse:
        dy = x - y_k
        a = h_k * (s - d_k) + dy * slack
        b = h_k * d_k - dy * slack
        c = -s * dy
        discriminant = (b.square() - 4 * a * c).clamp(min=0)
        xi = ((2 * c) / (-b - discriminant.sqrt())).clamp(0, 1)
        out = x_k + xi * w_k
    else:
        xi = ((x - x_k) / w_k).clamp(0, 1)
        out = y_k + h_k * (s * xi.square() + d_k * xi * (1 - xi)) / (s + slack * xi * (1 - xi))

    one_minus = 1 - xi
    denominator = s + slack * xi * one_minus
    numerator = s.square() * (d_k1 * xi.square() + 2 * s * xi * one_minus + d_k * one_minus.square())
    logabsdet = numerator.log() - 2 * denominator.log()
    return out, (-logabsdet if inverse else logabsdet)


def unconstrained_rational_quadratic(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    bound: float = 5.0,
    min_bin: float = DEFAULT_MIN_BIN,
) -> tuple[Tensor, Tensor]:
    """RQ spline on [−B, B] with linear tails of slopes d_0 (left) and d_K (right) outside.

    Tails: y = −B + d_0 (x + B) for x < −B and y = B + d_K (x − B) for x > B; the tail slopes
    are the boundary knot derivatives, so the map and its derivative are continuous.
    """
    inside_spline, ladj_spline = rational_quadratic(
        x, widths, heights, derivatives, inverse, -bound, bound, -bound, bound, min_bin
    )
    d_left, d_right = derivatives[..., 0], derivatives[..., -1]
    below, above = x < -bound, x > bound
    if inverse:
        tail = torch.where(below, -bound + (x + bound) / d_left, bound + (x - bound) / d_right)
        tail_ladj = -torch.where(below, d_left, d_right).log()
    else:
        tail = torch.where(below, -bound + d_left * (x + bound), bound + d_right * (x - bound))
        tail_ladj = torch.where(below, d_left, d_right).log()
    outside = below | above
    return torch.where(outside, tail, inside_spline), torch.where(outside, tail_ladj, ladj_spline)
