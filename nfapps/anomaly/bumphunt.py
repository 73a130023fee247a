"""The bump hunt of a resonant anomaly search, and a check that the anomaly cut does not sculpt.

After a cut on an anomaly score, the background in the signal region (SR) ``[sr_low, sr_high)``
of the dijet invariant mass m = m_jj is predicted by fitting the m spectrum of the selected
events in the sidebands (the rest of ``mass_range``) with the standard dijet function

    f(m) = p0 (1 − x)^p1 / x^(p2 + p3 ln x),     x = m / √s,

(:func:`dijet_shape`; a density in events per unit m, with 3 or 4 parameters: p3 = 0 for 3) and
integrating it over the SR. The fit (:func:`fit_sidebands`) is a binned Poisson likelihood fit:
with n_i events in sideband bin i and μ_i(p) = ∫_bin f(m; p) dm (Gauss–Legendre quadrature per
bin, not the value at the bin centre),

    −ln L(p) = Σ_{i ∉ SR} [μ_i(p) − n_i ln μ_i(p)]  (+ constant),

minimised with iminuit's MIGRAD (errordef ½) and its covariance taken from HESSE. The SR
prediction b = ∫_SR f dm and its uncertainty σ_b² = gᵀ C g, g = ∂b/∂p (exact derivatives of the
integrand, integrated with the same quadrature), come from :meth:`SidebandFit.expected`; the
local significance of the n events observed in the SR, accounting for σ_b, from
:func:`local_significance` (Cowan, Cranmer, Gross, Vitells 2011), cross-checked by
:func:`pyhf_significance`. :func:`bump_hunt` does the whole chain; :func:`sculpting` measures
the cut efficiency against m (it should be flat for background) and :func:`plot_bump_hunt`
draws the result.

Numerics. ln f is linear in q = (ln p0, p1, p2, p3) with the basis
(1, ln(1 − x), −ln x, −ln² x), whose columns are nearly collinear over a typical mass range.
MIGRAD therefore works on θ = R q, where R comes from the QR decomposition of the basis at the
sideband bin centres weighted by √n_i: the Fisher information in θ is then close to the identity.
Starting values come from the weighted linear least-squares fit of ln(n_i / Δm_i), solved with the
same decomposition. The likelihood is unchanged by the linear reparameterisation; the results are
transformed back (p0 = e^{q0}, covariance through the Jacobian).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ..outputs import finite, save_figure

logger = logging.getLogger(__name__)

#: Gauss–Legendre nodes per bin: f varies smoothly over a bin, so 8 nodes are exact to ~1e-12.
GAUSS_NODES = 8
#: Fewest events each sideband must hold before a fit is attempted.
MIN_SIDEBAND_EVENTS = 10

_GL_X, _GL_W = np.polynomial.legendre.leggauss(GAUSS_NODES)


# --------------------------------------------------------------------------------------------
# The dijet function
# --------------------------------------------------------------------------------------------


def _check_params(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64).ravel()
    if p.size not in (3, 4):
        raise ValueError(f"the dijet function takes 3 or 4 parameters, got {p.size}")
    return p


def _basis(x: np.ndarray, n_params: int) -> np.ndarray:
    """Columns (1, ln(1 − x), −ln x, −ln² x)[:n_params]: ln f = basis · (ln p0, p1, p2, p3)."""
    lx = np.log(x)
    cols = [np.ones_like(x), np.log1p(-x), -lx, -lx * lx]
    return np.stack(cols[:n_params], axis=-1)


def dijet_shape(m, p, sqrt_s: float = 13.0) -> np.ndarray:
    """The dijet function f(m) = p0 (1 − x)^p1 / x^(p2 + p3 ln x), x = m / √s.

    ``p`` holds 3 (p3 = 0) or 4 parameters; ``m`` and ``sqrt_s`` are in the same unit (TeV by
    default, √s = 13 TeV). Defined for 0 < m < √s; elsewhere the result is NaN. As used by
    :func:`fit_sidebands`, f is a density: events per unit m.
    """
    p = _check_params(p)
    x = np.asarray(m, dtype=np.float64) / float(sqrt_s)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lx = np.log(x)
        log_f = p[1] * np.log1p(-x) - (p[2] + (p[3] if p.size == 4 else 0.0) * lx) * lx
        out = np.exp(math.log(p[0]) + log_f) if p[0] > 0 else p[0] * np.exp(log_f)
    return np.where((x > 0) & (x < 1), out, np.nan)


def _gauss_nodes(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights of each interval [edges[i], edges[i+1]]: shape (n, k)."""
    lo, hi = edges[:-1, None], edges[1:, None]
    half = 0.5 * (hi - lo)
    return 0.5 * (hi + lo) + half * _GL_X, half * _GL_W


def _integral_and_gradient(edges: np.ndarray, p: np.ndarray, sqrt_s: float) -> tuple[np.ndarray, np.ndarray]:
    """∫ f dm over each interval, and its gradient with respect to q = (ln p0, p1, p2, p3):
    shapes (n,), (n, len(p)). ∂f/∂q = f · (1, ln(1 − x), −ln x, −ln² x)."""
    nodes, weights = _gauss_nodes(edges)
    f = dijet_shape(nodes, p, sqrt_s)
    dfdq = f[..., None] * _basis(nodes / sqrt_s, p.size)
    return (weights * f).sum(-1), (weights[..., None] * dfdq).sum(-2)


# --------------------------------------------------------------------------------------------
# The sideband fit
# --------------------------------------------------------------------------------------------


@dataclass
class SidebandFit:
    """A fit of the dijet function to the sidebands of a binned m spectrum.

    ``edges``, ``counts``: the histogram over the whole mass range (SR bins included; their
    boundaries are the SR boundaries); only the bins outside ``sr`` were fitted. ``params``,
    ``covariance``: p = (p0, p1, p2[, p3]) of :func:`dijet_shape` and their covariance from
    HESSE. ``chi2``: the Poisson likelihood-ratio (Baker–Cousins) χ² = 2 Σ [μ_i − n_i +
    n_i ln(n_i/μ_i)] over the sideband bins, with ``ndof`` = sideband bins − parameters.
    ``valid``: MIGRAD converged and the HESSE covariance is accurate and positive definite.
    ``scale``: Σw/Σw² of the sideband weights (1 unweighted), the factor turning weighted sums
    into effective Poisson counts. ``log_covariance``: the covariance of q = (ln p0, p1, p2, p3),
    in which ln f is linear; errors are propagated with it, since p0 can span hundreds of orders
    of magnitude in poor fits (given only ``covariance``, it is derived from it).
    """

    params: np.ndarray
    covariance: np.ndarray
    edges: np.ndarray
    counts: np.ndarray
    sr: tuple[float, float]
    chi2: float
    ndof: int
    valid: bool
    sqrt_s: float = 13.0
    scale: float = 1.0
    log_covariance: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.params = _check_params(self.params)
        self.covariance = np.asarray(self.covariance, dtype=np.float64)
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.counts = np.asarray(self.counts, dtype=np.float64)
        self.sr = (float(self.sr[0]), float(self.sr[1]))
        if self.log_covariance is None:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                jac_inv = np.diag(np.r_[1.0 / self.params[0], np.ones(self.n_params - 1)])
                self.log_covariance = jac_inv @ self.covariance @ jac_inv.T
        self.log_covariance = np.asarray(self.log_covariance, dtype=np.float64)

    @property
    def n_params(self) -> int:
        return int(self.params.size)

    @property
    def sidebands(self) -> np.ndarray:
        """Mask of the bins that were fitted (those outside the SR)."""
        centres = 0.5 * (self.edges[:-1] + self.edges[1:])
        return (centres < self.sr[0]) | (centres > self.sr[1])

    @property
    def p_value(self) -> float:
        """P(χ² ≥ chi2) for ``ndof`` degrees of freedom: the goodness of fit."""
        return float(stats.chi2.sf(self.chi2, self.ndof)) if self.ndof > 0 else float("nan")

    def expected(self, low: float, high: float) -> tuple[float, float]:
        """Predicted count b = ∫_low^high f(m; p̂) dm and its 1σ uncertainty.

        σ_b² = gᵀ C g with g = ∂b/∂q = ∫ f · (1, ln(1 − x), −ln x, −ln² x) dm: linear error
        propagation of the fit covariance C of q = (ln p0, p1, p2, p3) (the same as through the
        Jacobian in p, since ∂f/∂p0 = f/p0, but without p0's range problems). The integral is
        composite Gauss–Legendre over pieces no wider than the narrowest bin. σ_b is NaN when the
        covariance is not finite.
        """
        low, high = float(low), float(high)
        if not (0 < low < high < self.sqrt_s):
            raise ValueError(f"need 0 < low < high < √s = {self.sqrt_s:g}, got [{low:g}, {high:g}]")
        pieces = max(1, math.ceil((high - low) / np.diff(self.edges).min()))
        b, grad = _integral_and_gradient(np.linspace(low, high, pieces + 1), self.params, self.sqrt_s)
        b, grad = float(b.sum()), grad.sum(0)
        with np.errstate(invalid="ignore", over="ignore"):
            var = float(grad @ self.log_covariance @ grad)
        return b, math.sqrt(var) if np.isfinite(var) and var >= 0 else float("nan")

    def bin_expected(self) -> np.ndarray:
        """The fitted count μ_i in every bin of ``edges`` (SR bins: the prediction)."""
        return _integral_and_gradient(self.edges, self.params, self.sqrt_s)[0]

    def density(self, m) -> tuple[np.ndarray, np.ndarray]:
        """f(m; p̂) and its pointwise 1σ uncertainty (√(gᵀ C g), g = ∂f/∂q): events per unit m."""
        m = np.asarray(m, dtype=np.float64)
        f = dijet_shape(m, self.params, self.sqrt_s)
        g = f[..., None] * _basis(m / self.sqrt_s, self.n_params)
        with np.errstate(invalid="ignore", over="ignore"):
            var = np.einsum("...i,ij,...j->...", g, self.log_covariance, g)
            return f, np.sqrt(np.where(var >= 0, var, np.nan))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (NaN and infinities as None)."""
        return finite({
            "params": self.params, "covariance": self.covariance, "edges": self.edges,
            "counts": self.counts, "sr": list(self.sr), "chi2": self.chi2, "ndof": self.ndof,
            "p_value": self.p_value, "valid": self.valid, "sqrt_s": self.sqrt_s, "scale": self.scale,
            "log_covariance": self.log_covariance,
        })


def _check_masses(m, name: str = "masses") -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 1:
        m = m.ravel()
    if m.size == 0:
        raise ValueError(f"no {name} given (empty array)")
    bad = int((~np.isfinite(m)).sum())
    if bad:
        raise ValueError(f"{bad} of {m.size} {name} are not finite (NaN or infinite)")
    return m


def _check_regions(sr, mass_range, sqrt_s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    try:
        sr = (float(sr[0]), float(sr[1]))
        mass_range = (float(mass_range[0]), float(mass_range[1]))
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"sr and mass_range must be (low, high) pairs, got {sr!r} and {mass_range!r}") from None
    if not all(math.isfinite(v) for v in (*sr, *mass_range)):
        raise ValueError(f"sr {sr} and mass_range {mass_range} must be finite")
    if not 0 < mass_range[0] < mass_range[1] < sqrt_s:
        raise ValueError(f"mass_range {mass_range} must satisfy 0 < low < high < √s = {sqrt_s:g}")
    if not mass_range[0] < sr[0] < sr[1] < mass_range[1]:
        raise ValueError(f"the signal region {sr} must lie strictly inside mass_range {mass_range}, "
                         "with a sideband on each side")
    return sr, mass_range


def _edges(bins, sr: tuple[float, float], mass_range: tuple[float, float]) -> np.ndarray:
    """Bin edges over ``mass_range`` with the SR boundaries among them.

    An int asks for about that many bins: each of the three regions (lower sideband, SR, upper
    sideband) is split into equal bins of width as close as possible to range/bins. An array is
    taken as the edges and must start and end at the range and contain both SR boundaries.
    """
    lo, hi = mass_range
    if np.ndim(bins) == 0:
        if int(bins) != bins or bins < 3:
            raise ValueError(f"bins must be an integer ≥ 3 or an array of edges, got {bins!r}")
        width = (hi - lo) / int(bins)
        parts = []
        for a, b in ((lo, sr[0]), (sr[0], sr[1]), (sr[1], hi)):
            parts.append(np.linspace(a, b, max(1, round((b - a) / width)) + 1)[:-1])
        return np.r_[np.concatenate(parts), hi]
    edges = np.asarray(bins, dtype=np.float64).ravel()
    if edges.size < 4 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("bin edges must be at least 4 finite, strictly increasing values")
    if not (np.isclose(edges[0], lo) and np.isclose(edges[-1], hi)):
        raise ValueError(f"bin edges must span mass_range {mass_range}, got [{edges[0]:g}, {edges[-1]:g}]")
    for boundary in sr:
        if not np.any(np.isclose(edges, boundary)):
            raise ValueError(f"the SR boundary {boundary:g} is not a bin edge")
    edges = edges.copy()
    for boundary in sr:  # snap, so that the SR bins are exactly [sr0, sr1)
        edges[np.argmin(np.abs(edges - boundary))] = boundary
    edges[0], edges[-1] = lo, hi
    return edges


def fit_sidebands(m, sr, mass_range, bins: int | Sequence[float] = 40, weights=None, n_params: int = 4,
                  sqrt_s: float = 13.0) -> SidebandFit:
    """Fit the dijet function to the m spectrum outside the signal region.

    Events with m in ``mass_range`` are histogrammed (``bins``: about that many bins, or explicit
    edges; either way the SR boundaries are bin edges) and the dijet function with ``n_params``
    (3 or 4) parameters is fitted to the bins outside ``sr`` by a binned Poisson maximum
    likelihood, −ln L = s Σ_{i ∉ SR} [μ_i − n_i ln μ_i], μ_i the integral of f over bin i (see the
    module docstring). With ``weights``, n_i are the sums of weights and s = Σw/Σw² (over the
    sideband events) rescales them to effective Poisson counts, so the errors stay right for
    (approximately) uniform weights; without weights s = 1.

    Raises ValueError for unusable input: non-finite masses, an SR not strictly inside the mass
    range, fewer than :data:`MIN_SIDEBAND_EVENTS` events in either sideband, no more sideband bins
    than parameters. A fit that does not converge is not an error: the result has
    ``valid=False`` and a warning is logged.
    """
    from iminuit import Minuit

    if n_params not in (3, 4):
        raise ValueError(f"n_params must be 3 or 4, got {n_params!r}")
    m = _check_masses(m)
    sr, mass_range = _check_regions(sr, mass_range, sqrt_s)
    if weights is None:
        w = np.ones_like(m)
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.shape != m.shape:
            raise ValueError(f"weights ({w.size}) and masses ({m.size}) differ in length")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
    edges = _edges(bins, sr, mass_range)
    inside = (m >= mass_range[0]) & (m <= mass_range[1])
    m, w = m[inside], w[inside]
    for name, mask in (("lower", m < sr[0]), ("upper", m >= sr[1])):
        if mask.sum() < MIN_SIDEBAND_EVENTS:
            raise ValueError(f"only {int(mask.sum())} events in the {name} sideband (need at least "
                             f"{MIN_SIDEBAND_EVENTS}): loosen the cut or widen the mass range")
    counts = np.histogram(m, edges, weights=w)[0].astype(np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    side = (centres < sr[0]) | (centres > sr[1])
    n_side = int(side.sum())
    if n_side <= n_params:
        raise ValueError(f"{n_side} sideband bins for {n_params} parameters: use more bins")
    in_side = (m < sr[0]) | (m >= sr[1])
    sum_w2 = float((w[in_side] ** 2).sum())
    scale = float(w[in_side].sum() / sum_w2) if sum_w2 > 0 else 1.0

    n = counts[side]
    side_edges = np.stack([edges[:-1][side], edges[1:][side]], -1)
    width = side_edges[:, 1] - side_edges[:, 0]
    half = 0.5 * width[:, None]  # Gauss–Legendre nodes and weights of each sideband bin
    nodes = 0.5 * (side_edges[:, :1] + side_edges[:, 1:]) + half * _GL_X
    gl_w = half * _GL_W

    # Reparameterise ln f = B q as B R⁻¹ θ with B√n (at the bin centres) = Q R: Fisher info ≈ 1.
    b_centres = _basis(centres[side] / sqrt_s, n_params)
    sw = np.sqrt(scale * np.maximum(n, 0.5))
    _, r = np.linalg.qr(b_centres * sw[:, None])
    r_inv = np.linalg.inv(r)
    design = _basis(nodes / sqrt_s, n_params) @ r_inv  # (bins, k, n_params): ln f at the nodes = design θ
    # Starting values: weighted least squares of ln(n / Δm) (zero bins as 0.5 events).
    y = np.log(np.maximum(n, 0.5) / width)
    theta0 = np.linalg.lstsq((b_centres @ r_inv) * sw[:, None], y * sw, rcond=None)[0]

    def terms(theta):
        log_f = np.clip(design @ theta, -700.0, 700.0)
        f = np.exp(log_f)
        mu = (gl_w * f).sum(-1)
        return f, np.maximum(mu, 1e-300)

    def nll(theta):
        _, mu = terms(theta)
        value = scale * float(np.sum(mu - n * np.log(mu)))
        return value if math.isfinite(value) else 1e300

    def grad(theta):
        f, mu = terms(theta)
        dmu = np.einsum("bk,bk,bkj->bj", gl_w, f, design)
        return scale * ((1.0 - n / mu) @ dmu)

    minuit = Minuit(nll, theta0, grad=grad)
    minuit.errordef = Minuit.LIKELIHOOD
    minuit.errors = np.full(n_params, 0.1)
    minuit.migrad()
    for _ in range(2):  # retry from where it stopped, with the most careful strategy
        if minuit.fmin.is_valid:
            break
        logger.debug("MIGRAD did not converge (%s); retrying with strategy 2", minuit.fmin)
        minuit.strategy = 2
        minuit.migrad()
    minuit.hesse()
    theta = np.asarray(minuit.values, dtype=np.float64)
    cov_theta = np.asarray(minuit.covariance, dtype=np.float64) if minuit.covariance is not None \
        else np.full((n_params, n_params), np.nan)

    q = r_inv @ theta
    cov_q = r_inv @ cov_theta @ r_inv.T
    params = q.copy()
    params[0] = math.exp(min(q[0], 700.0))
    jac = np.diag(np.r_[params[0], np.ones(n_params - 1)])
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        covariance = jac @ cov_q @ jac.T

    _, mu = terms(theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = mu - n + np.where(n > 0, n * np.log(n / mu), 0.0)
    chi2 = float(2 * scale * dev.sum())
    ndof = n_side - n_params

    problems = []
    if not minuit.fmin.is_valid:
        problems.append("MIGRAD did not converge"
                        + (" (call limit reached)" if minuit.fmin.has_reached_call_limit else "")
                        + (" (EDM above goal)" if minuit.fmin.is_above_max_edm else ""))
    if not minuit.fmin.has_accurate_covar:
        problems.append("the HESSE covariance is not accurate")
    if not np.all(np.isfinite(cov_theta)):
        problems.append("the covariance is not finite")
    elif np.any(np.linalg.eigvalsh(cov_theta) <= 0):
        problems.append("the covariance is not positive definite")
    if not (np.all(np.isfinite(params)) and params[0] > np.finfo(np.float64).tiny):
        problems.append(f"the normalisation p0 = e^{q[0]:.4g} is out of floating-point range")
    fit = SidebandFit(params=params, covariance=covariance, edges=edges, counts=counts, sr=sr, chi2=chi2,
                      ndof=ndof, valid=False, sqrt_s=float(sqrt_s), scale=scale, log_covariance=cov_q)
    if not problems:
        b, db = fit.expected(*sr)
        if not (math.isfinite(b) and b > 0 and math.isfinite(db)):
            problems.append(f"the SR prediction {b:.4g} ± {db:.4g} is not finite and positive")
    fit.valid = valid = not problems
    if valid:
        logger.info("sideband fit (%d parameters, %d bins, %.0f events): χ²/ndof = %.1f/%d, p = %.3g",
                    n_params, n_side, n.sum(), chi2, ndof, fit.p_value)
        if ndof > 0 and fit.p_value < 1e-3:
            logger.warning("the sideband fit describes the data poorly: χ²/ndof = %.1f/%d (p = %.2g)",
                           chi2, ndof, fit.p_value)
    else:
        logger.warning("sideband fit (%d parameters, %d sideband bins, %.0f events) is not valid: %s; "
                       "its SR prediction is unreliable", n_params, n_side, n.sum(), "; ".join(problems))
    return fit


# --------------------------------------------------------------------------------------------
# Significance
# --------------------------------------------------------------------------------------------


def _check_counts(observed, background, background_error) -> tuple[float, float, float]:
    n, b, s = float(observed), float(background), float(background_error)
    if not (math.isfinite(n) and n >= 0):
        raise ValueError(f"observed must be a finite count ≥ 0, got {observed!r}")
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"background must be finite and > 0, got {background!r}")
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"background_error must be finite and ≥ 0, got {background_error!r}")
    return n, b, s


def local_significance(observed: float, background: float, background_error: float = 0.0) -> float:
    """Signed asymptotic local significance of ``observed`` events over ``background`` ± σ.

    Cowan, Cranmer, Gross, Vitells, Eur. Phys. J. C 71 (2011) 1554, with the background known
    from an auxiliary Poisson measurement of relative precision σ/b (profiled):

        Z² = 2 [ n ln( n (b + σ²) / (b² + n σ²) ) − (b²/σ²) ln( 1 + σ² (n − b) / (b (b + σ²)) ) ],

    which for σ = 0 is Z² = 2 [n ln(n/b) − (n − b)]. Z has the sign of n − b (a deficit gives
    Z < 0); n = 0 is allowed (n ln n → 0). Non-integer n is allowed (e.g. weighted counts).
    """
    n, b, s = _check_counts(observed, background, background_error)
    if n == b:
        return 0.0
    v = s * s
    if v == 0.0:
        z2 = 2 * ((n * math.log(n / b) if n > 0 else 0.0) - (n - b))
    else:
        first = n * math.log(n * (b + v) / (b * b + n * v)) if n > 0 else 0.0
        z2 = 2 * (first - (b * b / v) * math.log1p(v * (n - b) / (b * (b + v))))
    return math.copysign(math.sqrt(max(z2, 0.0)), n - b)


def pyhf_significance(observed: float, background: float, background_error: float) -> float:
    """The significance of :func:`local_significance`, computed with pyhf as a cross-check.

    A one-bin model: a signal sample scaled by μ on a background b with an uncorrelated
    ``shapesys`` uncertainty σ (a Poisson-constrained factor γ, auxiliary count (b/σ)²: the same
    auxiliary measurement the Cowan formula profiles). For n ≥ b it returns √q0, the asymptotic
    discovery significance of the test statistic q0 = −2 ln λ(μ = 0); for n < b, q0 = 0 by
    definition, so it returns −√t0 (the two-sided t0 with μ allowed negative) to keep the sign.
    (At n = 0 the bound on μ that keeps the rate positive is active and the two differ by ~5 %.)
    """
    import pyhf

    n, b, s = _check_counts(observed, background, background_error)
    if n == b:
        return 0.0
    sig = max(abs(n - b), 1.0)  # signal template: μ̂ ≈ ±1
    model = pyhf.simplemodels.uncorrelated_background(signal=[sig], bkg=[b], bkg_uncertainty=[max(s, 1e-6 * b)])
    data = [n] + list(model.config.auxdata)
    init = model.config.suggested_init()
    bounds = model.config.suggested_bounds()
    poi = model.config.poi_index
    bounds[poi] = (-0.999 * b / sig, 10.0)
    if n > b:
        q0 = pyhf.infer.test_statistics.q0(0.0, data, model, init, bounds, model.config.suggested_fixed())
        return float(math.sqrt(max(float(q0), 0.0)))
    t0 = pyhf.infer.test_statistics.tmu(0.0, data, model, init, bounds, model.config.suggested_fixed())
    return -float(math.sqrt(max(float(t0), 0.0)))


# --------------------------------------------------------------------------------------------
# The bump hunt
# --------------------------------------------------------------------------------------------


@dataclass
class BumpHunt:
    """The result of :func:`bump_hunt`.

    ``observed``: selected events in the SR; ``expected`` ± ``expected_error``: the background
    predicted there by the sideband ``fit``; ``significance``: the signed local significance
    (:func:`local_significance` with the prediction's uncertainty; NaN when that uncertainty is
    not finite); ``significance_stat``: the same without the background uncertainty;
    ``efficiency``: the fraction of the events in the mass range that pass the cut;
    ``threshold``: the score cut (score > threshold passes; None: no cut); ``selected``: events
    passing it in the mass range; ``mass_range``: the fitted range.
    """

    observed: int
    expected: float
    expected_error: float
    significance: float
    fit: SidebandFit
    efficiency: float
    threshold: float | None = None
    selected: int = 0
    significance_stat: float = float("nan")
    mass_range: tuple[float, float] = (0.0, 0.0)

    @property
    def sr(self) -> tuple[float, float]:
        return self.fit.sr

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (NaN as None): the numbers, the SR and range, and the fit."""
        return finite({
            "observed": self.observed, "expected": self.expected, "expected_error": self.expected_error,
            "excess": self.observed - self.expected, "significance": self.significance,
            "significance_stat": self.significance_stat, "efficiency": self.efficiency,
            "threshold": self.threshold, "selected": self.selected, "sr": list(self.sr),
            "mass_range": list(self.mass_range), "fit": self.fit.to_dict(),
        })


def bump_hunt(m, scores, sr, mass_range, efficiency: float | None = None, threshold: float | None = None,
              bins: int | Sequence[float] = 40, n_params: int = 4, sqrt_s: float = 13.0) -> BumpHunt:
    """Cut on the anomaly score, fit the sidebands, count the SR, and give the local significance.

    Events with m in ``mass_range`` and score > ``threshold`` are selected; with ``efficiency``
    instead, the threshold is the (1 − efficiency) quantile of the scores of the events in the
    mass range, keeping that fraction of them (give one of the two; neither: no cut). The
    selected events' sidebands are fitted (:func:`fit_sidebands`), the SR background predicted
    (:meth:`SidebandFit.expected`), the selected SR events [sr_low, sr_high) counted, and the
    significance computed with the prediction's uncertainty (:func:`local_significance`).
    """
    m = _check_masses(m)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != m.shape:
        raise ValueError(f"scores ({scores.size}) and masses ({m.size}) differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} score(s) are not finite")
    sr, mass_range = _check_regions(sr, mass_range, sqrt_s)
    if efficiency is not None and threshold is not None:
        raise ValueError("give efficiency or threshold, not both")
    inside = (m >= mass_range[0]) & (m <= mass_range[1])
    if not inside.any():
        raise ValueError(f"no events in mass_range {mass_range}")
    if efficiency is not None:
        if not 0 < efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {efficiency!r}")
        threshold = float(np.quantile(scores[inside], 1 - efficiency)) if efficiency < 1 else -np.inf
    passed = inside & (scores > threshold) if threshold is not None else inside
    if threshold is not None and not math.isfinite(threshold):
        threshold = None
    selected = m[passed]
    logger.info("bump hunt: %d of %d events in %s pass the cut", selected.size, int(inside.sum()), mass_range)
    if selected.size == 0:
        raise ValueError("no events pass the cut")
    fit = fit_sidebands(selected, sr, mass_range, bins=bins, n_params=n_params, sqrt_s=sqrt_s)
    expected, error = fit.expected(*sr)
    observed = int(((selected >= sr[0]) & (selected < sr[1])).sum())
    z_stat = z = float("nan")
    if math.isfinite(expected) and expected > 0:
        z_stat = local_significance(observed, expected)
        if math.isfinite(error):
            z = local_significance(observed, expected, error)
    if not math.isfinite(z):
        logger.warning("the SR prediction %.4g ± %.4g is unusable (invalid fit): the significance is NaN",
                       expected, error)
    logger.info("bump hunt: SR %s observed %d, expected %.1f ± %.1f, Z = %.2f", sr, observed, expected, error, z)
    return BumpHunt(observed=observed, expected=expected, expected_error=error, significance=z, fit=fit,
                    efficiency=float(passed.sum() / inside.sum()), threshold=threshold,
                    selected=int(selected.size), significance_stat=z_stat, mass_range=mass_range)


# --------------------------------------------------------------------------------------------
# Sculpting
# --------------------------------------------------------------------------------------------


def sculpting(m, passed, edges, cl: float = 0.6827) -> dict[str, Any]:
    """Cut efficiency per m bin, and a χ² test that it is constant (the cut does not sculpt).

    In bin i with N_i events of which k_i pass, ε_i = k_i/N_i with the Clopper–Pearson interval
    at confidence ``cl`` (Beta quantiles; exact, conservative). Flatness: with the pooled
    ε = Σk/ΣN, χ² = Σ_i (k_i − N_i ε)² / (N_i ε (1 − ε)) over non-empty bins (Pearson's test of
    homogeneity of the 2 × bins table), ndof = non-empty bins − 1, p = P(χ²_ndof ≥ χ²). A small p
    (e.g. < 1e-3) means the efficiency depends on m: the cut sculpts the spectrum. Events outside
    ``edges`` are ignored (counted in ``outside``). Returns plain JSON types; empty bins have
    efficiency and bounds None.
    """
    m = _check_masses(m)
    passed = np.asarray(passed).ravel()
    if passed.shape != m.shape:
        raise ValueError(f"passed ({passed.size}) and masses ({m.size}) differ in length")
    passed = passed.astype(bool)
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be at least 2 finite, strictly increasing values")
    if not 0 < cl < 1:
        raise ValueError(f"cl must be in (0, 1), got {cl!r}")
    total = np.histogram(m, edges)[0]
    k = np.histogram(m[passed], edges)[0]
    outside = int(m.size - total.sum())
    nonempty = total > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(nonempty, k / np.maximum(total, 1), np.nan)
    alpha = 1 - cl
    lower = np.where(k > 0, stats.beta.ppf(alpha / 2, k, total - k + 1), 0.0)
    upper = np.where(k < total, stats.beta.ppf(1 - alpha / 2, k + 1, total - k), 1.0)
    lower, upper = np.where(nonempty, lower, np.nan), np.where(nonempty, upper, np.nan)
    n_all, k_all = int(total.sum()), int(k.sum())
    if n_all == 0:
        raise ValueError("no events inside the bin edges")
    pooled = k_all / n_all
    ndof = int(nonempty.sum()) - 1
    if 0 < pooled < 1 and ndof > 0:
        expected = total[nonempty] * pooled
        chi2 = float(np.sum((k[nonempty] - expected) ** 2 / (expected * (1 - pooled))))
        p = float(stats.chi2.sf(chi2, ndof))
    else:  # all pass, none pass, or a single bin: nothing can vary
        chi2, p = 0.0, 1.0
    logger.info("sculpting check: efficiency %.4g, χ²/ndof = %.1f/%d, p = %.3g", pooled, chi2, ndof, p)
    return finite({
        "edges": edges, "total": total, "passed": k, "efficiency": eff, "lower": lower, "upper": upper,
        "cl": cl, "overall_efficiency": pooled, "chi2": chi2, "ndof": ndof, "p_value": p, "outside": outside,
    })


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot_bump_hunt(result: BumpHunt, path: str | os.PathLike, title: str | None = None) -> None:
    """Draw the m spectrum of the selected events (log y, events per unit m, Poisson errors), the
    sideband fit f(m) with its ±1σ band, the SR shaded, the per-bin pulls (n − μ)/√μ below, and
    the SR numbers; write a PNG at ``path`` atomically (:func:`nfapps.outputs.save_figure`).
    Uses the Agg canvas directly: no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fit = result.fit
    edges, counts = fit.edges, fit.counts
    width = np.diff(edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    grid = np.linspace(edges[0], edges[-1], 400)
    f, df = fit.density(grid)
    mu = fit.bin_expected()

    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for ax in (top, bottom):
        ax.axvspan(*fit.sr, color="tab:orange", alpha=0.15, lw=0, label="signal region" if ax is top else None)
    top.errorbar(centres, counts / width, yerr=np.sqrt(counts) / width, xerr=width / 2, fmt="o", ms=3,
                 color="k", label="selected events")
    top.plot(grid, f, color="tab:blue", label=f"sideband fit ({fit.n_params} par.)")
    top.fill_between(grid, np.maximum(f - df, 0), f + df, color="tab:blue", alpha=0.3, lw=0, label="fit ±1σ")
    top.set_yscale("log")
    positive = counts[counts > 0] / width[counts > 0]
    if positive.size:
        top.set_ylim(0.3 * positive.min(), 3 * positive.max())
    top.set_ylabel("events / unit m")
    text = (f"SR: observed {result.observed}, expected {result.expected:.1f} ± {result.expected_error:.1f}\n"
            f"Z = {result.significance:.2f}   χ²/ndof = {fit.chi2:.1f}/{fit.ndof}"
            + ("" if fit.valid else "   (fit NOT valid)"))
    top.text(0.98, 0.97, text, transform=top.transAxes, ha="right", va="top", fontsize=8)
    top.legend(loc="lower left", fontsize=8)
    if title:
        top.set_title(title)
    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = np.where(mu > 0, (counts - mu) / np.sqrt(mu), 0.0)
    bottom.bar(centres, pulls, width=width, color=np.where(fit.sidebands, "tab:blue", "tab:orange"), alpha=0.7)
    bottom.axhline(0, color="k", lw=0.5)
    bottom.set_ylabel("(n − μ)/√μ")
    bottom.set_xlabel("m")
    save_figure(fig, path)


__all__ = ["dijet_shape", "SidebandFit", "fit_sidebands", "local_significance", "pyhf_significance",
           "BumpHunt", "bump_hunt", "sculpting", "plot_bump_hunt", "MIN_SIDEBAND_EVENTS"]
