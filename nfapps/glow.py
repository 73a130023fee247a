"""Glow (Kingma & Dhariwal 2018): a multi-scale flow for images of shape (C, H, W).

Data x ∈ [0, 1)^(C×H×W) (dequantized pixels, see :mod:`nfapps.images`) →
preprocessing (logit with a margin, or a shift by −½) → L levels, each
Squeeze → K × (ActNorm → InvertibleConv1x1 → AffineCouplingConv) → factor out half the
channels (all of them at the last level) → the flat latent reshaped back to (C, H, W), so data
and latent share the flow's ``event_shape`` and the base is N(0, I) over (C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .distributions import StandardNormal
from .flow import Flow
from .registry import register_builder
from .transforms.base import Compose, Transform
from .transforms.elementwise import Affine, Logit
from .transforms.image import ActNorm, AffineCouplingConv, InvertibleConv1x1, MultiScale, Reshape, Squeeze


def _preprocess(name: str, margin: float) -> list[Transform]:
    if name == "logit":
        return [Logit(margin)]
    if name == "center":
        return [Affine(shift=-0.5)]
    if name == "none":
        return []
    raise ValueError(f"unknown preprocess {name!r}; choose 'logit', 'center' or 'none'")


def _level(shape: tuple[int, int, int], levels: int, steps: int, **coupling) -> Transform:
    """Levels of the multi-scale flow from an image of ``shape`` to a flat latent."""
    c, h, w = shape
    squeezed = (4 * c, h // 2, w // 2)
    pre = Compose(
        Squeeze(),
        [
            Compose(ActNorm(4 * c), InvertibleConv1x1(4 * c), AffineCouplingConv(4 * c, **coupling))
            for _ in range(steps)
        ],
    )
    if levels == 1:
        return Compose(pre, Reshape(squeezed, (math.prod(squeezed),)))
    kept = (2 * c, h // 2, w // 2)  # the half of the 4c channels that is not factored out
    return MultiScale(pre, _level(kept, levels - 1, steps, **coupling), squeezed)


@register_builder("Glow")
def Glow(
    shape: Sequence[int],
    levels: int = 2,
    steps: int = 4,
    hidden: int = 64,
    context: int = 0,
    scale_bound: float = 2.0,
    preprocess: str = "logit",
    margin: float = 0.05,
) -> Flow:
    """A Glow flow over images of ``shape`` = (C, H, W) with values in [0, 1).

    Args:
        shape: image shape (C, H, W); H and W must be divisible by 2^levels.
        levels: number of scales (each one squeezes, so spatial size halves per level).
        steps: Glow steps (ActNorm → 1×1 conv → affine coupling) per level.
        hidden: channels of the coupling conditioners.
        context: width of an optional conditioning vector (e.g. a one-hot label), broadcast
            over the pixels and stacked onto the input of every coupling's conditioner.
        scale_bound: soft bound on the couplings' log-scales.
        preprocess: ``"logit"`` (y = logit(α + (1 − 2α)x), log-det counted), ``"center"``
            (y = x − ½) or ``"none"``. With either of the first two, ``flow.log_prob`` is a
            density over the [0, 1)-scaled data, as :func:`nfapps.images.bits_per_dim` expects.
        margin: the logit margin α.

    ActNorm layers initialise from the first batch passed to ``log_prob``: make it a
    representative training batch.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"Glow needs an image shape (C, H, W) of positive sizes, got {shape}")
    for name, value, low in (("levels", levels, 1), ("steps", steps, 1), ("hidden", hidden, 1), ("context", context, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"Glow needs {name} to be an integer ≥ {low}, got {value!r}")
    c, h, w = shape
    if h % 2**levels or w % 2**levels:
        raise ValueError(
            f"Glow with {levels} levels needs H and W divisible by 2^{levels} = {2**levels}, got {h}×{w}; "
            "pad or crop the images, or use fewer levels"
        )
    size = math.prod(shape)
    transform = Compose(
        _preprocess(preprocess, margin),
        _level(shape, levels, steps, hidden=hidden, context=context, scale_bound=scale_bound),
        Reshape((size,), shape),
    )
    return Flow(transform, StandardNormal(shape), context_features=context)


__all__ = ["Glow"]
