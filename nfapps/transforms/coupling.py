"""Coupling layers (Dinh et al. 2017; Durkan et al. 2019).

The features split into a conditioning part x_A (copied: z_A = x_A) and a transformed part
x_B, mapped element-wise by a monotone τ whose parameters come from a network of x_A and
the context c: z_B = τ(x_B; θ(x_A, c)). The Jacobian is block-triangular, so
log|det ∂z/∂x| = Σ_B log|τ'(x_B)|, and the inverse is x_B = τ⁻¹(z_B; θ(z_A, c)) in one pass.
With τ affine (z_B = x_B ⊙ exp(s) + t) this is RealNVP; with a rational-quadratic spline, NSF.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..nets import MLP
from .base import Transform
from .maps import ElementwiseMap


def antichain_layers(features: int) -> int:
    """The fewest coupling layers in which every feature can condition every other:
    the smallest L with C(L, ⌊L/2⌋) ≥ D (Sperner's theorem) — 2, 4, 5, 6, 7, 9 layers for
    D = 2, 4, 8, 16, 32, 96, where binary masks take 2⌈log₂ D⌉ = 2, 4, 6, 8, 10, 14."""
    layers = 2
    while math.comb(layers, layers // 2) < features:
        layers += 1
    return layers


@functools.lru_cache(maxsize=64)
def antichain_codes(features: int, layers: int) -> tuple[tuple[int, ...], ...]:
    """Distinct codes of ⌊L/2⌋ ones out of L bits, one per feature, for the ``"antichain"`` masks.

    No code lies inside another (all have the same weight), so for any two features i ≠ j some
    bit is 0 in i's code and 1 in j's: in that layer i conditions j. Codes are picked greedily
    so that every layer transforms about the same number of features (complementary pairs when
    L is even). With fewer layers than :func:`antichain_layers` (D), codes repeat once all are
    used, and features with the same code never condition each other.
    """
    if layers < 2:
        raise ValueError(f"antichain masks need at least 2 layers, got {layers}")
    every = np.array([[1 if b in ones else 0 for b in range(layers)]
                      for ones in itertools.combinations(range(layers), layers // 2)])
    used = np.zeros(len(every), dtype=bool)
    load = np.zeros(layers, dtype=np.int64)  # features transformed so far, per layer
    codes: list[tuple[int, ...]] = []
    for _ in range(features):
        if used.all():
            used[:] = False
        # the code whose layers carry the least load so far (first such in order): it minimises Σ load²
        cost = np.where(used, np.iinfo(np.int64).max, every @ load)
        best = int(np.argmin(cost))
        used[best] = True
        load += every[best]
        codes.append(tuple(int(c) for c in every[best]))
    return tuple(codes)


def coupling_mask(features: int, kind: str = "halves", flip: bool = False, layer: int = 0, layers: int | None = None) -> Tensor:
    """Boolean mask of the conditioning features: ``"halves"`` (first ⌈D/2⌉), ``"alternating"``
    (even indices), ``"binary"`` or ``"antichain"``; ``flip`` swaps the roles so that
    consecutive layers transform every feature (``"antichain"`` ignores it).

    ``"binary"`` (as in i-flow): the pair of layers 2j, 2j+1 splits the features by bit
    j mod ⌈log₂ D⌉ of their index. Any two features differ in some bit, so after 2⌈log₂ D⌉ layers
    every feature has conditioned every other — which halves alone never give within a half.

    ``"antichain"`` (``layers`` = L in all): layer ``layer`` transforms the features whose code
    (:func:`antichain_codes`) has a 1 there. Every feature conditions every other within the L
    layers, which can be as few as :func:`antichain_layers` (6 instead of 8 at D = 16): fewer
    layers and fewer element-wise maps per point for the same coverage.
    """
    index = torch.arange(features)
    if kind == "halves":
        mask = index < (features + 1) // 2
    elif kind == "alternating":
        mask = index % 2 == 0
    elif kind == "binary":
        bits = max(1, math.ceil(math.log2(features)))
        mask = (index >> ((layer // 2) % bits)) & 1 == 0
    elif kind == "antichain":
        if layers is None:
            raise ValueError("antichain masks need the total number of layers (layers=…)")
        codes = antichain_codes(features, layers)
        return torch.tensor([code[layer % layers] == 0 for code in codes])
    else:
        raise ValueError(f"mask must be 'halves', 'alternating', 'binary' or 'antichain', got {kind!r}")
    return ~mask if flip else mask


class Coupling(Transform):
    """z_A = x_A, z_B = τ(x_B; θ(x_A, c)) for the boolean ``mask`` marking A (the conditioning part)."""

    def __init__(
        self,
        mask: Tensor,
        elementwise: ElementwiseMap,
        context: int = 0,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.all() or not mask.any():
            raise ValueError("a coupling mask must mark some features, but not all, as conditioning")
        self.register_buffer("conditioning", mask.nonzero().squeeze(1))
        self.register_buffer("transformed", (~mask).nonzero().squeeze(1))
        self.elementwise = elementwise
        self.conditioner = MLP(
            len(self.conditioning) + context, len(self.transformed) * elementwise.num_params, hidden, activation
        )
        if elementwise.batch_fastest:  # the conditioner's outputs are (|B|, P) feature-major: this reorders them (P, |B|)
            rows = torch.arange(len(self.transformed) * elementwise.num_params).view(len(self.transformed), -1)
            self.register_buffer("_parameter_major", rows.t().reshape(-1), persistent=False)
        self._find_blocks()

    def _find_blocks(self) -> None:
        """When A and B are each one contiguous run of features (``"halves"`` masks), split and
        join with ``split`` and ``cat`` instead of ``index_select`` / ``index_copy``."""
        a, b = self.conditioning.tolist(), self.transformed.tolist()
        runs = all(v == list(range(v[0], v[0] + len(v))) for v in (a, b))
        self._blocks = ([len(a), len(b)] if a[0] < b[0] else [len(b), len(a)], a[0] < b[0]) if runs else None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._find_blocks()

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        if self._blocks is None:
            x_a, x_b = x.index_select(1, self.conditioning), x.index_select(1, self.transformed)
        else:  # one split: its backward joins the two gradients, where two slices would each pad
            x_a, x_b = x.split(self._blocks[0], dim=1)
            if not self._blocks[1]:
                x_a, x_b = x_b, x_a
        h = x_a if context is None else torch.cat([x_a, context], dim=-1)
        n, p = x.shape[0], self.elementwise.num_params
        step = self.elementwise.inverse if inverse else self.elementwise.forward
        if self.elementwise.batch_fastest:
            # parameter-major: x_B as (|B|, batch) and θ as (|B|, batch, P) laid out (P, |B|, batch),
            # straight from the conditioner's last product (its rows reordered), so that each
            # parameter's plane over all elements — the spline's widths and heights — is contiguous
            params = self.conditioner.transposed(h, self._parameter_major).view(p, len(self.transformed), n)
            params = params.permute(1, 2, 0)
            y_b, ladj = step(x_b.t().contiguous(), params)
            y_b, ladj = y_b.t(), ladj.sum(dim=0)
        else:
            y_b, ladj = step(x_b, self.conditioner(h).view(n, len(self.transformed), p))
            ladj = ladj.sum(dim=1)
        if self._blocks is None:
            out = x.index_copy(1, self.transformed, y_b)
        else:
            out = torch.cat([x_a, y_b] if self._blocks[1] else [y_b, x_a], dim=1)
        return out, ladj

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(z, context, inverse=True)
