"""The one transform contract every flow in nfapps composes through.

A transform is an invertible, differentiable map ``z = f(x)`` from data to latent space.
``forward`` returns ``(z, log|det ∂f/∂x|)`` and ``inverse`` returns ``(x, log|det ∂f⁻¹/∂z|)``;
the log-determinant always has shape ``(batch,)``. Composing transforms adds their
log-determinants (chain rule): log|det ∂(g∘f)/∂x| = log|det ∂g/∂f| + log|det ∂f/∂x|.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


class Transform(nn.Module):
    """Base class: an invertible map with a tractable Jacobian log-determinant.

    Subclasses implement :meth:`forward` (data → latent) and :meth:`inverse` (latent → data).
    Both take an optional ``context`` of shape ``(batch, context_features)`` for conditional
    transforms and return the mapped tensor and ``logabsdet`` of shape ``(batch,)``.
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Compose(Transform):
    """The composition f_K ∘ … ∘ f_1 of transforms; its log-determinant is the sum of theirs."""

    def __init__(self, *transforms: Transform | Iterable[Transform]) -> None:
        super().__init__()
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, Transform):
                flat.append(t)
            else:
                flat.extend(t)
        self.transforms = nn.ModuleList(flat)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in self.transforms:
            x, ladj = t(x, context)
            total = total + ladj
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in reversed(self.transforms):
            z, ladj = t.inverse(z, context)
            total = total + ladj
        return z, total

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]


class Inverse(Transform):
    """The inverse f⁻¹ of a transform f: forward and inverse swap roles."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, context)


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: per-element log-dets → per-sample log-det."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


__all__ = ["Transform", "Compose", "Inverse", "sum_except_batch"]
