"""Base distributions p_z of a flow: a standard normal and a uniform box.

Each is an ``nn.Module`` so that it follows the flow between devices, with
``log_prob(z) -> (batch,)`` and ``sample(n) -> (n, *event_shape)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BaseDistribution(nn.Module):
    """A density over tensors of shape ``event_shape`` with exact log-probabilities."""

    event_shape: tuple[int, ...]

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    @property
    def _anchor(self) -> Tensor:
        return self.get_buffer("_device_anchor")


class StandardNormal(BaseDistribution):
    """N(0, I): log p(z) = −½‖z‖² − (D/2)·log 2π, with D = prod(event_shape)."""

    def __init__(self, event_shape: int | tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self._log_norm = -0.5 * math.prod(self.event_shape) * math.log(2 * math.pi)

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * z.reshape(z.shape[0], -1).square().sum(dim=1) + self._log_norm

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        a = self._anchor
        return torch.randn((n, *self.event_shape), generator=generator, device=a.device, dtype=a.dtype)


class BoxUniform(BaseDistribution):
    """Uniform on [low, high]^D: log p(z) = −D·log(high − low) inside the box (up to rounding), −inf outside."""

    def __init__(self, event_shape: int | tuple[int, ...], low: float = 0.0, high: float = 1.0) -> None:
        super().__init__()
        if not high > low:
            raise ValueError(f"BoxUniform needs high > low, got low={low}, high={high}")
        self.event_shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        self.low, self.high = float(low), float(high)
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)
        self._log_density = -math.prod(self.event_shape) * math.log(self.high - self.low)

    def log_prob(self, z: Tensor) -> Tensor:
        flat = z.reshape(z.shape[0], -1)
        # a few units of rounding past an end still count as inside: bounded maps reach their
        # ends in floating point only up to rounding, and a point there must not get density 0
        slack = 8 * torch.finfo(z.dtype).eps * (self.high - self.low)
        lowest, highest = torch.aminmax(flat, dim=1)  # one pass over the points
        inside = (lowest >= self.low - slack) & (highest <= self.high + slack)
        return torch.where(inside, self._log_density, -math.inf).to(z.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        a = self._anchor
        u = torch.rand((n, *self.event_shape), generator=generator, device=a.device, dtype=a.dtype)
        return self.low + (self.high - self.low) * u
