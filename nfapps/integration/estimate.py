"""Importance-sampling estimates from weights w_i = f(x_i)/q(x_i), x_i ~ q.

I ≈ Î = (1/N) Σ w_i. The weights come in groups g of n_g ≥ 2 points: a batch of independent
draws from q is one group; a stratified batch (the flow's base split into H equal-probability
cells, the same number of points in each) is H groups, one per cell. Either way each group is
drawn with a share n_g/N of the points from a share n_g/N of the probability, so Î is the
stratified mean Σ_g (n_g/N) Î_g and its variance has the unbiased estimate

    Var(Î) ≈ (1/N²) Σ_g n_g s_g²,   s_g² = Σ_{i∈g} (w_i − Î_g)² / (n_g − 1),

which for one unstratified group is the familiar s²/N. Tallies (N, Σw, Σw², Σ n_g s_g²) add
across batches and processes, so a run split over ranks or resumed later combines exactly.
The error can only come out smaller than the unstratified one where stratification really
removes variance: it is measured within the cells, never assumed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Tally:
    """Running sums of importance weights: count n, Σw, Σw², Σ|w|, max|w| and Σ_g n_g s_g²."""

    n: int = 0
    sum_w: float = 0.0
    sum_w2: float = 0.0
    sum_abs_w: float = 0.0
    max_abs_w: float = 0.0
    sum_group_var: float = 0.0

    def add(self, w: Tensor | np.ndarray, groups: int | Tensor = 1) -> "Tally":
        """Add a batch of weights made of consecutive groups of ≥ 2: ``groups`` equal ones, or
        groups of the sizes in the 1-D integer tensor ``groups``."""
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1)
        if not w.numel():
            return self
        sizes = torch.as_tensor(groups).reshape(-1)
        if sizes.numel() == 1:
            count = int(sizes)
            if count < 1 or w.numel() % count:
                raise ValueError(f"a batch of {w.numel()} weights cannot form {count} groups of equal size")
            sizes = torch.full((count,), w.numel() // count)
        sizes = sizes.to(w.device, torch.long)
        if int(sizes.sum()) != w.numel() or int(sizes.min()) < 2:
            raise ValueError(f"a batch of {w.numel()} weights cannot form groups of sizes {sizes.tolist()[:8]}…, each ≥ 2")
        squares = group_squares(w, sizes)
        self.n += int(w.numel())
        self.sum_w += float(w.sum())
        self.sum_w2 += float(w.square().sum())
        self.sum_abs_w += float(w.abs().sum())
        self.max_abs_w = max(self.max_abs_w, float(w.abs().max()))
        self.sum_group_var += float((squares * sizes / (sizes - 1)).sum())  # Σ_g n_g s_g²
        return self

    def merge(self, other: "Tally") -> "Tally":
        return Tally(
            self.n + other.n, self.sum_w + other.sum_w, self.sum_w2 + other.sum_w2,
            self.sum_abs_w + other.sum_abs_w, max(self.max_abs_w, other.max_abs_w),
            self.sum_group_var + other.sum_group_var,
        )

    def to_tensor(self) -> Tensor:
        """(n, Σw, Σw², Σ|w|, Σ n_g s_g²) as float64, for an all-reduce sum (the max is reduced separately)."""
        return torch.tensor([self.n, self.sum_w, self.sum_w2, self.sum_abs_w, self.sum_group_var], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, sums: Tensor, max_abs_w: float) -> "Tally":
        n, sum_w, sum_w2, sum_abs_w, sum_group_var = sums.tolist()
        return cls(int(n), sum_w, sum_w2, sum_abs_w, max_abs_w, sum_group_var)

    @property
    def mean(self) -> float:
        return self.sum_w / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Standard deviation per event, √(Σ_g n_g s_g² / N) = √N × the standard error
        (for unstratified draws: the sample standard deviation of the weights)."""
        return math.sqrt(self.sum_group_var / self.n) if self.n >= 2 else math.nan

    @property
    def error(self) -> float:
        """Standard error of the estimate, √(Σ_g n_g s_g²)/N."""
        return math.sqrt(self.sum_group_var) / self.n if self.n >= 2 else math.nan

    @property
    def relative_std(self) -> float:
        """Relative standard deviation per event, σ/|Î| (√N × the relative error)."""
        return self.std / abs(self.mean) if self.mean else math.inf

    @property
    def effective_sample_size(self) -> float:
        """Kish's ESS, (Σ|w|)²/Σw²: the number of unweighted events as informative as these."""
        return self.sum_abs_w**2 / self.sum_w2 if self.sum_w2 else 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_batch_plan(total: int, batch: int) -> None:
    if total < 2 or batch < 2:  # the least a group needs for its variance
        raise ValueError(f"need at least 2 points in batches of at least 2, got {total} in batches of {batch}")


def batch_sizes(total: int, batch: int) -> list[int]:
    """Sizes of consecutive batches of ``batch`` covering ``total`` points, none smaller than two
    (the least a group needs for its variance): a tail of one joins the batch before it."""
    _check_batch_plan(total, batch)
    sizes = [batch] * (total // batch) + ([total % batch] if total % batch else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return sizes


def even_batch_sizes(total: int, batch: int) -> list[int]:
    """``total`` points in the fewest batches of at most ``batch``, as near equal as can be (so a
    stratified estimate cuts every batch into the same cubes, and none into coarse ones).

    >>> even_batch_sizes(437_000, 262_144)
    [218500, 218500]
    """
    _check_batch_plan(total, batch)
    count = -(-total // batch)
    return [total // count + (k < total % count) for k in range(count)]


def ramped_batch_sizes(total: int, batch: int, first: int = 8) -> list[int]:
    """Batches covering ``total`` points that start at 1/``first`` of a full batch (at most
    ``batch``) and double up to it, the rest in :func:`even_batch_sizes`: the small first
    batches measure where the weights vary before the large ones are allocated.

    >>> ramped_batch_sizes(437_000, 262_144)
    [32768, 65536, 131072, 207624]
    """
    sizes, size = [], max(min(batch, total) // first, 2)  # (even_batch_sizes checks total and batch)
    while size < batch and total - sum(sizes) >= 2 * size:  # the ramp, leaving room for a batch at least as large
        sizes.append(size)
        size *= 2
    return sizes + even_batch_sizes(total - sum(sizes), batch)


def batch_weights(sizes: list[int], exponent: float, settled: float = 0.0) -> list[float]:
    """Weights λ_k = (1 − ``settled``)·n_k^γ / Σ_j n_j^γ (γ = ``exponent``) of batches of
    ``sizes`` points in the combined estimate Î = Σ_k λ_k Î_k, where ``settled`` is the weight
    already given to earlier batches.

    Each batch's Î_k is unbiased given the batches before it, so any weights fixed before the
    batches are drawn (by their sizes alone, never by their measured spreads, which would
    correlate weight and value) keep Î unbiased, with Var(Î) = Σ_k λ_k² Var(Î_k). γ = 1 pools
    every point alike, right where every batch is as good per point as every other. A
    stratified batch of n points in d dimensions is better per point the larger it is: its
    cubes are smaller, so a smooth remainder varies by O(n^(−1/d)) within one and the variance
    per point falls as n^(−2/d); the optimal λ_k ∝ n_k / (variance per point) is then
    ∝ n_k^(1+2/d).

    >>> batch_weights([1, 2, 4], 1.0)
    [0.14285714285714285, 0.2857142857142857, 0.5714285714285714]
    """
    if not sizes or min(sizes) < 1 or not 0 <= settled < 1:
        raise ValueError(f"need batches of at least one point and a settled weight in [0, 1), got {sizes}, {settled}")
    powers = [float(n) ** exponent for n in sizes]
    total = sum(powers)
    return [(1.0 - settled) * p / total for p in powers]


def group_squares(w: Tensor, sizes: Tensor) -> Tensor:
    """Σ_{i∈g} (w_i − w̄_g)² for consecutive groups g of the given sizes (float64)."""
    sizes = sizes.to(w.device, torch.long)
    group = torch.repeat_interleave(torch.arange(len(sizes), device=w.device), sizes)
    w = w.to(torch.float64)
    mean = torch.zeros(len(sizes), dtype=torch.float64, device=w.device).index_add_(0, group, w) / sizes
    return torch.zeros_like(mean).index_add_(0, group, (w - mean[group]).square())


def unweighting_efficiency(w: Tensor | np.ndarray) -> float:
    """Classic hit-or-miss efficiency ⟨|w|⟩ / max |w|."""
    w = np.abs(np.asarray(w, dtype=np.float64))
    return float(w.mean() / w.max()) if w.size and w.max() > 0 else 0.0


def bootstrap_unweighting_efficiency(
    w: Tensor | np.ndarray, replica_size: int = 10_000, replicas: int = 50, seed: int = 0
) -> float:
    """Gao et al. (2020) variant: ⟨|w|⟩ over the median, across bootstrap replicas of
    ``replica_size`` weights, of the replica's maximum — robust against one rare huge weight."""
    w = np.abs(np.asarray(w, dtype=np.float64))
    if not w.size:
        return 0.0
    rng = np.random.default_rng(seed)
    maxima = [w[rng.integers(0, w.size, min(replica_size, w.size))].max() for _ in range(replicas)]
    median = float(np.median(maxima))
    return float(w.mean() / median) if median > 0 else 0.0


def overweight_cap(w: Tensor | np.ndarray, overweight: float = 1e-3) -> float:
    """The smallest cap c with Σ max(|w| − c, 0) ≤ δ·Σ|w| (δ = ``overweight``)."""
    w = np.sort(np.abs(np.asarray(w, dtype=np.float64)))[::-1]
    if not w.size or w[0] <= 0:
        return 0.0
    total = w.sum()
    # Sorted descending, the overweight of a cap at w[k] is E_k = Σ_{i<k} (w[i] − w[k]), rising
    # with k: take the last k with E_k ≤ δ·Σ|w|; between w[k+1] and w[k] the overweight of a cap
    # c is Σ_{i≤k} w[i] − (k+1)·c, linear, so the cap solves it exactly.
    before = np.concatenate([[0.0], np.cumsum(w)[:-1]])
    excess = before - np.arange(w.size) * w
    k = max(int(np.searchsorted(excess, overweight * total, side="right")) - 1, 0)
    cap = (before[k] + w[k] - overweight * total) / (k + 1)
    floor = w[k + 1] if k + 1 < w.size else 0.0
    return float(min(max(cap, floor), w[k]))


def truncated_unweighting_efficiency(w: Tensor | np.ndarray, overweight: float = 1e-3) -> float:
    """⟨min(|w|, c)⟩ / c for the cap c of :func:`overweight_cap`: the acceptance rate of
    unweighting against a cap that leaves a fraction δ = ``overweight`` of the total weight
    above it (events above the cap are kept with weight |w|/c > 1)."""
    w = np.abs(np.asarray(w, dtype=np.float64))
    cap = overweight_cap(w, overweight)
    return float(np.minimum(w, cap).mean() / cap) if cap > 0 else 0.0


#: Above this Pareto shape the weights' variance (and an error bar from it) cannot be trusted
#: at the sample size at hand (Vehtari et al., "Pareto smoothed importance sampling", 2024).
PARETO_K_RELIABLE = 0.7


def pareto_tail_index(w: Tensor | np.ndarray) -> float:
    """Shape k̂ of a generalised Pareto distribution fitted (scipy, maximum likelihood) to the
    excesses of the M = min(N/5, 3√N) largest |w| over the next one: the tail diagnostic of
    Pareto-smoothed importance sampling. The weights have 1/k̂ finite moments: k̂ < 0.5 means a
    finite variance and a central limit at work; above :data:`PARETO_K_RELIABLE` the sample
    variance badly underestimates the true one at this N, so a sampler's measured spread (and
    an estimate's error bar) says little. NaN where fewer than 20 tail points or no spread."""
    from scipy import stats

    w = np.sort(np.abs(np.asarray(w, dtype=np.float64)))
    m = int(min(0.2 * w.size, 3 * math.sqrt(w.size)))
    if m < 20:
        return math.nan
    excess = w[-m:] - w[-m - 1]
    if not excess[-1] > 0 or not np.isfinite(excess).all():
        return math.nan
    shape, _, _ = stats.genpareto.fit(excess / excess[-1], floc=0)  # scaled: the fit is scale-free
    return float(shape)
