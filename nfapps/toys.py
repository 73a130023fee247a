"""Built-in 2-D toy densities for demos and tests: two moons, checkerboard, rings, 8 Gaussians.

Each sampler draws ``n`` points with a NumPy generator, so a seed fixes the data set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """Two interleaved half circles of radius 1 (centres (0, 0) and (1, −0.5)), Gaussian noise."""
    upper = rng.random(n) < 0.5
    angle = np.pi * rng.random(n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) * 2
    return points + noise * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 squares (i + j even) of a 4×4 board of 2×2 squares on [−4, 4]²."""
    x1 = rng.random(n) * 8 - 4
    column = np.floor((x1 + 4) / 2).clip(0, 3).astype(int)
    row = 2 * rng.integers(0, 2, n) + column % 2
    x2 = -4 + 2 * row + 2 * rng.random(n)
    return np.stack([x1, x2], axis=1)


def rings(n: int, rng: np.random.Generator, noise: float = 0.08) -> np.ndarray:
    """Three concentric rings of radii 1, 2 and 3 with mass proportional to the radius."""
    radius = rng.choice([1.0, 2.0, 3.0], size=n, p=[1 / 6, 2 / 6, 3 / 6])
    angle = 2 * np.pi * rng.random(n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return points + noise * rng.standard_normal((n, 2))


def eight_gaussians(n: int, rng: np.random.Generator, scale: float = 3.0, std: float = 0.3) -> np.ndarray:
    """Mixture of 8 equal Gaussians (σ = ``std``) on a circle of radius ``scale``."""
    k = rng.integers(0, 8, n)
    centres = scale * np.stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)], axis=1)
    return centres + std * rng.standard_normal((n, 2))


TOY_DENSITIES: dict[str, Callable[..., np.ndarray]] = {
    "moons": two_moons,
    "checkerboard": checkerboard,
    "rings": rings,
    "8gaussians": eight_gaussians,
}


def sample_toy(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Draw ``n`` points of the named toy density (float32 array of shape (n, 2))."""
    try:
        sampler = TOY_DENSITIES[name]
    except KeyError:
        raise ValueError(f"unknown toy density {name!r}; choose one of {sorted(TOY_DENSITIES)}") from None
    return sampler(int(n), np.random.default_rng(seed)).astype(np.float32)
