"""Preprocessing for density estimation: a logit with margins, then standardisation.

Jet features live on bounded or half-bounded ranges (τ21 ∈ [0, 1], masses ≥ 0) with hard
edges that a flow with a Gaussian base models badly. Each feature j is mapped as

    u_j = margin + (1 − 2·margin) · (x_j − low_j) / (high_j − low_j),   u_j ← clip(u_j, ε, 1 − ε)
    y_j = (logit(u_j) − μ_j) / σ_j

with low/high the feature's range on the data it was fitted on, ``margin`` (default 0.05) of
room at each end for events slightly outside that range (e.g. signal-region events beyond the
sidebands' extremes), and the clip at ε = 1e-6 so that no value — not even one far outside —
becomes ±inf. μ, σ are the mean and standard deviation of logit(u) on the fitted data. The map
is strictly increasing on [low − margin·span/(1 − 2·margin), high + …], and its inverse is exact
there: x = low + (sigmoid(σ y + μ) − margin)·span/(1 − 2·margin).

Density ratios computed in the preprocessed space (ANODE's p_data/p_bkg) need no Jacobian: it
cancels. The conditioning variable (m_jj) is only standardised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

CLIP = 1e-6


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (events, features), got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{name} has a non-finite value {x[row, col]} at event {row}, feature {col}: remove or fix such events first")
    return x


@dataclass
class LogitScaler:
    """The feature map y = (logit(u) − μ)/σ described in the module docstring, fitted on data."""

    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    margin: float = 0.05

    @classmethod
    def fit(cls, x: np.ndarray, margin: float = 0.05) -> "LogitScaler":
        """Fit ranges and logit moments on x (events, features)."""
        if not 0 < margin < 0.5:
            raise ValueError(f"margin must be in (0, 0.5), got {margin}")
        x = _check_matrix(x, "features")
        if len(x) < 2:
            raise ValueError(f"need at least 2 events to fit the preprocessing, got {len(x)}")
        low, high = x.min(axis=0), x.max(axis=0)
        constant = high <= low
        if constant.any():
            raise ValueError(f"feature(s) {np.flatnonzero(constant).tolist()} are constant: a constant feature carries no information, drop it")
        scaler = cls(low, high, np.zeros(x.shape[1]), np.ones(x.shape[1]), float(margin))
        logits = scaler._logit(x)
        scaler.mean, scaler.std = logits.mean(axis=0), logits.std(axis=0)
        return scaler

    def _unit(self, x: np.ndarray) -> np.ndarray:
        return self.margin + (1 - 2 * self.margin) * (x - self.low) / (self.high - self.low)

    def _logit(self, x: np.ndarray) -> np.ndarray:
        u = self._unit(x)
        outside = (u < CLIP) | (u > 1 - CLIP)
        if outside.any():
            logger.warning("%d value(s) lie beyond the preprocessing's margins and are clipped", int(outside.sum()))
        u = np.clip(u, CLIP, 1 - CLIP)
        return np.log(u) - np.log1p(-u)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Physical features → preprocessed features (always finite)."""
        x = _check_matrix(x, "features")
        if x.shape[1] != len(self.low):
            raise ValueError(f"expected {len(self.low)} features, got {x.shape[1]}")
        return (self._logit(x) - self.mean) / self.std

    def log_abs_det(self, x: np.ndarray) -> np.ndarray:
        """log|det ∂y/∂x| per event, y = transform(x): the map is elementwise, so
        Σ_j −log σ_j − log u_j − log(1 − u_j) + log((1 − 2·margin)/(high_j − low_j)), u the unit
        value. A density of y becomes one of x by adding it: log p_x(x) = log p_y(y) + log|det|."""
        x = _check_matrix(x, "features")
        u = np.clip(self._unit(x), CLIP, 1 - CLIP)
        scale = np.log1p(-2 * self.margin) - np.log(self.high - self.low) - np.log(self.std)
        return (scale - np.log(u) - np.log1p(-u)).sum(axis=1)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Preprocessed features → physical features."""
        y = _check_matrix(y, "preprocessed features")
        u = 1 / (1 + np.exp(-(y * self.std + self.mean)))
        return self.low + (u - self.margin) * (self.high - self.low) / (1 - 2 * self.margin)

    def state(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "mean": self.mean.tolist(),
                "std": self.std.tolist(), "margin": self.margin}

    @classmethod
    def from_state(cls, state: dict) -> "LogitScaler":
        return cls(*(np.asarray(state[k], dtype=np.float64) for k in ("low", "high", "mean", "std")), float(state["margin"]))


@dataclass
class Standardizer:
    """y = (x − μ)/σ per column, fitted on data (for the conditioning mass and classifier inputs)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        x = _check_matrix(np.asarray(x, dtype=np.float64).reshape(len(x), -1), "values")
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return ((x.reshape(len(x), -1) - self.mean) / self.std).reshape(x.shape)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        return (y.reshape(len(y), -1) * self.std + self.mean).reshape(y.shape)

    def state(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "Standardizer":
        return cls(np.asarray(state["mean"], dtype=np.float64), np.asarray(state["std"], dtype=np.float64))


@dataclass
class MassTrend:
    """The polynomial trend of preprocessed features in the resonant mass, location and scale,
    to be taken out:

        y ↦ (y − μ(m)) / σ(m),   μ(m) = Σ_{k=0}^{d} c_k t^k,   log σ(m) = Σ_{k=0}^{e} b_k t^k,
        t = (m − centre)/scale,

    per feature. c (d + 1 rows, one column per feature) is the least-squares fit of y on the
    powers of t; b (e + 1 rows) maximises the Gaussian likelihood of the residuals y − μ(m) with
    standard deviation σ(m) (Newton's method on a convex objective; ``log_scale`` None means
    σ ≡ 1, a pure shift — a constant width needs no trend, the scaler already standardised it). Features that drift with m (jet
    masses grow with m_jj, and spread more) then leave the flow only the shape around the trend to
    learn, which it interpolates into a signal region more easily. The map acts on y at fixed m,
    with log|det ∂u/∂y| = −Σ_j log σ_j(m) (:meth:`log_abs_det`; 0 for a pure shift): a density of
    u at m becomes one of y at m by adding it.
    """

    coefficients: np.ndarray  # (degree + 1, features): μ(m)
    centre: float = 0.0
    scale: float = 1.0
    log_scale: np.ndarray | None = None  # (scale degree + 1, features): log σ(m); None: σ ≡ 1

    @classmethod
    def none(cls, features: int) -> "MassTrend":
        """No trend: the identity map."""
        return cls(np.zeros((1, features)))

    @staticmethod
    def check_degree(degree: int, what: str = "trend degree") -> int:
        """``degree`` if it is a valid degree (an integer ≥ 0), else a one-line ValueError."""
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 0:
            raise ValueError(f"the {what} must be an integer ≥ 0 (0: no trend), got {degree!r}")
        return int(degree)

    @classmethod
    def fit(cls, y: np.ndarray, m: np.ndarray, degree: int, scale_degree: int = 0) -> "MassTrend":
        """The trend of y (events, features) in m: the location's of degree ``degree`` and the
        log-width's of degree ``scale_degree`` (each 0: none; 1: linear …)."""
        y = _check_matrix(y, "preprocessed features")
        degree, scale_degree = cls.check_degree(degree), cls.check_degree(scale_degree, "scale trend degree")
        if degree == 0 and scale_degree == 0:
            return cls.none(y.shape[1])
        m = np.asarray(m, dtype=np.float64).ravel()
        centre, scale = float(m.mean()), float(m.std()) or 1.0
        t = (m - centre) / scale
        coefficients = np.linalg.lstsq(np.vander(t, degree + 1, increasing=True), y, rcond=None)[0]
        trend = cls(coefficients, centre, scale)
        if scale_degree:
            trend.log_scale = _log_width_fit(y - trend._values(m), np.vander(t, scale_degree + 1, increasing=True))
        return trend

    def _powers(self, m: np.ndarray, terms: int) -> np.ndarray:
        return np.vander((np.asarray(m, dtype=np.float64).ravel() - self.centre) / self.scale, terms, increasing=True)

    def _values(self, m: np.ndarray) -> np.ndarray:
        return self._powers(m, len(self.coefficients)) @ self.coefficients

    def _log_widths(self, m: np.ndarray) -> np.ndarray:
        """log σ_j(m), one row per mass (only with a width trend)."""
        return self._powers(m, len(self.log_scale)) @ self.log_scale

    def remove(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """(y − μ(m)) / σ(m): y less its trend at masses m."""
        shifted = np.asarray(y, dtype=np.float64) - self._values(m)
        return shifted if self.log_scale is None else shifted * np.exp(-self._log_widths(m))

    def restore(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`remove`: μ(m) + σ(m)·y."""
        y = np.asarray(y, dtype=np.float64)
        return (y if self.log_scale is None else y * np.exp(self._log_widths(m))) + self._values(m)

    def log_abs_det(self, m: np.ndarray) -> np.ndarray:
        """log|det ∂remove/∂y| = −Σ_j log σ_j(m), one per mass (0 for a pure shift)."""
        if self.log_scale is None:
            return np.zeros(np.asarray(m).size)
        return -self._log_widths(m).sum(axis=1)

    def state(self) -> dict:
        state = {"coefficients": self.coefficients.tolist(), "centre": self.centre, "scale": self.scale}
        if self.log_scale is not None:
            state["log_scale"] = self.log_scale.tolist()
        return state

    @classmethod
    def from_state(cls, state: dict) -> "MassTrend":
        def matrix(rows) -> np.ndarray:
            return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)

        return cls(matrix(state["coefficients"]), float(state["centre"]), float(state["scale"]),
                   matrix(state["log_scale"]) if state.get("log_scale") is not None else None)


def _log_width_fit(residuals: np.ndarray, powers: np.ndarray, iterations: int = 50) -> np.ndarray:
    """b maximising Σ_i [−a_ij − r_ij² e^{−2 a_ij} / 2] with a = powers @ b, per feature j: the
    Gaussian likelihood of residuals r whose log standard deviation is a polynomial. The objective
    is convex in b; Newton's method from the constant fit converges in a few steps."""
    features = residuals.shape[1]
    squares = residuals ** 2
    b = np.zeros((powers.shape[1], features))
    b[0] = 0.5 * np.log(np.maximum(squares.mean(axis=0), 1e-300))
    for _ in range(iterations):
        ratio = squares * np.exp(-2 * (powers @ b))  # r² / σ², per event and feature
        step = np.empty_like(b)
        for j in range(features):
            gradient = powers.T @ (1 - ratio[:, j])
            hessian = 2 * (powers * ratio[:, j, None]).T @ powers
            step[:, j] = np.linalg.solve(hessian + 1e-12 * np.eye(len(hessian)), gradient)
        b -= step
        if np.abs(step).max() < 1e-10:
            break
    return b


__all__ = ["LogitScaler", "Standardizer", "MassTrend"]
