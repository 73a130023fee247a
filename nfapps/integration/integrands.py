"""Built-in integrands on the unit hypercube [0, 1]^d with exact (or reference) values.

The suite of i-flow (C. Gao, J. Isaacson, C. Krause, "i-flow: High-dimensional Integration
and Sampling with Normalizing Flows", arXiv:2001.05486, Sec. IV) with α = 0.2 — Gaussian and
camel in d = 2, 4, 8, 16, entangled circles, annulus, polynomial in d = 18, 54, 96, the
sector-decomposed one-loop triangle and box — and two physics integrands with analytic answers:
e⁺e⁻ → μ⁺μ⁻ through γ/Z, and a narrow Breit–Wigner resonance.

Every integrand maps points of shape (n, d) to values of shape (n,), keeps the points' dtype and
device, and is finite on the whole closed cube (faces and corners included)::

    from nfapps.integration import get_integrand
    f = get_integrand("camel-4")
    u = torch.rand(100_000, f.dim, dtype=torch.float64)
    f(u).mean(), f.exact            # plain Monte Carlo against the exact value

The factories (``gaussian(dim, alpha)``, ``camel``, ``annulus``, ``polynomial``, ``triangle``,
``ee_mumu``, ``breit_wigner``) build variants with other parameters; their exact values follow
from the same closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Width of the i-flow Gaussians and camel humps.
IFLOW_ALPHA = 0.2

# Electroweak inputs for the physics integrands (PDG-style values; Born level, massless leptons).
#: Z mass in GeV.
M_Z = 91.1876
#: Z total width in GeV.
GAMMA_Z = 2.4952
#: Weak mixing angle sin²θ_W (effective leptonic value).
SIN2_THETA_W = 0.2312
#: Electromagnetic coupling α at the Z scale.
ALPHA_EM = 1 / 128.952
#: (ħc)² in pb·GeV²: a cross section in GeV⁻² times this is in pb.
GEV2_TO_PB = 0.3893793721e9


@dataclass(frozen=True)
class Integrand:
    """A batched integrand f: [0, 1]^dim → ℝ with its exact integral ∫ f(u) du over the cube.

    ``fn`` maps points (n, dim) to values (n,); calling the integrand checks the points' shape and
    dtype first. ``separable`` is true when f is a product of one-dimensional factors (the case a
    VEGAS grid adapts to exactly); ``tags`` name its features ("i-flow", "peaked", "multimodal", …).
    """

    name: str
    dim: int
    fn: Callable[[Tensor], Tensor] = field(repr=False, compare=False)
    exact: float
    description: str = field(repr=False)
    separable: bool
    tags: tuple[str, ...] = ()
    #: Exact draws from the normalised integrand p = f/∫f, where f ≥ 0 and that is easy (the
    #: Gaussians and camels): (n, generator) → points (n, dim), float64. A sampler's true
    #: variance per event is then E_p[p/q] − 1 (see :meth:`sample`).
    exact_sampler: Callable[[int, torch.Generator | None], Tensor] | None = field(default=None, repr=False, compare=False)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws (float64, on the CPU) from p = f/∫f. For any sampler q,
        E_p[p/q] = E_q[(f/q)²]/(∫f)² = 1 + (relative std per event)², so these points measure
        a sampler's true variance, heavy tails included, where its own draws rarely reach them."""
        if self.exact_sampler is None:
            raise ValueError(f"{self.name} has no exact sampler (the Gaussian and camel integrands have one)")
        return self.exact_sampler(int(n), generator)

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name}: points must be a floating-point torch tensor, got {getattr(x, 'dtype', type(x))}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{self.name}: points must have shape (n, {self.dim}), got {tuple(x.shape)}")
        return self.fn(x)


# --- Gaussians -------------------------------------------------------------------------------


def _gaussian_product(x: Tensor, centre: float, alpha: float) -> Tensor:
    """Π_i exp(−(x_i − centre)²/α²)/(α√π), in log space so that large d neither over- nor underflows early."""
    log_norm = -x.shape[1] * math.log(alpha * math.sqrt(math.pi))
    return torch.exp(log_norm - ((x - centre) / alpha).square().sum(dim=1))


def _humps_sampler(dim: int, centres: tuple[float, ...], alpha: float) -> Callable[[int, torch.Generator | None], Tensor]:
    """Exact draws from Σ_c Π_i exp(−(x_i − c)²/α²) normalised on [0, 1]^d, for centres whose
    humps hold equal mass on the cube (c and 1 − c, or one centre): a hump picked uniformly,
    then every coordinate from N(c, α²/2) truncated to [0, 1] by the inverse CDF."""
    sigma = alpha / math.sqrt(2)

    def draw(n: int, generator: torch.Generator | None = None) -> Tensor:
        pick = torch.randint(len(centres), (n, 1), generator=generator)
        c = torch.tensor(centres, dtype=torch.float64)[pick]
        low, high = torch.special.ndtr(-c / sigma), torch.special.ndtr((1 - c) / sigma)
        u = torch.rand(n, dim, generator=generator, dtype=torch.float64)
        return (c + sigma * torch.special.ndtri(low + u * (high - low))).clamp(0, 1)

    return draw


def gaussian(dim: int, alpha: float = IFLOW_ALPHA) -> Integrand:
    """f(x) = (α√π)^−d · exp(−Σ_i (x_i − ½)²/α²)  (i-flow eq. 15).

    Each factor integrates over [0, 1] to (1/√π)∫_{−1/2α}^{1/2α} e^{−t²} dt = erf(1/(2α)),
    so ∫ f = erf(1/(2α))^d.
    """
    _check_dim(dim)
    return Integrand(
        name=f"gaussian-{dim}", dim=dim, fn=lambda x: _gaussian_product(x, 0.5, alpha),
        exact=math.erf(1 / (2 * alpha)) ** dim,
        description=f"(α√π)^−d exp(−Σ(xᵢ−½)²/α²), α = {alpha}; exact erf(1/(2α))^d (i-flow eq. 15)",
        separable=True, tags=("i-flow", "peaked"), exact_sampler=_humps_sampler(dim, (0.5,), alpha),
    )


def camel(dim: int, alpha: float = IFLOW_ALPHA) -> Integrand:
    """f(x) = ½(α√π)^−d [exp(−Σ(x_i − ⅓)²/α²) + exp(−Σ(x_i − ⅔)²/α²)]  (i-flow eq. 17).

    A factor centred at c ∈ {⅓, ⅔} integrates over [0, 1] to ½[erf(c/α) + erf((1 − c)/α)],
    the same for both humps, so ∫ f = [½(erf(1/(3α)) + erf(2/(3α)))]^d. Two humps on the
    diagonal: a separable (VEGAS) grid also puts weight on the 2^d − 2 empty "ghost" corners.
    """
    _check_dim(dim)
    return Integrand(
        name=f"camel-{dim}", dim=dim,
        fn=lambda x: 0.5 * (_gaussian_product(x, 1 / 3, alpha) + _gaussian_product(x, 2 / 3, alpha)),
        exact=(0.5 * (math.erf(1 / (3 * alpha)) + math.erf(2 / (3 * alpha)))) ** dim,
        description=(f"½(α√π)^−d [exp(−Σ(xᵢ−⅓)²/α²) + exp(−Σ(xᵢ−⅔)²/α²)], α = {alpha}; "
                     "exact [½(erf(1/(3α)) + erf(2/(3α)))]^d (i-flow eq. 17)"),
        separable=False, tags=("i-flow", "peaked", "multimodal"), exact_sampler=_humps_sampler(dim, (1 / 3, 2 / 3), alpha),
    )


# --- two-dimensional shapes ------------------------------------------------------------------

#: Entangled circles (i-flow eq. 19): centres, radius, sharpness w and height exponent.
CIRCLES_CENTRE = (0.4, 0.6)
CIRCLES_RADIUS = 0.25
CIRCLES_SHARPNESS = 250.0
CIRCLES_POWER = 3
#: ∫ over the unit square; 0.013684776724938 by nested adaptive quadrature in polar coordinates.
CIRCLES_EXACT = 0.013684776725


def _circles(x: Tensor) -> Tensor:
    (a, b), r2, w, k = CIRCLES_CENTRE, CIRCLES_RADIUS**2, CIRCLES_SHARPNESS, CIRCLES_POWER
    x1, x2 = x[:, 0], x[:, 1]
    first = x2.pow(k) * torch.exp(-w * ((x1 - a).square() + (x2 - b).square() - r2).abs())
    second = (1 - x2).pow(k) * torch.exp(-w * ((x1 - (1 - a)).square() + (x2 - (1 - b)).square() - r2).abs())
    return first + second


def circles() -> Integrand:
    """Entangled circles (i-flow eq. 19), d = 2, with c = (0.4, 0.6), R = 0.25, w = 250:

        f(x) = x₂³ exp(−w|(x₁ − 0.4)² + (x₂ − 0.6)² − R²|)
             + (1 − x₂)³ exp(−w|(x₁ − 0.6)² + (x₂ − 0.4)² − R²|).

    Two thin rings of growing height, the second the first's point reflection through (½, ½),
    so ∫ f = 2∫(first). Over the whole plane, in polar coordinates (ρ, θ) about c, the angular
    average of (0.6 + ρ sin θ)³ is 0.216 + 0.9ρ², and with u = ρ² the radial integral is
    elementary: ∫_ℝ² = 2π[(a + bR²)(2 − e^{−wR²})/w + b e^{−wR²}(R²/w + 1/w²)] with a = 0.216,
    b = 0.9, i.e. 0.0136847767249734. The part outside the unit square is 3.5e-14, so
    ∫_[0,1]² f = 0.013684776724938 (nested adaptive quadrature); i-flow quotes 0.0136848(1).
    """
    return Integrand(
        name="circles", dim=2, fn=_circles, exact=CIRCLES_EXACT,
        description=("x₂³e^{−w|(x₁−0.4)²+(x₂−0.6)²−R²|} + (1−x₂)³e^{−w|(x₁−0.6)²+(x₂−0.4)²−R²|}, R = 0.25, "
                     "w = 250; reference 0.013684776725 (closed form on ℝ² minus a 3.5e-14 tail; i-flow eq. 19)"),
        separable=False, tags=("i-flow", "ridge", "multimodal"),
    )


def annulus(r_inner: float = 0.2, r_outer: float = 0.45) -> Integrand:
    """Indicator of the annulus r_inner ≤ |x − (½, ½)| ≤ r_outer (i-flow's ring), d = 2.

    The annulus lies inside the unit square for r_outer ≤ ½, so ∫ f = π(r_outer² − r_inner²)
    (0.51050880620834 for the default 0.2, 0.45). Discontinuous: a hard test of variance.
    """
    if not 0 <= r_inner < r_outer <= 0.5:
        raise ValueError(f"annulus needs 0 ≤ r_inner < r_outer ≤ ½ (inside the unit square), got {r_inner}, {r_outer}")
    lo, hi = r_inner**2, r_outer**2

    def fn(x: Tensor) -> Tensor:
        r2 = (x - 0.5).square().sum(dim=1)
        return ((r2 >= lo) & (r2 <= hi)).to(x.dtype)

    return Integrand(
        name="annulus", dim=2, fn=fn, exact=math.pi * (hi - lo),
        description=f"1 if {r_inner} ≤ |x − (½,½)| ≤ {r_outer} else 0; exact π(r_out² − r_in²)",
        separable=False, tags=("i-flow", "discontinuous"),
    )


def polynomial(dim: int) -> Integrand:
    """f(x) = Σ_i (x_i − x_i²)  (i-flow eq. 22): ∫_0^1 (t − t²) dt = 1/6, so ∫ f = d/6.

    Smooth and spread over the whole cube (additive, not a product of factors): the test is
    that a sampler does not lose to uniform sampling in high dimension.
    """
    _check_dim(dim)
    return Integrand(
        name=f"polynomial-{dim}", dim=dim, fn=lambda x: (x * (1 - x)).sum(dim=1), exact=dim / 6,
        description="Σᵢ (xᵢ − xᵢ²); exact d/6 (i-flow eq. 22)",
        separable=False, tags=("i-flow", "smooth", "high-dim"),
    )


# --- one-loop Feynman integrals by sector decomposition --------------------------------------
#
# I_N = ∫ d⁴k/(iπ²) Π_j 1/((k + q_j)² − m_j² + i0)   (the LoopTools normalisation, no r_Γ)
#     = (−1)^N Γ(N − 2) ∫ d^N x δ(1 − Σx) U^{N−4} / F^{N−2},
# U = Σ x_j, F = −Σ_{i<j} (q_i − q_j)² x_i x_j + U Σ_j m_j² x_j. The integrand is homogeneous of
# degree −N in x, so the δ can fix any one x_l = 1 (projective invariance); splitting the
# integration region into the N primary sectors where x_l is largest and scaling
# x_j = x_l t_j (j ≠ l) maps sector l onto the cube t ∈ [0, 1]^{N−1}. Below every threshold
# (as for both kinematic points here) F > 0 on the cube: the integrand is smooth and finite.


def _sum_over_sectors(t: Tensor, term: Callable[[Tensor], Tensor]) -> Tensor:
    """Σ_l term(x) over the primary sectors: x_l = 1 and the other Feynman parameters = t, in order."""
    one = torch.ones_like(t[:, :1])
    return sum(term(torch.cat([t[:, :l], one, t[:, l:]], dim=1)) for l in range(t.shape[1] + 1))


#: i-flow's triangle: p₁² = p₂² = 0, p₃² = 125² GeV², three internal masses 175 GeV.
TRIANGLE_S, TRIANGLE_MASS = 125.0**2, 175.0


def triangle(s: float = TRIANGLE_S, mass: float = TRIANGLE_MASS) -> Integrand:
    """Scalar one-loop triangle C₀(0, 0, s; m, m, m) in D = 4, sector-decomposed, d = 2.

    Feynman parameters x₁, x₂, x₃ with p₁² between x₁, x₂, p₂² between x₂, x₃ and s between x₃, x₁:
    F = −s x₃x₁ + m²U², and C₀ = −∫ δ(1 − Σx)/(U F). In sector l, x_l = 1 and the two other
    parameters are (t₁, t₂) ∈ [0, 1]², so f(t) = −Σ_l 1/(U F)|_sector l.
    For 0 < s < 4m² the closed form is C₀ = −(2/s) arcsin²(√s/(2m)); at i-flow's point
    (s = 125², m = 175) it is −1.7072168253776755e-5 (i-flow quotes −1.70721682537767509e-5).
    """
    if not 0 < s < 4 * mass**2:
        raise ValueError(f"triangle needs 0 < s < 4m² (below threshold, F > 0), got s = {s}, m = {mass}")
    m2 = mass**2

    def term(x: Tensor) -> Tensor:
        u = x.sum(dim=1)
        return -1 / (u * (m2 * u.square() - s * x[:, 2] * x[:, 0]))

    return Integrand(
        name="triangle", dim=2, fn=lambda t: _sum_over_sectors(t, term),
        exact=-2 / s * math.asin(math.sqrt(s) / (2 * mass)) ** 2,
        description=(f"one-loop triangle C₀(0, 0, s; m, m, m), s = {s:g} GeV², m = {mass:g} GeV, three primary "
                     "sectors; exact −(2/s) arcsin²(√s/2m) (i-flow: −1.70721682537767509e-5)"),
        separable=False, tags=("i-flow", "feynman", "loop"),
    )


#: i-flow's box: p₁² = p₂² = p₄² = 0, p₃² = 125² GeV², s₁₂ = 130² GeV², s₂₃ = −130²/2 GeV², masses 175 GeV.
BOX_S12, BOX_S23, BOX_P3SQ, BOX_MASS = 130.0**2, -(130.0**2) / 2, 125.0**2, 175.0
#: i-flow's value; sector Gauss–Legendre (48³) and unsplit simplex quadrature give 1.9369640238683e-10.
BOX_EXACT = 1.93696402386819321e-10


def _box_term(x: Tensor) -> Tensor:
    u = x.sum(dim=1)
    f = (BOX_MASS**2 * u.square() - BOX_S12 * x[:, 0] * x[:, 2] - BOX_S23 * x[:, 1] * x[:, 3]
         - BOX_P3SQ * x[:, 2] * x[:, 3])
    return f.square().reciprocal()


def box() -> Integrand:
    """Scalar one-loop box D₀(0, 0, 125², 0; s₁₂ = 130², s₂₃ = −130²/2; 175, 175, 175, 175) in D = 4, d = 3.

    Feynman parameters x₁…x₄ with leg p_j between x_j and x_{j+1} (p₄ between x₄ and x₁), so
    F = −s₁₂ x₁x₃ − s₂₃ x₂x₄ − p₃² x₃x₄ + m²U² and D₀ = ∫ δ(1 − Σx)/F². Four primary sectors,
    each with x_l = 1 and the other three parameters t ∈ [0, 1]³: f(t) = Σ_l 1/F²|_sector l
    (as in i-flow; the one-mass box is symmetric under s₁₂ ↔ s₂₃, so which diagonal carries
    which invariant does not matter). Exact value as quoted by i-flow, 1.93696402386819321e-10;
    Gauss–Legendre on the sectors and adaptive quadrature of the unsplit simplex integral both give
    1.9369640238683e-10 (agreement to 7e-14 relative).
    """
    return Integrand(
        name="box", dim=3, fn=lambda t: _sum_over_sectors(t, _box_term), exact=BOX_EXACT,
        description=("one-loop box D₀(0,0,125²,0; 130², −130²/2; 175⁴) GeV, four primary sectors; "
                     "reference 1.93696402386819321e-10 (i-flow)"),
        separable=False, tags=("i-flow", "feynman", "loop"),
    )


# --- physics: cross sections with analytic answers -------------------------------------------


def _z_couplings() -> tuple[float, float]:
    """Muon (= electron) vector and axial couplings v = T₃ − 2Q sin²θ_W, a = T₃ (T₃ = −½, Q = −1)."""
    return -0.5 + 2 * SIN2_THETA_W, -0.5


def ee_mumu_coefficients(sqrt_s: float) -> tuple[float, float]:
    """(A₀, A₁) of dσ/dΩ = α²/(4s)·[A₀(1 + cos²θ) + A₁ cos θ] for e⁺e⁻ → γ/Z → μ⁺μ⁻.

    With χ = s/(s − M_Z² + iM_ZΓ_Z) / (4 sin²θ_W cos²θ_W), Q_e = Q_μ = −1 and the couplings of
    ``_z_couplings`` (the same for e and μ):
    A₀ = Q² + 2Q²v² Re χ + (v² + a²)²|χ|²,  A₁ = 4Q²a² Re χ + 8v²a²|χ|².
    """
    s = sqrt_s**2
    v, a = _z_couplings()
    chi = s / complex(s - M_Z**2, M_Z * GAMMA_Z) / (4 * SIN2_THETA_W * (1 - SIN2_THETA_W))
    a0 = 1 + 2 * v * v * chi.real + (v * v + a * a) ** 2 * abs(chi) ** 2
    a1 = 4 * a * a * chi.real + 8 * v * v * a * a * abs(chi) ** 2
    return a0, a1


def ee_mumu(sqrt_s: float = 91.2) -> Integrand:
    """Born cross section of e⁺e⁻ → γ*/Z → μ⁺μ⁻ at √s (GeV), in pb, over the angles, d = 2.

    u ∈ [0, 1]² maps to cos θ = 2u₁ − 1 (θ: μ⁻ against the e⁻ beam) and φ = 2πu₂ (Jacobian 4π):
    f(u) = 4π·(ħc)²·α²/(4s)·[A₀(1 + cos²θ) + A₁ cos θ] (see ``ee_mumu_coefficients``). The cos θ
    term integrates to zero and ∫(1 + cos²θ) dΩ = 16π/3, so ∫ f = (ħc)²·4πα²A₀/(3s): the pure-QED
    4πα²/(3s) times A₀. Massless leptons, fixed-width Z, no radiative corrections; the inputs are
    the module constants ALPHA_EM, SIN2_THETA_W, M_Z, GAMMA_Z, GEV2_TO_PB.
    """
    if not sqrt_s > 0:
        raise ValueError(f"ee_mumu needs √s > 0, got {sqrt_s}")
    a0, a1 = ee_mumu_coefficients(sqrt_s)
    scale = 4 * math.pi * GEV2_TO_PB * ALPHA_EM**2 / (4 * sqrt_s**2)

    def fn(u: Tensor) -> Tensor:
        c = 2 * u[:, 0] - 1
        return scale * (a0 * (1 + c.square()) + a1 * c)

    return Integrand(
        name="ee-mumu", dim=2, fn=fn, exact=GEV2_TO_PB * 4 * math.pi * ALPHA_EM**2 * a0 / (3 * sqrt_s**2),
        description=(f"dσ/dΩ(e⁺e⁻ → γ/Z → μ⁺μ⁻) in pb at √s = {sqrt_s} GeV over cos θ = 2u₁−1, φ = 2πu₂; "
                     "exact (ħc)²·4πα²A₀/(3s)"),
        separable=True, tags=("physics", "cross-section"),
    )


def breit_wigner(mass: float = M_Z, width: float = GAMMA_Z, sqrt_s_range: tuple[float, float] = (60.0, 120.0)) -> Integrand:
    """A narrow resonance in s with its spin-1 decay angle, d = 2: the fraction of the line shape in a window.

    s = s_lo + (s_hi − s_lo)u₁ with s_lo, s_hi the squares of ``sqrt_s_range``, cos θ = 2u₂ − 1:
    f(u) = (s_hi − s_lo)·(MΓ/π)/((s − M²)² + M²Γ²) · ¾(1 + cos²θ).
    The decay factor integrates over u₂ to 1 and the Breit–Wigner to an arctangent:
    ∫ f = [arctan((s_hi − M²)/(MΓ)) − arctan((s_lo − M²)/(MΓ))]/π (0.97275 for the Z in 60–120 GeV;
    the peak is MΓ/(s_hi − s_lo) ≈ 2% of the s range wide).
    """
    lo, hi = sqrt_s_range
    if not (mass > 0 and width > 0 and 0 <= lo < hi):
        raise ValueError(f"breit_wigner needs mass, width > 0 and 0 ≤ √s_lo < √s_hi, got {mass}, {width}, {sqrt_s_range}")
    s_lo, s_hi, m2, mg = lo**2, hi**2, mass**2, mass * width

    def fn(u: Tensor) -> Tensor:
        s = s_lo + (s_hi - s_lo) * u[:, 0]
        c = 2 * u[:, 1] - 1
        line = (s_hi - s_lo) * mg / math.pi / ((s - m2).square() + mg**2)
        return line * 0.75 * (1 + c.square())

    return Integrand(
        name="breit-wigner", dim=2, fn=fn,
        exact=(math.atan((s_hi - m2) / mg) - math.atan((s_lo - m2) / mg)) / math.pi,
        description=(f"relativistic Breit–Wigner in s (M = {mass}, Γ = {width} GeV, √s ∈ [{lo}, {hi}]) "
                     "× ¾(1 + cos²θ); exact [arctan((s_hi−M²)/MΓ) − arctan((s_lo−M²)/MΓ)]/π"),
        separable=True, tags=("physics", "resonance", "peaked"),
    )


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")


def _suite() -> dict[str, Integrand]:
    suite = [gaussian(d) for d in (2, 4, 8, 16)] + [camel(d) for d in (2, 4, 8, 16)]
    suite += [circles(), annulus()] + [polynomial(d) for d in (18, 54, 96)]
    suite += [triangle(), box(), ee_mumu(), breit_wigner()]
    return {f.name: f for f in suite}


#: The built-in suite by name: gaussian-{2,4,8,16}, camel-{2,4,8,16}, circles, annulus,
#: polynomial-{18,54,96}, triangle, box, ee-mumu, breit-wigner.
INTEGRANDS: dict[str, Integrand] = _suite()


def get_integrand(name: str) -> Integrand:
    """The built-in integrand called ``name`` (see ``INTEGRANDS``)."""
    try:
        return INTEGRANDS[name]
    except KeyError:
        raise ValueError(f"unknown integrand {name!r}; choose one of {', '.join(INTEGRANDS)}") from None


__all__ = [
    "Integrand", "INTEGRANDS", "get_integrand", "gaussian", "camel", "circles", "annulus", "polynomial",
    "triangle", "box", "ee_mumu", "ee_mumu_coefficients", "breit_wigner",
]
