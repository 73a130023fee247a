"""CompressAI's learned autoencoder codecs (Ballé et al. 2018, "bmshj2018") as a baseline for the
flow codec: trained by :func:`~nfapps.codec.train.train_codec` on the same patches, loss and
budget, and coded through the same :class:`~nfapps.codec.codec.ImageCodec` and NFIC files.

- ``"bmshj2018-factorized"``: y = g_a(x), ŷ = ⌊y⌉ coded by an ``EntropyBottleneck``, x̂ = g_s(ŷ).
- ``"bmshj2018-hyperprior"``: also z = h_a(|y|) coded by an ``EntropyBottleneck``, and ŷ by a
  ``GaussianConditional`` with scales h_s(ẑ).

The analysis and synthesis transforms (GDN convolutions, stride 2 four times) are CompressAI's;
unlike the flow they are not inverses of each other, so x̂ ≠ x even before quantization, and
re-encoding a decoded image moves it (no settling: ``ImageCodec(..., settle=0)``). Training
follows CompressAI: the rate of ỹ = y + u, the distortion of g_s(ỹ), on images in [0, 1].
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..device import reproducible_arithmetic
from .backend import load_compressai
from .model import bottleneck_medians, model_identifier, round_around, update_entropy_tables

#: architecture name → (CompressAI class in compressai.models, its total stride: H and W must be
#: multiples of it, and the coded latent — y, or the hyperprior's z — is that much smaller)
ARCHITECTURES = {"bmshj2018-factorized": ("FactorizedPrior", 16), "bmshj2018-hyperprior": ("ScaleHyperprior", 64)}


@dataclass(frozen=True)
class BaselineConfig:
    """A CompressAI autoencoder: ``architecture`` with N channels inside and M in the latent y
    (CompressAI's choice for its lower quality levels: N = 128, M = 192)."""

    architecture: str = "bmshj2018-hyperprior"
    n: int = 128
    m: int = 192

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"baseline architecture must be one of {tuple(ARCHITECTURES)}, got {self.architecture!r}")
        for name in ("n", "m"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"baseline {name} must be an integer ≥ 1, got {value!r}")


class LearnedBaseline(nn.Module):
    """A CompressAI model behind the codec-model interface :class:`~nfapps.codec.codec.ImageCodec`
    uses (the same as :class:`~nfapps.codec.model.FlowCodec`'s): the "latents" are [ŷ] or [ŷ, ẑ],
    images are centred, x = n/255 − ½."""

    def __init__(self, config: BaselineConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = config if config is not None else BaselineConfig(**overrides)
        load_compressai()
        name, self.multiple = ARCHITECTURES[self.config.architecture]
        self.net = getattr(importlib.import_module("compressai.models"), name)(self.config.n, self.config.m)
        self.hyperprior = self.config.architecture == "bmshj2018-hyperprior"
        self._identifier: bytes | None = None

    @property
    def streams_per_image(self) -> int:
        return 2 if self.hyperprior else 1

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Training pass (CompressAI's): ``x_hat``, ``bpp`` and ``bpp_side`` as FlowCodec.forward."""
        out = self.net(x + 0.5)
        pixels = x.shape[-2] * x.shape[-1]
        bits = {k: -v.log2().flatten(1).sum(1) for k, v in out["likelihoods"].items()}
        side = bits.get("z", x.new_zeros(x.shape[0]))
        return {"x_hat": out["x_hat"] - 0.5, "bpp": sum(bits.values()) / pixels, "bpp_side": side / pixels}

    def aux_loss(self) -> Tensor:
        return self.net.aux_loss()

    def update(self) -> None:
        update_entropy_tables(self)
        self._identifier = None

    def identifier(self) -> bytes:
        if self._identifier is None:
            self._identifier = model_identifier(self.config, self)
        return self._identifier

    # -- coding, as FlowCodec ------------------------------------------------------------------
    @torch.no_grad()
    def quantized_latents(self, x: Tensor) -> list[Tensor]:
        y = self.net.g_a(x + 0.5)
        medians = bottleneck_medians(self.net.entropy_bottleneck)
        if not self.hyperprior:
            return [round_around(y, medians)]
        return [torch.round(y), round_around(self.net.h_a(torch.abs(y)), medians)]

    @torch.no_grad()
    @reproducible_arithmetic()
    def synthesis(self, latents: list[Tensor]) -> Tensor:
        return self.net.g_s(latents[0]) - 0.5

    @torch.no_grad()
    @reproducible_arithmetic()
    def compress_latents(self, latents: list[Tensor]) -> list[bytes]:
        """Streams: ŷ's (and ẑ's, after it). Rounding quantized values again is the identity."""
        if latents[0].shape[0] != 1:
            raise ValueError(f"compress one image at a time, got a batch of {latents[0].shape[0]}")
        if not self.hyperprior:
            return self.net.entropy_bottleneck.compress(latents[0])
        y_hat, z_hat = latents
        indexes = self.net.gaussian_conditional.build_indexes(self.net.h_s(z_hat))
        return [self.net.gaussian_conditional.compress(y_hat, indexes)[0], self.net.entropy_bottleneck.compress(z_hat)[0]]

    @torch.no_grad()
    @reproducible_arithmetic()
    def decompress_latents(self, streams: list[bytes], height: int, width: int) -> list[Tensor]:
        if len(streams) != self.streams_per_image:
            raise ValueError(f"expected {self.streams_per_image} streams, got {len(streams)}")
        if not self.hyperprior:
            return [self.net.entropy_bottleneck.decompress(streams, (height // self.multiple, width // self.multiple))]
        z_hat = self.net.entropy_bottleneck.decompress([streams[1]], (height // self.multiple, width // self.multiple))
        indexes = self.net.gaussian_conditional.build_indexes(self.net.h_s(z_hat))
        return [self.net.gaussian_conditional.decompress([streams[0]], indexes, z_hat.dtype), z_hat]

    @torch.no_grad()
    def estimated_bits(self, latents: list[Tensor]) -> float:
        if not self.hyperprior:
            _, likelihood = self.net.entropy_bottleneck(latents[0], training=False)
            return float(-likelihood.log2().sum())
        y_hat, z_hat = latents
        _, z_likelihood = self.net.entropy_bottleneck(z_hat, training=False)
        _, y_likelihood = self.net.gaussian_conditional(y_hat, self.net.h_s(z_hat), training=False)
        return float(-(y_likelihood.log2().sum() + z_likelihood.log2().sum()))
