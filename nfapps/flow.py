"""A normalizing flow: a transform z = f(x) plus a base density p_z.

Change of variables: log p_x(x) = log p_z(f(x)) + log|det ∂f/∂x|.
Sampling draws z ~ p_z and returns x = f⁻¹(z); since f⁻¹ also yields
log|det ∂f⁻¹/∂z| = −log|det ∂f/∂x|, the density of each sample comes in the same pass:
log p_x(x) = log p_z(z) − log|det ∂f⁻¹/∂z|.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .distributions import BaseDistribution
from .transforms.base import Transform
from .validation import check_batch, check_context


class Flow(nn.Module):
    """A transform (data → latent) and a base distribution over the latent.

    Args:
        transform: the map x ↦ z.
        base: the latent density p_z; its ``event_shape`` is the flow's.
        context_features: width of the conditioning vector (0 for an unconditional flow).
        config: how the flow was built (builder name and keyword arguments), filled in by the
            builders so that :func:`nfapps.save` can rebuild it without the user's code.

    Calling the flow (``flow(x, context)``) is ``log_prob``; that is what
    ``DistributedDataParallel`` wraps during training.
    """

    def __init__(
        self,
        transform: Transform,
        base: BaseDistribution,
        context_features: int = 0,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        self.base = base
        self.context_features = int(context_features)
        self.config = config
        self.validate = True

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.base.event_shape)

    @property
    def _anchor(self) -> Tensor:
        return self.base._anchor

    def _check(self, x, context) -> tuple[Tensor, Tensor | None]:
        if not self.validate:
            return x, context
        x = check_batch(x, self.event_shape, self._anchor)
        return x, check_context(context, x.shape[0], self.context_features, self._anchor)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x | context) of shape ``(batch,)``."""
        x, context = self._check(x, context)
        z, logabsdet = self.transform(x, context)
        return self.base.log_prob(z) + logabsdet

    forward = log_prob

    def _draw(self, n: int, context: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        if int(n) < 1:
            raise ValueError(f"number of samples must be a positive integer, got {n}")
        n = int(n)
        rows = 1
        if self.context_features or context is not None:
            context = check_context(context, -1, self.context_features, self._anchor)
            rows = context.shape[0]
            context = context.repeat_interleave(n, dim=0)
        z = self.base.sample(rows * n, generator=generator)
        x, log_prob = self.from_base(z, context)
        if context is not None:
            x = x.reshape(rows, n, *x.shape[1:])
            log_prob = log_prob.reshape(rows, n)
        return x, log_prob

    def to_base(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The base point z = f(x | context) of each x: for x ~ p_x, z ~ p_z whatever the context
        (a conditional flow's latent space does not depend on the context)."""
        x, context = self._check(x, context)
        return self.transform(x, context)[0]

    def from_base(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Given base points z (e.g. stratified or quasi-random ones), x = f⁻¹(z) and
        log p_x(x) = log p_z(z) − log|det ∂f⁻¹/∂z|, in one inverse pass."""
        x, inv_logabsdet = self.transform.inverse(z, context)
        return x, self.base.log_prob(z) - inv_logabsdet

    def from_base_chunked(self, z: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """:meth:`from_base` (unconditional) ``chunk`` points at a time: on a CPU the per-point
        cost of a long batch grows once its intermediates no longer fit in the cache."""
        pieces = [self.from_base(piece) for piece in z.split(chunk)]
        return torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])

    def sample(self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` samples: shape ``(n, *event_shape)``, or ``(rows, n, *event_shape)``
        with a context of ``rows`` rows (``n`` samples for each context row)."""
        return self._draw(n, context, generator)[0]

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-densities in one inverse pass (no extra forward pass)."""
        return self._draw(n, context, generator)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, context_features={self.context_features}"
