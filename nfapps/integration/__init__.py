"""Neural importance sampling: integrals over boxes with honest error bars, and event generation.

    result = nfapps.integrate(f, dim, bounds=None, calls=1_000_000)   # value, error, efficiencies…
    integrator = Integrator(f, dim); integrator.train(...); integrator.integrate(...)
"""

from .estimate import Tally
from .events import generate_events
from .integrands import INTEGRANDS, Integrand, get_integrand
from .integrator import IntegrationResult, Integrator, integrate, sampler_size, trained_integrator
from .job import run_integration

__all__ = [
    "integrate", "trained_integrator", "Integrator", "IntegrationResult", "Tally", "sampler_size",
    "INTEGRANDS", "Integrand", "get_integrand", "run_integration", "generate_events",
]
