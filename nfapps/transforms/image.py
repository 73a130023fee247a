"""Transforms on image batches of shape (batch, C, H, W): the pieces of Glow (Kingma & Dhariwal 2018).

Every class follows the :class:`~nfapps.transforms.base.Transform` contract (data → latent in
``forward``, log-determinants of shape ``(batch,)``). A Glow step is
ActNorm → InvertibleConv1x1 → AffineCouplingConv; :class:`Squeeze` trades resolution for
channels and :class:`MultiScale` factors half the channels out into a flat latent at each level.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import Transform, sum_except_batch
from .maps import AffineMap


def _batch_constant(value: Tensor, like: Tensor) -> Tensor:
    """A per-sample log-det that is the same scalar for every sample of the batch."""
    return value.expand(like.shape[0])


class ActNorm(Transform):
    """Per-channel affine normalisation y = (x + b)·exp(log s), log|det| = H·W·Σ_c log s_c.

    Data-dependent initialisation: the first ``forward`` batch sets b = −mean and
    log s = −log(std + ε) per channel (over batch, H and W), so that batch leaves with mean 0
    and std 1 per channel. A persistent ``initialized`` buffer records it, so a state_dict
    round trip keeps the layer initialised. If the first call is ``inverse`` (e.g. sampling
    from a fresh flow) the layer is only marked initialised and stays the identity.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.eps = float(eps)
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # host-side mirror: no device sync once initialised

    def _needs_init(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return not self._known_initialized

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer on the next call

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3), unbiased=False)
        self.shift.copy_(-mean)
        self.log_scale.copy_(-(std + self.eps).log())
        self.initialized.fill_(True)

    def _logabsdet(self, x: Tensor) -> Tensor:
        return _batch_constant(x.shape[2] * x.shape[3] * self.log_scale.sum(), x)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._needs_init():
            self._initialize(x)
        y = (x + self.shift[:, None, None]) * self.log_scale.exp()[:, None, None]
        return y, self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._needs_init():
            self.initialized.fill_(True)
        x = z * (-self.log_scale).exp()[:, None, None] - self.shift[:, None, None]
        return x, -self._logabsdet(z)


class InvertibleConv1x1(Transform):
    """Channel mixing y = W·x at every pixel, with W in LU form.

    W = P·L·(U + diag(sign·exp(log|s|))), P a fixed permutation, L unit lower-triangular,
    U strictly upper-triangular, ``sign`` fixed; so log|det| = H·W·Σ log|s| costs O(C).
    W starts as a random orthogonal matrix (drawn from the global torch RNG). The inverse
    solves the two triangular systems, x = U'⁻¹·L⁻¹·Pᵀ·y, without forming W⁻¹.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        diag = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign", diag.sign())
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_abs_diag = nn.Parameter(diag.abs().log())

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.sign.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower.tril(-1) + eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_abs_diag.exp())
        return lower, upper

    def _logabsdet(self, x: Tensor) -> Tensor:
        return _batch_constant(x.shape[2] * x.shape[3] * self.log_abs_diag.sum(), x)

    def weight(self) -> Tensor:
        """The assembled C×C matrix W = P·L·U'."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.conv2d(x, self.weight()[:, :, None, None]), self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        lower, upper = self._factors()
        columns = self.permutation.T @ z.transpose(0, 1).reshape(c, -1)
        columns = torch.linalg.solve_triangular(lower, columns, upper=False, unitriangular=True)
        columns = torch.linalg.solve_triangular(upper, columns, upper=True)
        return columns.reshape(c, b, h, w).transpose(0, 1), -self._logabsdet(z)


class Squeeze(Transform):
    """Space-to-depth (C, H, W) → (4C, H/2, W/2); a permutation, so log|det| = 0.

    Output channel 4c + 2i + j holds input channel c at the pixels (2h + i, 2w + j).
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got an image of {h}×{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        if c % 4:
            raise ValueError(f"inverse Squeeze needs a multiple of 4 channels, got {c}")
        x = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w), z.new_zeros(b)


class Reshape(Transform):
    """Reshape each sample from ``in_shape`` to ``out_shape`` (same size); log|det| = 0."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"cannot reshape {self.in_shape} to {self.out_shape}: sizes differ")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.reshape(x.shape[0], *self.out_shape), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.reshape(z.shape[0], *self.in_shape), z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"{self.in_shape} → {self.out_shape}"


class ConvConditioner(nn.Sequential):
    """3×3 conv → ReLU → 1×1 conv → ReLU → 3×3 conv; the last conv starts at zero."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)


class AffineCouplingConv(Transform):
    """Affine coupling over channels: x = (x_a, x_b) with x_a the first ⌊C/2⌋ channels;
    y_a = x_a, y_b = x_b·exp(s) + t with (t, s) = ConvNet(x_a [, context]) and s soft-clamped
    by :class:`~nfapps.transforms.maps.AffineMap`; log|det| = Σ s.

    The conditioner's last layer starts at zero, so a fresh layer is the identity. A context
    of shape (batch, context) is broadcast over the pixels and stacked onto x_a as channels.
    """

    def __init__(self, channels: int, hidden: int = 64, context: int = 0, scale_bound: float = 2.0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"AffineCouplingConv needs at least 2 channels, got {channels}")
        self.split = channels // 2
        self.context = int(context)
        self.map = AffineMap(scale_bound)
        self.conditioner = ConvConditioner(self.split + self.context, (channels - self.split) * self.map.num_params, hidden)

    def _params(self, x_a: Tensor, context: Tensor | None) -> Tensor:
        """Conditioner output as (batch, C − ⌊C/2⌋, H, W, num_params)."""
        if self.context:
            if context is None:
                raise ValueError(f"this coupling is conditional: pass a context of shape (batch, {self.context})")
            x_a = torch.cat([x_a, context[:, :, None, None].expand(-1, -1, *x_a.shape[2:])], dim=1)
        out = self.conditioner(x_a)
        b, _, h, w = out.shape
        return out.reshape(b, -1, self.map.num_params, h, w).permute(0, 1, 3, 4, 2)

    def _couple(self, x: Tensor, context: Tensor | None, direction: str) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        y_b, ladj = getattr(self.map, direction)(x_b, self._params(x_a, context))
        return torch.cat([x_a, y_b], dim=1), sum_except_batch(ladj)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, "forward")

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, "inverse")


class MultiScale(Transform):
    """One level of a multi-scale flow: image (batch, *in_shape) → flat latent (batch, D).

    ``pre`` maps the image to a tensor of shape ``shape`` = (C, H, W); its last ⌊C/2⌋
    channels are factored out, and the first C − ⌊C/2⌋ go to ``inner`` (the next level),
    which must return a flat latent. Latent ordering: z = [inner latent, factored-out channels
    flattened in (channel, row, column) order]; so nesting levels puts the coarsest level's
    latent first and the finest level's factored-out channels last.
    log|det| = log|det pre| + log|det inner| (the split and flattening are permutations).
    """

    def __init__(self, pre: Transform, inner: Transform, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.pre, self.inner = pre, inner
        self.shape = tuple(shape)
        self.keep = self.shape[0] - self.shape[0] // 2
        self.kept_size = self.keep * self.shape[1] * self.shape[2]

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, ladj = self.pre(x, context)
        z_inner, ladj_inner = self.inner(y[:, : self.keep], context)
        return torch.cat([z_inner, y[:, self.keep :].flatten(1)], dim=1), ladj + ladj_inner

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c, h, w = self.shape
        y_kept, ladj_inner = self.inner.inverse(z[:, : self.kept_size], context)
        y_out = z[:, self.kept_size :].reshape(z.shape[0], c - self.keep, h, w)
        x, ladj = self.pre.inverse(torch.cat([y_kept, y_out], dim=1), context)
        return x, ladj + ladj_inner

    def extra_repr(self) -> str:
        return f"shape={self.shape}, keep={self.keep}"


__all__ = [
    "ActNorm",
    "InvertibleConv1x1",
    "Squeeze",
    "Reshape",
    "ConvConditioner",
    "AffineCouplingConv",
    "MultiScale",
]
