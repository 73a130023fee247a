"""All transforms share one contract (:class:`~nfapps.transforms.base.Transform`)."""

from .autoregressive import MaskedAutoregressive
from .base import Compose, Inverse, Transform
from .coupling import Coupling, antichain_layers, coupling_mask
from .elementwise import Affine, Elementwise, Logit, Sigmoid
from .grid import AdaptiveGrid
from .image import ActNorm, AffineCouplingConv, InvertibleConv1x1, MultiScale, Reshape, Squeeze
from .maps import AffineMap, ElementwiseMap, SplineMap
from .permutations import Permutation, RandomPermutation, ReversePermutation
from .piecewise import PiecewiseLinearMap, PiecewiseQuadraticMap

__all__ = [
    "Transform", "Compose", "Inverse",
    "Coupling", "coupling_mask", "antichain_layers", "MaskedAutoregressive",
    "Affine", "Elementwise", "Logit", "Sigmoid", "AdaptiveGrid",
    "ActNorm", "InvertibleConv1x1", "Squeeze", "Reshape", "AffineCouplingConv", "MultiScale",
    "ElementwiseMap", "AffineMap", "SplineMap", "PiecewiseLinearMap", "PiecewiseQuadraticMap",
    "Permutation", "ReversePermutation", "RandomPermutation",
]
