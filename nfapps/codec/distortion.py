"""The rate–distortion objective J = R + λ·D of a flow codec: what training minimises over the
model and what the encoder minimises over one image's latents (:mod:`~nfapps.codec.refine`).

R is in bits per pixel; the distortion D is 255²·MSE (pixel values in [0, 1]) or 1 − MS-SSIM,
CompressAI's two conventions, so its λ values carry over (its pretrained qualities 1–8 used
MSE: 0.0018–0.18, MS-SSIM: 2.40–220).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .images import mean_squared_error, ms_ssim

#: What the distortion D in R + λ·D measures.
DISTORTIONS = ("mse", "ms-ssim")


@dataclass(frozen=True)
class Objective:
    """J = R + λ·D with D of kind ``distortion`` (one of :data:`DISTORTIONS`)."""

    lmbda: float
    distortion: str = "mse"

    def __post_init__(self) -> None:
        if not (isinstance(self.lmbda, (int, float)) and self.lmbda > 0 and math.isfinite(self.lmbda)):
            raise ValueError(f"lmbda must be a positive number, got {self.lmbda!r}")
        if self.distortion not in DISTORTIONS:
            raise ValueError(f"distortion must be one of {', '.join(DISTORTIONS)}, got {self.distortion!r}")

    def of_pixels(self, reference: np.ndarray, decoded: np.ndarray) -> float:
        """D between two uint8 images, as a user sees them (NaN for MS-SSIM on images too small)."""
        if self.distortion == "mse":
            return mean_squared_error(reference, decoded)
        return 1.0 - ms_ssim(reference, decoded)


def distortion(x_hat: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """D of a batch (pixel values in [−½, ½]), differentiable: 255²·MSE, or 1 − MS-SSIM over the
    batch (data range 1, pytorch_msssim's five scales and weights)."""
    if kind == "mse":
        return 255.0**2 * (x_hat - x).square().mean()
    from pytorch_msssim import ms_ssim as _ms_ssim

    return 1.0 - _ms_ssim(x_hat + 0.5, x + 0.5, data_range=1.0, size_average=True)
