"""Reading, writing, padding and measuring 8-bit images for the codec.

Images are uint8 arrays (H, W) for grayscale or (H, W, 3) for RGB. The codec works on
centred tensors x = n/255 − ½ of shape (1, 3, H', W'), with H', W' padded up to the model's
multiple by edge replication (cropped after decoding); grayscale images are coded as three
equal channels and come back as the mean of the decoded channels.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An image that cannot be read or used."""


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W) (grayscale) or (H, W, 3); alpha is dropped (with a warning)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ImageError(f"image {path} has {mode} pixels; the codec takes 8-bit images: convert it to 8-bit first")
            if "A" in mode or (mode == "P" and "transparency" in image.info):
                logger.warning("%s: the alpha channel is dropped (the codec codes RGB or grayscale)", path)
            converted = image.convert("L" if mode in ("1", "L", "LA") else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"cannot read image {path}: {error}; is it an image file (PNG, JPEG, …)?") from None
    return np.asarray(converted, dtype=np.uint8)


def write_image(path: str | Path, pixels: np.ndarray) -> None:
    """Write uint8 pixels losslessly (PNG unless the suffix says otherwise), atomically."""
    from PIL import Image

    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=_format_for(path))
    write_bytes_atomic(path, buffer.getvalue())


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}.get(suffix, "PNG")


def check_pixels(pixels: np.ndarray, name: str = "image") -> np.ndarray:
    """uint8 (H, W) or (H, W, 3), at least 1×1; a clear error otherwise."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ImageError(f"{name} must be uint8 pixels, got {pixels.dtype}; scale and convert it to 8 bits first")
    if pixels.ndim not in (2, 3) or pixels.ndim == 3 and pixels.shape[2] != 3 or min(pixels.shape[:2]) < 1:
        raise ImageError(f"{name} must have shape (H, W) or (H, W, 3), got {pixels.shape}")
    return pixels


def to_tensor(pixels: np.ndarray, multiple: int) -> Tensor:
    """Centred (1, 3, H', W') float tensor, sides padded by edge replication to ``multiple``."""
    pixels = check_pixels(pixels)
    rgb = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1))).float()[None] / 255.0 - 0.5


def to_pixels(x: Tensor, height: int, width: int, channels: int) -> np.ndarray:
    """uint8 pixels from a decoded centred tensor, cropped to height × width."""
    x = x[0, :, :height, :width]
    if channels == 1:
        x = x.mean(0, keepdim=True)
    n = ((x + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return n[0] if channels == 1 else n.transpose(1, 2, 0).copy()


def mean_squared_error(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MSE of two uint8 images in 8-bit units (255²·MSE of pixel values in [0, 1])."""
    return float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio 10·log₁₀(255²/MSE) in dB (inf for identical images)."""
    mse = mean_squared_error(reference, decoded)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


#: MS-SSIM needs images whose smaller side exceeds this (four 2× downsamplings of an 11-pixel window).
MS_SSIM_MIN_SIDE = 160


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Multi-scale SSIM (Wang et al. 2003) of two uint8 images, RGB or grayscale: pytorch_msssim's
    five scales and weights, 11-pixel Gaussian window, data range 255, averaged over channels.
    1 for identical images; NaN when the smaller side is MS_SSIM_MIN_SIDE pixels or less."""
    if min(reference.shape[:2]) <= MS_SSIM_MIN_SIDE:
        return math.nan
    from pytorch_msssim import ms_ssim as _ms_ssim

    def as_batch(pixels: np.ndarray) -> Tensor:
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]

    return float(_ms_ssim(as_batch(reference), as_batch(decoded), data_range=255.0, size_average=True))
