"""Feature permutations: z = x[:, π]; volume-preserving, so log|det| = 0."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Transform


class Permutation(Transform):
    """z_i = x_{π(i)} for a fixed permutation π of the features (dimension 1)."""

    def __init__(self, permutation: Sequence[int] | Tensor) -> None:
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"not a permutation of 0..{len(permutation) - 1}: {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.permutation), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.inverse_permutation), z.new_zeros(z.shape[0])


class ReversePermutation(Permutation):
    """z = (x_D, …, x_1)."""

    def __init__(self, features: int) -> None:
        super().__init__(torch.arange(features - 1, -1, -1))


class RandomPermutation(Permutation):
    """A fixed random permutation drawn from ``seed`` (stored in the state dict)."""

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))
