"""A fully convolutional multi-scale flow from an image to a list of latents, one per scale.

Built from the engine's Glow pieces (:mod:`nfapps.transforms.image`). Level l (l = 0…L−1)
squeezes (space-to-depth, C → 4C channels, H → H/2), applies K Glow steps
ActNorm → InvertibleConv1x1 → AffineCouplingConv, and factors out the last half of the channels
as latent y_l; the last level keeps all its channels. With C image channels, y_l has 2^(l+1)·C
channels at resolution H/2^(l+1) (the last level all that is left, 2^(L+1)·C), and the
latents together hold exactly H·W·C numbers: the map is a bijection of ℝ^(C×H×W), so the only
loss in a flow codec is the quantization of the latents. Unlike :func:`nfapps.glow.Glow` it
keeps the scales apart (an entropy model per scale) and works for any H, W divisible by 2^L.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..transforms.base import Compose
from ..transforms.image import ActNorm, AffineCouplingConv, InvertibleConv1x1, Squeeze


class LatentFlow(nn.Module):
    """x (B, C, H, W) ↦ [y_0, …, y_{L−1}] and back, exactly (up to float rounding).

    Args:
        channels: image channels C.
        levels: scales L; H and W must be divisible by 2^L.
        steps: Glow steps per level.
        hidden: channels of the coupling conditioners.
        scale_bound: soft bound of the couplings' log-scales.
    """

    def __init__(self, channels: int = 3, levels: int = 3, steps: int = 4, hidden: int = 64, scale_bound: float = 2.0) -> None:
        super().__init__()
        self.channels, self.levels = int(channels), int(levels)
        self.squeeze = Squeeze()
        blocks, width, self.latent_channels = [], self.channels, []
        for level in range(self.levels):
            width *= 4
            blocks.append(Compose([
                Compose(ActNorm(width), InvertibleConv1x1(width), AffineCouplingConv(width, hidden, scale_bound=scale_bound))
                for _ in range(steps)
            ]))
            out = width if level == self.levels - 1 else width // 2
            self.latent_channels.append(out)
            width -= out if level < self.levels - 1 else 0
        self.blocks = nn.ModuleList(blocks)

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2**self.levels

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(C_l, H_l, W_l) of every latent for an image of height × width."""
        return [(c, height >> (l + 1), width >> (l + 1)) for l, c in enumerate(self.latent_channels)]

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"the flow needs H and W divisible by {self.multiple}, got {x.shape[-2]}×{x.shape[-1]}; pad the image")
        latents = []
        h = x
        for level, block in enumerate(self.blocks):
            h, _ = block(self.squeeze(h)[0])
            if level < self.levels - 1:
                keep = h.shape[1] - self.latent_channels[level]
                latents.append(h[:, keep:])
                h = h[:, :keep]
            else:
                latents.append(h)
        return latents

    def inverse_level(self, h: Tensor, level: int) -> Tensor:
        """Level ``level``'s full state (its kept half and its latent, concatenated) ↦ the kept half
        of level − 1, or the image for level 0: one step of :meth:`inverse`, so that a decoder can
        condition level − 1's entropy model on it before decoding that level's latent."""
        h, _ = self.blocks[level].inverse(h)
        return self.squeeze.inverse(h)[0]

    def inverse(self, latents: list[Tensor]) -> Tensor:
        if len(latents) != self.levels:
            raise ValueError(f"expected {self.levels} latents, got {len(latents)}")
        h = latents[-1]
        for level in range(self.levels - 1, -1, -1):
            if level < self.levels - 1:
                h = torch.cat([h, latents[level]], dim=1)
            h = self.inverse_level(h, level)
        return h
