"""The flow codec (after Helminger et al. 2021, "Lossy Image Compression with Normalizing Flows").

Encoder: pixels n ∈ {0…255}^(C×H×W) → x = n/255 − ½ → latents y_l = g_l ⊙ f_l(x) (the
:class:`~nfapps.codec.latent_flow.LatentFlow` and a learned per-channel gain g_l = exp(γ_l), so
the quantization step in flow units is 1/g_l) → ŷ_l = Q(y_l) → entropy coding. Decoder:
x̂ = f⁻¹(ŷ_l / g_l), the exact inverse; nothing but the quantization Q is lost.

Entropy models (CompressAI), per scale l:
- ``"factorized"``: an ``EntropyBottleneck`` — a learned density per channel, shared over pixels;
  Q rounds around its medians, ŷ = m + ⌊y − m⌉.
- ``"hyperprior"`` (Ballé et al. 2018): side information z_l = h_a(y_l) coded by an
  ``EntropyBottleneck``; ŷ_l ~ N(0, σ_l²) ∗ U(−½, ½) with σ_l = h_s(ẑ_l), a ``GaussianConditional``;
  Q rounds, ŷ = ⌊y⌉.

Training minimises R + λ·255²·MSE(x, x̂) with R = −Σ log₂ p(ỹ)/pixels in bits per pixel, ỹ = y + u,
u ~ U(−½, ½) (the usual differentiable proxy of the rate), and x̂ decoded from the rounded
latents with straight-through gradients (the distortion the decoder will really see).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .backend import entropy_models
from .latent_flow import LatentFlow

ENTROPY_MODELS = ("factorized", "hyperprior")
BOTTLENECK_INIT_SCALE = 3.0


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of a :class:`FlowCodec` (what a file's model identifier commits to)."""

    channels: int = 3
    levels: int = 3
    steps: int = 4
    hidden: int = 64
    # factorized: at an equal 20-minute CPU budget (λ = 0.01, ~3600 steps each) it gave 0.68 bpp at
    # 30.1 dB on the held-out photos, the hyperprior 1.08 bpp at 29.8 dB (README, results)
    entropy_model: str = "factorized"
    hyper_channels: int = 64  # channels of the hyperprior's side information z
    initial_gain: float = 1.0  # g at initialisation: the quantization step is one std of a latent (ActNorm-normalised)

    def __post_init__(self) -> None:
        for name in ("channels", "levels", "steps", "hidden", "hyper_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"codec {name} must be an integer ≥ 1, got {value!r}")
        if self.entropy_model not in ENTROPY_MODELS:
            raise ValueError(f"entropy_model must be one of {ENTROPY_MODELS}, got {self.entropy_model!r}")
        if not (self.initial_gain > 0 and math.isfinite(self.initial_gain)):
            raise ValueError(f"initial_gain must be a positive number, got {self.initial_gain!r}")


def _ste_round(y: Tensor, quantized: Tensor) -> Tensor:
    """The quantized values forward, the identity's gradient backward."""
    return y + (quantized - y).detach()


class _Hyperprior(nn.Module):
    """Scale hyperprior for one latent: z = h_a(y) (stride 2), σ = h_s(ẑ)."""

    def __init__(self, latent_channels: int, hyper_channels: int) -> None:
        super().__init__()
        models = entropy_models()
        self.analysis = nn.Sequential(
            nn.Conv2d(latent_channels, hyper_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hyper_channels, hyper_channels, 5, stride=2, padding=2),
        )
        self.synthesis = nn.Sequential(
            nn.ConvTranspose2d(hyper_channels, hyper_channels, 5, stride=2, padding=2, output_padding=1), nn.ReLU(),
            nn.Conv2d(hyper_channels, latent_channels, 3, padding=1),
        )
        self.side = models.EntropyBottleneck(hyper_channels, init_scale=BOTTLENECK_INIT_SCALE)
        self.conditional = models.GaussianConditional(None)

    def scales(self, z_hat: Tensor) -> Tensor:
        return nn.functional.softplus(self.synthesis(z_hat)) + 0.11  # GaussianConditional's lower bound

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(ŷ rounded, likelihoods of ỹ, likelihoods of z̃) for training."""
        z = self.analysis(y)
        z_tilde, z_likelihood = self.side(z)
        _, y_likelihood = self.conditional(y, self.scales(z_tilde))
        return self.quantize(y), y_likelihood, z_likelihood

    def quantize(self, y: Tensor) -> Tensor:
        return torch.round(y)

    def estimated_bits(self, y_hat: Tensor) -> float:
        """−Σ log₂ p of quantized latents and their side information: what the coder should spend."""
        z_hat, z_likelihood = self.side(self.analysis(y_hat), training=False)
        _, y_likelihood = self.conditional(y_hat, self.scales(z_hat), training=False)
        return float(-(y_likelihood.log2().sum() + z_likelihood.log2().sum()))

    def compress(self, y: Tensor) -> list[bytes]:
        z = self.analysis(y)
        z_strings = self.side.compress(z)
        z_hat = self.side.decompress(z_strings, z.shape[-2:])
        indexes = self.conditional.build_indexes(self.scales(z_hat))
        return [z_strings[0], self.conditional.compress(y, indexes)[0]]

    def decompress(self, strings: list[bytes], shape: tuple[int, int, int]) -> Tensor:
        _, h, w = shape
        z_hat = self.side.decompress([strings[0]], ((h + 1) // 2, (w + 1) // 2))
        indexes = self.conditional.build_indexes(self.scales(z_hat))
        return self.conditional.decompress([strings[1]], indexes, z_hat.dtype)

    streams = 2


class _Factorized(nn.Module):
    """A learned per-channel density, shared over pixels (CompressAI's EntropyBottleneck)."""

    streams = 1

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        # init_scale: the initial density's width; CompressAI's default 10 suits latents with a
        # std of several units, ours start at 1 (ActNorm, gain 1), and a 10-wide start costs
        # thousands of batches at ~16 bits per pixel before the density narrows
        self.bottleneck = entropy_models().EntropyBottleneck(latent_channels, init_scale=BOTTLENECK_INIT_SCALE)

    def quantize(self, y: Tensor) -> Tensor:
        medians = self.bottleneck._get_medians().detach()
        return torch.round(y - medians) + medians

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor, None]:
        _, likelihood = self.bottleneck(y)
        return self.quantize(y), likelihood, None

    def estimated_bits(self, y_hat: Tensor) -> float:
        """−Σ log₂ p of quantized latents: what the coder should spend."""
        _, likelihood = self.bottleneck(y_hat, training=False)
        return float(-likelihood.log2().sum())

    def compress(self, y: Tensor) -> list[bytes]:
        return self.bottleneck.compress(y)

    def decompress(self, strings: list[bytes], shape: tuple[int, int, int]) -> Tensor:
        return self.bottleneck.decompress(strings, shape[1:])


class FlowCodec(nn.Module):
    """Flow codec: :meth:`forward` for training, :meth:`quantized_latents` / :meth:`synthesis` for
    coding without entropy coding, :meth:`compress_latents` / :meth:`decompress_latents` for the
    entropy-coded streams (:class:`~nfapps.codec.codec.ImageCodec` chooses the latents)."""

    def __init__(self, config: CodecConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = config if config is not None else CodecConfig(**overrides)
        c = self.config
        self.flow = LatentFlow(c.channels, c.levels, c.steps, c.hidden)
        self.log_gains = nn.ParameterList(
            [nn.Parameter(torch.full((ch,), math.log(c.initial_gain))) for ch in self.flow.latent_channels]
        )
        if c.entropy_model == "hyperprior":
            self.entropy = nn.ModuleList(_Hyperprior(ch, c.hyper_channels) for ch in self.flow.latent_channels)
        else:
            self.entropy = nn.ModuleList(_Factorized(ch) for ch in self.flow.latent_channels)
        self._identifier: bytes | None = None

    # -- geometry --------------------------------------------------------------------------
    @property
    def multiple(self) -> int:
        """Image sides are padded to a multiple of this (the flow's 2^L, ×2 for the hyperprior)."""
        return self.flow.multiple * (2 if self.config.entropy_model == "hyperprior" else 1)

    @property
    def streams_per_image(self) -> int:
        return sum(model.streams for model in self.entropy)

    # -- the transform -----------------------------------------------------------------------
    def analysis(self, x: Tensor) -> list[Tensor]:
        """Latents g_l ⊙ f_l(x) of centred images x = n/255 − ½."""
        return [y * g.exp()[:, None, None] for y, g in zip(self.flow(x), self.log_gains)]

    def synthesis(self, latents: list[Tensor]) -> Tensor:
        """x̂ = f⁻¹(ŷ_l / g_l)."""
        return self.flow.inverse([y * (-g).exp()[:, None, None] for y, g in zip(latents, self.log_gains)])

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Training pass on centred images x (B, C, H, W): ``x_hat`` (decoded from rounded latents,
        straight-through), ``bpp`` (rate proxy in bits per pixel, per image) and ``bpp_side``."""
        pixels = x.shape[-2] * x.shape[-1]
        bits, side_bits, decoded = x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0]), []
        for y, model in zip(self.analysis(x), self.entropy):
            y_hat, likelihood, side_likelihood = model(y)
            bits = bits - likelihood.log2().flatten(1).sum(1)
            if side_likelihood is not None:
                side_bits = side_bits - side_likelihood.log2().flatten(1).sum(1)
            decoded.append(_ste_round(y, y_hat))
        return {"x_hat": self.synthesis(decoded), "bpp": (bits + side_bits) / pixels, "bpp_side": side_bits / pixels}

    def aux_loss(self) -> Tensor:
        """CompressAI's quantile loss of the entropy bottlenecks (trained by its own optimiser)."""
        return sum(m.loss() for m in self.modules() if isinstance(m, entropy_models().EntropyBottleneck))

    @torch.no_grad()
    def quantized_latents(self, x: Tensor) -> list[Tensor]:
        return [model.quantize(y) for y, model in zip(self.analysis(x), self.entropy)]

    # -- coding ---------------------------------------------------------------------------------
    def update(self) -> None:
        """Build the entropy coders' CDF tables from the learned densities (after training or loading)."""
        for module in self.modules():
            if isinstance(module, entropy_models().EntropyBottleneck):
                module.update(force=True)
            elif isinstance(module, entropy_models().GaussianConditional):
                module.update_scale_table(_scale_table(), force=True)
        self._identifier = None

    @torch.no_grad()
    def compress_latents(self, latents: list[Tensor]) -> list[bytes]:
        """Entropy-coded streams of one image's quantized latents (:meth:`quantized_latents`, batch 1)."""
        if latents[0].shape[0] != 1:
            raise ValueError(f"compress one image at a time, got a batch of {latents[0].shape[0]}")
        streams: list[bytes] = []
        for y_hat, model in zip(latents, self.entropy):
            streams.extend(model.compress(y_hat))  # rounding quantized values again is the identity
        return streams

    @torch.no_grad()
    def decompress_latents(self, streams: list[bytes], height: int, width: int) -> list[Tensor]:
        """The quantized latents of :meth:`compress_latents`' streams for a (padded) height × width."""
        if len(streams) != self.streams_per_image:
            raise ValueError(f"expected {self.streams_per_image} streams, got {len(streams)}")
        latents, at = [], 0
        for shape, model in zip(self.flow.latent_shapes(height, width), self.entropy):
            latents.append(model.decompress(streams[at : at + model.streams], shape))
            at += model.streams
        return latents

    @torch.no_grad()
    def estimated_bits(self, latents: list[Tensor]) -> float:
        """The model's own code length −Σ log₂ p of quantized latents (side information included)."""
        return sum(model.estimated_bits(y_hat) for y_hat, model in zip(latents, self.entropy))

    def identifier(self) -> bytes:
        """8 bytes that name this model: a hash of its configuration and every parameter and
        buffer (the CDF tables included), so a file from any other model is recognised."""
        if self._identifier is None:
            digest = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._identifier = digest.digest()[:8]
        return self._identifier


def _scale_table(low: float = 0.11, high: float = 256.0, levels: int = 64) -> Tensor:
    """Log-spaced Gaussian scales for the conditional's CDF tables (CompressAI's default range)."""
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels))
