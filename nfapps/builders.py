"""Ready-made flows for vector data: short parameterisations of the same few transforms.

Every builder returns a :class:`~nfapps.flow.Flow` whose ``config`` records its arguments, so
:func:`nfapps.save` / :func:`nfapps.load` rebuild it without the user's code.

=========  ======================================  =====================================
builder    layer                                    element-wise map τ
=========  ======================================  =====================================
RealNVP    coupling (halves / alternating / binary) affine, soft-clamped log-scale
NSF        coupling, or autoregressive             rational-quadratic spline
MAF        autoregressive (MADE)                   affine, or rational-quadratic spline
=========  ======================================  =====================================

``bounded=True`` (NSF, MAF with splines) gives a flow on the unit hypercube [0, 1]^d with a
uniform base: the sampler of neural importance sampling. A VEGAS-like separable adaptive grid is
``Elementwise(d, PiecewiseLinearMap(K))`` (a learnable K-bin histogram per dimension);
``NSF(d, bounded=True, pre_map=K)`` applies one to the data before the couplings.
``VegasGrid(d, bins=K)`` is VEGAS's own map as a flow on [0, 1]^d: a K-bin grid per dimension
with equal probability per bin, adapted by VEGAS's rule (not by gradients).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from .distributions import BoxUniform, StandardNormal
from .flow import Flow
from .registry import register_builder
from .transforms.autoregressive import MaskedAutoregressive
from .transforms.base import Compose, Inverse, Transform
from .transforms.coupling import Coupling, coupling_mask
from .transforms.elementwise import Elementwise
from .transforms.grid import AdaptiveGrid
from .transforms.maps import AffineMap, ElementwiseMap, SplineMap
from .transforms.permutations import RandomPermutation
from .transforms.piecewise import PiecewiseLinearMap


def _check_sizes(features: int, context: int, transforms: int) -> None:
    for name, value, low in (("features", features, 1), ("context", context, 0), ("transforms", transforms, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")


def _coupling_stack(
    features: int, context: int, transforms: int, elementwise: ElementwiseMap,
    hidden: Sequence[int], mask: str, randperm: bool, activation: str,
) -> list[Transform]:
    if features < 2:
        raise ValueError("coupling flows need at least 2 features; for 1-D data use MAF, or NSF(autoregressive=True)")
    layers: list[Transform] = []
    for i in range(transforms):
        if randperm:
            layers.append(RandomPermutation(features, seed=i))
        layers.append(Coupling(coupling_mask(features, mask, flip=i % 2 == 1, layer=i, layers=transforms),
                               elementwise, context, hidden, activation))
    return layers


def _autoregressive_stack(
    features: int, context: int, transforms: int, elementwise: ElementwiseMap,
    hidden: Sequence[int], activation: str,
) -> list[Transform]:
    forward, backward = list(range(features)), list(range(features - 1, -1, -1))
    return [
        MaskedAutoregressive(features, elementwise, context, hidden, forward if i % 2 == 0 else backward, activation)
        for i in range(transforms)
    ]


def _flow(layers: list[Transform], features: int, context: int, bounded: bool) -> Flow:
    base = BoxUniform(features) if bounded else StandardNormal(features)
    return Flow(Compose(layers), base, context_features=context)


@register_builder("RealNVP")
def RealNVP(
    features: int,
    context: int = 0,
    transforms: int = 8,
    hidden: Sequence[int] = (128, 128),
    mask: str = "halves",
    randperm: bool = False,
    scale_bound: float = 2.0,
    activation: str = "relu",
) -> Flow:
    """RealNVP (Dinh et al. 2017): affine couplings z_B = x_B ⊙ exp(s(x_A, c)) + t(x_A, c).

    The log-scale is soft-clamped to (−scale_bound, scale_bound); masks alternate so that
    consecutive layers transform complementary features (``mask="halves"``, ``"alternating"``
    or ``"binary"`` — every feature conditions every other within 2⌈log₂ D⌉ layers — or
    ``"antichain"``, which needs only as many as :func:`~nfapps.transforms.coupling.antichain_layers`; ``randperm``
    adds a fixed random permutation before each layer).
    """
    _check_sizes(features, context, transforms)
    layers = _coupling_stack(features, context, transforms, AffineMap(scale_bound), hidden, mask, randperm, activation)
    return _flow(layers, features, context, bounded=False)


@register_builder("NSF")
def NSF(
    features: int,
    context: int = 0,
    bins: int = 8,
    transforms: int = 4,
    hidden: Sequence[int] = (128, 128),
    bound: float = 5.0,
    tails: str = "linear",
    bounded: bool = False,
    autoregressive: bool = False,
    mask: str = "halves",
    randperm: bool = False,
    activation: str = "relu",
    pre_map: int = 0,
    sampling: str = "inverse",
) -> Flow:
    """Neural spline flow (Durkan et al. 2019): rational-quadratic spline couplings
    (or autoregressive layers with ``autoregressive=True``) with ``bins`` bins on [−bound, bound]
    and linear tails, or on [0, 1]^d with a uniform base when ``bounded``.

    ``pre_map=K`` (bounded only) first maps the data through a learnable K-bin piecewise-linear
    map per dimension, ``Elementwise(features, PiecewiseLinearMap(K))``: a VEGAS-like grid.

    ``sampling`` picks which direction of the spline layers draws samples. ``"inverse"`` (the
    usual flow): densities use the splines, samples their inverses (a quadratic solve per
    element). ``"forward"``: each layer is ``Inverse(layer)``, so samples use the splines
    themselves and densities the inverses — for importance sampling, where drawing points with
    their density is the hot loop. The pre-map keeps its direction either way: its equal-width
    bins stay on the data side, where the density of a point is a smooth function of the
    parameters (with learned bin edges there, a point's bin would jump as they move, and
    gradient training stalls)."""
    _check_sizes(features, context, transforms)
    if not isinstance(pre_map, numbers.Integral) or isinstance(pre_map, bool) or pre_map < 0:
        raise ValueError(f"pre_map must be an integer ≥ 0, got {pre_map!r}")
    if pre_map and not bounded:
        raise ValueError("pre_map needs bounded=True: the piecewise-linear map acts on [0, 1]")
    spline = SplineMap(bins, bound, tails, bounded)
    if autoregressive:
        layers = _autoregressive_stack(features, context, transforms, spline, hidden, activation)
    else:
        layers = _coupling_stack(features, context, transforms, spline, hidden, mask, randperm, activation)
    if sampling == "forward":
        layers = [Inverse(layer) for layer in layers]
    elif sampling != "inverse":
        raise ValueError(f"sampling must be 'inverse' or 'forward', got {sampling!r}")
    if pre_map:
        layers.insert(0, Elementwise(features, PiecewiseLinearMap(pre_map)))
    return _flow(layers, features, context, bounded)


@register_builder("MAF")
def MAF(
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    elementwise: str = "affine",
    bins: int = 8,
    bound: float = 5.0,
    tails: str = "linear",
    bounded: bool = False,
    scale_bound: float = 2.0,
    activation: str = "relu",
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al. 2017) with MADE conditioners; the
    feature order reverses from layer to layer. ``elementwise="spline"`` uses
    rational-quadratic splines (NSF-AR); ``bounded`` (splines only) works on [0, 1]^d."""
    _check_sizes(features, context, transforms)
    if elementwise == "affine":
        if bounded:
            raise ValueError("bounded=True needs elementwise='spline': an affine map does not keep [0, 1] fixed")
        tau: ElementwiseMap = AffineMap(scale_bound)
    elif elementwise == "spline":
        tau = SplineMap(bins, bound, tails, bounded)
    else:
        raise ValueError(f"elementwise must be 'affine' or 'spline', got {elementwise!r}")
    layers = _autoregressive_stack(features, context, transforms, tau, hidden, activation)
    return _flow(layers, features, context, bounded)


@register_builder("VegasGrid")
def VegasGrid(features: int, bins: int = 128, alpha: float = 0.5) -> Flow:
    """A VEGAS map (Lepage 1978) as a flow on [0, 1]^d: x = grid(u), u uniform, with ``bins``
    equal-probability bins per dimension and damping ``alpha`` of its adaptation
    (:class:`~nfapps.transforms.grid.AdaptiveGrid`, adapted by ``accumulate``/``refine``)."""
    return Flow(Compose(AdaptiveGrid(features, bins, alpha)), BoxUniform(features))
