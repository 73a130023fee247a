"""An anomaly search job: events in, scores, diagnostics, a bump hunt and plots out.

``run_search(events, out, sr=(3.3, 3.7), method="cathode")`` does, in the run directory ``out``:

1. splits the events by the resonant mass into the signal region (SR) and the sidebands (SB),
   and holds out a tenth of the SB events as a control sample;
2. trains the background density p(x | m) on the other SB events (methods anode, cathode, lacathode;
   checkpointed in ``background.ckpt``, saved as ``background.nfapps``: an interrupted run resumes).
   For cathode and lacathode it is cross-fitted (``flow_folds``, default 2: one density per fold
   of the SB events, trained without that fold; checkpointed in ``background-folds/``, saved as
   ``background-folds.nfapps``), so that the SB events the bump hunt fits are scored out of
   sample, as the SR events are; ``flow_folds=1`` trains one density on all of them. With
   ``DensitySettings(ensemble=E)`` (``--flow-ensemble``; cathode and anode) each density is the
   equal mixture of E flows trained from different seeds;
3. scores every event with the method (:mod:`~nfapps.anomaly.methods`) — SR events out of sample,
   SB events by the method on the density that never saw them, the control events as the SR
   events were (:meth:`Scores.matched`: one fold's classifier each);
   the cross-fitted classifiers keep their finished folds in ``classifiers-<method>/`` (a re-run loads them);
4. checks the flow: a classifier two-sample test of flow samples against the held-out SB events at
   the same masses (AUC 0.5: indistinguishable), and a plot of SR data against flow samples;
5. with truth labels, the ROC and SIC curves (cuts keeping ≥ 25 background events) and max SIC;
6. for cuts keeping 20 %, 5 % and 1 % of the SR events, the bump hunt
   (:func:`~nfapps.anomaly.bumphunt.bump_hunt`: sideband fit of m, SR prediction, local
   significance) and the cut efficiency against m on the SB (and, with labels, background) events;
7. writes ``summary.json``, ``scores.csv`` (one row per event: mass, region, score, label) and
   ``features.png``, ``sic.png``, ``spectrum_<cut>.png``.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_bytes_atomic
from ..outputs import pyplot, save_figure, write_json
from .bumphunt import bump_hunt, plot_bump_hunt, sculpting
from .classifier import ClassifierSettings
from .density import ConditionalDensity, DensityFolds, DensitySettings, fit_background
from .methods import METHODS, anode, background_samples, cathode, cwola, lacathode, supervised, two_sample_auc
from .metrics import roc
from .readers import Events

logger = logging.getLogger(__name__)

SEARCH_METHODS = ("cathode", "lacathode", "anode", "cwola", "supervised")
#: The search methods that need the background density p(x | m).
DENSITY_METHODS = ("cathode", "lacathode", "anode")
CUTS = (0.2, 0.05, 0.01)
#: Below this p-value of the sculpting test a bump hunt's record carries a warning.
SCULPTING_P = 1e-3


@dataclass
class SearchSettings:
    """What the search does; stored in the run directory's summary."""

    sr: tuple[float, float] = (3.3, 3.7)
    method: str = "cathode"
    mass_range: tuple[float, float] | None = None  # of the bump hunt's fit; default: see default_fit_range
    density: DensitySettings = field(default_factory=DensitySettings)
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    folds: int = 5
    flow_folds: int = 2  # cross-fitted background densities for cathode and lacathode (1: one density)
    oversample: float = 4.0
    control_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in SEARCH_METHODS:
            raise ValueError(f"method must be one of {SEARCH_METHODS}, got {self.method!r}")
        low, high = (float(v) for v in self.sr)
        if not low < high:
            raise ValueError(f"the signal region must be (low, high) with low < high, got {self.sr}")
        self.sr = (low, high)
        if not 0 < self.control_fraction < 0.5:
            raise ValueError(f"control_fraction must be in (0, 0.5), got {self.control_fraction}")
        if isinstance(self.flow_folds, bool) or not isinstance(self.flow_folds, int) or self.flow_folds < 1:
            raise ValueError(f"flow_folds must be an integer ≥ 1 (1: one background density), got {self.flow_folds!r}")
        if self.method == "lacathode" and self.density.ensemble > 1:
            raise ValueError(f"lacathode needs one flow per background density (its latent space), got a flow ensemble of "
                             f"{self.density.ensemble}: use --flow-ensemble 1, or --method cathode")


def _split(events: Events, s: SearchSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks: SR; SB used for training; SB held out as control."""
    in_sr = (events.mass > s.sr[0]) & (events.mass < s.sr[1])
    sb = np.flatnonzero(~in_sr)
    control = np.zeros(len(events), dtype=bool)
    control[np.random.default_rng(s.seed).permutation(sb)[: int(round(s.control_fraction * len(sb)))]] = True
    if in_sr.sum() < 50 or (~in_sr & ~control).sum() < 50:
        raise ValueError(f"the signal region {s.sr} leaves {int(in_sr.sum())} events inside and {int((~in_sr).sum())} in the "
                         "sidebands: each needs at least 50; check --sr against the range of the mass")
    return in_sr, ~in_sr & ~control, control


def _background(events: Events, train: np.ndarray, s: SearchSettings, out: Path, device: str,
                progress: bool) -> ConditionalDensity | DensityFolds:
    """The background density of the method: cross-fitted (``s.flow_folds`` > 1, cathode and
    lacathode) or one; loaded from ``out`` if a finished one is there, which must have been
    trained with the same settings."""
    folds = s.flow_folds if s.method in ("cathode", "lacathode") else 1
    kind = DensityFolds if folds > 1 else ConditionalDensity
    saved = out / ("background-folds.nfapps" if folds > 1 else "background.nfapps")
    if saved.is_file():
        density = kind.load(saved)
        stored, wanted = asdict(density.settings), asdict(s.density)
        differ = [f"{k} {stored[k]!r} ≠ {wanted[k]!r}" for k in wanted if stored.get(k) != wanted[k]]
        if folds > 1 and len(density) != folds:
            differ.append(f"flow_folds {len(density)} ≠ {folds}")
        if differ:
            raise ValueError(f"{saved} was trained with other density settings ({', '.join(differ)}): "
                             "delete it to retrain, or choose another --out")
        logger.info("using the background density in %s", saved)
        return density
    x, m = events.features[train], events.mass[train]
    density = fit_background(x, m, s.density, folds, device, progress=progress,
                             checkpoint=out / ("background-folds" if folds > 1 else "background.ckpt"))
    density.save(saved)
    return density


def _scores(events: Events, masks, s: SearchSettings, background, device: str, progress: bool, out: Path):
    in_sr, train, _ = masks
    x, m = events.features, events.mass
    folds_dir = out / f"classifiers-{s.method}"
    if s.method == "cathode":
        return cathode(x[train], m[train], x[in_sr], m[in_sr], s.sr, background, classifier=s.classifier,
                       oversample=s.oversample, folds=s.folds, device=device, progress=progress, seed=s.seed,
                       checkpoint=folds_dir)
    if s.method == "lacathode":
        return lacathode(x[train], m[train], x[in_sr], m[in_sr], background, classifier=s.classifier,
                         oversample=s.oversample, folds=s.folds, device=device, progress=progress, seed=s.seed,
                         checkpoint=folds_dir)
    if s.method == "anode":
        return anode(x[train], m[train], x[in_sr], m[in_sr], background, s.density, device, progress)
    if s.method == "cwola":
        return cwola(x[train], x[in_sr], s.classifier, s.folds, device, progress, checkpoint=folds_dir)
    if events.labels is None:
        raise ValueError("method 'supervised' needs truth labels: pass --label with the name of the label column")
    return supervised(x[events.labels == 1], x[events.labels == 0], x[in_sr], s.classifier, device)


def run_search(events: Events, out: str | Path, settings: SearchSettings | None = None, device: str = "auto",
               progress: bool = True) -> dict[str, Any]:
    """Run the search described in the module docstring; returns the summary written to summary.json."""
    s = settings or SearchSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    masks = _split(events, s)
    in_sr, train, control = masks
    x, m, labels = events.features, events.mass, events.labels
    background = _background(events, train, s, out, device, progress) if s.method in DENSITY_METHODS else None
    result = _scores(events, masks, s, background, device, progress, out)
    score = result.of_events(x, m, in_sr, train)  # sideband scores distributed as the SR's out-of-sample ones

    summary: dict[str, Any] = {
        "method": s.method, "settings": asdict(s), "features": events.names, "mass": events.mass_name,
        "source": events.source, "events": len(events), "sr_events": int(in_sr.sum()), "sb_events": int(train.sum()),
        "control_events": int(control.sum()), "device": device,
    }
    if labels is not None:
        summary["sr_signal"] = int(labels[in_sr].sum())
        summary["sr_s_over_b"] = float(labels[in_sr].sum() / max((1 - labels[in_sr]).sum(), 1))
    samples = None
    if background is not None:
        one = background.densities[0] if isinstance(background, DensityFolds) else background  # none saw the control events
        samples, m_samples = result.diagnostics.get("samples") or background_samples(one, m[in_sr], s.sr, 1.0, s.seed)
        control_samples = one.sample(m[control], seed=s.seed + 1)
        summary["two_sample_auc_control"] = two_sample_auc(control_samples, x[control], s.classifier, device, s.seed)
        _plot_features(out / "features.png", x[in_sr], samples, events.names, s.sr)
    if labels is not None and 0 < labels[in_sr].sum() < in_sr.sum():
        curve = roc(score[in_sr], labels[in_sr])
        summary["max_sic"] = curve.max_sic
        summary["roc"] = curve.to_dict()
        _plot_sic(out / "sic.png", {s.method: curve})
    summary["bump_hunt"] = _bump_hunts(events, score, in_sr, s, out)
    summary["wall_time_s"] = time.perf_counter() - started
    _write_scores(out / "scores.csv", m, np.where(in_sr, "SR", np.where(control, "control", "SB")), score, labels)
    write_json(out / "summary.json", summary)
    return summary


def _bump_hunts(events: Events, score: np.ndarray, in_sr: np.ndarray, s: SearchSettings, out: Path) -> list[dict]:
    m = events.mass
    mass_range = s.mass_range or default_fit_range(m, s.sr)
    edges = np.linspace(*mass_range, 21)
    hunts = []
    for keep in CUTS:
        threshold = float(np.quantile(score[in_sr], 1 - keep))
        try:
            hunt = bump_hunt(m, score, s.sr, mass_range, threshold=threshold)
        except ValueError as err:  # too few events left by a tight cut
            logger.warning("bump hunt at %g %% of the SR kept: %s", 100 * keep, err)
            hunts.append({"sr_efficiency": keep, "threshold": threshold, "error": str(err)})
            continue
        record = {"sr_efficiency": keep, "threshold": threshold, **hunt.to_dict()}
        sidebands = ~in_sr if events.labels is None else events.labels == 0
        record["sculpting"] = sculpting(m[sidebands], score[sidebands] > threshold, edges)
        if record["sculpting"]["p_value"] < SCULPTING_P:
            record["warning"] = (f"the cut's efficiency depends on the mass (sculpting test p = "
                                 f"{record['sculpting']['p_value']:.2g}): the sideband fit may mispredict the SR "
                                 "background and this significance is not reliable; --method lacathode does not sculpt")
            logger.warning("bump hunt at %g %% of the SR kept: %s", 100 * keep, record["warning"])
        plot_bump_hunt(hunt, out / f"spectrum_{keep:g}.png", title=f"{s.method}: {100 * keep:g} % of the SR kept")
        hunts.append(record)
    return hunts


def default_fit_range(m: np.ndarray, sr: tuple[float, float]) -> tuple[float, float]:
    """The bump hunt's fit range when none is given: from where the mass spectrum has fallen to
    half its peak to the largest mass. Below the peak a trigger turn-on shapes the spectrum,
    which the dijet function does not describe, and the turn-on reaches well above the peak: on
    the synthetic spectrum (logistic turn-on at 2.65 TeV, width 0.1 TeV; peak at 2.72) a fit from
    just above the peak predicts the SR (3.3–3.7) 1.3σ too high on average over 12 seeds, one from
    the half-peak point (3.11) 0.2σ. Falls back to just above the peak, and then to the smallest
    mass, if a start would not leave a lower sideband. Give the range yourself where you know
    where the trigger is fully efficient (``SearchSettings.mass_range``, ``--fit-range``)."""
    counts, edges = np.histogram(m, bins=100)
    peak = int(np.argmax(counts))
    half = peak + int(np.argmax(counts[peak:] < 0.5 * counts[peak]))
    for start in (half, peak + 2):
        low = float(edges[min(start, len(edges) - 2)])
        if low < sr[0] and ((m >= low) & (m < sr[0])).sum() >= 100:
            return low, float(m.max())
    return float(m.min()), float(m.max())


def _write_scores(path: Path, m, region, score, labels) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["event", "mass", "region", "score"] + (["label"] if labels is not None else []))
    columns = [range(len(m)), np.asarray(m, dtype=np.float64).tolist(), np.asarray(region).tolist(),
               np.asarray(score, dtype=np.float64).tolist()]  # floats written as repr: exact round trip
    writer.writerows(zip(*columns, *([np.asarray(labels).astype(int).tolist()] if labels is not None else [])))
    write_bytes_atomic(path, buffer.getvalue().encode())


def _plot_features(path: Path, data: np.ndarray, samples: np.ndarray, names: list[str], sr) -> None:
    plt = pyplot()
    k = data.shape[1]
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3))
    for j, ax in enumerate(np.atleast_1d(axes)):
        edges = np.quantile(np.r_[data[:, j], samples[:, j]], [0.001, 0.999])
        bins = np.linspace(*edges, 41)
        ax.hist(data[:, j], bins, density=True, histtype="step", label="SR data")
        ax.hist(samples[:, j], bins, density=True, histtype="step", label="flow samples")
        ax.set_xlabel(names[j])
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"signal region {sr[0]:g}–{sr[1]:g}: data and background-flow samples")
    save_figure(fig, path)


def _plot_sic(path: Path, curves: dict) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, curve in curves.items():
        ax.plot(curve.signal_efficiency, curve.sic, label=f"{name} (max {curve.max_sic:.2f})")
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_xlabel("signal efficiency ε_S")
    ax.set_ylabel("SIC = ε_S / √ε_B")
    ax.legend()
    save_figure(fig, path)


__all__ = ["SearchSettings", "run_search", "SEARCH_METHODS", "METHODS"]
