"""Figures of merit of an anomaly score: ROC, significance improvement, AUC.

For a cut score > t, the signal efficiency is ε_S(t) = TPR and the background efficiency
ε_B(t) = FPR; the significance improvement characteristic is SIC = ε_S/√ε_B, the factor by
which the cut multiplies S/√B. At tight cuts ε_B rests on a handful of background events and
SIC becomes noise, so only cuts keeping at least ``min_background`` (default 25) background
test events count. The AUC is the Mann–Whitney probability P(score_S > score_B) (ties ½).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

MIN_BACKGROUND = 25


def _scores_and_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels differ in length: {scores.size} and {labels.size}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} score(s) are not finite")
    labels = labels.astype(bool)
    if labels.all() or not labels.any():
        raise ValueError("need both signal (label 1) and background (label 0) events")
    return scores, labels


def auc(scores, labels) -> float:
    """Area under the ROC curve, P(score of a signal event > score of a background event)."""
    scores, labels = _scores_and_labels(scores, labels)
    ranks = rankdata(scores)
    n_s, n_b = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_s * (n_s + 1) / 2) / (n_s * n_b))


@dataclass
class ROC:
    """Efficiencies of every cut score ≥ threshold, from the loosest to the tightest kept."""

    thresholds: np.ndarray
    signal_efficiency: np.ndarray
    background_efficiency: np.ndarray
    background_passing: np.ndarray  # background events passing each cut

    @property
    def sic(self) -> np.ndarray:
        return self.signal_efficiency / np.sqrt(self.background_efficiency)

    @property
    def max_sic(self) -> float:
        return float(self.sic.max()) if self.sic.size else float("nan")

    def to_dict(self, points: int = 200) -> dict:
        """A thinned copy (at most ``points`` cuts, log-spaced in ε_B) for JSON."""
        keep = np.unique(np.searchsorted(-self.background_efficiency,
                                         -np.geomspace(1, self.background_efficiency.min(), points)).clip(0, len(self.thresholds) - 1))
        return {"signal_efficiency": self.signal_efficiency[keep].tolist(),
                "background_efficiency": self.background_efficiency[keep].tolist(),
                "sic": self.sic[keep].tolist(), "max_sic": self.max_sic}


def roc(scores, labels, min_background: int = MIN_BACKGROUND) -> ROC:
    """The ROC over all distinct thresholds, keeping only cuts with ≥ ``min_background``
    background events passing."""
    scores, labels = _scores_and_labels(scores, labels)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last event of each distinct score
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    keep = fp >= min_background
    if not keep.any():
        raise ValueError(f"fewer than {min_background} background events: the ROC has no reliable cut")
    return ROC(s[last][keep], tp[keep] / y.sum(), fp[keep] / (~y).sum(), fp[keep])


def max_sic(scores, labels, min_background: int = MIN_BACKGROUND) -> float:
    """max over cuts of ε_S/√ε_B, with ≥ ``min_background`` background events passing."""
    return roc(scores, labels, min_background).max_sic


__all__ = ["auc", "roc", "ROC", "max_sic", "MIN_BACKGROUND"]
