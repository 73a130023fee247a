"""Adaptive tempering of an importance-sampling target (as in sequential Monte Carlo).

A sampler q that is still far from |g| (a fresh one in many dimensions) gets weights w = g/q
whose mass sits on a few points. Training on them — the variance loss weighs w², VEGAS's
grid refinement too — drags q onto the region of those few points: one mode of a multi-modal
integrand, and the others are never sampled again (mode collapse), after which the estimate
misses them with a small error bar. Training instead on the tempered target |g|^β, 0 ≤ β ≤ 1,
whose weights |g|^β/q are far less degenerate, keeps q broad; β is raised as fast as the
effective sample size allows and is 1 once the sampler's own weights are healthy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import distributed as dist


def tempered_weights(w: Tensor, log_q: Tensor, exponent: float) -> Tensor:
    """Weights |g|^β/q of the tempered target |g|^β, from w = g/q: exp(β log|w| + (β − 1) log q)."""
    if exponent == 1:
        return w
    tempered = torch.exp(exponent * w.abs().log() + (exponent - 1) * log_q.to(w.dtype))
    return torch.where(w != 0, tempered, 0.0)  # 0^β = 0, also at β = 0


def ess_fraction(w: Tensor) -> float:
    """Kish's effective sample size over all ranks' weights, as a fraction of their number."""
    sums = dist.all_reduce_sum(torch.stack([w.abs().sum(), w.square().sum(), w.new_tensor(float(w.numel()))]))
    return float(sums[0] ** 2 / (sums[1] * sums[2])) if sums[1] > 0 else 1.0


def tempering_exponent(w: Tensor, log_q: Tensor, previous: float, min_ess: float, ceiling: float = 1.0,
                       iterations: int = 12) -> float:
    """The largest β in [previous, max(previous, ``ceiling``)] whose tempered weights keep an
    effective sample size of at least ``min_ess`` of the batch (bisection; adaptive tempering as
    in sequential Monte Carlo); 1 once β is 1 or the batch's own weights are healthy, unless
    the ceiling holds β below it while tempered.

    Training on |g|^β with β < 1 broadens the target while the sampler's weights are
    degenerate, so that a batch whose weight sits on a few points of one mode does not drag the
    sampler onto that mode alone (mode collapse); β only ever grows. A rising ``ceiling`` (a
    ramp, see :meth:`~nfapps.integration.integrator.Integrator.train`) keeps β from jumping to 1
    on the first batch whose few dozen effective points happen to clear ``min_ess``."""
    if previous >= 1 or min_ess <= 0:
        return 1.0
    low, high = previous, max(previous, min(ceiling, 1.0))
    if low >= high:
        return low
    if ess_fraction(tempered_weights(w, log_q, high)) >= min_ess:  # at β = 1 these are the batch's own weights
        return high
    if ess_fraction(tempered_weights(w, log_q, low)) < min_ess:
        return low
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if ess_fraction(tempered_weights(w, log_q, middle)) >= min_ess else (low, middle)
    return low


__all__ = ["ess_fraction", "tempered_weights", "tempering_exponent"]
