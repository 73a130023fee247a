"""nfapps: normalizing flows for scientists — exact, fast, and pleasant to use.

The engine in one screen::

    flow = nfapps.NSF(features, context=0, bins=8)     # or RealNVP, MAF, Glow
    nfapps.fit(flow, data, context=None, checkpoint="run.ckpt")
    flow.log_prob(x), flow.sample(n), flow.sample_and_log_prob(n)
    nfapps.save(flow, "flow.nfapps"); flow = nfapps.load("flow.nfapps")
"""

__version__ = "0.1.0"

from .atomic import FlowFileError
from .builders import MAF, NSF, RealNVP, VegasGrid
from .device import resolve_device
from .distributions import BoxUniform, StandardNormal
from .flow import Flow
from .glow import Glow
from .integration import integrate
from .registry import register_builder
from .serialization import load, save
from .training import History, fit
from .transforms.base import Compose, Inverse, Transform

__all__ = [
    "Flow", "Transform", "Compose", "Inverse", "StandardNormal", "BoxUniform",
    "RealNVP", "NSF", "MAF", "Glow", "VegasGrid", "register_builder",
    "fit", "History", "save", "load", "FlowFileError", "resolve_device", "integrate",
]
