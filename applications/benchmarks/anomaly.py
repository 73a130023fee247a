"""Anomaly-search benchmark: CATHODE, LaCATHODE, ANODE, CWoLa against the idealized, supervised and
true-likelihood-ratio references, on synthetic events with known densities and on the real
LHCO R&D signal-region arrays.

Three parts, each optional:

``synthetic`` (``--seeds K``): per seed, ``--background`` events of :class:`DijetModel` with
signal injected to S/B = ``--s-over-b`` in the SR 3.3–3.7 TeV. The background density is
trained on the sidebands; every method scores a fresh SR test set of 40k background and 20k
signal events (``--test-background``/``--test-signal``). References: the true likelihood ratio
p_sig/p_bkg (the best possible score), the idealized detector (classifiers of SR data against
SR background drawn from the true density at SR masses) and a supervised classifier. Reported
per seed and as median and spread (16–84 %) over seeds: max SIC (cuts keeping ≥ 25 test
background events), ratios to the true-likelihood-ratio max SIC, and the two-sample AUC of flow
samples against true SR background.

``null`` (``--null-seeds K``): background only; per seed the background density, cross-fitted
on ``--flow-folds`` folds of the sidebands (default 2; 1: one flow on all of them, whose own
training events then pass a cut less often than fresh ones), then the CATHODE and the LaCATHODE
scores and, for each, the bump hunt at cuts keeping 20 % and 5 % of the SR.
For a score that does not sculpt, the local significances are N(0, 1) (mean, std, max) and the
cut efficiency is flat in m_jj (the χ² p-values of the sculpting test are uniform). The
synthetic jet masses grow with m_jj, so a score of x alone (CATHODE's) sculpts; LaCATHODE's,
a score of the flow's latent z = f(x | m), should not.

``--flow-ensemble E`` makes each background density the equal mixture of E flows trained from
different seeds (CATHODE's samples, ANODE's densities and the two-sample AUCs; LaCATHODE, which
needs one latent space, takes each ensemble's first flow).

Seeds run ``--jobs`` at a time in separate processes (one torch thread each); every seed's
numbers depend on its seed only. Each finished seed is kept in ``<out>/records/``: a re-run with
the same settings and ``--out`` after an interruption redoes only the unfinished seeds.

``lhco`` (``--lhco``): the real arrays of ``../shared/data/lhco-rd-sr`` with the pseudo signal
window ``--window`` (default 3.45–3.55 TeV; the rest of 3.3–3.7 plays the sidebands), with
``--inject`` extra signal events added to the train+val "data" (1500 gives S/B ≈ 2.8 % in the
window), for ``--lhco-seeds`` seeds each (flows, classifiers and samples; median and spread
reported). Every method scores all the window's events of innerdata_test (≈ 10k background,
7k signal). The idealized detector's "true background" is that test background too, cross-fitted:
it is split into ``--folds`` folds, and the events of fold k (background, and signal assigned
to folds at random) are scored by the idealized classifiers trained without fold k. The flow
samples' two-sample test is against the same test background.

Writes ``anomaly.json`` (settings, environment, every record, summaries, targets) and
``anomaly.png`` (SIC curves of the first seed; per-method max SIC over seeds; null significances).

Usage::

    python applications/benchmarks/anomaly.py --seeds 5 --null-seeds 50 --lhco --lhco-seeds 3 --jobs 2 --out results/anomaly
    python applications/benchmarks/anomaly.py --quick --out /tmp/anomaly          # smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import logging
import multiprocessing
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from nfapps.anomaly.bumphunt import bump_hunt, sculpting
from nfapps.anomaly.classifier import CLASSIFIER_MODELS, ClassifierSettings
from nfapps.anomaly.density import ConditionalDensity, DensityFolds, DensitySettings, fit_background
from nfapps.anomaly.methods import anode, cathode, cwola, idealized, lacathode, supervised, two_sample_auc
from nfapps.anomaly.metrics import roc
from nfapps.anomaly.search import default_fit_range
from nfapps.anomaly.synthetic import FEATURES, DijetModel, make_dataset, n_signal_for
from nfapps.outputs import pyplot, save_figure, write_json
from nfapps.training import LR_SCHEDULES

logger = logging.getLogger("anomaly-benchmark")
SR = (3.3, 3.7)
#: Methods whose bump hunt is studied (their scores are applied to the sidebands too).
HUNTED = ("cathode", "lacathode")
#: Methods of the synthetic comparison, besides the true likelihood ratio.
COMPARED = ("cathode", "lacathode", "anode", "cwola", "idealized", "supervised")
#: Methods run on the real LHCO arrays.
LHCO_METHODS = ("cathode", "lacathode", "anode", "cwola", "idealized")
LHCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lhco-rd-sr"


@dataclass
class Settings:
    background: int
    s_over_b: float
    test_background: int
    test_signal: int
    density: DensitySettings
    classifier: ClassifierSettings
    folds: int
    device: str
    flow_folds: int = 2  # the null study's cross-fitted background densities (1: one flow)
    inject: tuple[int, ...] = (1500, 300)  # LHCO: extra signal events injected, one run per seed each
    window: tuple[float, float] = (3.45, 3.55)  # LHCO: the pseudo signal window
    compare: tuple[str, ...] = ()  # LHCO: classifier models also run on the same flows


def sr_events(model: DijetModel, n: int, signal: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n events of one class inside the SR (rejection on m_jj)."""
    ms, xs = [], []
    while sum(len(m) for m in ms) < n:
        m, x = (model.sample_signal if signal else model.sample_background)(4 * n, rng)
        keep = (m > SR[0]) & (m < SR[1])
        ms.append(m[keep])
        xs.append(x[keep])
    return np.concatenate(ms)[:n], np.concatenate(xs)[:n]


def _features(data: dict) -> np.ndarray:
    """The synthetic events' features (events × FEATURES)."""
    return np.stack([data[name] for name in FEATURES], axis=1)


def _one_flow(background: ConditionalDensity | DensityFolds) -> ConditionalDensity | DensityFolds:
    """LaCATHODE's density: the first flow of each ensemble (a mixture of flows has no single
    latent space; with one flow per density, the same density)."""
    return background.member(0)


def _max_sic(scores: np.ndarray, labels: np.ndarray) -> tuple[float, object]:
    curve = roc(scores, labels)
    return curve.max_sic, curve


def synthetic_seed(seed: int, s: Settings) -> dict:
    torch.manual_seed(seed)
    model = DijetModel()
    n_signal = n_signal_for(model, s.s_over_b, s.background)
    data = make_dataset(model, s.background, n_signal, seed)
    m, x, y = data["mjj"], _features(data), data["label"]
    in_sr = (m > SR[0]) & (m < SR[1])
    rng = np.random.default_rng(10_000 + seed)
    m_tb, x_tb = sr_events(model, s.test_background, False, rng)
    m_ts, x_ts = sr_events(model, s.test_signal, True, rng)
    m_t, x_t, y_t = np.r_[m_tb, m_ts], np.r_[x_tb, x_ts], np.r_[np.zeros(len(m_tb)), np.ones(len(m_ts))]
    started = time.perf_counter()
    density = DensitySettings(**{**s.density.__dict__, "seed": seed})
    classifier = ClassifierSettings(**{**s.classifier.__dict__, "seed": seed})
    background = ConditionalDensity.fit(x[~in_sr], m[~in_sr], density, s.device, progress=False)
    t_density = time.perf_counter() - started
    record: dict = {"seed": seed, "n_signal": int(n_signal), "sr_signal": int(y[in_sr].sum()),
                    "sr_s_over_b": float(y[in_sr].sum() / (1 - y[in_sr]).sum()), "time_density_s": t_density}
    curves = {}
    record["max_sic_true_ratio"], curves["true likelihood ratio"] = _max_sic(model.log_likelihood_ratio(m_t, x_t), y_t)
    methods = {
        "cathode": lambda: cathode(x[~in_sr], m[~in_sr], x[in_sr], m[in_sr], SR, background, classifier=classifier,
                                   folds=s.folds, device=s.device, progress=False, seed=seed),
        "lacathode": lambda: lacathode(x[~in_sr], m[~in_sr], x[in_sr], m[in_sr], _one_flow(background), classifier=classifier,
                                       folds=s.folds, device=s.device, progress=False, seed=seed),
        "anode": lambda: anode(x[~in_sr], m[~in_sr], x[in_sr], m[in_sr], background, density, s.device, progress=False),
        "cwola": lambda: cwola(x[~in_sr], x[in_sr], classifier, s.folds, s.device, progress=False),
        "idealized": lambda: idealized(x[in_sr], model.sample_background_features(sr_events(model, 4 * int(in_sr.sum()), False, rng)[0], rng),
                                       classifier, s.folds, s.device, progress=False),
        "supervised": lambda: supervised(sr_events(model, s.test_signal, True, rng)[1], sr_events(model, s.test_background, False, rng)[1],
                                         x[in_sr], classifier, s.device),
    }
    for name, run in methods.items():
        t0 = time.perf_counter()
        scores = run()
        if name in HUNTED:
            record[f"bump_hunt_{name}"] = _leakage(m, x, y, in_sr, scores)
        record[f"max_sic_{name}"], curves[name] = _max_sic(scores(x_t, m_t), y_t)
        record[f"time_{name}_s"] = time.perf_counter() - t0
        record[f"ratio_{name}"] = record[f"max_sic_{name}"] / record["max_sic_true_ratio"]
        logger.info("seed %d %s: max SIC %.2f (true ratio %.2f)", seed, name, record[f"max_sic_{name}"], record["max_sic_true_ratio"])
    flow_samples = background.sample(m_tb, seed=seed)
    record["two_sample_auc_true_background"] = two_sample_auc(flow_samples, x_tb, classifier, s.device, seed)
    record["curves"] = {k: {"signal_efficiency": c.signal_efficiency[:: max(1, len(c.sic) // 300)].tolist(),
                            "sic": c.sic[:: max(1, len(c.sic) // 300)].tolist()} for k, c in curves.items()}
    return record


def _leakage(m: np.ndarray, x: np.ndarray, y: np.ndarray, in_sr: np.ndarray, scores) -> list[dict]:
    """The bump hunt on the data after cuts on ``scores``, against the truth: signal that leaks into
    the sidebands raises the sideband fit and so the predicted SR background (a bias), which the
    labels measure as predicted − true background in the SR."""
    score = scores.of_events(x, m, in_sr)
    fit_range = default_fit_range(m, SR)
    in_range = (m >= fit_range[0]) & (m <= fit_range[1])
    records = []
    for keep in (0.2, 0.05, 0.01):
        threshold = float(np.quantile(score[in_sr], 1 - keep))
        passed = score > threshold
        try:
            hunt = bump_hunt(m, score, SR, fit_range, threshold=threshold)
        except ValueError as err:
            records.append({"sr_efficiency": keep, "error": str(err)})
            continue
        true_background = int((passed & in_sr & (y == 0)).sum())
        records.append({"sr_efficiency": keep, "significance": hunt.significance, "observed": hunt.observed,
                        "predicted_background": hunt.expected, "predicted_error": hunt.expected_error,
                        "true_background": true_background, "sr_signal_passing": int((passed & in_sr & (y == 1)).sum()),
                        "sideband_signal_passing": int((passed & ~in_sr & in_range & (y == 1)).sum()),
                        "bias_in_errors": (hunt.expected - true_background) / max(hunt.expected_error, 1e-12)})
    return records


def null_seed(seed: int, s: Settings) -> dict:
    """Background only: per method of HUNTED, the bump hunt's significance and the sculpting
    test's p-value after cuts keeping 20 % and 5 % of the SR (keys ``<method>_significance_<keep>``,
    ``<method>_sculpting_p_<keep>``; the sculpting test runs on the fit range's sideband events)."""
    model = DijetModel()
    data = make_dataset(model, s.background, 0, 5000 + seed)
    m, x = data["mjj"], _features(data)
    in_sr = (m > SR[0]) & (m < SR[1])
    density = DensitySettings(**{**s.density.__dict__, "seed": seed})
    classifier = ClassifierSettings(**{**s.classifier.__dict__, "seed": seed})
    # with flow_folds > 1 every sideband event is scored by the method on a density that never saw it
    background = fit_background(x[~in_sr], m[~in_sr], density, s.flow_folds, s.device, progress=False)
    fit_range = default_fit_range(m, SR)
    edges = np.linspace(*fit_range, 21)
    record: dict = {"seed": seed}
    for name, method in (("cathode", cathode), ("lacathode", lacathode)):
        extra = {"sr": SR} if name == "cathode" else {}
        density_of_method = background if name == "cathode" else _one_flow(background)
        result = method(x[~in_sr], m[~in_sr], x[in_sr], m[in_sr], background=density_of_method, classifier=classifier,
                        folds=s.folds, device=s.device, progress=False, seed=seed, **extra)
        score = result.of_events(x, m, in_sr)
        for keep in (0.2, 0.05):
            threshold = float(np.quantile(score[in_sr], 1 - keep))
            record[f"{name}_sculpting_p_{keep:g}"] = sculpting(m[~in_sr], score[~in_sr] > threshold, edges)["p_value"]
            try:
                record[f"{name}_significance_{keep:g}"] = bump_hunt(m, score, SR, fit_range, threshold=threshold).significance
            except ValueError as err:  # e.g. a sculpting cut that empties a sideband: no prediction at all
                record[f"{name}_significance_{keep:g}"] = float("nan")
                record[f"{name}_error_{keep:g}"] = str(err)
        logger.info("null seed %d %s: Z = %.2f (20 %%), %.2f (5 %%)", seed, name, record[f"{name}_significance_0.2"],
                    record[f"{name}_significance_0.05"])
    return record


def lhco_run(index: int, s: Settings) -> dict:
    """Run ``index`` on the real arrays: seed index // len(s.inject) with s.inject[index % len(s.inject)]
    extra signal events. The classifier methods run again with each model of ``s.compare`` (keys
    ``max_sic_<method>_<model>``)."""
    seed, which = divmod(index, len(s.inject))
    inject, window = s.inject[which], s.window
    files = {k: np.load(LHCO / f"innerdata_{k}.npy") for k in ("train", "val", "test", "extrasig_train")}
    data = np.r_[files["train"], files["val"], files["extrasig_train"][:inject]]
    m, x, y = data[:, 0], data[:, 1:5], data[:, 5]
    inside = (m > window[0]) & (m < window[1])
    test = files["test"][(files["test"][:, 0] > window[0]) & (files["test"][:, 0] < window[1])]
    x_t, m_t, y_t = test[:, 1:5], test[:, 0], test[:, 5]
    truth = y_t == 0
    record = {"seed": seed, "inject": inject, "window": list(window), "window_events": int(inside.sum()),
              "window_signal": int(y[inside].sum()), "window_s_over_b": float(y[inside].sum() / (1 - y[inside]).sum()),
              "test_background": int(truth.sum()), "test_signal": int((~truth).sum())}
    density = DensitySettings(**{**s.density.__dict__, "seed": seed})
    classifier = dataclasses.replace(s.classifier, seed=seed)
    background = ConditionalDensity.fit(x[~inside], m[~inside], density, s.device, progress=False)
    record["two_sample_auc_true_background"] = two_sample_auc(background.sample(m_t[truth], seed=seed), x_t[truth],
                                                              classifier, s.device, seed)
    logger.info("LHCO seed %d inject %d: two-sample AUC of flow samples vs true background %.4f", seed, inject,
                record["two_sample_auc_true_background"])
    record["max_sic_anode"] = roc(anode(x[~inside], m[~inside], x[inside], m[inside], background, density, s.device,
                                        progress=False)(x_t, m_t), y_t).max_sic
    logger.info("LHCO seed %d inject %d anode: max SIC %.2f", seed, inject, record["max_sic_anode"])
    for model in dict.fromkeys([s.classifier.model, *s.compare]):  # every classifier model on the same flow
        classifier = dataclasses.replace(s.classifier, model=model, seed=seed)
        for name, run in {
            "cathode": lambda: cathode(x[~inside], m[~inside], x[inside], m[inside], window, background, classifier=classifier,
                                       folds=s.folds, device=s.device, progress=False, seed=seed)(x_t, m_t),
            "lacathode": lambda: lacathode(x[~inside], m[~inside], x[inside], m[inside], _one_flow(background),
                                           classifier=classifier, folds=s.folds, device=s.device, progress=False,
                                           seed=seed)(x_t, m_t),
            "cwola": lambda: cwola(x[~inside], x[inside], classifier, s.folds, s.device, progress=False)(x_t, m_t),
            "idealized": lambda: _idealized_on_test(x[inside], x_t, m_t, truth, classifier, s.folds, s.device, seed),
        }.items():
            key = f"max_sic_{name}" if model == s.classifier.model else f"max_sic_{name}_{model}"
            record[key] = roc(run(), y_t).max_sic
            logger.info("LHCO seed %d inject %d %s (%s classifiers): max SIC %.2f", seed, inject, name, model, record[key])
    return record


def _idealized_on_test(x_sr: np.ndarray, x_test: np.ndarray, m_test: np.ndarray, truth: np.ndarray,
                       classifier: ClassifierSettings, folds: int, device: str, seed: int) -> np.ndarray:
    """Idealized-detector scores of the test events, whose background (``truth``) is also the
    detector's true background: test events of fold k are scored by classifiers of the SR data
    against the test background outside fold k, so no event is scored by a classifier that saw it."""
    fold = np.random.default_rng(seed).permutation(len(x_test)) % folds
    scores = np.zeros(len(x_test))
    for k in range(folds):
        scorer = idealized(x_sr, x_test[truth & (fold != k)], classifier, folds, device, progress=False)
        scores[fold == k] = scorer(x_test[fold == k], m_test[fold == k])
    return scores


def _cached(function, seed: int, s: Settings, records: Path | None) -> dict:
    """function(seed, s), kept as ``records/<function>-<seed>.json``: an interrupted benchmark
    re-run with the same settings and ``--out`` redoes only the seeds it had not finished."""
    path = records / f"{function.__name__}-{seed}.json" if records is not None else None
    signature = json.loads(json.dumps(dataclasses.asdict(s), default=str))
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == signature:
            logger.info("%s %d: loaded from %s", function.__name__, seed, path)
            return saved["record"]
    record = function(seed, s)
    if path is not None:
        write_json(path, {"settings": signature, "record": record})
    return record


def _in_worker(function, seed: int, s: Settings, records: Path | None) -> dict:
    from threadpoolctl import threadpool_limits  # scikit-learn's OpenMP threads (boosted trees)

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with threadpool_limits(1):
        return _cached(function, seed, s, records)


def _map(function, seeds, s: Settings, jobs: int, records: Path | None = None) -> list[dict]:
    """function(seed, s) for every seed (cached in ``records``), ``jobs`` processes at a time
    (results in seed order)."""
    seeds = list(seeds)
    if jobs <= 1 or len(seeds) <= 1:
        return [_cached(function, seed, s, records) for seed in seeds]
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(functools.partial(_in_worker, function), seeds, [s] * len(seeds), [records] * len(seeds)))


def _spread(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "p16": float(np.quantile(v, 0.16)), "p84": float(np.quantile(v, 0.84)), "n": len(v)}


def summarise(synthetic: list[dict], null: list[dict], real: list[dict]) -> tuple[dict, list[dict]]:
    summary: dict = {}
    targets: list[dict] = []
    for name in HUNTED:
        hunts = [h for r in synthetic for h in r.get(f"bump_hunt_{name}", []) if "error" not in h]
        for keep in (0.2, 0.05, 0.01):
            rows = [h for h in hunts if h["sr_efficiency"] == keep]
            if rows:
                summary[f"signal_leak_{name}_{keep:g}"] = {
                    "significance": _spread([h["significance"] for h in rows]),
                    "bias_in_errors": _spread([h["bias_in_errors"] for h in rows]),
                    "sideband_signal_passing": _spread([h["sideband_signal_passing"] for h in rows]),
                    "sr_signal_passing": _spread([h["sr_signal_passing"] for h in rows])}

    def target(name, value, goal, passed):
        targets.append({"target": name, "value": value, "goal": goal, "pass": bool(passed)})

    if synthetic:
        for key in ("max_sic_true_ratio", *(f"{kind}_{name}" for kind in ("max_sic", "ratio") for name in COMPARED),
                    "two_sample_auc_true_background"):
            summary[key] = _spread([r[key] for r in synthetic])
        target("CATHODE max SIC / true-ratio max SIC (median)", summary["ratio_cathode"]["median"], "≥ 0.7",
               summary["ratio_cathode"]["median"] >= 0.7)
        target("idealized max SIC / true-ratio max SIC (median)", summary["ratio_idealized"]["median"], "≥ 0.8",
               summary["ratio_idealized"]["median"] >= 0.8)
        target("two-sample AUC flow vs true SR background (median)", summary["two_sample_auc_true_background"]["median"],
               "≤ 0.52", summary["two_sample_auc_true_background"]["median"] <= 0.52)
    for name in HUNTED if null else ():
        for keep in ("0.2", "0.05"):
            z = np.array([r[f"{name}_significance_{keep}"] for r in null], dtype=float)
            failed = int((~np.isfinite(z)).sum())  # no fit, e.g. a sideband emptied by the cut
            z = z[np.isfinite(z)] if failed < len(z) else np.zeros(0)
            p = np.array([r[f"{name}_sculpting_p_{keep}"] for r in null], dtype=float)
            null_summary = summary[f"null_{name}_{keep}"] = {
                "mean": float(z.mean()) if len(z) else None, "std": float(z.std(ddof=1)) if len(z) > 1 else None,
                "max": float(z.max()) if len(z) else None, "n": int(len(z)), "failed_fits": failed,
                "sculpting_p_below_0.05": float((p < 0.05).mean()),
                "sculpting_p_uniformity_ks": float(stats.kstest(p, "uniform").pvalue)}
            target(f"null {name} significance at {keep} of the SR kept: |mean| ≤ 3/√n, std in [0.75, 1.25], max < 5, no failed fit",
                   [null_summary["mean"], null_summary["std"], null_summary["max"]], "N(0,1)",
                   not failed and len(z) > 1 and abs(z.mean()) <= 3 / np.sqrt(len(z)) and 0.75 <= z.std(ddof=1) <= 1.25
                   and z.max() < 5)
            target(f"null {name} cut efficiency flat in m_jj at {keep}: sculpting p-values uniform (KS p)",
                   null_summary["sculpting_p_uniformity_ks"], "≥ 0.01", null_summary["sculpting_p_uniformity_ks"] >= 0.01)
    for inject, runs in _by_injection(real).items():
        lhco = summary[f"lhco_{inject}"] = {
            key: _spread([r[key] for r in runs])
            for key in ("window_s_over_b", "two_sample_auc_true_background", *(k for k in runs[0] if k.startswith("max_sic_")))}
        lhco["cathode_beats_cwola"] = int(sum(r["max_sic_cathode"] > r["max_sic_cwola"] for r in runs))
        s_over_b, cathode_sic, cwola_sic = (lhco[k]["median"] for k in ("window_s_over_b", "max_sic_cathode", "max_sic_cwola"))
        if inject >= 1000:
            target(f"LHCO window S/B {s_over_b:.3f}: CATHODE max SIC (median, {_seeds(runs)})", cathode_sic, "> 7.2",
                   cathode_sic > 7.2)
        else:
            target(f"LHCO window S/B {s_over_b:.3f}: CATHODE vs CWoLa max SIC (medians, {_seeds(runs)})",
                   [cathode_sic, cwola_sic], "CATHODE > CWoLa", cathode_sic > cwola_sic)
    return summary, targets


def _seeds(runs: list) -> str:
    return f"{len(runs)} seed{'s' if len(runs) != 1 else ''}"


def _by_injection(real: list[dict]) -> dict[int, list[dict]]:
    """The LHCO runs grouped by the signal injected (in the order of first appearance)."""
    groups: dict[int, list[dict]] = {}
    for r in real:
        groups.setdefault(r["inject"], []).append(r)
    return groups


def plot(path: Path, synthetic: list[dict], null: list[dict], real: list[dict], primary: str = "") -> None:
    """One panel per thing measured: the synthetic SIC curves and max SIC per method, the null
    significances (20 % and 5 % kept) and sculpting p-values, the LHCO max SIC per method (of the
    ``primary`` classifier model, and hatched of each compared one)."""
    drawers = []
    if synthetic:
        names = [*COMPARED, "true_ratio"]
        colour = {name: f"C{i}" for i, name in enumerate(names)}  # one colour per method in both panels

        def curves(ax):
            for name, curve in synthetic[0]["curves"].items():
                ax.plot(curve["signal_efficiency"], curve["sic"], label=name,
                        color=colour.get(name.replace(" likelihood ", "_"), None))
            ax.set(xlabel="signal efficiency", ylabel="SIC", title=f"synthetic, seed {synthetic[0]['seed']}")
            ax.legend(fontsize=8)

        def max_sics(ax):
            for i, name in enumerate(names):
                values = [r[f"max_sic_{name}"] for r in synthetic]
                ax.scatter([i] * len(values), values, s=12, color=colour[name])
            ax.set_xticks(range(len(names)), names, rotation=30)
            ax.set(ylabel="max SIC", title=f"synthetic, {len(synthetic)} seeds")

        drawers += [curves, max_sics]
    if null:
        grid = np.linspace(-4, 4, 200)

        def significances(ax, keep):
            for name in HUNTED:
                z = np.array([r[f"{name}_significance_{keep}"] for r in null], dtype=float)
                ax.hist(np.clip(z[np.isfinite(z)], -4, 4), bins=16, range=(-4, 4), density=True, histtype="step",
                        label=f"{name}, {100 * float(keep):g} % kept")
            ax.plot(grid, np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi), label="N(0, 1)")
            ax.set(xlabel="local significance, background only", title=f"{len(null)} seeds")
            ax.legend(fontsize=8)

        def sculpting_p(ax):
            for name in HUNTED:
                p = np.array([r[f"{name}_sculpting_p_0.2"] for r in null], dtype=float)
                ax.hist(p, bins=10, range=(0, 1), histtype="step", label=f"{name}, 20 % kept")
            ax.axhline(len(null) / 10, color="grey", lw=0.8, label="uniform (no sculpting)")
            ax.set(xlabel="sculpting test p-value (sidebands)", ylabel="seeds", title="cut efficiency flat in m_jj?")
            ax.legend(fontsize=8)

        drawers += [functools.partial(significances, keep="0.2"), functools.partial(significances, keep="0.05"), sculpting_p]
    if real:
        def lhco_bars(ax):
            models = [""] + sorted({key.rsplit("_", 1)[1] for r in real for key in r
                                    if key.startswith("max_sic_") and key.rsplit("_", 1)[1] in CLASSIFIER_MODELS})
            groups = _by_injection(real)
            width = 0.8 / (len(groups) * len(models))
            for i, runs in enumerate(groups.values()):
                for j, model in enumerate(models):
                    suffix = f"_{model}" if model else ""
                    values = np.array([[r.get(f"max_sic_{k}{suffix}", np.nan) for k in LHCO_METHODS] for r in runs])
                    median = np.median(values, axis=0)
                    spread = np.abs(np.quantile(values, [0.16, 0.84], axis=0) - median)
                    ax.bar(np.arange(len(LHCO_METHODS)) + (i * len(models) + j) * width, median, width, yerr=spread,
                           capsize=2, hatch="//" if model else None,
                           label=f"S/B {np.median([r['window_s_over_b'] for r in runs]):.3f}, {model or primary} classifiers")
            ax.set_xticks(np.arange(len(LHCO_METHODS)) + 0.4 - width / 2, LHCO_METHODS)
            if any(r["inject"] >= 1000 for r in real):
                ax.axhline(7.2, color="0.4", linestyle="--", linewidth=1, label="CATHODE target at S/B ≈ 2.7 %")
            ax.set(ylabel="max SIC (median, 16–84 %)", title=f"LHCO R&D arrays, pseudo-window, {_seeds(next(iter(groups.values())))}")
            ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend
            ax.legend(fontsize=8, loc="upper left")

        drawers.append(lhco_bars)
    plt = pyplot()
    fig, axes = plt.subplots(1, max(1, len(drawers)), figsize=(5 * max(1, len(drawers)), 4.2), squeeze=False)
    for ax, draw in zip(axes[0], drawers):
        draw(ax)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="synthetic seeds (0: skip)")
    p.add_argument("--null-seeds", type=int, default=0, help="background-only seeds for the bump hunt (0: skip)")
    p.add_argument("--lhco", action="store_true", help="also run on the real LHCO SR arrays")
    p.add_argument("--inject", type=int, nargs="+", default=list(Settings.inject),
                   help="extra LHCO signal injected (default 1500 300)")
    p.add_argument("--lhco-seeds", type=int, default=3, help="LHCO: seeds per injection")
    p.add_argument("--window", type=float, nargs=2, default=list(Settings.window))
    p.add_argument("--background", type=int, default=1_000_000)
    p.add_argument("--s-over-b", type=float, default=0.006)
    p.add_argument("--test-background", type=int, default=40_000)
    p.add_argument("--test-signal", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=100, help="density epochs (early stopping)")
    p.add_argument("--architecture", default=DensitySettings.architecture, help="the background flow: maf, maf-spline or nsf")
    p.add_argument("--transforms", type=int, default=8)
    p.add_argument("--trend-degree", type=int, default=DensitySettings.trend_degree,
                   help="polynomial trend in m taken out of the features before the flow (0: none)")
    p.add_argument("--scale-degree", type=int, default=DensitySettings.scale_degree,
                   help="polynomial trend in m of the features' log-width taken out before the flow (0: none)")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--lr-schedule", default=DensitySettings.lr_schedule, choices=LR_SCHEDULES,
                   help="the flows' learning-rate schedule (nfapps.training.fit)")
    p.add_argument("--flow-ensemble", type=int, default=1,
                   help="each background density an equal mixture of this many flows from different seeds (CATHODE, "
                        "ANODE and the two-sample AUC; LaCATHODE takes the first flow)")
    p.add_argument("--classifier", default="nn", choices=CLASSIFIER_MODELS, help="classifier model: nn or trees")
    p.add_argument("--trees", type=int, default=ClassifierSettings.trees, help="boosted-tree models per classifier (trees)")
    p.add_argument("--compare-classifiers", nargs="+", default=[], choices=CLASSIFIER_MODELS,
                   help="on the LHCO arrays, also run the classifier methods with these models (same flow)")
    p.add_argument("--classifier-epochs", type=int, default=60)
    p.add_argument("--top-epochs", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--flow-folds", type=int, default=Settings.flow_folds,
                   help="null study: background densities cross-fitted on this many sideband folds (1: one flow)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process with one thread")
    p.add_argument("--quick", action="store_true", help="a smoke run: small everything")
    p.add_argument("--out", default="applications/benchmarks/results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.null_seeds, args.background = min(args.seeds, 1), min(args.null_seeds, 2), 60_000
        args.lhco_seeds = min(args.lhco_seeds, 1)
        args.test_background, args.test_signal, args.epochs, args.classifier_epochs = 4000, 2000, 5, 4
        args.transforms, args.hidden, args.top_epochs, args.folds, args.s_over_b = 3, [32, 32], 2, 2, 0.05
    s = Settings(args.background, args.s_over_b, args.test_background, args.test_signal,
                 DensitySettings(architecture=args.architecture, epochs=args.epochs, transforms=args.transforms,
                                 hidden=tuple(args.hidden), trend_degree=args.trend_degree,
                                 scale_degree=args.scale_degree, ensemble=args.flow_ensemble,
                                 lr_schedule=args.lr_schedule),
                 ClassifierSettings(model=args.classifier, epochs=args.classifier_epochs, top_epochs=args.top_epochs,
                                    trees=args.trees),
                 args.folds, args.device, args.flow_folds, tuple(args.inject), tuple(args.window),
                 tuple(args.compare_classifiers))
    started = time.perf_counter()
    records = Path(args.out) / "records"
    records.mkdir(parents=True, exist_ok=True)
    synthetic = _map(synthetic_seed, range(args.seeds), s, args.jobs, records)
    null = _map(null_seed, range(args.null_seeds), s, args.jobs, records)
    real = []
    if args.lhco:
        if not LHCO.is_dir():
            logger.warning("no LHCO arrays at %s: skipping the real-data part", LHCO)
        else:
            real = _map(lhco_run, range(args.lhco_seeds * len(args.inject)), s, args.jobs, records)
    summary, targets = summarise(synthetic, null, real)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["applications/benchmarks/anomaly.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                        "threads": torch.get_num_threads()},
        "synthetic": [{k: v for k, v in r.items() if k != "curves"} for r in synthetic], "null": null, "lhco": real,
        "summary": summary, "targets": targets, "wall_time_s": time.perf_counter() - started,
    }
    write_json(out / "anomaly.json", result)
    plot(out / "anomaly.png", synthetic, null, real, args.classifier)
    print(f"\n{'target':<75} {'value':>22} {'goal':>16}  result")
    for t in targets:
        value = t["value"] if not isinstance(t["value"], list) else "/".join(f"{v:.3g}" for v in t["value"] if v is not None)
        print(f"{t['target']:<75} {value if isinstance(value, str) else f'{value:.3g}':>22} {t['goal']:>16}  {'PASS' if t['pass'] else 'FAIL'}")
    if synthetic:
        print("\nsynthetic max SIC (median [16 %, 84 %]) and ratio to the true likelihood ratio's:")
        for name in ("true_ratio", "supervised", "idealized", "cathode", "lacathode", "anode", "cwola"):
            sic = summary[f"max_sic_{name}"]
            ratio = summary.get(f"ratio_{name}")
            print(f"  {name:<12} {sic['median']:7.2f} [{sic['p16']:.2f}, {sic['p84']:.2f}]"
                  + (f"   ratio {ratio['median']:.2f}" if ratio else ""))
    for name, keep in ((name, keep) for name in HUNTED for keep in (0.2, 0.05, 0.01)):
        leak = summary.get(f"signal_leak_{name}_{keep:g}")
        if leak:
            print(f"{name} bump hunt, {100 * keep:g} % of the SR kept: Z {leak['significance']['median']:.2f}, signal passing in SR "
                  f"{leak['sr_signal_passing']['median']:.0f} / in sidebands {leak['sideband_signal_passing']['median']:.0f}, "
                  f"SR background prediction − truth = {leak['bias_in_errors']['median']:+.2f} σ (median)")
    for inject, runs in _by_injection(real).items():
        lhco = summary[f"lhco_{inject}"]
        print(f"LHCO window S/B {lhco['window_s_over_b']['median']:.4f} (inject {inject}, {_seeds(runs)}; two-sample AUC "
              f"of flow samples vs true background {lhco['two_sample_auc_true_background']['median']:.3f}): max SIC median "
              "[16 %, 84 %] " + ", ".join(f"{k} {lhco[f'max_sic_{k}']['median']:.2f} [{lhco[f'max_sic_{k}']['p16']:.2f}, "
                                         f"{lhco[f'max_sic_{k}']['p84']:.2f}]" for k in LHCO_METHODS)
              + f"; CATHODE > CWoLa in {lhco['cathode_beats_cwola']} of {len(runs)} seeds")
        for r in runs:
            print(f"  seed {r['seed']}: " + ", ".join(f"{k} {r[f'max_sic_{k}']:.2f}" for k in LHCO_METHODS))
        for model in args.compare_classifiers:
            if model != args.classifier:
                print(f"  with {model} classifiers (median): " + ", ".join(
                    f"{k} {lhco[f'max_sic_{k}_{model}']['median']:.2f}" for k in LHCO_METHODS if f"max_sic_{k}_{model}" in lhco))
    print(f"wrote {out / 'anomaly.json'} and {out / 'anomaly.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
