"""A VEGAS adaptive grid (Lepage 1978, 2021) as a transform of [0, 1]^d onto itself.

Per dimension, K bins [e_b, e_{b+1}] of the data axis (0 = e_0 < … < e_K = 1) each get the
same probability 1/K, so the sampling density is piecewise constant, q(x) = 1/(K Δe_b), and the
map from the grid's uniform coordinate u to x is piecewise linear:

    x = e_b + (uK − b) Δe_b,   b = ⌊uK⌋,   log|dx/du| = log(K Δe_b).

In the flow convention the *forward* map is data → latent, x ↦ u (its log-det is −Σ log(K Δe_b)),
and the inverse, used for sampling, u ↦ x.

The grid is not trained by gradients: it adapts the way VEGAS does. Points x with weights
w = f(x)/q(x) are accumulated per dimension and bin (:meth:`AdaptiveGrid.accumulate`), and
:meth:`AdaptiveGrid.refine` then moves the edges so that each bin holds an equal share of the
damped, smoothed bin averages d_b of w²:

    d_b ← (d_{b−1} + 6 d_b + d_{b+1})/8  (normalised to Σ d_b = 1),
    d_b ← ((1 − d_b)/ln(1/d_b))^α        (α = 0 freezes the grid; 0.5 is VEGAS's default),

which converges to the separable density that minimises the variance of w over the product
family (q_i(x_i) ∝ √(∫ f²/Π_{j≠i} q_j dx_{≠i})). Accumulators are buffers: they survive a
checkpoint, so an interrupted adaptation resumes exactly. Under ``nfapps.distributed`` the
accumulators are summed over processes before refining, so every rank keeps the same grid.
"""

from __future__ import annotations


import torch
from torch import Tensor

from .. import distributed as dist
from .base import Transform


class AdaptiveGrid(Transform):
    """A VEGAS map with ``bins`` bins per dimension on [0, 1]^``features``; starts as the identity."""

    def __init__(self, features: int, bins: int = 128, alpha: float = 0.5) -> None:
        super().__init__()
        if features < 1 or bins < 1:
            raise ValueError(f"an adaptive grid needs features ≥ 1 and bins ≥ 1, got {features}, {bins}")
        if not 0 <= alpha <= 2:
            raise ValueError(f"the grid's damping alpha must be in [0, 2], got {alpha}")
        self.features, self.bins, self.alpha = int(features), int(bins), float(alpha)
        edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64).expand(features, bins + 1).clone()
        self.register_buffer("edges", edges)
        self.register_buffer("sum_w2", torch.zeros(features, bins, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(features, bins, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        """Moves follow the module (``.to(device)``), casts do not: edges and sums stay float64
        (the map itself runs in the dtype of its input)."""
        kept = {name: getattr(self, name) for name in ("edges", "sum_w2", "counts")}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            setattr(self, name, old.to(getattr(self, name).device))
        return self

    # -- the map ---------------------------------------------------------------------------------
    def _bins_of(self, x: Tensor) -> Tensor:
        """Bin index b (n, d) of every coordinate of x."""
        inner = self.edges[:, 1:-1].to(x.dtype).contiguous()
        return torch.searchsorted(inner, x.detach().T.contiguous(), right=True).T

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xc = x.clamp(0.0, 1.0)
        b = self._bins_of(xc)
        low, width = self._gather(b, x.dtype)
        u = ((b.to(x.dtype) + ((xc - low) / width).clamp(0.0, 1.0)) / self.bins).clamp(0.0, 1.0)
        return u, -(width * self.bins).log().sum(dim=1)

    def inverse(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        scaled = u.clamp(0.0, 1.0) * self.bins
        b = scaled.detach().floor().long().clamp_(0, self.bins - 1)
        low, width = self._gather(b, u.dtype)
        x = (low + (scaled - b.to(u.dtype)) * width).clamp(0.0, 1.0)
        return x, (width * self.bins).log().sum(dim=1)

    def _gather(self, b: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Lower edges e_b and widths Δe_b (n, d) of bins b (n, d)."""
        edges = self.edges.to(dtype)
        low = edges[:, :-1].T.gather(0, b)
        width = (edges[:, 1:] - edges[:, :-1]).T.gather(0, b)
        return low, width

    # -- adaptation ------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, x: Tensor, weights: Tensor) -> None:
        """Add points x (n, d) with importance weights w = f/q (n,) to the per-bin sums of w²."""
        if x.ndim != 2 or x.shape[1] != self.features or weights.shape != x.shape[:1]:
            raise ValueError(f"accumulate needs x (n, {self.features}) and weights (n,), got {tuple(x.shape)}, {tuple(weights.shape)}")
        flat = (self._bins_of(x.clamp(0.0, 1.0)) + torch.arange(self.features, device=x.device) * self.bins).reshape(-1)
        w2 = weights.to(torch.float64).square().unsqueeze(1).expand(-1, self.features).reshape(-1)
        size = self.features * self.bins
        self.sum_w2 += torch.bincount(flat, weights=w2, minlength=size).view(self.features, self.bins)
        self.counts += torch.bincount(flat, minlength=size).view(self.features, self.bins).to(torch.float64)

    @torch.no_grad()
    def refine(self) -> None:
        """Move the edges to equalise the damped bin averages of w² (all ranks' sums), then reset."""
        totals = dist.all_reduce_sum(torch.stack([self.sum_w2, self.counts]))
        average = torch.where(totals[1] > 0, totals[0] / totals[1].clamp_min(1), 0.0)
        self.sum_w2.zero_()
        self.counts.zero_()
        if self.alpha == 0 or self.bins == 1:
            return
        smooth = average.clone()
        smooth[:, 1:-1] = (average[:, :-2] + 6 * average[:, 1:-1] + average[:, 2:]) / 8
        smooth[:, 0] = (7 * average[:, 0] + average[:, 1]) / 8
        smooth[:, -1] = (average[:, -2] + 7 * average[:, -1]) / 8
        total = smooth.sum(dim=1, keepdim=True)
        live = (total > 0).squeeze(1) & torch.isfinite(total).squeeze(1)
        if not live.any():
            return
        d = smooth[live] / total[live]
        positive = d > 0
        damped = torch.where(positive, ((1 - d) / torch.log(1 / d.where(positive, 0.5))).clamp_min(0).pow(self.alpha), 0.0)
        # a bin that saw no weight keeps a sliver of the density: every bin stays finite
        damped = damped + 1e-6 * damped.mean(dim=1, keepdim=True)
        self.edges[live] = _equal_share_edges(self.edges[live], damped)


def _equal_share_edges(edges: Tensor, density: Tensor) -> Tensor:
    """New edges (m, K+1) splitting each row's piecewise-constant mass ``density`` (m, K) on the
    old bins ``edges`` into K bins of equal mass (linear inside an old bin)."""
    k = density.shape[1]
    cumulative = torch.cat([density.new_zeros(density.shape[0], 1), density.cumsum(dim=1)], dim=1)  # (m, K+1)
    targets = cumulative[:, -1:] * torch.arange(1, k, dtype=density.dtype, device=density.device) / k  # (m, K−1)
    b = (torch.searchsorted(cumulative.contiguous(), targets.contiguous(), right=False) - 1).clamp_(0, k - 1)
    below = cumulative.gather(1, b)
    fraction = ((targets - below) / density.gather(1, b)).clamp(0.0, 1.0)
    low = edges.gather(1, b)
    inner = low + fraction * (edges.gather(1, b + 1) - low)
    new = torch.cat([edges[:, :1], inner, edges[:, -1:]], dim=1)
    # every bin keeps a width of at least 1e-12 of the axis: a finite log-density everywhere
    widths = (new[:, 1:] - new[:, :-1]).clamp_min(1e-12)
    new = torch.cat([new[:, :1], new[:, :1] + widths.cumsum(dim=1)], dim=1)
    return (new - new[:, :1]) / (new[:, -1:] - new[:, :1])


__all__ = ["AdaptiveGrid"]
