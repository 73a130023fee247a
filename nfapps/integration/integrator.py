"""Neural importance sampling (Müller et al. 2019; i-flow, Gao et al. 2020).

A flow q on [0, 1]^d learns to sample where |g| is large; then
I = ∫ g(u) du = E_q[g(u)/q(u)] is estimated from *fresh* samples of the frozen flow, so the
estimate and its standard error are those of importance sampling: unbiased, with an honest
error bar, however good or poor the training went. The fresh samples are stratified in the
flow's uniform base space (:mod:`~nfapps.integration.stratify`), which removes most of the
variance the flow leaves in low dimensions (equal allocation can only lower the variance).

Training minimises, over batches u ~ q_old (the flow when the batch was drawn) with weights
w = g(u)/q_old(u), one of
- the variance (χ² divergence) of the weights: ∇_θ Var = −E_{q_old}[w² · (q_old/q_θ) · ∇ log q_θ];
- the KL divergence KL(|g|/‖g‖ ‖ q_θ):      ∇_θ KL = −E_{q_old}[|w| · ∇ log q_θ] / ‖g‖;
so each batch of (expensive) integrand calls can serve several gradient steps (``reuse``).

Where it measures no dearer, the estimate draws a share of its points from a defensive
companion beside the flow (:mod:`~nfapps.integration.companion`), which bounds the weights in
the flow's thin tails.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed as dist
from ..atomic import dump, load_container
from ..builders import NSF, VegasGrid
from ..device import resolve_device
from ..flow import Flow
from ..serialization import flow_from_payload, flow_payload
from ..transforms.coupling import antichain_layers
from .companion import COMPONENTS, MAX_VARIANCE_RATIO, SHARE, DefensiveMixture, GaussianCompanion, fit_companion
from .estimate import (
    PARETO_K_RELIABLE,
    Tally,
    batch_weights,
    even_batch_sizes,
    pareto_tail_index,
    ramped_batch_sizes,
    bootstrap_unweighting_efficiency,
    truncated_unweighting_efficiency,
    unweighting_efficiency,
)
from .integrand import UnitCubeIntegrand
from .progress import EstimateProgress
from .stratify import Strata, allocation_gain, cells_per_dimension
from .tempering import tempered_weights, tempering_exponent

logger = logging.getLogger(__name__)

LOSSES = ("variance", "kl")

#: Points pushed through the flow at once when drawing (per-point cost is lowest around here on a
#: CPU: at 8192 the spline intermediates no longer fit in cache, 1.3–1.7× slower).
SAMPLER_CHUNK = 4096

#: The companion (:mod:`~nfapps.integration.companion`) is fitted on the last this many training points.
COMPANION_POINTS = 65_536

#: Training gives up on a flow whose recent batches vary more than this many times the grid's.
GIVE_UP_MARGIN = 4.0

#: The estimate allocates its points by the weights' spread per cube (four points per cube on
#: average, two of them allocated by σ_h) when the chosen sampler's first batch measured an
#: allocation gain below this (:func:`~nfapps.integration.stratify.allocation_gain`; a uniform
#: spread reads about 0.64), else it keeps equal allocation over cubes half as large. Measured
#: on the suite's trained samplers (seed 0, 10⁶ calls): the flow's first batch reads 0.04 on the
#: annulus, 0.15 circles, 0.23 Breit–Wigner, 0.26 camel-2 and 0.34 camel-4, where adapting
#: (with the smoothed spreads of :meth:`~nfapps.integration.stratify.Strata.smoothed_spread`)
#: cut the relative std per event by 60, 21, 9, 2 and 4 % (annulus 0.117 → 0.047); 0.45
#: camel-8, 0.57 gaussian-4 and 0.47–0.62 for the grid on polynomial-18, box, triangle and
#: e⁺e⁻ → μ⁺μ⁻, where adapting (unsmoothed) gained nothing or lost up to 17 % (triangle) and
#: halved the unweighting efficiency.
ADAPTIVE_GAIN = 0.4

#: Points per cube on average when the estimate adapts its allocation (two go to every cube).
ADAPTIVE_PER_CUBE = 4


@dataclass
class IntegrationResult:
    """An importance-sampling estimate and how it was obtained."""

    value: float
    error: float
    relative_std: float  # σ of the weights / |I|: the relative error times √N
    effective_sample_size: float
    unweighting_efficiency: float
    unweighting_efficiency_bootstrap: float
    bootstrap_replica_size: int
    unweighting_efficiency_truncated: float  # overweight δ = 1e-3
    calls_training: int  # the grid's adaptation and the flow's training
    calls_estimate: int  # in the estimate (the pilots that chose the sampler excluded)
    time_integrand_s: float
    time_sampler_s: float
    time_training_s: float
    peak_memory_mb: float
    device: str
    tally: dict[str, float] = field(default_factory=dict)
    exact: float | None = None
    sampler: str = "flow"  # the sampler that drew the estimate: "flow", "grid" or "uniform" (chosen by the pilots)
    calls_pilot: int = 0  # spent on the pilots that chose it, in neither the training nor the estimate
    calls_grid: int = 0  # of calls_training, those that adapted the VEGAS grid
    pareto_k: float = math.nan  # tail shape of the weights: ≥ 0.7, the error bar cannot be trusted
    points_per_cube: int = 0  # stratified: 2 (equal allocation) or ADAPTIVE_PER_CUBE (allocated by spread); 0: not
    companion_share: float = 0.0  # the flow drew beside a defensive companion with this share (0: alone)

    @property
    def pull(self) -> float | None:
        """(estimate − exact)/error where the exact value is known."""
        return None if self.exact is None else (self.value - self.exact) / self.error

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pull": self.pull}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def sampler_size(dim: int, bins: int | None = None, transforms: int | None = None,
                 hidden: Sequence[int] | None = None) -> dict[str, Any]:
    """The default sampler's bins, coupling layers, hidden widths and sampling direction at
    dimension d (the arguments that are not ``None`` are kept).

    Up to d = 4: 2⌈log₂ d⌉ layers (at least 2; i-flow's count), 16 bins, two hidden layers of
    64, and samples drawn through the splines' inverses (``NSF(sampling="inverse")``). At 10⁶
    calls (seed 0; other initialisations move these by 5–15 %) camel-4 and circles measured
    0.083 and 0.068 so, with 6 layers 0.094 and 0.072, and drawing through the splines
    themselves 0.115 and 0.090.
    Above: 6 layers, or :func:`~nfapps.transforms.coupling.antichain_layers` (d) where that is
    more (7 from d = 21, 9 at d = 96: every dimension conditions every other), hidden 32 × 32,
    8 bins up to d = 8 and 4 above, and samples drawn through the splines themselves (no
    quadratic solve). Drawing a point with its density costs ≈ 3.0 µs at d = 8 and ≈ 3.7 µs at
    d = 16 on one CPU core (from 7 and 18 for the i-flow-sized flow; the conditioners'
    outputs, d/2·(3K+1) per layer, and the element-wise maps grow with d, and the last
    conditioner layer runs at the core's peak FLOP rate). With the defensive companion
    (:mod:`~nfapps.integration.companion`, which caps the tails) the smaller sizes cost no
    variance, measured at 10⁶ calls on seeds 0, 1, 2: camel-8 0.176 / 0.160 / 0.176 with
    32 × 32 against 0.177 / 0.255 / 0.164 with 64 × 64, gaussian-8 0.057 / 0.054 against
    0.056 / 0.055 (classic unweighting efficiency on camel-8 0.15–0.20 against 0.11–0.16); at
    d = 16, 4 bins instead of 6 (−15 % time): camel-16 0.267 / 0.257 / 0.252 / 0.277 on seeds
    0–3 against 0.317 / 0.242 / 0.239 / 0.241, gaussian-16 0.097–0.098 against 0.083–0.086
    (VEGAS+: 1.78). Before the tempering ramp (see :meth:`Integrator.train`) camel-16 could
    collapse onto one of its two peaks (half the integral, with a tiny error bar): 32 × 32 did
    in 4 of 10 seeds at 3·10⁵ calls, 64 × 64 in seed 0 at 10⁶; with the ramp none of seeds
    0–19 at 10⁶ did.
    """
    small = dim <= 4
    layers = max(2, 2 * math.ceil(math.log2(max(dim, 2)))) if small else max(6, antichain_layers(dim))
    return {
        "bins": (16 if small else 8 if dim <= 8 else 4) if bins is None else bins,
        "transforms": layers if transforms is None else transforms,
        "hidden": ((64, 64) if small else (32, 32)) if hidden is None else tuple(hidden),
        "sampling": "inverse" if small else "forward",
    }


class Integrator:
    """Train a flow sampler for ∫_box f and estimate the integral from fresh samples.

    Args:
        f: batched integrand, points (n, d) → values (n,); torch or NumPy (see ``backend``).
        dim: number of dimensions d.
        bounds: d pairs (low, high); default the unit hypercube.
        flow: the sampler, a flow on [0, 1]^d; default a bounded rational-quadratic spline flow.
        device: "auto", "cpu" or "cuda".
        seed: seeds the flow's initialisation and every batch drawn (counter-based: batch k of
            rank r uses seed (seed, r, k), so results do not depend on the order of work).
        bins, transforms, hidden: of the default flow, a bounded rational-quadratic spline coupling
            flow with antichain masks (every dimension conditions every other); ``None`` takes
            :func:`sampler_size`'s choice for the dimension (and the direction samples are drawn).
        pre_map: bins of a learnable per-dimension histogram map in front of the couplings,
            trained by gradients with them; 0 for none.
        grid: bins per dimension of a second sampler beside the flow, a VEGAS grid
            (:func:`~nfapps.builders.VegasGrid`), 0 for none. :meth:`train` adapts it first, by
            VEGAS's rule, on a share of the training calls; the estimate's pilots then pick
            the better of the two. A separable or flat integrand is the grid's (which a flow can
            only approximate), a correlated or multi-modal one the flow's.
        companion, companion_share: components K and share α of a defensive companion for the
            flow (:mod:`~nfapps.integration.companion`), fitted on the training's last points
            when the estimate first needs it; the flow's estimate draws from the mixture where
            that measured no more variance than the flow alone. 0 for none.
        rank, world_size: this process's share of the work; by default from torchrun
            (torch.distributed), where every rank draws its own points, training is data-parallel
            (DDP) and tallies are summed over ranks. Batch and call counts are global.
    """

    def __init__(
        self,
        f: Callable,
        dim: int,
        bounds: Sequence[Sequence[float]] | None = None,
        flow: Flow | None = None,
        *,
        device: str | torch.device = "auto",
        seed: int = 0,
        backend: str = "auto",
        bins: int | None = None,
        transforms: int | None = None,
        hidden: Sequence[int] | None = None,
        pre_map: int = 32,
        grid: int = 128,
        companion: int = COMPONENTS,
        companion_share: float = SHARE,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.integrand = UnitCubeIntegrand(f, dim, bounds, backend)
        self.dim = self.integrand.dim
        self.device = dist.init(resolve_device(device))
        self.rank = dist.rank() if rank is None else int(rank)
        self.world_size = dist.world_size() if world_size is None else int(world_size)
        self.seed = int(seed)
        if flow is None:
            torch.manual_seed(self.seed)
            size = sampler_size(self.dim, bins, transforms, hidden)
            flow = NSF(self.dim, **size, bounded=True, autoregressive=self.dim == 1, mask="antichain", pre_map=pre_map)
        if flow.event_shape != (self.dim,):
            raise ValueError(f"the flow models shape {flow.event_shape}, but the integrand has dim {self.dim}")
        self.flow = flow.to(self.device)
        self._adopt_grid(VegasGrid(self.dim, grid).to(self.device) if grid else None)
        if companion < 0 or not 0 <= companion_share < 1:
            raise ValueError(f"need companion ≥ 0 components and a share in [0, 1), got {companion}, {companion_share}")
        self.companion_components, self.companion_share = int(companion), float(companion_share)
        self.companion: GaussianCompanion | None = None
        self.companion_ratio = math.nan  # the mixture's variance per event over the flow's (see _fit_companion)
        self._recent: list[Tensor] = []  # the last training points: rows (u, g, log q_drawn)
        self.companion_fitted_at = -1  # calls_training when the companion was fitted
        self.sampler = self.flow  # the one that drew the latest estimate (see integrate)
        self.estimate_weights: np.ndarray | None = None
        self.flow.validate = False  # the points come from the flow itself
        self.optimizer: torch.optim.Optimizer | None = None
        self._lr = 1e-3
        self.batches_drawn = 0
        self.calls_grid = 0
        self.stopped = False  # training gave up on the flow (see train)
        self.grid_tail = math.nan  # Pareto k̂ of the adapted grid's last batch of weights
        self.exponent = 0.0  # of the tempered training target |g|^β (see train)
        self.calls_training = 0
        self.time_training = 0.0
        self.history: list[dict[str, float]] = []

    def _adopt_grid(self, grid: Flow | None) -> None:
        self.grid = grid
        if grid is not None:
            grid.validate = False  # its points come from itself

    # -- sampling --------------------------------------------------------------------------------
    def _generator(self, stream: int, counter: int) -> torch.Generator:
        key = [self.seed, stream, self.rank, counter]  # counter-based: independent of the order of work
        g = torch.Generator(self.device)
        g.manual_seed(int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1))
        return g

    def draw(
        self, n: int, stream: int = 0, counter: int | None = None, base: Tensor | None = None,
        flow: Flow | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, float]]:
        """n points u ~ q with log q(u), the weights g(u)/q(u) (float64) and the time split;
        q is the sampler's flow, or ``flow`` if given.

        With ``base`` (n points of the flow's base, e.g. a stratified set from
        :meth:`Strata.points`) those are pushed through instead of fresh uniform ones; each point
        taken alone has density q within its cube, and ``strata.rescale`` turns w into the
        batch's weights.
        """
        if counter is None:
            counter, self.batches_drawn = self.batches_drawn, self.batches_drawn + 1
        t0 = time.perf_counter()
        with torch.no_grad():
            flow = self.flow if flow is None else flow
            if base is not None:
                z = base.to(flow._anchor.dtype)  # a float64 flow gets float64 points
            else:
                z = flow.base.sample(n, generator=self._generator(stream, counter))
            # through the flow a few thousand points at a time: a quarter-million at once runs out of cache
            u, log_q = flow.from_base_chunked(z, SAMPLER_CHUNK)
        t1 = time.perf_counter()
        g = self.integrand(u)
        t2 = time.perf_counter()
        w = g * torch.exp(-log_q.to(torch.float64))
        return u, log_q, w, {"sampler": t1 - t0, "integrand": t2 - t1}

    def _share(self, total: int) -> int:
        """This rank's part of a global count: ⌊total/W⌋, plus one for the first total mod W ranks."""
        return total // self.world_size + (self.rank < total % self.world_size)

    # -- training --------------------------------------------------------------------------------
    def adapt_grid(self, calls: int, iterations: int = 25, progress: bool = True, min_ess: float = 0.05) -> list[dict[str, float]]:
        """Spend ``calls`` integrand evaluations adapting the VEGAS grid, in ``iterations``
        equal batches drawn from the grid (fewer where a batch would hold less than 10 points per
        bin: the refinement would follow the noise): after each, the grid is refined by VEGAS's
        rule (:meth:`~nfapps.transforms.grid.AdaptiveGrid.refine`), on weights tempered as in
        :meth:`train` while they are degenerate (``min_ess``). Returns the per-batch records."""
        if self.grid is None:
            raise ValueError("this integrator has no VEGAS grid (grid=0): there is nothing to adapt")
        if calls < 0 or iterations < 1:
            raise ValueError(f"need calls ≥ 0 and iterations ≥ 1, got calls={calls}, iterations={iterations}")
        started = time.perf_counter()
        grid_map = self.grid.transform[0]
        iterations = max(1, min(iterations, calls // (10 * grid_map.bins)))
        sizes = [calls // iterations + (i < calls % iterations) for i in range(iterations)] if calls >= 2 * iterations else []
        exponent = 0.0
        for n in tqdm(sizes, desc="adapt grid", unit="batch", disable=not progress):
            u, log_q, w, _ = self.draw(self._share(n), flow=self.grid)
            # tempered like the flow's training: VEGAS's w² on a degenerate batch would pull every
            # axis onto the few points of one mode, and the grid would never see the others
            exponent = tempering_exponent(w, log_q, exponent, min_ess)
            grid_map.accumulate(u, tempered_weights(w, log_q, exponent))
            grid_map.refine()
            self._record(w, n, "grid", exponent)
            self.calls_grid += n
        if sizes:  # how heavy the adapted grid's weight tail is: its measured spread means little if very
            self.grid_tail = pareto_tail_index(dist.all_gather_array(w.cpu().numpy()))
        self.time_training += time.perf_counter() - started
        return self.history

    def train(
        self,
        calls: int,
        batch: int = 512,
        loss: str = "variance",
        reuse: int = 8,
        lr: float = 3e-3,
        clip_grad: float = 10.0,
        progress: bool = True,
        schedule_calls: int | None = None,
        min_ess: float = 0.05,
        give_up_after: float = 0.25,
        tempering_ramp: float = 0.1,
    ) -> list[dict[str, float]]:
        """Spend ``calls`` integrand evaluations training the flow; returns per-batch records.

        Each batch of ``batch`` calls serves ``reuse`` gradient steps. With ``schedule_calls``
        (the run's whole training budget, also across several ``train`` calls and resumes) the
        learning rate follows a cosine from ``lr`` down to 2 % of it over that many calls.

        While the flow's weights are degenerate (Kish's effective sample size of a batch below
        ``min_ess`` of it, typical of a fresh sampler in many dimensions) it trains on the
        tempered target |g|^β with the largest β that keeps the effective sample size at
        ``min_ess``; β only grows (0 turns this off). A batch whose weight sits on a few points
        of one mode cannot then drag the flow onto that mode alone (mode collapse). A run whose
        first batch is already healthy trains on |g| throughout. After a tempered first batch β
        rises no faster than a ramp, by at most 1/``tempering_ramp`` per share of
        ``schedule_calls`` spent (β goes from 0 to 1 in no less than that share of the
        training; 0: no ramp, and none without ``schedule_calls``). Without the ramp β jumped
        to 1 at the first batch with ``min_ess`` of healthy weights, a few dozen points that can
        sit mostly on one peak, and on camel-16 at 10⁶ calls the flow then lost the other peak
        on 2 of 13 seeds (pulls −4400).

        With an adapted VEGAS grid and ``schedule_calls``, training gives up once
        ``give_up_after`` of the schedule is spent if the flow's recent batches (median of the
        last 16) still vary more than :data:`GIVE_UP_MARGIN` times the grid's last batch: on a
        separable integrand the grid wins and more training only costs time. (The margin is
        wide because these are unstratified draws, and a smooth flow gains far more from the
        estimate's stratification than a grid does: on a 2-D Breit–Wigner peak a flow at twice
        the grid's unstratified spread ends 8× below it stratified.) The calls not spent then go
        to the estimate (``stopped`` is set and later calls return at once; 0 never gives up).
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if calls < 0 or batch < 1 or reuse < 1:
            raise ValueError(f"need calls ≥ 0, batch ≥ 1 and reuse ≥ 1; got calls={calls}, batch={batch}, reuse={reuse}")
        if not 0 <= tempering_ramp <= 1:
            raise ValueError(f"tempering_ramp must be in [0, 1] (the fraction of the schedule over which β may rise to 1), "
                             f"got {tempering_ramp}")
        if self.optimizer is None:
            self._lr = lr
            self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=lr)
        steps = 0 if self.stopped else calls // batch
        started = time.perf_counter()
        self.flow.train()
        # a wrapper for this call only: a DDP reducer that outlives the process group (torn down
        # at exit) can abort the process as the interpreter shuts down
        model = dist.data_parallel(self.flow, self.device) if self.world_size > 1 else self.flow
        for step in tqdm(range(steps), desc="train sampler", unit="batch", disable=not progress):
            if schedule_calls:
                done = min((self.calls_training + step * batch) / schedule_calls, 1.0)
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))
            u, log_q_old, w, _ = self.draw(self._share(batch))
            ceiling = 1.0  # β's ramp: from the first batch's β it rises by at most 1/ramp per schedule spent
            if schedule_calls and tempering_ramp > 0 and (self.calls_training or step):
                ceiling = self.exponent + batch / (tempering_ramp * schedule_calls)
            self.exponent = tempering_exponent(w, log_q_old, self.exponent, min_ess, ceiling)
            w_target = tempered_weights(w, log_q_old, self.exponent)
            totals = dist.all_reduce_sum(torch.stack([w_target.abs().sum(), torch.tensor(float(w.numel()), dtype=w.dtype, device=w.device)]))
            scale = (totals[0] / totals[1]).clamp_min(1e-300)
            w_scaled = (w_target / scale).to(log_q_old.dtype)  # scale-free weights: the loss does not depend on |I|
            for _ in range(reuse):
                log_q = model(u)  # log q(u), gradients averaged over ranks
                if loss == "variance":
                    coefficient = w_scaled.square() * torch.exp(log_q_old - log_q.detach())
                else:
                    coefficient = w_scaled.abs()
                objective = -(coefficient * log_q).mean()
                self.optimizer.zero_grad(set_to_none=True)
                objective.backward()
                torch.nn.utils.clip_grad_norm_(self.flow.parameters(), clip_grad)
                self.optimizer.step()
            self._record(w, batch, "flow", self.exponent)
            if self.companion_components and self.companion_share > 0:
                self._keep_recent(u, w * torch.exp(log_q_old.to(w.dtype)), log_q_old)
            if give_up_after and schedule_calls and self._flow_loses(batch * (step + 1), schedule_calls, give_up_after):
                self.stopped = True
                steps = step + 1
                logger.info("the flow still varies more than %g× the VEGAS grid after %d training calls: stopped training",
                            GIVE_UP_MARGIN, self.calls_training + steps * batch)
                break
        self.calls_training += steps * batch
        del model
        self.flow.eval()
        self.time_training += time.perf_counter() - started
        return self.history

    def _keep_recent(self, u: Tensor, g: Tensor, log_q: Tensor) -> None:
        """Keep the last :data:`COMPANION_POINTS` training points of all ranks (every rank keeps
        the same) for the companion; they are part of the saved state, so that a run trained in
        pieces or resumed fits the same companion as one trained in one go."""
        kept = torch.cat([u.detach(), g.detach()[:, None].to(u.dtype), log_q.detach()[:, None].to(u.dtype)], dim=1)
        if self.world_size > 1:
            kept = torch.as_tensor(dist.all_gather_array(kept.cpu().numpy().reshape(-1))).reshape(-1, self.dim + 2).to(u)
        self._recent.append(kept)
        while sum(len(part) for part in self._recent[1:]) >= COMPANION_POINTS:
            self._recent.pop(0)

    def _fit_companion(self) -> None:
        """Fit the defensive companion on the kept training points, if the flow has trained since
        the last fit, and measure whether the mixture beats the flow alone
        (:func:`~nfapps.integration.companion.fit_companion`); the time counts as training."""
        if not (self.companion_components and self.companion_share > 0 and self._recent) \
                or self.companion_fitted_at == self.calls_training:
            return
        started = time.perf_counter()
        kept = torch.cat(self._recent)
        u, g, log_q = kept[:, :self.dim], kept[:, self.dim].to(torch.float64), kept[:, self.dim + 1]
        self.companion_fitted_at = self.calls_training
        self.companion, self.companion_ratio = None, math.nan
        if len(u) >= 4 * self.companion_components and bool(g.abs().sum() > 0):
            self.companion, self.companion_ratio = fit_companion(
                self.flow, u, g, log_q, self.companion_components, self.companion_share)
            logger.info("defensive companion: variance per event %.3g× the flow's alone: %s", self.companion_ratio,
                        "the estimate draws from the mixture" if self._mixture() is not None else "not used")
        self.time_training += time.perf_counter() - started

    def _mixture(self) -> DefensiveMixture | None:
        """The flow with its companion where that measured no more variance than the flow alone."""
        if self.companion is None or not self.companion_ratio <= MAX_VARIANCE_RATIO:
            return None
        return DefensiveMixture(self.flow, self.companion, self.companion_share)

    def _flow_loses(self, calls_now: int, schedule_calls: int, after: float) -> bool:
        """Whether, ``after`` of the schedule in, the flow's last 16 batches vary (median) more than
        GIVE_UP_MARGIN times the grid's last batch."""
        if self.calls_training + calls_now < after * schedule_calls:
            return False
        grid = next((r["relative_std"] for r in reversed(self.history) if r.get("phase") == "grid"), None)
        flow = [r["relative_std"] for r in self.history[-16:] if r.get("phase", "flow") == "flow"]
        # a grid whose weights have a heavy tail (Pareto k̂ ≥ 0.7, e.g. one that misses modes) only
        # looks good: its measured spread underestimates its true one, so the flow trains on
        reliable = not self.grid_tail >= PARETO_K_RELIABLE
        return reliable and grid is not None and len(flow) == 16 and float(np.median(flow)) > GIVE_UP_MARGIN * grid

    def _record(self, w: Tensor, calls: int, phase: str, exponent: float) -> None:
        # all ranks' weights: every rank keeps the same history and takes the same decisions on it
        self.history.append({"batch": len(self.history), "relative_std": _all_reduce(Tally().add(w)).relative_std,
                             "calls": calls, "phase": phase, "exponent": exponent})

    # -- state -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the run's state (sampler, optimizer, counters, history) atomically to ``path``."""
        dump(
            {
                "dim": self.dim,
                "bounds": torch.stack([self.integrand.low, self.integrand.low + self.integrand.width], dim=1),
                "seed": self.seed,
                "flow": flow_payload(self.flow),
                "grid": flow_payload(self.grid) if self.grid is not None else None,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
                "lr": self._lr,
                "batches_drawn": self.batches_drawn,
                "exponent": self.exponent,
                "calls_training": self.calls_training,
                "calls_grid": self.calls_grid,
                "stopped": self.stopped,
                "grid_tail": self.grid_tail,
                "time_training": self.time_training,
                "history": self.history,
                "companion": {
                    "recent": torch.cat(self._recent).cpu() if self._recent else None,
                    "fitted_at": self.companion_fitted_at, "ratio": self.companion_ratio,
                    "state": None if self.companion is None else {k: v.cpu() for k, v in self.companion.state_dict().items()}},
            },
            path,
            "integrator",
        )

    def restore(self, path: str | Path) -> "Integrator":
        """Continue from a state written by :meth:`save` for the same integral (dim, bounds, seed)."""
        state = load_container(path, "integrator")
        bounds = torch.stack([self.integrand.low, self.integrand.low + self.integrand.width], dim=1)
        if state["dim"] != self.dim or not torch.allclose(state["bounds"], bounds) or state["seed"] != self.seed:
            raise ValueError(
                f"{path} is the state of another run (dim {state['dim']}, seed {state['seed']}); "
                f"this one has dim {self.dim}, seed {self.seed}: use a fresh run directory or the same settings"
            )
        self.flow = flow_from_payload(state["flow"], path, self.device)
        self.flow.validate = False
        self._adopt_grid(flow_from_payload(state["grid"], path, self.device) if state.get("grid") is not None else None)
        self.sampler = self.flow
        self._lr = state["lr"]
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=self._lr)
            self.optimizer.load_state_dict(state["optimizer"])
        self.batches_drawn = state["batches_drawn"]
        self.exponent = state["exponent"]
        self.calls_training = state["calls_training"]
        self.calls_grid = state["calls_grid"]
        self.stopped = state["stopped"]
        self.grid_tail = state["grid_tail"]
        self.time_training = state["time_training"]
        self.history = list(state["history"])
        saved = state.get("companion") or {"recent": None, "fitted_at": -1, "ratio": math.nan, "state": None}
        self._recent = [saved["recent"].to(self.device)] if saved["recent"] is not None else []
        self.companion_fitted_at, self.companion_ratio, self.companion = saved["fitted_at"], saved["ratio"], None
        if saved["state"] is not None:
            self.companion = GaussianCompanion(self.dim, len(saved["state"]["log_weights"])).to(self.device)
            self.companion.load_state_dict(saved["state"])
        return self

    # -- estimate --------------------------------------------------------------------------------
    def _per_cube(self, first: Strata | None) -> int:
        """Points per cube for the estimate's batches after ``first`` (the chosen sampler's first
        batch): :data:`ADAPTIVE_PER_CUBE` where its allocation gain, all ranks' cubes pooled,
        says an allocation by σ_h pays, else 2."""
        if first is None:  # too few points to stratify
            return 2
        gain = allocation_gain(dist.all_reduce_sum(first.spread_moments()))
        adapt = gain < ADAPTIVE_GAIN
        logger.info("estimate: allocation gain %.3f on the first batch: %s", gain,
                    f"{ADAPTIVE_PER_CUBE} points per cube, allocated by the weights' spread" if adapt
                    else "equal allocation, 2 points per cube")
        return ADAPTIVE_PER_CUBE if adapt else 2

    def integrate(self, calls: int, batch: int = 262_144, progress: bool = True, exact: float | None = None,
                  replica_size: int = 10_000, stratify: bool = True, per_cube: int | None = None,
                  beta: float = 1.0, choose: bool = True, checkpoint: str | Path | None = None,
                  weight_exponent: float | None = None) -> IntegrationResult:
        """Estimate the integral from ``calls`` fresh samples of the frozen sampler.

        With ``stratify`` the batches are stratified draws in the sampler's base space (see
        :mod:`~nfapps.integration.stratify`): as many cubes as leave ``per_cube`` points per cube
        in a batch, at least two in every one, the rest allocated ∝ σ_h^β as measured on the
        earlier batches (VEGAS+'s adaptive stratification, done where the flow has already made
        the weights nearly flat). ``per_cube=None`` decides on the chosen sampler's first batch
        (its pilot, or else a first batch of an eighth of ``batch``), drawn with two points per
        cube: :data:`ADAPTIVE_PER_CUBE` where its
        :func:`~nfapps.integration.stratify.allocation_gain` is below :data:`ADAPTIVE_GAIN` (a
        sharp edge or a peak the sampler could not follow), else two — equal allocation over
        the finest cubes, which suits a smooth remainder. An adaptive estimate's batches start at
        an eighth of ``batch`` and double up to it, so the allocation is learnt on small batches
        (:func:`~nfapps.integration.estimate.ramped_batch_sizes`), and a batch with finer cubes
        starts from the spreads of the coarser ones; an equal one draws near-equal batches of at
        most ``batch``.

        The batches combine as Î = Σ_k λ_k Î_k with λ_k ∝ n_k^γ fixed by the batch sizes
        before any is drawn (:func:`~nfapps.integration.estimate.batch_weights`), so Î stays
        unbiased and its error is √(Σ_k λ_k² Var Î_k): γ = ``weight_exponent``, by default
        1 + 2/d stratified (a larger stratified batch has smaller cubes and is better per
        point, most of all in few dimensions) and 1 unstratified (every point alike). It only
        matters where batch sizes differ, the adaptive estimate's ramp: there the small first
        batches, drawn while the allocation is still being learnt, would otherwise weigh as
        much per point as the last. On the suite's trained samplers (seed 0, 10⁶ calls) this
        took the relative std per event from 0.061 to 0.041 on the annulus (stratified uniform
        points chosen), 0.054 to 0.048 on circles, 0.081 to 0.079 on camel-4 and 0.0124 to
        0.0119 on camel-2, against pooling every point alike (γ = 1).
        The unweighting efficiencies and the Pareto k̂ are those of the weights as drawn
        (each batch's, with respect to the density it was drawn from): unweighting them gives
        events ∝ f whatever the λ_k.

        With ``choose`` (and a trained sampler) a pilot batch is drawn from each candidate — the
        flow, the adapted VEGAS grid (if any) and plain uniform points — an eighth of the calls
        in all; the one with the smaller variance per event draws the estimate from the other
        calls. On a separable integrand the grid beats any flow (which can only approximate a
        product of one-dimensional densities), and on a nearly flat one stratified uniform
        points beat both, whose residual wiggles stratification cannot remove. The pilots only choose:
        their values would bias the estimate (the chosen pilot is the one that came out with the
        smaller spread), so they stay out of it and count as ``calls_pilot``.

        The flow's candidate is the flow with its defensive companion,
        (1 − α) q + α c (:mod:`~nfapps.integration.companion`), where that measured no more
        variance per event than the flow alone on the training's last points (fitted here on
        first use after training, its time counted as training): the companion's Gaussians
        cap the rare huge weights of a flow whose tails fall off faster than |g|, which
        otherwise leave most estimates low with too small an error bar.

        With ``checkpoint`` the estimate's progress (tallies, weights, strata, the choice) is
        written there atomically after every batch, and a later call with the same arguments
        on the same sampler continues from it: an interrupted estimate loses at most one batch
        and ends exactly as an uninterrupted one.
        """
        if calls < 2 * self.world_size:
            raise ValueError(f"the estimate needs at least 2 calls per process, got {calls} for {self.world_size}")
        if (per_cube is not None and per_cube < 2) or beta < 0:
            raise ValueError(f"need per_cube ≥ 2 (a cube's variance needs two points) and beta ≥ 0, got {per_cube}, {beta}")
        if weight_exponent is None:
            weight_exponent = 1.0 + 2.0 / self.dim if stratify else 1.0
        if not math.isfinite(weight_exponent) or weight_exponent < 0:
            raise ValueError(f"weight_exponent must be a finite number ≥ 0, got {weight_exponent}")
        self.flow.eval()
        self._fit_companion()
        mixture = self._mixture()
        candidates = {"flow": self.flow if mixture is None else mixture}
        if choose and (self.calls_training or self.calls_grid):
            if self.grid is not None and self.calls_grid:
                candidates["grid"] = self.grid
            candidates["uniform"] = VegasGrid(self.dim, bins=1).to(self.device)  # one bin per axis: uniform points
        share = self._share(calls)
        pilot = min(batch, calls // (8 * len(candidates)) // self.world_size)  # an eighth of the calls in all
        if pilot < 2:
            candidates = {"flow": candidates["flow"]}
        batch = max(batch, 2)
        plan = [(name, pilot) for name in candidates] if len(candidates) > 1 else []
        probe = max(min(batch, share) // 8, 2)  # without pilots a small first batch decides per_cube
        if not plan and stratify and per_cube is None and share - probe >= 2 * probe:
            plan.append((None, probe))
        signature = None  # what a checkpoint must match: only worked out when there is one
        if checkpoint is not None:
            signature = {"calls": calls, "batch": batch, "stratify": stratify, "per_cube": per_cube, "beta": beta,
                         "weight_exponent": weight_exponent,
                         "candidates": list(candidates), "pilot": pilot, "seed": self.seed, "rank": self.rank,
                         "world_size": self.world_size, "sampler": _fingerprint(candidates["flow"], self.grid)}
            if self.world_size > 1:
                checkpoint = Path(f"{checkpoint}.rank{self.rank}")
        if checkpoint is not None and Path(checkpoint).is_file():
            run = EstimateProgress.load(checkpoint, signature, beta, self.device)
            logger.info("continuing the estimate from %s after %d batches", checkpoint, run.done)
        else:  # the chosen sampler is None until the pilots have spoken
            run = EstimateProgress({name: None for name in candidates}, None if len(candidates) > 1 else "flow",
                                   per_cube=per_cube if stratify else 2)
        strata = run.strata

        estimate_points = share - sum(n for name, n in plan if name is not None)  # the pilots' calls excluded
        settled = 0.0  # the weight λ of the probe, the one estimate batch drawn before the plan is known
        if plan and plan[0][0] is None:  # its weight as if even batches were to follow (they may not)
            settled = batch_weights([probe, *even_batch_sizes(share - probe, batch)], weight_exponent)[0]

        def batches():
            """(counter, sampler name or None for the chosen one, points, λ: the batch's weight in
            the estimate, None for a pilot) of every batch: the pilots (or the probe), then the
            rest, planned once they have chosen the sampler and the points per cube (every rank
            decides the same)."""
            for counter, (name, n) in enumerate(plan):
                yield counter, name, n, settled if name is None else None
            if run.chosen is None:
                run.chosen = _choose(run.pilots, run.pilot_weights)
                logger.info("estimate: the %s sampler has the smallest reliable variance per event; it draws the rest",
                            run.chosen)
            if run.per_cube is None:
                run.per_cube = self._per_cube(strata[run.chosen])
            planner = ramped_batch_sizes if run.per_cube > 2 else even_batch_sizes
            sizes = planner(share - sum(n for _, n in plan), batch)
            for counter, (n, weight) in enumerate(zip(sizes, batch_weights(sizes, weight_exponent, settled)),
                                                  start=len(plan)):
                yield counter, None, n, weight

        with tqdm(total=share, desc="integrate", unit="call", unit_scale=True, disable=not progress) as bar:
            for counter, name, n, weight in batches():
                if counter < run.done:  # done before an interruption
                    bar.update(n)
                    continue
                name = name or run.chosen
                cells = cells_per_dimension(n, self.dim, run.per_cube or 2) if stratify else [1]
                # an adaptive estimate's finer cubes sort the earlier points into themselves
                keep = run.per_cube is None or run.per_cube > 2
                if max(cells) > 1 and (strata[name] is None or strata[name].cells != cells):  # a new batch size
                    finer = Strata(cells, beta, self.device, keep_points=keep)
                    strata[name] = finer if strata[name] is None else finer.inherit(strata[name])
                elif max(cells) == 1:
                    strata[name] = None
                stratum = strata[name]
                if stratum is not None and not keep:
                    stratum.forget_points()
                started = time.perf_counter()
                counts = stratum.allocate(n) if stratum is not None else None
                # a stream of its own: the estimate's points never coincide with training points
                z = stratum.points(counts, self._generator(1, counter)) if stratum is not None else None
                placed = time.perf_counter() - started
                _, _, w, spent = self.draw(n, stream=1, counter=counter, base=z, flow=candidates[name])
                spent["sampler"] += placed
                if stratum is not None:
                    stratum.update(w, counts, z)
                    w = stratum.rescale(w, counts)
                # an estimate batch enters the tally as w·λ_k N/n_k (Î = Σ_k λ_k Î_k is their mean);
                # its weights are kept as drawn, for the efficiencies and the weight plot
                scaled = w if weight is None else w * (weight * estimate_points / n)
                part = Tally().add(scaled, counts if stratum is not None else 1)
                if run.chosen is None:
                    run.pilots[name] = part
                    run.pilot_weights[name] = w.cpu().numpy()
                else:
                    run.tally = run.tally.merge(part)
                    run.weights.append(w.cpu().numpy())
                for key in run.timings:
                    run.timings[key] += spent[key]
                run.done = counter + 1
                bar.update(n)
                if checkpoint is not None:
                    run.save(checkpoint, signature)
        chosen, pilots, weights, timings = run.chosen, run.pilots, run.weights, run.timings
        tally = _all_reduce(run.tally)
        self.sampler = candidates[chosen]
        calls_pilot = pilot * len(pilots) * self.world_size
        all_w = dist.all_gather_array(np.concatenate(weights))
        self.estimate_weights = all_w  # every rank's weights of this estimate, e.g. for a weight plot
        tail = pareto_tail_index(all_w)
        if tail >= PARETO_K_RELIABLE:
            logger.warning("the estimate's weights have a heavy tail (Pareto k̂ = %.2f ≥ %.1f): its error bar may be "
                           "far too small; train longer or with more calls, or check the integrand for narrow peaks",
                           tail, PARETO_K_RELIABLE)
        return IntegrationResult(
            value=tally.mean, error=tally.error, relative_std=tally.relative_std,
            effective_sample_size=tally.effective_sample_size,
            unweighting_efficiency=unweighting_efficiency(all_w),
            unweighting_efficiency_bootstrap=bootstrap_unweighting_efficiency(all_w, replica_size, seed=self.seed),
            bootstrap_replica_size=int(min(replica_size, all_w.size)),
            unweighting_efficiency_truncated=truncated_unweighting_efficiency(all_w, 1e-3),
            calls_training=self.calls_training + self.calls_grid, calls_estimate=calls - calls_pilot,
            calls_pilot=calls_pilot, calls_grid=self.calls_grid,
            time_integrand_s=timings["integrand"], time_sampler_s=timings["sampler"], time_training_s=self.time_training,
            peak_memory_mb=_peak_memory_mb(self.device), device=str(self.device), tally=tally.to_dict(), exact=exact,
            sampler=chosen, pareto_k=tail, points_per_cube=run.per_cube if stratify else 0,
            companion_share=candidates[chosen].share if isinstance(candidates[chosen], DefensiveMixture) else 0.0,
        )


def split_training(calls: int, training_fraction: float, grid_fraction: float, grid: bool) -> tuple[int, int]:
    """The training calls of a budget of ``calls``, split into the grid's adaptation
    (``grid_fraction`` of them, none without a grid) and the flow's training (the rest)."""
    train_calls = int(calls * training_fraction)
    grid_calls = int(train_calls * grid_fraction) if grid else 0
    return grid_calls, train_calls - grid_calls


def _fingerprint(flow: Flow, grid: Flow | None) -> str:
    """A digest of the samplers' states: an estimate's checkpoint belongs to these samplers only."""
    digest = hashlib.sha256()
    for module in (flow, grid):
        for key, value in (module.state_dict().items() if module is not None else ()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _choose(pilots: dict[str, Tally], weights: dict[str, np.ndarray]) -> str:
    """The pilot with the smallest variance per event among those whose weights have no heavy
    tail (Pareto k̂ < 0.7): a sampler that misses a mode can show a small spread on a pilot and a
    wrong answer on the estimate. If every one has a heavy tail their spreads mean little, and
    the one with the lightest tail is chosen. Every rank decides on all ranks' data."""
    tails = {name: pareto_tail_index(dist.all_gather_array(w)) for name, w in weights.items()}
    combined = {name: _all_reduce(tally) for name, tally in pilots.items()}
    # NaN (too few weights, or no spread at all) counts as reliable
    reliable = [name for name in pilots if not tails[name] >= PARETO_K_RELIABLE]
    if reliable:
        chosen = min(reliable, key=lambda key: combined[key].std)
    else:
        chosen = min(pilots, key=lambda key: tails[key])
    logger.info("pilots (variance per event, Pareto k̂): %s", ", ".join(
        f"{name} {combined[name].relative_std:.3g} k̂={tails[name]:.2f}" for name in pilots))
    return chosen


def _all_reduce(tally: Tally) -> Tally:
    """The tally of all ranks' weights: the sums summed, max|w| maximised."""
    return Tally.from_tensor(dist.all_reduce_sum(tally.to_tensor()), dist.all_reduce_max(tally.max_abs_w))


def trained_integrator(
    f: Callable,
    dim: int,
    bounds: Sequence[Sequence[float]] | None = None,
    calls: int = 1_000_000,
    training_fraction: float = 0.5,
    *,
    batch: int = 512,
    loss: str = "variance",
    reuse: int = 8,
    lr: float = 3e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    grid_fraction: float = 0.2,
    min_ess: float = 0.05,
    tempering_ramp: float = 0.1,
    **sampler: Any,
) -> Integrator:
    """An :class:`Integrator` (built with the ``sampler`` settings) trained as :func:`integrate`
    trains it for a budget of ``calls``: ``training_fraction`` of them, of which
    ``grid_fraction`` adapt the VEGAS grid (unless ``grid=0``) and the rest train the flow in
    batches of ``batch`` calls on the ``loss``, each batch reused for ``reuse`` steps at
    learning rate ``lr``, tempered while a batch's effective sample size is below ``min_ess``
    with β rising no faster than over ``tempering_ramp`` of the training (see
    :meth:`Integrator.train`). ``integrator.integrate(calls − spent)`` then spends the rest,
    with spent = ``calls_training + calls_grid``."""
    if not 0 <= training_fraction < 1:
        raise ValueError(f"training_fraction must be in [0, 1), got {training_fraction}")
    if not 0 <= grid_fraction <= 1:
        raise ValueError(f"grid_fraction must be in [0, 1], got {grid_fraction}")
    integrator = Integrator(f, dim, bounds, device=device, seed=seed, **sampler)
    grid_calls, flow_calls = split_training(calls, training_fraction, grid_fraction, integrator.grid is not None)
    if grid_calls:
        integrator.adapt_grid(grid_calls, progress=progress)
    integrator.train(flow_calls, batch=batch, loss=loss, reuse=reuse, lr=lr, progress=progress, schedule_calls=flow_calls,
                     min_ess=min_ess, tempering_ramp=tempering_ramp)
    return integrator


def integrate(
    f: Callable,
    dim: int,
    bounds: Sequence[Sequence[float]] | None = None,
    calls: int = 1_000_000,
    training_fraction: float = 0.5,
    *,
    progress: bool = True,
    exact: float | None = None,
    estimate_batch: int = 262_144,
    replica_size: int = 10_000,
    stratify: bool = True,
    choose: bool = True,
    **training: Any,
) -> IntegrationResult:
    """∫_box f(x) dx by neural importance sampling with ``calls`` integrand evaluations in all:
    ``training_fraction`` of them train the sampler (:func:`trained_integrator`, which takes
    the ``training`` options — ``batch``, ``loss``, ``reuse``, ``lr``, ``device``, ``seed``,
    ``grid_fraction``, ``min_ess``, ``tempering_ramp`` and the :class:`Integrator`'s sampler
    settings), the rest feed the estimate (drawn ``estimate_batch`` at a time, stratified in
    the sampler's base space unless ``stratify`` is false, by the flow, the VEGAS grid or
    uniform points as pilots choose (``choose``, see :meth:`Integrator.integrate`);
    ``replica_size`` is the bootstrap unweighting efficiency's). :func:`integrate_defaults`
    lists every default."""
    integrator = trained_integrator(f, dim, bounds, calls, training_fraction, progress=progress, **training)
    spent = integrator.calls_training + integrator.calls_grid
    return integrator.integrate(calls - spent, batch=estimate_batch, progress=progress, exact=exact,
                                replica_size=replica_size, stratify=stratify, choose=choose)


def integrate_defaults() -> dict[str, Any]:
    """The default of every keyword of :func:`integrate`, its training options
    (:func:`trained_integrator`) included: one source for jobs and benchmarks."""
    return {name: p.default for fn in (trained_integrator, integrate) for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}
