r"""A synthetic, LHC-Olympics-like dijet sample whose densities are known in closed form.

Resonant anomaly searches (ANODE, CATHODE, CWoLa, the "idealized anomaly detector") learn the
background density :math:`p_\mathrm{bkg}(x \mid m)` of features :math:`x` in the sidebands of the
resonant variable :math:`m = m_{jj}` and interpolate it into a signal region (SR). On real (or
fully simulated) events nobody knows that density, so nobody can say how close a learned one is.
:class:`DijetModel` is a stand-in for the LHCO R&D data set whose every density is an explicit
formula (up to one 1-D normalisation computed with ``scipy.integrate.quad`` to ~1e-12), so the
optimal classifier — the likelihood ratio — and perfect background samples in the SR are at hand.

Units: TeV throughout; :math:`\sqrt{s} = 13` TeV by default.

Event content (mirrors the LHCO R&D arrays)
-------------------------------------------
``m`` = :math:`m_{jj}` (the resonant variable) and the feature vector
``x = [m_J1, Δm_J, τ21_1, τ21_2]`` (shape ``(N, 4)``):
:math:`m_{J1}` is the lighter jet mass, :math:`\Delta m_J = m_{J2} - m_{J1} \ge 0`, and
:math:`\tau_{21,1}`, :math:`\tau_{21,2}` the N-subjettiness ratios of the lighter and the heavier
jet (each τ21 travels with its own jet when the jets are ordered by mass).

Background
----------
* :math:`m_{jj}` on :math:`[m_\mathrm{min}, m_\mathrm{max}]`, with :math:`x = m/\sqrt{s}`:

  .. math::
     p_\mathrm{bkg}(m) = \frac{1}{Z}\, T(m)\, \frac{(1-x)^{p_1}}{x^{\,p_2 + p_3 \ln x}},\qquad
     T(m) = \frac{1}{1 + e^{-(m - m_t)/w_t}},

  the CMS dijet function times a logistic trigger turn-on (midpoint :math:`m_t`, width
  :math:`w_t`); :math:`Z = \int_{m_\mathrm{min}}^{m_\mathrm{max}} T\,(1-x)^{p_1} x^{-p_2-p_3\ln x}\,dm`
  by adaptive quadrature (relative error checked ≤ 1e-10).
* Jet masses: two i.i.d. *intrinsic* masses :math:`\mu_{1,2}` given :math:`m`, log-normal with
  median :math:`\tilde\mu(m) = c_0 + c\,m` and log-width :math:`\sigma`,

  .. math:: f(\mu \mid m) = \frac{1}{\mu\,\sigma\sqrt{2\pi}}
            \exp\!\Big[-\frac{(\ln\mu - \ln\tilde\mu(m))^2}{2\sigma^2}\Big],

  observed as :math:`m_J = \mu + s\,m` (``correlation`` :math:`s \ge 0`; :math:`s = 0` by
  default). Ordering by mass, :math:`a = \mu_\mathrm{min}`, :math:`b = \mu_\mathrm{max} = a + \Delta`:
  the density of :math:`(a, \Delta)` is :math:`2 f(a) f(a + \Delta)` for :math:`\Delta \ge 0`
  (Jacobian 1).
* τ21 of a jet of intrinsic mass :math:`\mu`: :math:`\mathrm{Beta}(\kappa\bar\tau(\mu),
  \kappa(1-\bar\tau(\mu)))` with mean falling smoothly with mass,

  .. math:: \bar\tau(\mu) = \tau_\mathrm{min} + \frac{\tau_\mathrm{max} - \tau_\mathrm{min}}{1 + \mu/\mu_\tau},

  always inside :math:`(\tau_\mathrm{min}, \tau_\mathrm{max})`. So

  .. math:: p_\mathrm{bkg}(x \mid m) = 2\, f(a)\, f(a+\Delta)\;
            \mathrm{Beta}(\tau_1; \bar\tau(a))\;\mathrm{Beta}(\tau_2; \bar\tau(a+\Delta)),
            \qquad a = m_{J1} - s\,m.

Signal: :math:`W' \to X Y`, both two-pronged
---------------------------------------------
* :math:`m_{jj}`: a core Gaussian :math:`N(M_{W'}, r M_{W'})` (weight :math:`1-f`) plus a low
  tail :math:`N(M_{W'}(1-\delta), k\, r M_{W'})` (weight :math:`f`), truncated to
  :math:`[m_\mathrm{min}, m_\mathrm{max}]` and renormalised exactly with :math:`\Phi`.
* Intrinsic jet masses: :math:`\mu_X \sim N(M_X, r_X M_X)`, :math:`\mu_Y \sim N(M_Y, r_Y M_Y)`,
  each truncated at 0 (normaliser :math:`\Phi(M/\sigma)`), observed as :math:`\mu + s\,m` like
  the background. τ21 of the X (Y) jet: Beta with mean :math:`\bar\tau_X` (:math:`\bar\tau_Y`) and
  concentration :math:`\kappa_s`. The jets are ordered by mass, so for :math:`a \le b = a+\Delta`

  .. math:: p_\mathrm{sig}(x \mid m) = g_X(b)B_X(\tau_2)\,g_Y(a)B_Y(\tau_1)
                                     + g_X(a)B_X(\tau_1)\,g_Y(b)B_Y(\tau_2).

  Given the resonance the features do not depend on :math:`m_{jj}` except through the shift
  :math:`s\,m`.

Densities are vectorised, float64, in log space: finite everywhere inside the support and
``-inf`` outside it (NaN in gives NaN out). Samplers are exact in distribution: the background
:math:`m_{jj}` by rejection against a piecewise-constant envelope that provably bounds the density
(see :meth:`DijetModel.sample_mass_background`), everything else by exact transforms.

Files: :func:`make_dataset` builds a shuffled, labelled sample; :func:`write_hdf5` and
:func:`write_root` write it atomically (temporary file in the same directory, then rename) and
refuse to replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate, special, stats

from ..atomic import write_file_atomic

__all__ = [
    "COLUMNS",
    "DijetModel",
    "make_dataset",
    "n_signal_for",
    "signal_fraction_for",
    "write_hdf5",
    "write_root",
]

logger = logging.getLogger(__name__)

#: Columns of :func:`make_dataset` (and of the files :func:`write_hdf5` / :func:`write_root` write).
COLUMNS: tuple[str, ...] = ("mjj", "mj1", "delta_mj", "tau21_1", "tau21_2", "label")

#: Names of the four features, in the order of the columns of ``x``.
FEATURES: tuple[str, ...] = ("mj1", "delta_mj", "tau21_1", "tau21_2")

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)



def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _log_beta_pdf(t: np.ndarray, alpha: np.ndarray | float, beta: np.ndarray | float) -> np.ndarray:
    r""":math:`\ln \mathrm{Beta}(t;\alpha,\beta) = (\alpha-1)\ln t + (\beta-1)\ln(1-t) - \ln B(\alpha,\beta)`, for 0 < t < 1."""
    return (alpha - 1.0) * np.log(t) + (beta - 1.0) * np.log1p(-t) - special.betaln(alpha, beta)


def _log_normal_pdf(v: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    z = (v - mean) / sigma
    return -0.5 * z * z - math.log(sigma) - _LOG_SQRT_2PI


@dataclass(frozen=True)
class DijetModel:
    r"""Parameters of the synthetic dijet model (TeV); every density and sampler is a method.

    Background :math:`m_{jj}`: ``sqrt_s``, ``mjj_min``, ``mjj_max`` (the support), dijet-function
    exponents ``p1``, ``p2``, ``p3`` (``p1 ≥ 0`` and ``p3 ≥ 0`` keep :math:`\ln[(1-x)^{p_1}
    x^{-p_2-p_3\ln x}]` concave in :math:`\ln x`, which the exact sampler relies on), logistic
    turn-on ``turn_on_midpoint`` / ``turn_on_width``.

    Background jets: log-normal median ``jet_mass_offset + jet_mass_slope * mjj`` and log-width
    ``jet_mass_sigma``; τ21 mean ``tau21_min + (tau21_max - tau21_min) / (1 + mu / tau21_mass_scale)``
    and Beta concentration ``tau21_concentration``.

    Signal: ``m_wprime``, ``m_x``, ``m_y``; relative mass resolution ``mjj_resolution`` of the
    core, low tail of weight ``tail_fraction`` at ``m_wprime * (1 - tail_shift)`` and width
    ``tail_width_factor`` times the core's; jet-mass resolutions ``jet_mass_resolution_x`` /
    ``_y`` (relative); τ21 means ``signal_tau21_mean_x`` / ``_y`` with concentration
    ``signal_tau21_concentration``.

    ``correlation`` :math:`s \ge 0`: both observed jet masses (signal and background) are
    :math:`\mu + s\,m_{jj}`; τ21 follows the intrinsic mass :math:`\mu`, so the only effect of
    :math:`s` is that shift.

    Invalid values raise ``ValueError`` naming the parameter. The model is immutable, hashable
    and JSON-able (:meth:`to_dict` / :meth:`from_dict`).
    """

    sqrt_s: float = 13.0
    mjj_min: float = 2.0
    mjj_max: float = 6.0
    p1: float = 10.0
    p2: float = 5.0
    p3: float = 0.0
    turn_on_midpoint: float = 2.65
    turn_on_width: float = 0.1
    jet_mass_slope: float = 0.03
    jet_mass_offset: float = 0.0
    jet_mass_sigma: float = 0.55
    tau21_max: float = 0.8
    tau21_min: float = 0.3
    tau21_mass_scale: float = 0.15
    tau21_concentration: float = 8.0
    m_wprime: float = 3.5
    m_x: float = 0.5
    m_y: float = 0.1
    mjj_resolution: float = 0.04
    tail_fraction: float = 0.2
    tail_shift: float = 0.05
    tail_width_factor: float = 2.0
    jet_mass_resolution_x: float = 0.07
    jet_mass_resolution_y: float = 0.07
    signal_tau21_mean_x: float = 0.3
    signal_tau21_mean_y: float = 0.3
    signal_tau21_concentration: float = 8.0
    correlation: float = 0.0

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise ValueError(f"DijetModel.{f.name} must be a finite real number, got {v!r}")
            object.__setattr__(self, f.name, float(v))

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"DijetModel.{name} must be {what}, got {getattr(self, name)!r}")

        need(self.sqrt_s > 0, "sqrt_s", "> 0")
        need(self.mjj_min > 0, "mjj_min", "> 0")
        need(self.mjj_max > self.mjj_min, "mjj_max", f"> mjj_min = {self.mjj_min}")
        need(self.mjj_max < self.sqrt_s, "mjj_max", f"< sqrt_s = {self.sqrt_s}")
        need(self.p1 >= 0, "p1", ">= 0 (the envelope of the exact sampler needs a concave log-density)")
        need(self.p3 >= 0, "p3", ">= 0 (the envelope of the exact sampler needs a concave log-density)")
        need(self.turn_on_width > 0, "turn_on_width", "> 0")
        need(self.jet_mass_slope >= 0, "jet_mass_slope", ">= 0")
        need(self.jet_mass_offset >= 0, "jet_mass_offset", ">= 0")
        if self.jet_mass_slope == 0 and self.jet_mass_offset == 0:
            raise ValueError("DijetModel: jet_mass_slope and jet_mass_offset cannot both be 0 "
                             "(the log-normal median jet_mass_offset + jet_mass_slope*mjj must be > 0)")
        need(self.jet_mass_sigma > 0, "jet_mass_sigma", "> 0")
        need(0 < self.tau21_min < 1, "tau21_min", "in (0, 1)")
        need(0 < self.tau21_max < 1, "tau21_max", "in (0, 1)")
        need(self.tau21_min <= self.tau21_max, "tau21_min", f"<= tau21_max = {self.tau21_max}")
        need(self.tau21_mass_scale > 0, "tau21_mass_scale", "> 0")
        need(self.tau21_concentration > 0, "tau21_concentration", "> 0")
        need(self.mjj_min < self.m_wprime < self.mjj_max, "m_wprime",
             f"inside the mass range ({self.mjj_min}, {self.mjj_max})")
        need(self.m_x > 0, "m_x", "> 0")
        need(self.m_y > 0, "m_y", "> 0")
        need(self.mjj_resolution > 0, "mjj_resolution", "> 0")
        need(0 <= self.tail_fraction < 1, "tail_fraction", "in [0, 1)")
        need(0 <= self.tail_shift < 1, "tail_shift", "in [0, 1)")
        need(self.tail_width_factor > 0, "tail_width_factor", "> 0")
        need(self.jet_mass_resolution_x > 0, "jet_mass_resolution_x", "> 0")
        need(self.jet_mass_resolution_y > 0, "jet_mass_resolution_y", "> 0")
        need(0 < self.signal_tau21_mean_x < 1, "signal_tau21_mean_x", "in (0, 1)")
        need(0 < self.signal_tau21_mean_y < 1, "signal_tau21_mean_y", "in (0, 1)")
        need(self.signal_tau21_concentration > 0, "signal_tau21_concentration", "> 0")
        need(self.correlation >= 0, "correlation", ">= 0")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, float]:
        """The parameters as a plain dict (JSON-able)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> DijetModel:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"DijetModel: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(params))

    @property
    def mass_range(self) -> tuple[float, float]:
        """The support ``(mjj_min, mjj_max)`` of :math:`m_{jj}`."""
        return (self.mjj_min, self.mjj_max)

    # ------------------------------------------------------------------ background m_jj
    def _log_g(self, m: np.ndarray | float) -> np.ndarray:
        r"""Unnormalised :math:`\ln[T(m)(1-x)^{p_1}x^{-p_2-p_3\ln x}]`, any 0 < m < sqrt_s."""
        m = np.asarray(m, dtype=np.float64)
        x = m / self.sqrt_s
        u = np.log(x)
        log_turn_on = -np.logaddexp(0.0, -(m - self.turn_on_midpoint) / self.turn_on_width)
        return log_turn_on + self.p1 * np.log1p(-x) - (self.p2 + self.p3 * u) * u

    def _phi(self, u: np.ndarray) -> np.ndarray:
        r""":math:`\varphi(u) = p_1\ln(1-e^u) - p_2 u - p_3 u^2`, :math:`u = \ln x` (concave)."""
        return self.p1 * np.log1p(-np.exp(u)) - self.p2 * u - self.p3 * u * u

    def _dphi(self, u: np.ndarray) -> np.ndarray:
        eu = np.exp(u)
        return -self.p1 * eu / (1.0 - eu) - self.p2 - 2.0 * self.p3 * u

    def _quad_g(self, lo: float, hi: float) -> tuple[float, float]:
        """∫_lo^hi exp(_log_g - _log_ref) dm by adaptive quadrature: (value, error estimate)."""
        if hi <= lo:
            return 0.0, 0.0
        c, w = self.turn_on_midpoint, self.turn_on_width
        pts = [p for p in (c - 5 * w, c - w, c, c + w, c + 5 * w) if lo < p < hi]
        ref = self._log_ref
        val, err = integrate.quad(lambda t: math.exp(float(self._log_g(t)) - ref), lo, hi,
                                  points=pts or None, epsabs=0.0, epsrel=1e-13, limit=1000)
        return val, err

    @cached_property
    def _log_ref(self) -> float:
        grid = np.linspace(self.mjj_min, self.mjj_max, 4001)
        return float(np.max(self._log_g(grid)))

    @cached_property
    def _background_log_norm(self) -> float:
        r""":math:`\ln Z` (relative accuracy of the quadrature checked ≤ 1e-10)."""
        val, err = self._quad_g(self.mjj_min, self.mjj_max)
        if not (val > 0 and err <= 1e-10 * val):
            raise RuntimeError(f"background m_jj normalisation not accurate enough: {val} ± {err}")
        logger.debug("background m_jj normalisation: Z = %.15g (quad error %.2g)", val, err)
        return math.log(val) + self._log_ref

    @cached_property
    def _envelope(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""Piecewise-constant upper bound of the unnormalised background :math:`m_{jj}` density.

        On a bin :math:`[m_a, m_b]`: :math:`T` is increasing, so :math:`T \le T(m_b)`; and
        :math:`\varphi` is concave in :math:`u = \ln x`, so it lies below its tangents at both
        ends: its maximum is :math:`\varphi(u_a)` if :math:`\varphi'(u_a) \le 0`,
        :math:`\varphi(u_b)` if :math:`\varphi'(u_b) \ge 0`, and otherwise at most the height of
        the two tangents' intersection. Returns (edges, log bound per bin, bin probabilities).
        """
        edges = np.linspace(self.mjj_min, self.mjj_max, 2049)
        u = np.log(edges / self.sqrt_s)
        ua, ub = u[:-1], u[1:]
        fa, fb = self._phi(ua), self._phi(ub)
        da, db = self._dphi(ua), self._dphi(ub)
        with np.errstate(divide="ignore", invalid="ignore"):
            ustar = (fb - fa + da * ua - db * ub) / (da - db)
            inter = fa + da * (ustar - ua)
        phimax = np.where(da <= 0, fa, np.where(db >= 0, fb, np.maximum(inter, np.maximum(fa, fb))))
        log_turn_on_b = -np.logaddexp(0.0, -(edges[1:] - self.turn_on_midpoint) / self.turn_on_width)
        log_bound = log_turn_on_b + phimax + 1e-9  # a hair of slack against round-off
        weights = np.exp(log_bound - log_bound.max()) * np.diff(edges)
        return edges, log_bound, weights / weights.sum()

    @cached_property
    def _cdf_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative integrals of exp(_log_g - _log_ref) at the envelope's edges (16-point Gauss–Legendre per bin)."""
        edges = self._envelope[0]
        nodes, wts = np.polynomial.legendre.leggauss(16)
        half = 0.5 * np.diff(edges)
        mid = 0.5 * (edges[1:] + edges[:-1])
        pts = mid[:, None] + half[:, None] * nodes[None, :]
        per_bin = half * (np.exp(self._log_g(pts) - self._log_ref) @ wts)
        cum = np.concatenate([[0.0], np.cumsum(per_bin)])
        return edges, cum

    def log_prob_mass_background(self, m: np.ndarray | float) -> np.ndarray:
        r""":math:`\ln p_\mathrm{bkg}(m) = \ln T(m) + p_1\ln(1-x) - (p_2 + p_3\ln x)\ln x - \ln Z`, :math:`x = m/\sqrt s`.

        ``-inf`` outside :math:`[m_\mathrm{min}, m_\mathrm{max}]`.
        """
        m = np.asarray(m, dtype=np.float64)
        out = np.full(m.shape, -np.inf)
        inside = (m >= self.mjj_min) & (m <= self.mjj_max)
        out[inside] = self._log_g(m[inside]) - self._background_log_norm
        out[np.isnan(m)] = np.nan
        return out

    def cdf_mass_background(self, m: np.ndarray | float) -> np.ndarray:
        r""":math:`P_\mathrm{bkg}(m_{jj} \le m)` (tabulated per envelope bin + Gauss–Legendre; error ≲ 1e-13)."""
        m = np.asarray(m, dtype=np.float64)
        edges, cum = self._cdf_table
        mc = np.clip(m, self.mjj_min, self.mjj_max)
        idx = np.clip(np.searchsorted(edges, mc, side="right") - 1, 0, len(edges) - 2)
        lo = edges[idx]
        nodes, wts = np.polynomial.legendre.leggauss(16)
        half = 0.5 * (mc - lo)
        pts = (lo + half)[..., None] + half[..., None] * nodes
        partial = half * (np.exp(self._log_g(pts) - self._log_ref) @ wts)
        out = (cum[idx] + partial) / cum[-1]
        out = np.where(np.isnan(m), np.nan, np.clip(out, 0.0, 1.0))
        return out

    def mass_probability_background(self, lo: float, hi: float) -> float:
        r""":math:`\int_{lo}^{hi} p_\mathrm{bkg}(m)\,dm` by adaptive quadrature (relative error ~1e-12)."""
        a, b = max(lo, self.mjj_min), min(hi, self.mjj_max)
        val, _ = self._quad_g(a, b)
        return float(math.exp(math.log(val) + self._log_ref - self._background_log_norm)) if val > 0 else 0.0

    def sample_mass_background(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        r"""``n`` exact draws of :math:`m_{jj}` from :math:`p_\mathrm{bkg}(m)`.

        Rejection sampling against the envelope :math:`E(m) \ge g(m)` of :attr:`_envelope`: draw a
        bin with probability ∝ its bound × width, :math:`m` uniform in it, accept with probability
        :math:`g(m)/E(m)` (≈ 99 % acceptance). Accepted points are exactly :math:`\propto g`.
        """
        n = _count(n, "n")
        rng = _rng(rng)
        edges, log_bound, probs = self._envelope
        width = np.diff(edges)
        out = np.empty(n)
        filled = 0
        drawn = accepted = 0
        while filled < n:
            k = int((n - filled) * 1.03) + 64
            idx = rng.choice(len(probs), size=k, p=probs)
            m = edges[idx] + width[idx] * rng.random(k)
            log_ratio = self._log_g(m) - log_bound[idx]
            if np.any(log_ratio > 0):
                raise RuntimeError("internal error: the rejection envelope does not bound the m_jj density")
            keep = np.log(rng.random(k)) < log_ratio
            take = m[keep][: n - filled]
            out[filled:filled + len(take)] = take
            filled += len(take)
            drawn += k
            accepted += int(keep.sum())
        logger.debug("background m_jj: %d draws, acceptance %.4f", drawn, accepted / max(drawn, 1))
        return out

    # ------------------------------------------------------------------ signal m_jj
    @property
    def _signal_components(self) -> list[tuple[float, float, float]]:
        """(weight, mean, sigma) of the untruncated m_jj mixture."""
        core_sigma = self.mjj_resolution * self.m_wprime
        comps = [(1.0 - self.tail_fraction, self.m_wprime, core_sigma)]
        if self.tail_fraction > 0:
            comps.append((self.tail_fraction, self.m_wprime * (1.0 - self.tail_shift),
                          self.tail_width_factor * core_sigma))
        return comps

    def _signal_mass_in(self, lo: float, hi: float) -> float:
        return float(sum(w * (special.ndtr((hi - mu) / s) - special.ndtr((lo - mu) / s))
                         for w, mu, s in self._signal_components))

    def log_prob_mass_signal(self, m: np.ndarray | float) -> np.ndarray:
        r""":math:`\ln p_\mathrm{sig}(m) = \ln \sum_k w_k N(m;\mu_k,\sigma_k) - \ln \sum_k w_k[\Phi(\tfrac{m_\mathrm{max}-\mu_k}{\sigma_k}) - \Phi(\tfrac{m_\mathrm{min}-\mu_k}{\sigma_k})]`.

        ``-inf`` outside :math:`[m_\mathrm{min}, m_\mathrm{max}]`.
        """
        m = np.asarray(m, dtype=np.float64)
        out = np.full(m.shape, -np.inf)
        inside = (m >= self.mjj_min) & (m <= self.mjj_max)
        mi = m[inside]
        terms = np.stack([math.log(w) + _log_normal_pdf(mi, mu, s) for w, mu, s in self._signal_components])
        out[inside] = special.logsumexp(terms, axis=0) - math.log(self._signal_mass_in(self.mjj_min, self.mjj_max))
        out[np.isnan(m)] = np.nan
        return out

    def cdf_mass_signal(self, m: np.ndarray | float) -> np.ndarray:
        r""":math:`P_\mathrm{sig}(m_{jj} \le m)`, closed form with :math:`\Phi`."""
        m = np.asarray(m, dtype=np.float64)
        mc = np.clip(m, self.mjj_min, self.mjj_max)
        num = sum(w * (special.ndtr((mc - mu) / s) - special.ndtr((self.mjj_min - mu) / s))
                  for w, mu, s in self._signal_components)
        return np.where(np.isnan(m), np.nan, np.clip(num / self._signal_mass_in(self.mjj_min, self.mjj_max), 0.0, 1.0))

    def mass_probability_signal(self, lo: float, hi: float) -> float:
        r""":math:`\int_{lo}^{hi} p_\mathrm{sig}(m)\,dm` (closed form)."""
        a, b = max(lo, self.mjj_min), min(hi, self.mjj_max)
        if b <= a:
            return 0.0
        return self._signal_mass_in(a, b) / self._signal_mass_in(self.mjj_min, self.mjj_max)

    def sample_mass_signal(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """``n`` exact draws of :math:`m_{jj}` from the truncated mixture: a component with
        probability ∝ its weight × its mass inside the range, then that truncated Gaussian
        (``scipy.stats.truncnorm``, inverse CDF)."""
        n = _count(n, "n")
        rng = _rng(rng)
        comps = self._signal_components
        p = np.array([w * (special.ndtr((self.mjj_max - mu) / s) - special.ndtr((self.mjj_min - mu) / s))
                      for w, mu, s in comps])
        which = rng.choice(len(comps), size=n, p=p / p.sum())
        out = np.empty(n)
        for k, (_, mu, s) in enumerate(comps):
            sel = which == k
            cnt = int(sel.sum())
            if cnt:
                out[sel] = stats.truncnorm.rvs((self.mjj_min - mu) / s, (self.mjj_max - mu) / s,
                                               loc=mu, scale=s, size=cnt, random_state=rng)
        return out

    # ------------------------------------------------------------------ features
    def _check_xm(self, x: np.ndarray, m: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim < 1 or x.shape[-1] != 4:
            raise ValueError(f"x must have shape (N, 4) = [m_J1, delta_m_J, tau21_1, tau21_2]; got shape {x.shape}")
        m = np.asarray(m, dtype=np.float64)
        try:
            m = np.broadcast_to(m, x.shape[:-1])
        except ValueError:
            raise ValueError(f"m (shape {m.shape}) does not match x (shape {x.shape}): need one m per row of x") from None
        return x, m

    def _jet_median(self, m: np.ndarray) -> np.ndarray:
        return self.jet_mass_offset + self.jet_mass_slope * m

    def _log_lognormal(self, mu: np.ndarray, median: np.ndarray) -> np.ndarray:
        lm = np.log(mu)
        z = (lm - np.log(median)) / self.jet_mass_sigma
        return -0.5 * z * z - lm - math.log(self.jet_mass_sigma) - _LOG_SQRT_2PI

    def tau21_mean_background(self, mu: np.ndarray | float) -> np.ndarray:
        r""":math:`\bar\tau(\mu) = \tau_\mathrm{min} + (\tau_\mathrm{max}-\tau_\mathrm{min})/(1 + \mu/\mu_\tau)` for intrinsic jet mass :math:`\mu`."""
        mu = np.asarray(mu, dtype=np.float64)
        return self.tau21_min + (self.tau21_max - self.tau21_min) / (1.0 + mu / self.tau21_mass_scale)

    def _log_tau_background(self, t: np.ndarray, mu: np.ndarray) -> np.ndarray:
        mean = self.tau21_mean_background(mu)
        k = self.tau21_concentration
        return _log_beta_pdf(t, k * mean, k * (1.0 - mean))

    def _split(self, x: np.ndarray, m: np.ndarray):
        a = x[..., 0] - self.correlation * m
        d = x[..., 1]
        t1, t2 = x[..., 2], x[..., 3]
        inside = (m > 0) & (a > 0) & (d >= 0) & (t1 > 0) & (t1 < 1) & (t2 > 0) & (t2 < 1) & np.isfinite(m) & np.isfinite(d)
        nan = np.isnan(x).any(axis=-1) | np.isnan(m)
        return a, d, t1, t2, inside & ~nan, nan

    def log_prob_features_background(self, x: np.ndarray, m: np.ndarray | float) -> np.ndarray:
        r""":math:`\ln p_\mathrm{bkg}(x \mid m) = \ln 2 + \ln f(a) + \ln f(a+\Delta) + \ln\mathrm{Beta}(\tau_1;\bar\tau(a)) + \ln\mathrm{Beta}(\tau_2;\bar\tau(a+\Delta))`.

        :math:`a = m_{J1} - s\,m`; support :math:`a > 0`, :math:`\Delta \ge 0`, :math:`0 < \tau_i < 1`
        (``-inf`` elsewhere). ``x``: (N, 4); ``m``: (N,) or a scalar, any ``m > 0``.
        """
        x, m = self._check_xm(x, m)
        a, d, t1, t2, inside, nan = self._split(x, m)
        out = np.full(m.shape, -np.inf)
        a, d, t1, t2, mm = a[inside], d[inside], t1[inside], t2[inside], m[inside]
        b = a + d
        med = self._jet_median(mm)
        out[inside] = (_LOG2 + self._log_lognormal(a, med) + self._log_lognormal(b, med)
                       + self._log_tau_background(t1, a) + self._log_tau_background(t2, b))
        out[nan] = np.nan
        return out

    def _log_trunc_jet(self, mu: np.ndarray, mass: float, rel: float) -> np.ndarray:
        s = rel * mass
        return _log_normal_pdf(mu, mass, s) - special.log_ndtr(mass / s)

    def _log_tau_signal(self, t: np.ndarray, mean: float) -> np.ndarray:
        k = self.signal_tau21_concentration
        return _log_beta_pdf(t, k * mean, k * (1.0 - mean))

    def log_prob_features_signal(self, x: np.ndarray, m: np.ndarray | float) -> np.ndarray:
        r""":math:`\ln p_\mathrm{sig}(x \mid m) = \ln[g_X(b)B_X(\tau_2)g_Y(a)B_Y(\tau_1) + g_X(a)B_X(\tau_1)g_Y(b)B_Y(\tau_2)]`.

        :math:`a = m_{J1} - s\,m`, :math:`b = a + \Delta`; :math:`g_J(\mu) = N(\mu; M_J, r_J M_J)/\Phi(1/r_J)`
        on :math:`\mu > 0`; :math:`B_J` the Beta density of mean :math:`\bar\tau_J`. Same support as
        the background.
        """
        x, m = self._check_xm(x, m)
        a, d, t1, t2, inside, nan = self._split(x, m)
        out = np.full(m.shape, -np.inf)
        a, d, t1, t2 = a[inside], d[inside], t1[inside], t2[inside]
        b = a + d
        gx = lambda v: self._log_trunc_jet(v, self.m_x, self.jet_mass_resolution_x)
        gy = lambda v: self._log_trunc_jet(v, self.m_y, self.jet_mass_resolution_y)
        bx = lambda t: self._log_tau_signal(t, self.signal_tau21_mean_x)
        by = lambda t: self._log_tau_signal(t, self.signal_tau21_mean_y)
        y_lighter = gx(b) + bx(t2) + gy(a) + by(t1)
        x_lighter = gx(a) + bx(t1) + gy(b) + by(t2)
        out[inside] = np.logaddexp(y_lighter, x_lighter)
        out[nan] = np.nan
        return out

    # ------------------------------------------------------------------ joint densities, ratios
    def log_prob_background(self, m: np.ndarray | float, x: np.ndarray) -> np.ndarray:
        r""":math:`\ln p_\mathrm{bkg}(m, x) = \ln p_\mathrm{bkg}(m) + \ln p_\mathrm{bkg}(x \mid m)`."""
        x, mb = self._check_xm(x, m)
        return self.log_prob_mass_background(mb) + self.log_prob_features_background(x, mb)

    def log_prob_signal(self, m: np.ndarray | float, x: np.ndarray) -> np.ndarray:
        r""":math:`\ln p_\mathrm{sig}(m, x) = \ln p_\mathrm{sig}(m) + \ln p_\mathrm{sig}(x \mid m)`."""
        x, mb = self._check_xm(x, m)
        return self.log_prob_mass_signal(mb) + self.log_prob_features_signal(x, mb)

    @staticmethod
    def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            out = num - den
        # outside the (common) support the ratio is 0/0: NaN; -inf - -inf already gives NaN.
        return out

    def log_likelihood_ratio(self, m: np.ndarray | float, x: np.ndarray) -> np.ndarray:
        r""":math:`\ln p_\mathrm{sig}(m, x) - \ln p_\mathrm{bkg}(m, x)`; NaN outside the support (0/0)."""
        return self._log_ratio(self.log_prob_signal(m, x), self.log_prob_background(m, x))

    def likelihood_ratio(self, m: np.ndarray | float, x: np.ndarray) -> np.ndarray:
        r""":math:`p_\mathrm{sig}(m, x) / p_\mathrm{bkg}(m, x)` — the optimal signal-vs-background
        classifier (Neyman–Pearson); may overflow to ``inf`` far in the signal's core. NaN outside the support."""
        with np.errstate(over="ignore"):
            return np.exp(self.log_likelihood_ratio(m, x))

    def log_likelihood_ratio_conditional(self, x: np.ndarray, m: np.ndarray | float) -> np.ndarray:
        r""":math:`\ln p_\mathrm{sig}(x \mid m) - \ln p_\mathrm{bkg}(x \mid m)` (the idealized anomaly
        detector's target at fixed :math:`m`); NaN outside the support."""
        return self._log_ratio(self.log_prob_features_signal(x, m), self.log_prob_features_background(x, m))

    # ------------------------------------------------------------------ samplers
    def sample_background_features(self, m: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        r"""Exact draws :math:`x \sim p_\mathrm{bkg}(\cdot \mid m)`, one per entry of ``m`` (any ``m > 0``): shape (N, 4).

        :math:`\mu_i = \tilde\mu(m)\,e^{\sigma z_i}`, :math:`\tau_i \sim \mathrm{Beta}(\bar\tau(\mu_i))`,
        jets ordered by :math:`\mu`, observed masses :math:`\mu + s\,m`.
        """
        rng = _rng(rng)
        m = _positive_masses(m)
        n = len(m)
        med = self._jet_median(m)
        mu = med[:, None] * np.exp(self.jet_mass_sigma * rng.standard_normal((n, 2)))
        mean = self.tau21_mean_background(mu)
        k = self.tau21_concentration
        tau = rng.beta(k * mean, k * (1.0 - mean))
        return _assemble(mu, tau, m, self.correlation)

    def sample_signal_features(self, m: np.ndarray, rng: np.random.Generator | int | None = None) -> np.ndarray:
        r"""Exact draws :math:`x \sim p_\mathrm{sig}(\cdot \mid m)` (truncated Gaussians for the X and Y
        masses, Beta τ21, ordered by mass, shifted by :math:`s\,m`): shape (N, 4)."""
        rng = _rng(rng)
        m = _positive_masses(m)
        n = len(m)
        mu = np.empty((n, 2))
        tau = np.empty((n, 2))
        k = self.signal_tau21_concentration
        for j, (mass, rel, tmean) in enumerate(((self.m_x, self.jet_mass_resolution_x, self.signal_tau21_mean_x),
                                                (self.m_y, self.jet_mass_resolution_y, self.signal_tau21_mean_y))):
            s = rel * mass
            mu[:, j] = stats.truncnorm.rvs(-mass / s, np.inf, loc=mass, scale=s, size=n, random_state=rng)
            tau[:, j] = rng.beta(k * tmean, k * (1.0 - tmean), size=n)
        return _assemble(mu, tau, m, self.correlation)

    def sample_background(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` background events: ``(m, x)`` with ``m`` (n,) and ``x`` (n, 4)."""
        rng = _rng(rng)
        m = self.sample_mass_background(n, rng)
        return m, self.sample_background_features(m, rng)

    def sample_signal(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` signal events: ``(m, x)`` with ``m`` (n,) and ``x`` (n, 4)."""
        rng = _rng(rng)
        m = self.sample_mass_signal(n, rng)
        return m, self.sample_signal_features(m, rng)


def _positive_masses(m: np.ndarray) -> np.ndarray:
    """m as a 1-D float64 array of finite, positive masses, or a ValueError."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 1:
        raise ValueError(f"m must be 1-D, got shape {m.shape}")
    if not np.all(np.isfinite(m) & (m > 0)):
        raise ValueError("m must be finite and > 0")
    return m


def _assemble(mu: np.ndarray, tau: np.ndarray, m: np.ndarray, s: float) -> np.ndarray:
    """Order two jets (intrinsic masses ``mu`` (N,2), τ21 ``tau`` (N,2)) by mass into ``x`` (N, 4)."""
    light = np.argmin(mu, axis=1)
    rows = np.arange(len(m))
    a, b = mu[rows, light], mu[rows, 1 - light]
    x = np.empty((len(m), 4))
    x[:, 0] = a + s * m
    x[:, 1] = b - a
    x[:, 2] = tau[rows, light]
    x[:, 3] = tau[rows, 1 - light]
    return x


def _count(n: Any, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    return int(n)


# ---------------------------------------------------------------------- S/B helpers
def signal_fraction_for(model: DijetModel, s_over_b: float, sr: tuple[float, float] = (3.3, 3.7)) -> float:
    r"""The ratio :math:`N_\mathrm{sig}/N_\mathrm{bkg}` of injected events that gives
    :math:`S/B` = ``s_over_b`` (in expectation) inside the signal region ``sr``:

    .. math:: \frac{N_s}{N_b} = \frac{S}{B}\,\frac{P_\mathrm{bkg}(m \in SR)}{P_\mathrm{sig}(m \in SR)},

    with both probabilities from the exact mass densities.
    """
    if not (isinstance(s_over_b, numbers.Real) and math.isfinite(s_over_b) and s_over_b >= 0):
        raise ValueError(f"s_over_b must be a finite number >= 0, got {s_over_b!r}")
    lo, hi = sr
    if not hi > lo:
        raise ValueError(f"signal region must have lo < hi, got {sr!r}")
    pb, ps = model.mass_probability_background(lo, hi), model.mass_probability_signal(lo, hi)
    if ps <= 0 or pb <= 0:
        raise ValueError(f"signal region {sr!r} holds no signal or no background (P_sig={ps:.3g}, P_bkg={pb:.3g})")
    return float(s_over_b) * pb / ps


def n_signal_for(model: DijetModel, s_over_b: float, n_background: int, sr: tuple[float, float] = (3.3, 3.7)) -> int:
    """The (rounded) number of signal events to inject with ``n_background`` background events
    so that the expected S/B in ``sr`` is ``s_over_b`` (see :func:`signal_fraction_for`)."""
    n_background = _count(n_background, "n_background")
    return round(signal_fraction_for(model, s_over_b, sr) * n_background)


# ---------------------------------------------------------------------- data sets and files
def make_dataset(model: DijetModel, n_background: int, n_signal: int, seed: int | None = 0) -> dict[str, np.ndarray]:
    """A shuffled, labelled sample: ``{"mjj", "mj1", "delta_mj", "tau21_1", "tau21_2", "label"}``,
    all 1-D float64 (label 0 = background, 1 = signal)."""
    n_background, n_signal = _count(n_background, "n_background"), _count(n_signal, "n_signal")
    rng = np.random.default_rng(seed)
    mb, xb = model.sample_background(n_background, rng)
    ms, xs = model.sample_signal(n_signal, rng)
    m = np.concatenate([mb, ms])
    x = np.concatenate([xb, xs])
    label = np.concatenate([np.zeros(n_background), np.ones(n_signal)])
    perm = rng.permutation(len(m))
    data = {"mjj": m[perm]}
    for j, name in enumerate(FEATURES):
        data[name] = np.ascontiguousarray(x[perm, j])
    data["label"] = label[perm]
    logger.info("synthetic dijet data set: %d background + %d signal events (seed %s)", n_background, n_signal, seed)
    return data


def _check_data(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(data, Mapping) or not data:
        raise ValueError("data must be a non-empty mapping of column name -> 1-D array")
    out: dict[str, np.ndarray] = {}
    n = None
    for name, col in data.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"column names must be non-empty strings without '/', got {name!r}")
        arr = np.asarray(col, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"column {name!r} must be 1-D, got shape {arr.shape}")
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"column {name!r} has {len(arr)} entries, others have {n}")
        out[name] = np.ascontiguousarray(arr)
    return out


def write_hdf5(path: str | os.PathLike, data: Mapping[str, Any], model: DijetModel | None = None, *,
               overwrite: bool = False) -> Path:
    """Write ``data`` (e.g. from :func:`make_dataset`) as one 1-D float64 dataset per column at the
    file root. Root attributes: ``columns`` (JSON list), ``units`` ("TeV"), ``generator`` and, with
    ``model``, ``model`` (its parameters as JSON). Atomic; an existing ``path`` raises
    ``ValueError`` unless ``overwrite=True``. Returns the path."""
    import h5py

    cols = _check_data(data)

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            for name, arr in cols.items():
                f.create_dataset(name, data=arr, dtype="f8")
            f.attrs["columns"] = json.dumps(list(cols))
            f.attrs["units"] = "TeV"
            f.attrs["generator"] = "nfapps.anomaly.synthetic.DijetModel"
            if model is not None:
                f.attrs["model"] = json.dumps(model.to_dict(), sort_keys=True)

    out = write_file_atomic(path, write, overwrite)
    logger.info("wrote %d events (%d columns) to %s", len(next(iter(cols.values()))), len(cols), out)
    return out


def write_root(path: str | os.PathLike, data: Mapping[str, Any], tree: str = "events",
               model: DijetModel | None = None, *, overwrite: bool = False) -> Path:
    """Write ``data`` as a TTree ``tree`` of flat float64 branches (``uproot.recreate``); with
    ``model``, its parameters go in a ``TObjString`` named ``model`` (JSON). Atomic; an existing
    ``path`` raises ``ValueError`` unless ``overwrite=True``. Returns the path."""
    import uproot

    cols = _check_data(data)
    if not isinstance(tree, str) or not tree or "/" in tree or (model is not None and tree == "model"):
        raise ValueError(f"invalid tree name {tree!r}")

    def write(tmp: str) -> None:
        with uproot.recreate(tmp) as f:
            f[tree] = cols
            if model is not None:
                f["model"] = json.dumps(model.to_dict(), sort_keys=True)

    out = write_file_atomic(path, write, overwrite)
    logger.info("wrote %d events (%d branches) to %s:%s", len(next(iter(cols.values()))), len(cols), out, tree)
    return out
