"""nfapps: normalizing flows for scientists — exact, fast, and pleasant to use."""

from .distributions import BoxUniform, StandardNormal
from .flow import Flow
from .registry import register_builder
from .transforms.base import Compose, Inverse, Transform

__version__ = "0.1.0"

__all__ = ["Flow", "Transform", "Compose", "Inverse", "StandardNormal", "BoxUniform", "register_builder"]
