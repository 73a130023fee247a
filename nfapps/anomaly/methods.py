"""Anomaly scores for a resonant search: ANODE, CATHODE, CWoLa and the two references.

The events split by the resonant mass m into a signal region (SR, where a bump may be) and
sidebands (SB). With x the other features, the optimal score inside the SR is the likelihood
ratio p_data(x|m)/p_bkg(x|m); the methods differ in how they get at p_bkg, which the SR data
cannot give (it contains the signal):

- **ANODE** (Nachman & Shih 2020): a conditional flow learns p_bkg(x|m) in the SB and
  interpolates it into the SR; a second flow learns p_data(x|m) in the SR; score =
  log p_data − log p_bkg. The two densities share one preprocessing.
- **CATHODE** (Hallin et al. 2022): the same SB flow is *sampled* in the SR, at masses drawn from a
  kernel density estimate of the SR m values, ``oversample`` times as many as there are SR
  events; classifiers learn SR data against these samples (cross-fitted, epoch-ensembled), and
  their output is the score. Sampling is forgiving where the density itself is not: the
  classifier only needs the samples to be right where the data are.
- **LaCATHODE** (Hallin et al. 2023): CATHODE in the flow's latent space — classifiers of the SR
  data mapped through the flow, z = f(x | m), against draws of its N(0, I) base. Background
  maps to N(0, I) at every m, so its scores do not depend on m as far as the flow is right: the
  cut that CATHODE's and CWoLa's scores sculpt (where x depends on m) stays nearly flat. Where
  the flow is off in the SR (it interpolates there), the classifier learns that too, and the SR
  keeps slightly more background than the sidebands (see the README's null study).
- **CWoLa** (Metodiev, Nachman, Thaler 2017): classifiers learn SR data against SB data; fine
  when x does not depend on m, sculpted when it does.
- **idealized**: CATHODE with perfect background samples (known only for synthetic or
  labelled data) — the best any sampling method can do.
- **supervised**: classifiers learn labelled signal against labelled background — the ceiling.

Every method returns :class:`Scores`: an out-of-sample score of every SR data event (for the
bump hunt on the same events) and a scorer for new events (for test sets and sidebands). Given
cross-fitted background densities (:class:`~nfapps.anomaly.density.DensityFolds`), CATHODE and
LaCATHODE also score every sideband event they were trained on out of sample, as the bump hunt's
sideband fit needs (a flow fits its own training events better than fresh ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import gaussian_kde

from .classifier import ClassifierSettings, CrossFit, cross_fit, train_classifier
from .density import ConditionalDensity, DensityFolds, DensitySettings
from .metrics import auc

logger = logging.getLogger(__name__)

METHODS = ("cathode", "lacathode", "anode", "cwola", "idealized", "supervised")


@dataclass
class Scores:
    """A method's anomaly scores: larger is more signal-like.

    ``scorer`` is the best score of new events (for cross-fitted classifiers, the mean over the
    folds); ``matched_scorer`` scores them as the SR events were (for those, one fold's classifier
    per event), so that a threshold set on ``sr`` keeps the same fraction of like events elsewhere
    — what the bump hunt needs of the sideband scores (the mean of K classifiers is narrower than
    one classifier's score: a tight cut on it would keep fewer sideband events and fake a bump).
    ``sb``, from methods run on cross-fitted densities (:class:`DensityFolds`): one score per
    sideband event the densities were trained on, each from the density that never saw it.
    """

    method: str
    sr: np.ndarray  # one out-of-sample score per SR data event
    scorer: Callable[[np.ndarray, np.ndarray], np.ndarray] = field(repr=False)  # (x, m) ↦ scores
    diagnostics: dict = field(default_factory=dict)
    matched_scorer: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    sb: np.ndarray | None = None  # one out-of-sample score per sideband training event (DensityFolds)

    def __call__(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return self.scorer(np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64))

    def matched(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Scores of events outside the SR (e.g. sidebands) distributed as ``sr`` is for like events."""
        scorer = self.matched_scorer or self.scorer
        return scorer(np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64))

    def of_events(self, x: np.ndarray, m: np.ndarray, in_sr: np.ndarray, in_sb: np.ndarray | None = None) -> np.ndarray:
        """One score per event of a whole data set whose SR events (mask ``in_sr``) are those
        ``sr`` scores: theirs from ``sr``, those of ``sb`` (if any) for the sideband training events
        (mask ``in_sb``, default: every other event), the rest from :meth:`matched` — what a
        bump hunt cuts on."""
        in_sr = np.asarray(in_sr, dtype=bool)
        score = np.empty(len(in_sr))
        score[in_sr] = self.sr
        rest = ~in_sr
        if self.sb is not None:
            in_sb = rest if in_sb is None else np.asarray(in_sb, dtype=bool)
            if in_sb.sum() != len(self.sb) or (in_sb & in_sr).any():
                raise ValueError(f"the sideband mask selects {int(in_sb.sum())} events outside the SR, but the densities "
                                 f"were trained on {len(self.sb)}: pass the mask of the events they were trained on")
            score[in_sb], rest = self.sb, rest & ~in_sb
        if rest.any():
            score[rest] = self.matched(x[rest], m[rest])
        return score


def _crossfit_scores(method: str, fitted: CrossFit, features=lambda x, m: x, **diagnostics) -> Scores:
    """Scores of cross-fitted classifiers of ``features(x, m)``."""
    return Scores(method, fitted.out_of_fold, lambda x, m: fitted.predict(features(x, m)), diagnostics,
                  lambda x, m: fitted.predict_one(features(x, m)))


def anode(x_sb, m_sb, x_sr, m_sr, background: ConditionalDensity | None = None, settings: DensitySettings | None = None,
          device: str = "auto", progress: bool = True) -> Scores:
    """log p_data(x|m) − log p_bkg(x|m), p_bkg from the SB (or ``background``), p_data from the SR.
    The SR events' scores are in-sample for p_data (ANODE has no held-out fold)."""
    background = background or ConditionalDensity.fit(x_sb, m_sb, settings, device, progress=progress)
    data = ConditionalDensity.fit(x_sr, m_sr, settings, device, progress=progress, scaler=background.scaler,
                                  trend=background.trend)

    def score(x, m):
        return data.log_prob(x, m) - background.log_prob(x, m)

    return Scores("anode", score(x_sr, m_sr), score)


def sample_sr_masses(m_sr: np.ndarray, n: int, sr: tuple[float, float], seed: int = 0) -> np.ndarray:
    """n masses from a Gaussian kernel density estimate of the SR masses, reflected at the SR's
    edges: a kernel's mass beyond an edge is folded back inside (a draw at a − d becomes a + d),
    the standard boundary correction. Merely dropping such draws would leave the estimate ≈ 40 %
    low within a bandwidth of each edge (measured on the synthetic spectrum), and a CATHODE
    classifier would learn that deficit of edge-like events as signal."""
    low, high = sr
    kde = gaussian_kde(np.asarray(m_sr, dtype=np.float64))
    rng = np.random.default_rng(seed)
    out = np.empty(0)
    while len(out) < n:
        draw = kde.resample(n - len(out) + 16, seed=rng)[0]
        draw = np.where(draw < low, 2 * low - draw, np.where(draw > high, 2 * high - draw, draw))
        out = np.r_[out, draw[(draw > low) & (draw < high)]]  # a draw beyond a whole SR width away: redrawn
    return out[:n]


def background_samples(background: ConditionalDensity, m_sr: np.ndarray, sr: tuple[float, float], oversample: float = 4.0,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CATHODE's synthetic SR background: ``oversample`` × len(m_sr) draws (x, m) of the SB flow."""
    m = sample_sr_masses(m_sr, int(round(oversample * len(m_sr))), sr, seed)
    return background.sample(m, seed=seed), m


def _across_density_folds(name: str, folds: DensityFolds, x_sb, m_sb, n_sr: int, seed: int,
                          run: Callable[[ConditionalDensity, np.ndarray, Path | None], Scores], checkpoint) -> Scores:
    """A method on cross-fitted densities: ``run(density_k, keep_k, checkpoint_k)`` is the method
    with density k, the sideband events ``keep_k`` it was trained on and its classifiers'
    checkpoint directory. Each SR event takes its out-of-sample score from one density's method,
    drawn at random; each sideband event from the method of the density that never saw it
    (:attr:`Scores.sb`); new events the mean over the densities (:meth:`Scores.__call__`) or one
    at random (:meth:`Scores.matched`)."""
    if len(folds.fold) != len(m_sb):
        raise ValueError(f"the densities were trained on {len(folds.fold)} sideband events, got {len(m_sb)}: "
                         "pass the sideband events they were trained on")
    runs = [run(density, folds.fold != k, None if checkpoint is None else Path(checkpoint) / f"density{k}")
            for k, density in enumerate(folds.densities)]
    pick = np.random.default_rng(seed + 7).integers(len(runs), size=n_sr)
    sb = np.empty(len(m_sb))
    for k, r in enumerate(runs):
        sb[folds.fold == k] = r.matched(x_sb[folds.fold == k], m_sb[folds.fold == k])

    def mean(x, m):
        return np.mean([r(x, m) for r in runs], axis=0)

    def matched(x, m):
        which = np.random.default_rng(seed + 8).integers(len(runs), size=len(m))
        out = np.empty(len(m))
        for k, r in enumerate(runs):
            if (which == k).any():
                out[which == k] = r.matched(x[which == k], m[which == k])
        return out

    return Scores(name, np.choose(pick, [r.sr for r in runs]), mean, {**runs[0].diagnostics, "density_folds": len(runs)},
                  matched, sb)


def cathode(x_sb, m_sb, x_sr, m_sr, sr: tuple[float, float], background: ConditionalDensity | DensityFolds | None = None,
            settings: DensitySettings | None = None, classifier: ClassifierSettings | None = None, oversample: float = 4.0,
            folds: int = 5, device: str = "auto", progress: bool = True, seed: int = 0, checkpoint=None) -> Scores:
    """Classifiers of SR data against samples of the SB flow interpolated into the SR (``checkpoint``:
    a directory where :func:`~nfapps.anomaly.classifier.cross_fit` keeps its finished folds).
    With cross-fitted densities (``background`` a :class:`DensityFolds`) the classifiers are
    trained once per density and every sideband event is scored out of sample (:attr:`Scores.sb`)."""
    if isinstance(background, DensityFolds):
        x_sb, m_sb = np.asarray(x_sb, dtype=np.float64), np.asarray(m_sb, dtype=np.float64).ravel()
        return _across_density_folds("cathode", background, x_sb, m_sb, len(m_sr), seed, lambda density, keep, where: cathode(
            x_sb[keep], m_sb[keep], x_sr, m_sr, sr, density, classifier=classifier, oversample=oversample, folds=folds,
            device=device, progress=progress, seed=seed, checkpoint=where), checkpoint)
    background = background or ConditionalDensity.fit(x_sb, m_sb, settings, device, progress=progress)
    samples, m_samples = background_samples(background, m_sr, sr, oversample, seed)
    fitted = cross_fit(np.asarray(x_sr), samples, folds, classifier, device, progress, desc="CATHODE classifiers",
                       checkpoint=checkpoint)
    result = _crossfit_scores("cathode", fitted)
    result.diagnostics["samples"] = (samples, m_samples)
    return result


def lacathode(x_sb, m_sb, x_sr, m_sr, background: ConditionalDensity | DensityFolds | None = None,
              settings: DensitySettings | None = None, classifier: ClassifierSettings | None = None,
              oversample: float = 4.0, folds: int = 5, device: str = "auto", progress: bool = True, seed: int = 0,
              checkpoint=None) -> Scores:
    """CATHODE in the flow's latent space (LaCATHODE, Hallin et al. 2023): classifiers of the SR
    data's base points z = f(x | m) against draws of the base N(0, I) (``oversample`` × as many).

    Background maps to N(0, I) at every m, so as far as the flow is right the score of a
    background event — SR or sidebands — does not depend on its mass, and a cut on it keeps the
    background's m spectrum for the bump hunt's sideband fit. Flow errors in the SR, where the
    flow interpolates, are learnt as well: they raise the SR's pass rate a little above the
    sidebands'. The price against CATHODE is some sensitivity. ``background`` may be a
    :class:`DensityFolds`, as for :func:`cathode`: the sideband training events are then scored
    out of sample too. A density that is a mixture of flows (``DensitySettings.ensemble`` > 1)
    has no single latent space and is refused."""
    ensemble = (background.settings if background is not None else settings or DensitySettings()).ensemble
    if ensemble > 1:
        raise ValueError(f"LaCATHODE needs one flow per background density (its latent space), got an ensemble of {ensemble}: "
                         "use ensemble 1, or one member's density")
    if isinstance(background, DensityFolds):
        x_sb, m_sb = np.asarray(x_sb, dtype=np.float64), np.asarray(m_sb, dtype=np.float64).ravel()
        return _across_density_folds("lacathode", background, x_sb, m_sb, len(m_sr), seed, lambda density, keep, where: lacathode(
            x_sb[keep], m_sb[keep], x_sr, m_sr, density, classifier=classifier, oversample=oversample, folds=folds,
            device=device, progress=progress, seed=seed, checkpoint=where), checkpoint)
    background = background or ConditionalDensity.fit(x_sb, m_sb, settings, device, progress=progress)
    z_sr = background.latent(x_sr, m_sr)
    rng = np.random.default_rng(seed)
    z_background = rng.standard_normal((int(round(oversample * len(z_sr))), z_sr.shape[1]))
    fitted = cross_fit(z_sr, z_background, folds, classifier, device, progress, desc="LaCATHODE classifiers",
                       checkpoint=checkpoint)
    return _crossfit_scores("lacathode", fitted, background.latent)


def cwola(x_sb, x_sr, classifier: ClassifierSettings | None = None, folds: int = 5, device: str = "auto",
          progress: bool = True, checkpoint=None) -> Scores:
    """Classifiers of SR data against SB data."""
    return _crossfit_scores("cwola", cross_fit(np.asarray(x_sr), np.asarray(x_sb), folds, classifier, device, progress,
                                               desc="CWoLa classifiers", checkpoint=checkpoint))


def idealized(x_sr, x_background_sr, classifier: ClassifierSettings | None = None, folds: int = 5, device: str = "auto",
              progress: bool = True) -> Scores:
    """Classifiers of SR data against true SR background events (a reference: needs the truth)."""
    return _crossfit_scores("idealized", cross_fit(np.asarray(x_sr), np.asarray(x_background_sr), folds, classifier,
                                                   device, progress, desc="idealized classifiers"))


def supervised(x_signal, x_background, x_sr, classifier: ClassifierSettings | None = None, device: str = "auto") -> Scores:
    """One classifier of labelled signal against labelled background (a reference: needs the labels)."""
    model = train_classifier(np.concatenate([x_signal, x_background]),
                             np.r_[np.ones(len(x_signal)), np.zeros(len(x_background))], classifier, device)
    return Scores("supervised", model.predict(np.asarray(x_sr)), lambda x, m: model.predict(x))


def two_sample_auc(a: np.ndarray, b: np.ndarray, classifier: ClassifierSettings | None = None, device: str = "auto",
                   seed: int = 0) -> float:
    """Classifier two-sample test: the held-out AUC of a classifier trained to tell a from b on
    half of each (0.5: indistinguishable). Equal sizes are used (the larger is subsampled)."""
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    if n < 20:
        raise ValueError(f"a two-sample test needs at least 20 events per sample, got {len(a)} and {len(b)}")
    a, b = np.asarray(a)[rng.permutation(len(a))[:n]], np.asarray(b)[rng.permutation(len(b))[:n]]
    half = n // 2
    model = train_classifier(np.concatenate([a[:half], b[:half]]), np.r_[np.ones(half), np.zeros(half)], classifier, device)
    scores = model.predict(np.concatenate([a[half:], b[half:]]))
    return auc(scores, np.r_[np.ones(n - half), np.zeros(n - half)])


__all__ = ["METHODS", "Scores", "anode", "cathode", "lacathode", "cwola", "idealized", "supervised", "sample_sr_masses",
           "background_samples", "two_sample_auc"]
