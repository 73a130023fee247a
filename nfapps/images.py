"""Discrete images as continuous data: dequantization, bits per dimension, a small data set.

A flow is a density over ℝ^D, but pixels are integers in {0, …, 2^b − 1}. Uniform
dequantization x = (n + u)/2^b with u ~ U[0, 1)^D turns them into points of [0, 1)^D. For any
density p over the [0, 1)-scaled data, Jensen's inequality gives a lower bound on the discrete
log-likelihood: log P(n) ≥ E_u[log p((n + u)/2^b)] − D·log 2^b; so bits per dimension
−(log p − D·log 2^b)/(D·ln 2) computed on dequantized data is an upper bound on the code length.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def dequantize(x: Tensor, bits: int = 8, generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Uniform dequantization (x + u)/2^bits with u ~ U[0, 1): integers in {0, …, 2^bits − 1}
    become floats in [0, 1), each pixel spread uniformly over its bin of width 2^−bits."""
    x = torch.as_tensor(x)
    if x.is_floating_point() or x.is_complex():
        raise ValueError(f"dequantize expects integer pixels (e.g. uint8), got dtype {x.dtype}")
    levels = 2**bits
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= levels):
        raise ValueError(f"pixels must lie in 0..{levels - 1} for {bits} bits, got {int(x.min())}..{int(x.max())}")
    dtype = dtype or torch.get_default_dtype()
    u = torch.rand(x.shape, generator=generator, dtype=dtype, device=x.device)
    return (x.to(dtype) + u) / levels


def bits_per_dim(log_prob: Tensor | float, num_dims: int, bits: int = 8) -> Tensor:
    """Bits per dimension −(log p − D·log 2^bits)/(D·ln 2) of a density over [0, 1)-scaled data.

    The density over the integer scale [0, 2^bits)^D is p/2^(bits·D), hence the
    −D·log 2^bits term. A model no better than uniform scores exactly ``bits``.
    """
    log_prob = torch.as_tensor(log_prob)
    return -(log_prob - num_dims * bits * math.log(2.0)) / (num_dims * math.log(2.0))


def load_digits(split: str = "all", test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, no download) as 8-bit images.

    Returns ``(images, labels)``: uint8 images of shape (N, 1, 8, 8) with the original
    values 0..16 scaled to round(v·255/16) ∈ 0..255, and int64 labels 0..9. ``split`` is
    ``"all"``, ``"train"`` or ``"test"``; the train/test split is a fixed random permutation
    (``seed``) with a fraction ``test_fraction`` held out.
    """
    from sklearn.datasets import load_digits as _sklearn_digits

    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    data = _sklearn_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = data.target.astype(np.int64)
    if split != "all":
        order = np.random.default_rng(seed).permutation(len(labels))
        n_test = int(round(test_fraction * len(labels)))
        index = order[:n_test] if split == "test" else order[n_test:]
        images, labels = images[index], labels[index]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


__all__ = ["dequantize", "bits_per_dim", "load_digits"]
