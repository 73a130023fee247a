"""The image codec a user holds: a trained :class:`~nfapps.codec.model.FlowCodec` with files in and out.

>>> codec = ImageCodec.load("codec.nfc")
>>> data = codec.encode(pixels)           # bytes of an NFIC file (see nfapps.codec.bitstream)
>>> pixels_hat = codec.decode(data)       # uint8, the same shape as pixels
>>> codec.compress_file("photo.png", "photo.nfic"); codec.decompress_file("photo.nfic", "back.png")
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..atomic import FlowFileError, dump, load_container, write_bytes_atomic
from ..device import resolve_device
from . import bitstream
from .bitstream import BitstreamError, Header
from .distortion import Objective
from .images import MS_SSIM_MIN_SIDE, check_pixels, read_image, to_pixels, to_tensor, write_image
from .baseline import BaselineConfig, LearnedBaseline
from .model import DERIVED_BUFFERS, CodecConfig, FlowCodec, learned_state
from .refine import refine_latents

logger = logging.getLogger(__name__)


#: Settling rounds of the flow codec's encoder (see ImageCodec).
DEFAULT_SETTLE = 8

#: Adam steps of the flow codec's encoder-side rate–distortion optimisation (see ImageCodec).
DEFAULT_REFINE = 30


class ImageCodec:
    """Encode and decode 8-bit images with a trained flow codec (entropy tables built on creation).

    Idempotent encoding (``settle``): the flow is exactly invertible, so re-encoding a decoded image
    would give back the same latents — but for the decoded image's rounding to 8 bits, which can
    push a latent across a quantization boundary, so each decode → encode cycle could drift. The
    encoder therefore settles: it decodes its own choice of latents to 8-bit pixels (as a user
    saves them), encodes those again, and repeats, up to ``settle`` times, until the latents
    reproduce themselves. A settled file decodes to an image whose re-encoding is bit-identical:
    every later cycle loses exactly nothing. The first decode carries the small loss those cycles
    would have spread out (measured in the benchmark); ``settle=0`` turns it off, and is the
    default for a :class:`~nfapps.codec.baseline.LearnedBaseline`. Where no fixed point comes
    within ``settle`` rounds (high rates, whose step is finer than the 8-bit rounding: each round
    then only diffuses the image, ≈ 0.03 dB per round at λ = 1.2), the encoder codes the latents
    it started from, so that a decode → encode cycle costs one such step, not ``settle``.

    Rate–distortion optimised latents (``refine``): before settling, the encoder of a flow codec
    that knows its training ``objective`` (R + λ·D, saved with the codec) spends up to ``refine``
    Adam steps choosing the latents that minimise it for this image (:mod:`~nfapps.codec.refine`),
    keeping the natural rounding unless an iterate beats it. An image that this model's decoder
    produced (its natural latents decode back to it exactly) is coded by those latents, untouched:
    re-compressing a decoded image stays lossless. ``refine=0`` turns it off.
    """

    def __init__(self, model: FlowCodec | LearnedBaseline, device: str | torch.device = "cpu", settle: int | None = None,
                 objective: Objective | None = None, refine: int | None = None) -> None:
        flow = isinstance(model, FlowCodec)
        if settle is None:  # an autoencoder's decoder is no inverse of its encoder: nothing to settle
            settle = DEFAULT_SETTLE if flow else 0
        if refine is None:
            refine = DEFAULT_REFINE if flow and objective is not None else 0
        for name, value in (("settle", settle), ("refine", refine)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {value!r}")
        if refine and not (flow and objective is not None):
            raise ValueError("refining latents needs a flow codec and the objective R + λ·D it was trained for")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.model.update()
        self.settle = settle
        self.objective = objective
        self.refine = refine
        self.last_settled: bool | None = None  # whether the latest encode reached a fixed point
        self.last_refinement: dict[str, float] | None = None  # J before and after the latest encode's refinement

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the codec (configuration and parameters) atomically."""
        objective = asdict(self.objective) if self.objective is not None else None
        dump({"config": asdict(self.model.config), "state": learned_state(self.model), "objective": objective}, path, "codec")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", refine: int | None = None) -> "ImageCodec":
        """A codec written by :meth:`save` (or ``nfapps codec train``)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"codec file {path} does not exist; train one with `nfapps codec train`")
        payload = load_container(path, "codec")
        model = model_from_payload(payload, path)
        try:
            objective = Objective(**payload["objective"]) if payload.get("objective") else None
        except (TypeError, ValueError) as error:
            raise FlowFileError(f"{path} holds no valid training objective ({error}); re-train it") from None
        return cls(model, device, objective=objective, refine=refine)

    # -- coding --------------------------------------------------------------------------------
    @property
    def identifier(self) -> bytes:
        return self.model.identifier()

    def encode(self, pixels: np.ndarray) -> bytes:
        """An NFIC file's bytes for uint8 pixels (H, W) or (H, W, 3)."""
        pixels = check_pixels(pixels)
        height, width = pixels.shape[:2]
        streams = self.model.compress_latents(self.latents(pixels))
        header = Header(1 if pixels.ndim == 2 else 3, height, width, self.identifier)
        return bitstream.pack(header, streams)

    def decode(self, data: bytes, source: str = "the data") -> np.ndarray:
        """The uint8 image of an NFIC file's bytes; :class:`BitstreamError` if they are not one of this model's."""
        header, latents = self._read(data, source)
        return to_pixels(self.model.synthesis(latents), header.height, header.width, header.channels)

    def estimated_bpp(self, data: bytes, source: str = "the data") -> float:
        """The model's own rate for the latents an NFIC file holds, −Σ log₂ p per pixel: what its
        streams should cost (the file adds the header and the coder's overhead)."""
        header, latents = self._read(data, source)
        return self.model.estimated_bits(latents) / (header.height * header.width)

    def _read(self, data: bytes, source: str) -> tuple[Header, list[torch.Tensor]]:
        """A file's header and its entropy-decoded latents, every check done."""
        header, streams = bitstream.unpack(data, source)
        if header.model != self.identifier:
            raise BitstreamError(
                f"{source} was written by another codec model (id {header.model.hex()}, this one is "
                f"{self.identifier.hex()}); decode it with the model that compressed it"
            )
        m = self.model.multiple
        padded_h, padded_w = -(-header.height // m) * m, -(-header.width // m) * m
        try:
            return header, self.model.decompress_latents(streams, padded_h, padded_w)
        except (RuntimeError, ValueError) as error:  # a wrong stream count, or streams that do not decode
            raise BitstreamError(f"{source} could not be entropy-decoded ({error}); it is damaged") from None

    def latents(self, pixels: np.ndarray) -> list[torch.Tensor]:
        """The quantized latents :meth:`encode` codes for ``pixels``: refined, then settled (see the class)."""
        pixels = check_pixels(pixels)
        x = to_tensor(pixels, self.model.multiple).to(self.device)
        first = latents = self.model.quantized_latents(x)
        self.last_settled = self.last_refinement = None
        if self.refine and self._refinable(pixels):
            if np.array_equal(self._pixels(latents, pixels), pixels):  # a decode of this model: its latents reproduce it
                self.last_settled = True if self.settle else None
                return latents
            with torch.enable_grad():
                refined, self.last_refinement = refine_latents(self.model, x, pixels, self.objective, self.refine)
            first = latents = self.model.canonical(refined)
        for _ in range(self.settle):
            saved = self._pixels(latents, pixels)
            again = self.model.quantized_latents(to_tensor(saved, self.model.multiple).to(self.device))
            if all(torch.equal(a, b) for a, b in zip(latents, again)):
                self.last_settled = True
                return latents
            latents = again
        self.last_settled = False if self.settle else None
        return first  # no fixed point: the latents it started from (the rounds only drifted from them)

    def _refinable(self, pixels: np.ndarray) -> bool:
        """MS-SSIM, the one distortion with a minimum size, cannot be measured on small images."""
        return self.objective.distortion != "ms-ssim" or min(pixels.shape[:2]) > MS_SSIM_MIN_SIDE

    def _pixels(self, latents: list[torch.Tensor], like: np.ndarray) -> np.ndarray:
        return to_pixels(self.model.synthesis(latents), *like.shape[:2], 1 if like.ndim == 2 else 3)

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """What :meth:`decode` (:meth:`encode` (pixels)) returns, computed without entropy coding."""
        with torch.no_grad():
            return self._pixels(self.latents(pixels), check_pixels(pixels))

    # -- files ---------------------------------------------------------------------------------
    def compress_file(self, source: str | os.PathLike, target: str | os.PathLike) -> dict[str, float]:
        """Compress an image file to an NFIC file (written atomically; never over the source).
        Returns the size in bytes and the bit rate in bits per pixel (of the file)."""
        source, target = Path(source), Path(target)
        _refuse_same(source, target)
        pixels = read_image(source)
        data = self.encode(pixels)
        write_bytes_atomic(target, data)
        return {"bytes": len(data), "bpp": 8 * len(data) / (pixels.shape[0] * pixels.shape[1])}

    def decompress_file(self, source: str | os.PathLike, target: str | os.PathLike) -> np.ndarray:
        """Decode an NFIC file into a lossless image file (PNG by default), written atomically."""
        source, target = Path(source), Path(target)
        _refuse_same(source, target)
        if not source.is_file():
            raise FileNotFoundError(f"compressed file {source} does not exist")
        pixels = self.decode(source.read_bytes(), str(source))
        write_image(target, pixels)
        return pixels


def build_model(config: CodecConfig | BaselineConfig) -> FlowCodec | LearnedBaseline:
    """The codec model a configuration describes: a flow codec or a CompressAI baseline."""
    return LearnedBaseline(config) if isinstance(config, BaselineConfig) else FlowCodec(config)


def config_from_dict(values: dict) -> CodecConfig | BaselineConfig:
    """A saved configuration (``asdict`` of either kind) back as its dataclass."""
    return BaselineConfig(**values) if "architecture" in values else CodecConfig(**values)


def model_from_payload(payload: dict, path: str | os.PathLike) -> FlowCodec | LearnedBaseline:
    try:
        model = build_model(config_from_dict(payload["config"]))
        missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise FlowFileError(f"{path} does not hold a codec this nfapps can build ({error}); re-train or re-export it") from None
    missing = [k for k in missing if k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS]
    if missing or unexpected:
        raise FlowFileError(f"{path} does not match its codec configuration (missing {missing[:3]}, unexpected {unexpected[:3]}); re-train it")
    return model


def _refuse_same(source: Path, target: Path) -> None:
    if target.exists() and source.exists() and source.resolve() == target.resolve():
        raise ValueError(f"refusing to overwrite the input {source}: choose another output path")
