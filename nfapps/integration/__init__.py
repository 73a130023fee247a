"""Neural importance sampling: integrals over the unit hypercube with honest error bars."""

from .integrands import INTEGRANDS, Integrand, get_integrand
