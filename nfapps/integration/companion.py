"""A defensive companion for a trained flow sampler: Gaussians beside the flow.

A flow q trained on samples of itself learns |g| well where it puts its points and poorly
where it puts few: in many dimensions its density can fall off faster than |g| in the outer
shell of a peak, and there the weights g/q are huge and rare. Such weights have an infinite
(or nearly infinite) variance: most estimates miss them, come out low and report an error bar
far too small; the few that catch one come out high. On camel-16 a flow trained with 5·10⁵
calls had weights up to 730 × I in 10⁷ draws, and its spread per event read 0.28, 0.43 and
0.55 after 5, 10 and 15 million (seed 1).

The defensive mixture (Hesterberg 1995; Owen & Zhou 2000) draws a share α of the points
from a broad companion c instead,

    q_α(x) = (1 − α) q(x) + α c(x),   w = g(x)/q_α(x) ≤ g(x)/(α c(x)),

so a weight can only be large where c is small too, and E[w²] ≤ E_q[(g/q)²]/(1 − α): it
costs at most a factor 1/(1 − α) of the flow's second moment. Here c is a mixture of K
Gaussians with diagonal covariances truncated to the unit cube (exact normalisation, exact
sampling by the inverse CDF), fitted by weighted EM to the training points with weights |g|/q
(so it fits |g|) and widened by 2^(1/d) in scale, so that a fitted Gaussian target's peak
keeps at least half its density under c (weights at most 2/α times I there) and its tails fall
more slowly than the target's. Measured on the suite's trained samplers (10⁶ calls; the
flow's estimate against the mixture's, same calls): camel-16 (seed 1) relative std per event
0.26–0.66 over estimate seeds against 0.240–0.244, mean pull −0.5 against −0.3; camel-8 0.22–0.29
against 0.205; camel-4 classic unweighting efficiency 0.04–0.21 against 0.30–0.46 at the same
variance. A width factor 1.2 at d = 16 cost variance (gaussian-16 0.081 → 0.139), 1 cut too
little of camel-4's tail (classic efficiency 0.17).

:class:`DefensiveMixture` is itself a sampler on the flow's uniform base: the first base
coordinate z₀ < α sends a point to the companion (z₀/α picks the component and, rescaled, is
its first uniform), z₀ ≥ α to the flow with z₀ ← (z₀ − α)/(1 − α). That map carries the
uniform base to q_α exactly, so stratified base points, event generation and saving work as
for a flow.

The companion is only worth its share where it is nearly free: on a smooth flow that already
follows |g| closely (a 2-D Gaussian, a Breit–Wigner peak) the companion's own mismatch adds
variance that stratification does not remove (2-D Gaussian, relative std per event 0.0084 →
0.0108). :func:`fit_companion` therefore fits it on half of the training's last points and
measures, on the other half, the variance per event of the mixture against the flow's alone;
:class:`~nfapps.integration.Integrator` draws its estimate from the mixture only where that
ratio is at most :data:`MAX_VARIANCE_RATIO`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import BUILDERS, register_builder
from ..flow import Flow

#: The companion's share α of the points.
SHARE = 0.1
#: Components K of the companion.
COMPONENTS = 8
#: The mixture is used where its measured variance per event is at most this times the flow's.
MAX_VARIANCE_RATIO = 1.0
#: Smallest width of a fitted Gaussian along any axis (the unit cube's scale).
MIN_SCALE = 1e-3
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class GaussianCompanion(nn.Module):
    """K Gaussians with diagonal covariance truncated to [0, 1]^d:
    c(x) = Σ_k π_k Π_j φ((x_j − μ_kj)/σ_kj) / (σ_kj Z_kj),  Z_kj = Φ((1 − μ_kj)/σ_kj) − Φ(−μ_kj/σ_kj).

    Buffers (float64): ``log_weights`` (K,), ``means`` and ``scales`` (K, d).
    """

    def __init__(self, dim: int, components: int) -> None:
        super().__init__()
        if dim < 1 or components < 1:
            raise ValueError(f"a companion needs dim ≥ 1 and components ≥ 1, got {dim}, {components}")
        self.dim, self.components = int(dim), int(components)
        self.register_buffer("log_weights", torch.full((components,), -math.log(components), dtype=torch.float64))
        self.register_buffer("means", torch.full((components, dim), 0.5, dtype=torch.float64))
        self.register_buffer("scales", torch.full((components, dim), 0.5, dtype=torch.float64))

    def _bounds(self) -> tuple[Tensor, Tensor]:
        """Φ at the cube's ends in every component's standardised coordinates, (K, d) each."""
        low = torch.special.ndtr(-self.means / self.scales)
        high = torch.special.ndtr((1 - self.means) / self.scales)
        return low, high

    def log_prob(self, x: Tensor) -> Tensor:
        """log c(x) of points x (n, d) in the cube, in x's dtype.

        In float64, with the exponents from one matrix product, −½ Σ_j (x_j − μ_kj)²/σ_kj² =
        [x, x²]·[μ_k/σ_k², −1/(2σ_k²)] − ½ Σ_j μ_kj²/σ_kj² (no (n, K, d) intermediate; on the
        unit cube with σ ≥ :data:`MIN_SCALE` the expansion loses at most ~10⁻¹⁰ of the exponent)."""
        low, high = self._bounds()
        precision = self.scales.pow(-2)  # (K, d)
        log_norm = (torch.log(high - low) + torch.log(self.scales) + _LOG_SQRT_2PI).sum(1)  # (K,)
        constant = self.log_weights - log_norm - 0.5 * (self.means.square() * precision).sum(1)
        coefficients = torch.cat([self.means * precision, -0.5 * precision], dim=1).T  # (2d, K)
        x64 = x.to(torch.float64)
        exponents = torch.addmm(constant.to(torch.float64), torch.cat([x64, x64.square()], dim=1), coefficients.to(torch.float64))
        return torch.logsumexp(exponents, dim=1).to(x.dtype)

    def from_uniform(self, u: Tensor) -> Tensor:
        """Points of c from uniform u (n, d) in [0, 1): u₀ picks component k by the cumulative
        weights and, rescaled within its interval, serves as the first coordinate's uniform;
        each coordinate j then is μ + σ Φ⁻¹(Φ(a) + u_j (Φ(b) − Φ(a))) (float64, in [0, 1])."""
        u = u.to(torch.float64)
        cumulative = torch.cumsum(self.log_weights.exp(), 0)
        cumulative = cumulative / cumulative[-1]
        k = torch.searchsorted(cumulative, u[:, 0].contiguous(), right=True).clamp_max(self.components - 1)
        start = torch.cat([cumulative.new_zeros(1), cumulative[:-1]])[k]
        first = ((u[:, 0] - start) / (cumulative[k] - start)).clamp(0, 1)
        u = torch.cat([first[:, None], u[:, 1:]], dim=1)
        low, high = self._bounds()
        p = low[k] + u * (high[k] - low[k])
        x = self.means[k] + self.scales[k] * torch.special.ndtri(p.clamp(1e-300, 1 - 1e-16))
        return x.clamp(0, 1)

    @torch.no_grad()
    def fit(self, points: Tensor, weights: Tensor, iterations: int = 50, widen: float | None = None) -> "GaussianCompanion":
        """Weighted EM for the components on ``points`` (n, d) with weights ∝ the target there
        (|g|/q for points drawn from q), started from K weighted draws; then every width is
        multiplied by ``widen`` (default 2^(1/d)). The truncation is ignored in the fit (the
        density is exact)."""
        widen = 2 ** (1 / self.dim) if widen is None else float(widen)
        x = points.to(self.means.device, torch.float64)
        w = weights.to(self.means.device, torch.float64).abs()
        if x.ndim != 2 or x.shape[1] != self.dim or len(w) != len(x) or not bool(w.sum() > 0):
            raise ValueError(f"the companion needs points (n, {self.dim}) with as many weights, not all zero; "
                             f"got {tuple(x.shape)} and {tuple(w.shape)}")
        w = w / w.sum()
        generator = torch.Generator(device=x.device).manual_seed(0)
        enough = int((w > 0).sum()) >= self.components  # distinct starting points where there are as many
        start = torch.multinomial(w, self.components, replacement=not enough, generator=generator)
        spread = ((x - w @ x).square().T @ w).sqrt().clamp_min(MIN_SCALE)
        means, scales = x[start].clone(), spread.expand(self.components, -1).clone()
        log_weights = torch.full((self.components,), -math.log(self.components), dtype=torch.float64, device=x.device)
        x2 = x.square()
        for _ in range(iterations):
            # Σ_j (x_j − μ_kj)²/σ_kj² expanded into matrix products (no (n, K, d) intermediate)
            precision = scales.pow(-2)
            squares = x2 @ precision.T - 2 * x @ (means * precision).T + (means.square() * precision).sum(1)
            log_r = -0.5 * squares - torch.log(scales).sum(1) + log_weights
            r = torch.softmax(log_r, dim=1) * w[:, None]  # (n, K), responsibilities times weights
            mass = r.sum(0).clamp_min(1e-300)
            log_weights = torch.log(mass / mass.sum())
            means = (r.T @ x) / mass[:, None]
            scales = ((r.T @ x2) / mass[:, None] - means.square()).clamp_min(0).sqrt().clamp_min(MIN_SCALE)
        self.log_weights.copy_(log_weights)
        self.means.copy_(means.clamp(0, 1))
        self.scales.copy_(scales * widen)
        return self


class DefensiveMixture(Flow):
    """q_α = (1 − α) q + α c: a flow q and a :class:`GaussianCompanion` c drawing a share α
    (see the module docstring). Samples and densities as a flow's (``from_base``,
    ``sample_and_log_prob``, ``log_prob``); there is no inverse (``to_base``)."""

    def __init__(self, flow: Flow, companion: GaussianCompanion, share: float) -> None:
        if not 0 < share < 1:
            raise ValueError(f"the companion's share α must be in (0, 1), got {share}")
        if flow.event_shape != (companion.dim,):
            raise ValueError(f"a companion of dim {companion.dim} cannot go with a flow of shape {flow.event_shape}")
        config = None if flow.config is None else {  # a flow nfapps.load cannot rebuild: neither can it the mixture
            "builder": "DefensiveMixture",
            "kwargs": {"flow": flow.config, "components": companion.components, "share": float(share)}}
        super().__init__(flow.transform, flow.base, flow.context_features, config)
        self.companion = companion
        self.share = float(share)
        self.validate = flow.validate

    def _mix(self, x: Tensor, log_q: Tensor) -> Tensor:
        """log q_α(x) from the flow's log q(x)."""
        return torch.logaddexp(math.log1p(-self.share) + log_q, math.log(self.share) + self.companion.log_prob(x))

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self._mix(x, super().log_prob(x, context))

    forward = log_prob

    def to_base(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError("a defensive mixture has no inverse: it maps base points to samples only")

    def from_base(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is not None:
            raise ValueError("a defensive mixture is unconditional")
        return self.from_base_chunked(z, len(z))

    def from_base_chunked(self, z: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
        """Points of q_α from base points z, in z's order; the flow's points and the
        companion's go through the flow ``chunk`` at a time each (the companion's points need
        the flow's density, its other direction)."""
        first = z[:, 0].to(torch.float64)
        to_companion = first < self.share
        flow_rows, companion_rows = (~to_companion).nonzero().squeeze(1), to_companion.nonzero().squeeze(1)
        x = torch.empty_like(z)
        log_q = torch.empty(len(z), dtype=z.dtype, device=z.device)
        if len(flow_rows):
            zf = z.index_select(0, flow_rows)
            zf[:, 0] = ((first.index_select(0, flow_rows) - self.share) / (1 - self.share)).to(z.dtype)
            pieces = [Flow.from_base(self, piece) for piece in zf.split(chunk)]  # the flow's own map
            xf, log_qf = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
            x.index_copy_(0, flow_rows, xf)
            log_q.index_copy_(0, flow_rows, log_qf)
        if len(companion_rows):
            zc = z.index_select(0, companion_rows).to(torch.float64)
            zc[:, 0] = first.index_select(0, companion_rows) / self.share
            xc = self.companion.from_uniform(zc).to(z.dtype)
            x.index_copy_(0, companion_rows, xc)
            # the flow's density at the companion's points, mixed in below with the others
            log_q.index_copy_(0, companion_rows, torch.cat([Flow.log_prob(self, piece) for piece in xc.split(chunk)]))
        return x, self._mix_chunked(x, log_q, chunk)

    def _mix_chunked(self, x: Tensor, log_q: Tensor, chunk: int) -> Tensor:
        return torch.cat([self._mix(xs, ls) for xs, ls in zip(x.split(chunk), log_q.split(chunk))])


@torch.no_grad()
def fit_companion(flow: Flow, points: Tensor, values: Tensor, log_q_drawn: Tensor, components: int = COMPONENTS,
                  share: float = SHARE) -> tuple[GaussianCompanion, float]:
    """A companion for ``flow`` fitted on the even-numbered of ``points`` (drawn with densities
    exp(``log_q_drawn``), where the integrand took ``values``), and the ratio of variances per
    event, mixture over flow, measured on the odd-numbered ones:

        m_p = mean(g² / (p(u) q_drawn(u))),  Î = mean(g / q_drawn),  ratio = (m_{q_α} − Î²)/(m_q − Î²),

    with q the flow as it is now (the points may come from its earlier states). NaN where the
    flow's measured variance is not positive."""
    g = values.to(torch.float64)
    log_drawn = log_q_drawn.to(torch.float64)
    fit_half, test_half = slice(0, None, 2), slice(1, None, 2)
    weights = g[fit_half] * torch.exp(-log_drawn[fit_half])
    companion = GaussianCompanion(points.shape[1], components).to(points.device).fit(points[fit_half], weights)
    mixture = DefensiveMixture(flow, companion, share)
    u, g, log_drawn = points[test_half], g[test_half], log_drawn[test_half]
    log_q_flow = flow.log_prob(u)
    log_q, log_mix = log_q_flow.to(torch.float64), mixture._mix(u, log_q_flow).to(torch.float64)
    mean = (g * torch.exp(-log_drawn)).mean()
    second_flow = (g.square() * torch.exp(-log_q - log_drawn)).mean()
    second_mix = (g.square() * torch.exp(-log_mix - log_drawn)).mean()
    spread = float(second_flow - mean.square())
    return companion, float(second_mix - mean.square()) / spread if spread > 0 else math.nan


@register_builder("DefensiveMixture")
def _build_defensive_mixture(flow: dict, components: int, share: float) -> DefensiveMixture:
    """Rebuilds a saved :class:`DefensiveMixture` (its flow from that flow's own builder)."""
    inner = BUILDERS[flow["builder"]](**flow["kwargs"])
    return DefensiveMixture(inner, GaussianCompanion(inner.event_shape[0], components), share)


__all__ = ["DefensiveMixture", "GaussianCompanion", "fit_companion"]
