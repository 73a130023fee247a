"""Conditioner networks: a plain MLP for couplings and a masked MLP (MADE) for autoregressive layers.

Both end in a layer that starts at zero, so every layer of a fresh flow is the identity map
(the element-wise maps are parameterised so that θ = 0 is the identity); training moves
away from it smoothly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
INPLACE = {"relu", "elu"}  # activations whose backward reads only their output


def _activation(name: str) -> type[nn.Module]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """x ↦ L_n(σ(… σ(L_1 x))) with hidden widths ``hidden``; the last layer starts at zero."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128, 128), activation: str = "relu") -> None:
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                # in place where the backward needs only the result: saves a pass over (batch, width)
                layers.append(_activation(activation)(**({"inplace": True} if activation in INPLACE else {})))
        super().__init__(*layers)
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)

    def transposed(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """The output transposed, (out_features, batch) and contiguous: ``forward(x).t()`` with the
        last layer computed as W·hᵀ + b, at the cost of the usual product. Couplings read their
        parameters from it with the batch along the fast axis. ``rows`` (a permutation of the
        outputs) reorders them at the cost of reordering W's rows, not the (much larger) output."""
        *body, last = self
        for layer in body:
            x = layer(x)
        weight, bias = last.weight, last.bias
        if rows is not None:
            weight, bias = weight.index_select(0, rows), bias.index_select(0, rows)
        return torch.addmm(bias.unsqueeze(1), weight, x.t())


class MaskedLinear(nn.Linear):
    """A linear layer y = (M ⊙ W) x + b with a fixed binary connectivity mask M."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al. 2015).

    Output block i (``params_per_feature`` values for feature ``order[i]``-th in the
    autoregressive order) depends only on the features that come before it in ``order``
    and on the whole context: degree(input j) = rank of j in the order, context degree 0,
    hidden degrees cycle over 0 … D−2 (from −1 when there is a context, so the first
    feature depends on it too), a hidden unit sees inputs of degree ≤ its own and an
    output of degree k sees hidden units of degree < k.
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        context: int = 0,
        hidden: Sequence[int] = (128, 128),
        order: Tensor | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.features, self.params_per_feature = features, params_per_feature
        rank = torch.arange(features) if order is None else torch.argsort(torch.as_tensor(order))
        in_degree = torch.cat([torch.full((context,), -1), rank])  # context sees everything
        degrees = [in_degree]
        lowest = -1 if context > 0 or features == 1 else 0  # degree −1 units see the context only
        for width in hidden:
            degrees.append(lowest + torch.arange(width) % (features - 1 - lowest))
        out_degree = rank.repeat_interleave(params_per_feature)
        layers: list[nn.Module] = []
        for a, b in zip(degrees[:-1], degrees[1:]):
            layers += [MaskedLinear(b[:, None] >= a[None, :]), _activation(activation)()]
        layers.append(MaskedLinear(out_degree[:, None] > degrees[-1][None, :]))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Parameters of shape (batch, features, params_per_feature)."""
        h = x if context is None else torch.cat([context, x], dim=-1)
        return self.net(h).view(x.shape[0], self.features, self.params_per_feature)
