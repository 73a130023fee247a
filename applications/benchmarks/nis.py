"""Neural importance sampling benchmark: nfapps against VEGAS+ at an equal budget of integrand calls.

Every integrand of the suite (``nfapps.integration.INTEGRANDS``, or ``--integrands``) is
integrated by both methods with ``--calls`` integrand evaluations in all, training counted:

=======  ==============================================================================
method   how the budget is spent
=======  ==============================================================================
nfapps   ``integrate(f, d, calls=N, training_fraction=τ, …)`` with the default samplers: of
         the τN training calls a fifth adapt a VEGAS grid (25 iterations), the rest train a
         bounded rational-quadratic spline flow in batches (tempered while its weights are
         degenerate; stopped early if it still varies 4× more than the grid a quarter of the way in);
         pilots (an eighth of the rest) choose the flow, the grid or uniform points, which
         draws the estimate from the remaining calls, stratified, fresh
VEGAS+   ``vegas.Integrator([[0, 1]] * d)`` (defaults: α = 0.5, β = 0.75) adapts for
         ``--vegas-iterations`` iterations of τN / iterations calls; then one final iteration
         with ``adapt=False`` spends what is left of N. The final either keeps the adapted
         stratification ("keep": VEGAS+'s per-hypercube allocation survives) or lets vegas
         choose finer strata for the larger final neval ("restratify": the allocation restarts
         uniform). Neither wins everywhere (restratify on smooth unimodal integrands, keep on
         camel and annulus), so by default ("best") both finals run from the same adapted
         grid and VEGAS is credited with the one of smaller *reported* error: a deliberate
         advantage to the reference, whose second final is not counted in its budget
=======  ==============================================================================

Calls are counted by a wrapper around the integrand (vegas's one-point shape probe included);
VEGAS+ is given the same budget and spends slightly less (vegas keeps each iteration at or below
its neval). The integrand is the same torch function for both, batch-vectorised for vegas with
``vegas.lbatchintegrand`` on float64 NumPy arrays.

Per integrand and method: the estimate, the true relative error (Î − I)/|I|, the reported
error σ_Î, the pull (Î − I)/σ_Î, the relative std per event σ_Î·√N/|Î| with N the estimate's
calls (both methods stratify their estimate — nfapps in the flow's base space, VEGAS+ in its
grid's — so for both it comes from the stratified error), the variance ratio
VEGAS/nfapps (the square of the ratio of relative stds per event: how many times more events
VEGAS+ needs for the same error), Kish's effective sample size, three unweighting efficiencies —
classic ⟨|w|⟩/max|w|, bootstrap (median maximum over replicas of 10⁴ weights, nfapps' default) and
truncated (cap leaving δ = 1e-3 of the weight above it) — and the wall time. VEGAS+'s per-event
weights are those of its own final estimate, w = f·wgt·N: the final's points and weights are
replayed bit-identically from ``integ.random_batch()`` with the same random stream (checked:
Σ f·wgt reproduces vegas's estimate), so no extra calls are spent on them. VEGAS+'s wall time
is its adaptation plus the credited final. With "best", VEGAS+'s pulls are those of the final
with the smaller reported error, which favours underestimated errors: pass ``--vegas-final keep``
or ``restratify`` to study VEGAS+'s own error bars.

The sampler cost is the time per point of drawing base points and pushing them, with their
densities, through the default sampler (``from_base_chunked``, 16 chunks) with its defensive
companion (:mod:`nfapps.integration.companion`: K = 8 Gaussians drawing 10 % of the points,
whose flow density then needs the flow's other direction; the flow alone is timed too) at
d = 2, 4, 8, 16 on the CPU (no gradient; the best of 20 draws after a warm-up, the mixture and
the flow alone drawing in turn, so that a slow spell of a shared machine — which moves the
median by 10–30 % within minutes here — hits both and the best is the machine's own speed; the
median is kept too), at the chunk size the estimate's draws go through the flow
(``SAMPLER_CHUNK``) and at the training batch.

``--pulls K`` repeats everything over seeds seed, …, seed + K − 1 and summarises the pulls of
each method per integrand and pooled over integrands: mean, std, 1σ and 2σ coverage, max |pull|.
For honest errors the pooled pulls are standard normal; over K seeds the per-integrand mean
scatters by 1/√K and the 1σ coverage by √(0.68·0.32/K) (±0.1 and ±4.7 % at K = 100), so the
pull targets are judged on the pool. The table and chart show the first seed.

Usage::

    python applications/benchmarks/nis.py --threads 2 --out results/nis         # the full suite, 1e6 calls
    # on a shared machine pass --threads 1: oversubscribed intra-op threads slow training many-fold
    python applications/benchmarks/nis.py --integrands camel-4 circles --calls 1e5
    python applications/benchmarks/nis.py --pulls 100 --integrands gaussian-2 camel-4
    python applications/benchmarks/nis.py --quick --out /tmp/nis                 # smoke run

Writes ``nis.json`` (settings, environment, every record, pulls, targets, the table) and
``nis.png`` (relative std per event for both methods, log scale; with ``--pulls``, the pull
histograms) into ``--out``. Each run is journalled to ``--out``/nis-runs.jsonl as it finishes: an
interrupted benchmark, started again with the same options, does only the runs it lacks (the
journal is removed once nis.json holds them). ``vegas`` is optional (the ``bench`` extra); without it (or with
``--no-vegas``) only nfapps runs and the comparisons are reported as not measured.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfapps.allocator import keep_freed_memory  # noqa: E402
from nfapps.atomic import write_bytes_atomic  # noqa: E402
from nfapps.integration import INTEGRANDS, Integrand  # noqa: E402
from nfapps.integration.companion import COMPONENTS, SHARE, DefensiveMixture, GaussianCompanion  # noqa: E402
from nfapps.integration.estimate import (  # noqa: E402
    Tally,
    bootstrap_unweighting_efficiency,
    truncated_unweighting_efficiency,
    unweighting_efficiency,
)
from nfapps.integration.integrator import SAMPLER_CHUNK, Integrator, integrate, integrate_defaults  # noqa: E402
from nfapps.outputs import pyplot, save_figure  # noqa: E402

NFAPPS_DEFAULTS = integrate_defaults()  # one source of defaults

log = logging.getLogger("nfapps.bench.nis")

METHODS = ("nfapps", "vegas")
QUICK_INTEGRANDS = ("gaussian-2", "camel-2")
OVERWEIGHT = 1e-3  # δ of the truncated unweighting efficiency (as in IntegrationResult)
VEGAS_FINALS = ("keep", "restratify")

# --- the issue's targets (all calls counted) ---------------------------------------------------
#: The budget the issue's variance and efficiency targets are set at (a pull study runs at less:
#: there they are reported, not judged).
TARGET_CALLS = 1_000_000
#: Relative std per event nfapps must reach on the correlated / multi-modal integrands.
TARGET_RELATIVE_STD = {"camel-4": 0.08, "camel-8": 0.3, "camel-16": 1.5, "circles": 0.07, "annulus": 0.04}
#: …with at least this much less variance than VEGAS+ at d ≥ VARIANCE_RATIO_MIN_DIM.
VARIANCE_RATIO_MIN, VARIANCE_RATIO_MIN_DIM = 10.0, 8
#: Separable / flat integrands: nfapps' relative std per event at most this times VEGAS+'s.
SEPARABLE_RELATIVE_STD_FACTOR = 2.0
#: Unweighting efficiency at least this times VEGAS+'s on camel d ≥ 4 and circles.
EFFICIENCY_RATIO_MIN = 2.0
#: Pulls over ≥ PULL_MIN_SEEDS seeds: |mean| < 0.1, std in [0.9, 1.1], 1σ coverage in [63, 73] %,
#: no |pull| > 5.
PULL_MIN_SEEDS = 100
PULL_MEAN_MAX, PULL_STD_RANGE, PULL_COVERAGE_RANGE, PULL_MAX = 0.1, (0.9, 1.1), (0.63, 0.73), 5.0
#: Sampler cost on the CPU, sample + density, per point.
SAMPLER_COST_MAX_US, SAMPLER_DIMS = 5.0, (2, 4, 8, 16)
SAMPLER_BATCHES = (SAMPLER_CHUNK, NFAPPS_DEFAULTS["batch"])  # as the estimate draws (in chunks) and as training does

#: Fields every method's record carries (the test checks them).
RECORD_FIELDS = (
    "value", "error", "exact", "pull", "true_relative_error", "reported_relative_error", "relative_std",
    "effective_sample_size", "unweighting_efficiency", "unweighting_efficiency_bootstrap",
    "bootstrap_replica_size", "unweighting_efficiency_truncated", "calls_training", "calls_estimate",
    "calls_total", "wall_s",
)
EFFICIENCIES = ("unweighting_efficiency", "unweighting_efficiency_bootstrap", "unweighting_efficiency_truncated")


@dataclass(frozen=True)
class Settings:
    calls: int = 1_000_000
    training_fraction: float = 0.5
    batch: int = NFAPPS_DEFAULTS["batch"]  # nfapps training batch
    loss: str = NFAPPS_DEFAULTS["loss"]
    reuse: int = NFAPPS_DEFAULTS["reuse"]
    lr: float = NFAPPS_DEFAULTS["lr"]
    vegas_iterations: int = 10
    vegas_final: str = "best"
    replica_size: int = 10_000  # Integrator.integrate's default, which integrate() does not expose
    seed: int = 0
    pulls: int = 0
    device: str = "auto"
    threads: int = 1
    sampler_batches: tuple[int, ...] = SAMPLER_BATCHES
    sampler_dims: tuple[int, ...] = SAMPLER_DIMS
    repeats: int = 20


def group(f: Integrand) -> str:
    """The issue's families: "correlated" (camel, circles, annulus), "separable/flat" (product
    integrands and the additive polynomial) and "other" (the loop integrals)."""
    if "multimodal" in f.tags or "discontinuous" in f.tags:
        return "correlated"
    if f.separable or "smooth" in f.tags:
        return "separable/flat"
    return "other"


def _relative(value: float, exact: float, error: float) -> dict[str, float]:
    return {
        "exact": exact,
        "pull": (value - exact) / error if error > 0 else math.nan,
        "true_relative_error": (value - exact) / abs(exact),
        "reported_relative_error": error / abs(value) if value else math.inf,
    }


# --- nfapps ------------------------------------------------------------------------------------
def run_nfapps(f: Integrand, s: Settings, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    r = integrate(
        f, f.dim, calls=s.calls, training_fraction=s.training_fraction, batch=s.batch, loss=s.loss,
        reuse=s.reuse, lr=s.lr, device=s.device, seed=seed, progress=False, exact=f.exact,
    )
    wall = time.perf_counter() - start
    record = r.to_dict()
    record.pop("tally", None)
    record.update(_relative(r.value, f.exact, r.error))
    record.update(
        calls_total=r.calls_training + r.calls_pilot + r.calls_estimate, wall_s=wall,
        sampler_us_per_point=1e6 * r.time_sampler_s / (r.calls_pilot + r.calls_estimate),
    )
    return record


def _sampler_label(record: dict[str, Any]) -> str:
    """The sampler that drew an nfapps estimate, "flow+c" for the flow with its companion."""
    return record.get("sampler", "flow") + ("+c" if record.get("companion_share") else "")


def warm_up(s: Settings) -> None:
    """One tiny run, so that torch's one-off start-up costs are not charged to the first integrand."""
    f = INTEGRANDS["gaussian-2"]
    integrate(f, f.dim, calls=512, training_fraction=0.5, batch=128, device=s.device, seed=s.seed, progress=False)


# --- VEGAS+ ------------------------------------------------------------------------------------
class _CountingIntegrand:
    """The torch integrand on vegas's float64 NumPy batches; counts every call and, while
    ``recording``, keeps the values (to pair them with the replayed weights)."""

    def __init__(self, f: Integrand) -> None:
        import vegas

        self.f, self.calls, self.recording, self.values = f, 0, False, []

        @vegas.lbatchintegrand
        def fcn(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x)
            with torch.no_grad():
                fx = self.f(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()
            self.calls += x.shape[0]
            if self.recording:
                self.values.append(fx.copy())
            return fx

        self.fcn = fcn


def _vegas_final(integ: Any, counter: _CountingIntegrand, strategy: str, neval: int, seed: Sequence[int]) -> dict[str, Any]:
    """One final iteration (adapt=False) on a copy of the adapted integrator, then its weights
    replayed from the same random stream."""
    import vegas

    final = vegas.Integrator(integ)  # copies the map and the stratification; the original stays as adapted
    options: dict[str, Any] = {"nitn": 1, "neval": neval, "adapt": False,
                               "ran_array_generator": np.random.default_rng(seed).random}
    if strategy == "keep":
        options["nstrat"] = np.array(final.nstrat)
    counter.values, counter.recording = [], True
    before = counter.calls
    start = time.perf_counter()
    try:
        result = final(counter.fcn, **options)
    finally:
        counter.recording = False
    elapsed = time.perf_counter() - start
    calls = counter.calls - before
    n = int(final.last_neval)
    # replay: same generator state, adapt=False left the map and the allocation untouched
    final.set(ran_array_generator=np.random.default_rng(seed).random)
    wgt = np.concatenate([w for _, w in final.random_batch()])
    values = np.concatenate(counter.values)[-n:] if counter.values else np.empty(0)
    counter.values = []
    mean, sdev = float(result.mean), float(result.sdev)
    replay_ok = wgt.size == n == values.size and abs(float(values @ wgt) - mean) <= 1e-6 * sdev + 1e-12 * abs(mean)
    if not replay_ok:
        log.warning("vegas %s final: replayed weights do not reproduce the estimate; efficiencies unreliable", strategy)
    return {"strategy": strategy, "result": result, "mean": mean, "sdev": sdev, "n": n, "calls": calls,
            "time_s": elapsed, "weights": values * wgt * n if replay_ok else np.empty(0), "replay_ok": replay_ok,
            "nstrat": [int(k) for k in final.nstrat], "relative_std": sdev * math.sqrt(n) / abs(mean) if mean else math.inf}


def run_vegas(f: Integrand, s: Settings, seed: int) -> dict[str, Any]:
    import vegas

    counter = _CountingIntegrand(f)
    start = time.perf_counter()
    integ = vegas.Integrator([[0.0, 1.0]] * f.dim, ran_array_generator=np.random.default_rng([seed, 0]).random)
    neval_adapt = int(s.calls * s.training_fraction) // s.vegas_iterations
    if neval_adapt >= 2:
        integ(counter.fcn, nitn=s.vegas_iterations, neval=neval_adapt)
    calls_training = counter.calls
    time_adapt = time.perf_counter() - start
    neval_final = s.calls - calls_training - 1  # the final call's shape probe costs one point

    strategies = VEGAS_FINALS if s.vegas_final == "best" else (s.vegas_final,)
    finals = []
    for k, strategy in enumerate(strategies):
        try:
            finals.append(_vegas_final(integ, counter, strategy, neval_final, [seed, 1 + k]))
        except ValueError as err:  # "keep" needs neval ≥ 2 points per stratum
            log.warning("vegas %s final not possible for %s: %s", strategy, f.name, err)
    if not finals:
        raise ValueError(f"vegas: no final iteration possible for {f.name} with {neval_final} calls left; raise --calls")
    best = min(finals, key=lambda r: r["relative_std"])
    w = best["weights"]
    replica = int(min(s.replica_size, max(w.size, 1)))
    tally = Tally().add(w) if w.size else Tally()
    record = {
        "value": best["mean"], "error": best["sdev"], "relative_std": best["relative_std"],
        **_relative(best["mean"], f.exact, best["sdev"]),
        "effective_sample_size": tally.effective_sample_size if w.size else math.nan,
        "unweighting_efficiency": unweighting_efficiency(w) if w.size else math.nan,
        "unweighting_efficiency_bootstrap": bootstrap_unweighting_efficiency(w, replica, seed=seed) if w.size else math.nan,
        "bootstrap_replica_size": replica,
        "unweighting_efficiency_truncated": truncated_unweighting_efficiency(w, OVERWEIGHT) if w.size else math.nan,
        "calls_training": calls_training, "calls_estimate": best["n"],
        "calls_total": calls_training + best["calls"],  # the final's calls include its one-point shape probe
        "wall_s": time_adapt + best["time_s"],
        "time_adapt_s": time_adapt, "time_final_s": best["time_s"],
        "final_strategy": best["strategy"], "nstrat": best["nstrat"], "replay_ok": best["replay_ok"],
        "adapt_iterations": s.vegas_iterations if neval_adapt >= 2 else 0, "neval_adapt": neval_adapt,
        "finals": {r["strategy"]: {"value": r["mean"], "error": r["sdev"], "relative_std": r["relative_std"],
                                   "calls": r["calls"], "nstrat": r["nstrat"]} for r in finals},
    }
    return record


# --- sampler cost ------------------------------------------------------------------------------
def sampler_cost(s: Settings) -> list[dict[str, Any]]:
    """µs per point of drawing from the default sampler with its companion (and from the flow
    alone), on the CPU: the best of ``s.repeats`` draws of 16 chunks each, the two samplers
    drawing in turn (a shared machine's slow spells hit both alike, and the best of many draws
    is the machine's own speed)."""
    rows = []
    for dim in s.sampler_dims:
        flow = Integrator(lambda x: x[:, 0], dim, device="cpu", seed=s.seed).flow.eval()
        mixture = DefensiveMixture(flow, GaussianCompanion(dim, COMPONENTS), SHARE).eval()
        for n in s.sampler_batches:
            z = flow.base.sample(16 * n)
            times: dict[str, list[float]] = {"mixture": [], "flow": []}
            with torch.no_grad():
                for repeat in range(s.repeats + 1):  # the first round warms up
                    for name, sampler in (("mixture", mixture), ("flow", flow)):
                        started = time.perf_counter()
                        sampler.from_base_chunked(z, n)
                        if repeat:
                            times[name].append(1e6 * (time.perf_counter() - started) / (16 * n))
            rows.append({"dim": dim, "batch": n, "us_per_point": min(times["mixture"]),
                         "median_us_per_point": statistics.median(times["mixture"]),
                         "flow_alone_us_per_point": min(times["flow"]),
                         "flow_alone_median_us_per_point": statistics.median(times["flow"]), "companion_share": SHARE,
                         "repeats": s.repeats, "parameters": sum(p.numel() for p in flow.parameters())})
            log.info("sampler d=%-2d batch %-6d %.2f µs/point (median %.2f; flow alone %.2f)", dim, n,
                     rows[-1]["us_per_point"], rows[-1]["median_us_per_point"], rows[-1]["flow_alone_us_per_point"])
    return rows


# --- pulls and targets -------------------------------------------------------------------------
def pull_summary(pulls: Sequence[float]) -> dict[str, Any]:
    """Mean, std, 1σ and 2σ coverage and max |pull| of the finite pulls, and the p-value of the
    Kolmogorov–Smirnov test of the pulls against N(0, 1) (how often honest errors scatter at
    least this far from it)."""
    from scipy.stats import kstest

    p = np.asarray([x for x in pulls if math.isfinite(x)], dtype=np.float64)
    if not p.size:
        return {"n": 0}
    return {
        "n": int(p.size), "mean": float(p.mean()), "std": float(p.std(ddof=1)) if p.size > 1 else math.nan,
        "coverage_1sigma": float(np.mean(np.abs(p) < 1)), "coverage_2sigma": float(np.mean(np.abs(p) < 2)),
        "max_abs": float(np.abs(p).max()), "ks_pvalue": float(kstest(p, "norm").pvalue),
    }


#: What the JSON keeps of each method's result on every seed of a pull study (the first seed's
#: results are kept whole under "integrands"): enough to re-summarise and merge the pulls.
PER_SEED_FIELDS = ("value", "error", "pull", "relative_std", "pareto_k", "sampler")


def compact_run(run: dict[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """A pull-study record cut down to :data:`PER_SEED_FIELDS` per method."""
    return {"integrand": run["integrand"], "seed": run["seed"], "calls": run.get("calls"),
            **{m: {k: run[m][k] for k in PER_SEED_FIELDS if k in run[m]} for m in methods}}


def summarize_pulls(runs: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Pull statistics per method, per integrand and pooled over every integrand and seed."""
    out: dict[str, Any] = {}
    for m in methods:
        per: dict[str, list[float]] = {}
        budgets: dict[str, set[int]] = {}
        for run in runs:
            per.setdefault(run["integrand"], []).append(run[m]["pull"])
            budgets.setdefault(run["integrand"], set()).add(run.get("calls"))
        out[m] = {"pooled": pull_summary([p for v in per.values() for p in v]),
                  "per_integrand": {name: {**pull_summary(v), "calls": sorted(c for c in budgets[name] if c)}
                                    for name, v in per.items()}}
    return out


def _target(name: str, integrand: str | None, value: Any, threshold: str, passed: bool | None) -> dict[str, Any]:
    return {"target": name, "integrand": integrand, "value": value, "threshold": threshold, "passed": passed}


def at_target_budget(record: dict[str, Any]) -> bool:
    """Whether a run spent the issue's budget (``TARGET_CALLS``), at which its spread is judged."""
    return record.get("calls", TARGET_CALLS) >= TARGET_CALLS


def check_targets(rows: list[dict[str, Any]], pulls: dict[str, Any] | None, seeds: int,
                  cost: list[dict[str, Any]]) -> dict[str, Any]:
    """Every target of the issue, each passed True / False, or None where it was not measured
    (integrand not run, VEGAS+ not run, fewer than 100 seeds, a variance or efficiency target at a
    budget under ``TARGET_CALLS``)."""
    by = {r["integrand"]: r for r in rows}
    has_vegas = any("vegas" in r for r in rows)
    out = []
    # A small variance counts only for a right answer: a sampler that missed a mode reports a
    # small spread around a wrong value. So every figure below also needs |pull| ≤ PULL_MAX.
    right = {r["integrand"]: abs(r["nfapps"]["pull"]) <= PULL_MAX for r in rows}
    at_budget = {r["integrand"]: at_target_budget(r) for r in rows}

    def judged(name: str, passed: bool | None) -> bool | None:
        return passed if passed is None or at_budget[name] else None
    for r in rows:
        out.append(_target("|pull| of the estimate", r["integrand"], r["nfapps"]["pull"], f"≤ {PULL_MAX:g}",
                           right[r["integrand"]]))
    for name, limit in TARGET_RELATIVE_STD.items():
        r = by.get(name)
        value = r["nfapps"]["relative_std"] if r else None
        out.append(_target("relative std per event", name, value, f"≤ {limit}",
                           None if r is None else judged(name, value <= limit and right[name])))
        dim = INTEGRANDS[name].dim
        if dim >= VARIANCE_RATIO_MIN_DIM:
            ratio = r.get("variance_ratio") if r else None
            out.append(_target("variance ratio VEGAS/nfapps", name, ratio, f"≥ {VARIANCE_RATIO_MIN:g}",
                               None if ratio is None else judged(name, ratio >= VARIANCE_RATIO_MIN and right[name])))
    for r in rows:
        if r["group"] == "separable/flat":
            factor = r["nfapps"]["relative_std"] / r["vegas"]["relative_std"] if "vegas" in r else None
            out.append(_target("relative std / VEGAS's", r["integrand"], factor, f"≤ {SEPARABLE_RELATIVE_STD_FACTOR:g}",
                               None if factor is None else judged(r["integrand"], factor <= SEPARABLE_RELATIVE_STD_FACTOR
                                                                  and right[r["integrand"]])))
    for name in ("camel-4", "camel-8", "camel-16", "circles"):
        r = by.get(name)
        ratios = r.get("efficiency_ratio") if r else None
        value = None if ratios is None else [ratios[k] for k in EFFICIENCIES]
        out.append(_target("unweighting eff. / VEGAS's (classic, bootstrap, truncated)", name, value,
                           f"≥ {EFFICIENCY_RATIO_MIN:g} each",
                           None if value is None else judged(name, all(v >= EFFICIENCY_RATIO_MIN for v in value)
                                                             and right[name])))
    pooled = pulls["nfapps"]["pooled"] if pulls else None
    enough = pooled is not None and seeds >= PULL_MIN_SEEDS

    def pull_target(label: str, key: str, threshold: str, ok) -> None:
        value = pooled.get(key) if pooled else None
        where = f"{seeds} seeds, pooled" if pulls else f"run --pulls {PULL_MIN_SEEDS}"
        out.append(_target(f"pulls ({where}): {label}", None, value, threshold,
                           ok(value) if enough and value is not None else None))

    pull_target("|mean|", "mean", f"< {PULL_MEAN_MAX}", lambda v: abs(v) < PULL_MEAN_MAX)
    pull_target("std", "std", f"in [{PULL_STD_RANGE[0]}, {PULL_STD_RANGE[1]}]", lambda v: PULL_STD_RANGE[0] <= v <= PULL_STD_RANGE[1])
    pull_target("1σ coverage", "coverage_1sigma", f"in [{PULL_COVERAGE_RANGE[0]:.0%}, {PULL_COVERAGE_RANGE[1]:.0%}]",
                lambda v: PULL_COVERAGE_RANGE[0] <= v <= PULL_COVERAGE_RANGE[1])
    pull_target("max |pull|", "max_abs", f"≤ {PULL_MAX:g}", lambda v: v <= PULL_MAX)
    # the same four thresholds on each integrand's own pulls, where it has enough seeds; over K
    # seeds honest errors scatter the mean by 1/√K and the std by ≈ 1/√(2K), so at K = 100 an
    # integrand misses |mean| < 0.1 by chance one time in three: the KS p-value says whether
    # its pulls as a whole are consistent with N(0, 1)
    for name, p in (pulls["nfapps"].get("per_integrand", {}).items() if pulls else ()):
        if p["n"] >= PULL_MIN_SEEDS:
            value = [p["mean"], p["std"], p["coverage_1sigma"], p["max_abs"]]
            ok = (abs(p["mean"]) < PULL_MEAN_MAX and PULL_STD_RANGE[0] <= p["std"] <= PULL_STD_RANGE[1]
                  and PULL_COVERAGE_RANGE[0] <= p["coverage_1sigma"] <= PULL_COVERAGE_RANGE[1] and p["max_abs"] <= PULL_MAX)
            out.append(_target(f"pulls of one integrand ({p['n']} seeds): mean, std, 1σ cov., max |pull| "
                               f"(KS p = {p.get('ks_pvalue', math.nan):.2g})", name, value, "as pooled", ok))
    for c in cost:
        if c["batch"] == SAMPLER_BATCHES[0] or len({x["batch"] for x in cost}) == 1:
            out.append(_target(f"sampler µs/point (CPU, batch {c['batch']})", f"d={c['dim']}", c["us_per_point"],
                               f"≤ {SAMPLER_COST_MAX_US:g}", c["us_per_point"] <= SAMPLER_COST_MAX_US))
    measured = [t["passed"] for t in out if t["passed"] is not None]
    return {"rows": out, "measured": len(measured), "passed": sum(measured), "all_measured_passed": all(measured),
            "has_vegas": has_vegas}


# --- output ------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return "/".join(_fmt(x, ".2f") for x in v)
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def format_table(rows: list[dict[str, Any]], targets: dict[str, Any], pulls: dict[str, Any] | None,
                 cost: list[dict[str, Any]], methods: Sequence[str]) -> str:
    head = (f"{'integrand':<14}{'d':>3} {'method':<7}{'sampler':<8}{'estimate':>13}{'true rel':>10}{'rep rel':>9}{'pull':>7}"
            f"{'rsd/event':>11}{'var V/N':>9}{'ESS/N':>7}{'eff':>8}{'eff bs':>8}{'eff tr':>8}{'wall s':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for m in methods:
            x = r[m]
            ratio = _fmt(r.get("variance_ratio"), ".3g") if m == "nfapps" and "vegas" in r else ""
            lines.append(
                f"{r['integrand'] if m == methods[0] else '':<14}{r['dim'] if m == methods[0] else '':>3} {m:<7}"
                f"{_sampler_label(x) if m == 'nfapps' else 'grid':<8}"
                f"{x['value']:>13.6g}{x['true_relative_error']:>10.2e}{x['reported_relative_error']:>9.2e}"
                f"{x['pull']:>7.2f}{x['relative_std']:>11.4g}{ratio:>9}"
                f"{x['effective_sample_size'] / x['calls_estimate']:>7.3f}{x['unweighting_efficiency']:>8.4f}"
                f"{x['unweighting_efficiency_bootstrap']:>8.4f}{x['unweighting_efficiency_truncated']:>8.4f}"
                f"{x['wall_s']:>8.3g}"
            )
    lines += ["", "sampler: what drew the estimate — nfapps' pilots choose the flow, its VEGAS grid or uniform points;",
              "flow+c: the flow with its defensive Gaussian companion drawing 10 % of the points;",
              "rsd/event = σ·√N/|I| (N: the estimate's calls); var V/N = (rsd VEGAS / rsd nfapps)²: > 1, nfapps better;"
              "eff = ⟨w⟩/max w, eff bs = bootstrap (replicas of ≤ 10⁴ weights), eff tr = truncated at δ = 1e-3 overweight."]
    if "vegas" in methods:
        lines.append("VEGAS+ final: " + ", ".join(f"{r['integrand']} {r['vegas']['final_strategy']}" for r in rows))
    if pulls:
        lines += ["", f"{'pulls':<16}{'method':<8}{'n':>6}{'mean':>10}{'std':>9}{'1σ cov':>8}{'2σ cov':>8}{'max|p|':>9}"
                      f"{'KS p':>8}{'calls':>9}"]
        for m in methods:
            entries = [("pooled", pulls[m]["pooled"])] + list(pulls[m]["per_integrand"].items())
            for name, p in entries:
                if p["n"]:
                    calls = "/".join(f"{c:.0e}".replace("e+0", "e") for c in p.get("calls", []))
                    lines.append(f"{name:<16}{m:<8}{p['n']:>6}{p['mean']:>10.4g}{p['std']:>9.4g}"
                                 f"{p['coverage_1sigma']:>8.1%}{p['coverage_2sigma']:>8.1%}{p['max_abs']:>9.4g}"
                                 f"{p.get('ks_pvalue', math.nan):>8.2g}{calls:>9}")
    lines += ["", f"{'sampler cost (CPU)':<20}" + "".join(f"{'d=' + str(d):>9}" for d in sorted({c['dim'] for c in cost}))]
    for n in sorted({c["batch"] for c in cost}, reverse=True):
        lines.append(f"{f'µs/pt, batch {n}':<20}" + "".join(f"{c['us_per_point']:>9.2f}" for c in cost if c["batch"] == n))
    width = max([62] + [len(t["target"]) + 1 for t in targets["rows"]])  # long labels keep their column
    lines += ["", f"{'target':<{width}}{'integrand':<14}{'value':>16}  {'threshold':<16}result"]
    for t in targets["rows"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[t["passed"]]
        lines.append(f"{t['target']:<{width}}{t['integrand'] or '':<14}{_fmt(t['value']):>16}  {t['threshold']:<16}{verdict}")
    if not all(map(at_target_budget, rows)):
        lines.append(f"n/a: not run, or a variance / efficiency target at fewer than {TARGET_CALLS:.0e} calls (the issue's budget)")
    lines.append(f"targets measured: {targets['measured']}, passed: {targets['passed']}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], runs: list[dict[str, Any]], pulls: dict[str, Any] | None,
         methods: Sequence[str], path: Path) -> None:
    plt = pyplot()
    panels = 3 if pulls else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(8, 0.6 * len(rows) + 4) + 5 * (panels - 1), 5), squeeze=False,
                             gridspec_kw={"width_ratios": [max(2, len(rows) / 4)] + [1] * (panels - 1)})
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    x = np.arange(len(rows))
    for j, m in enumerate(methods):
        bars = ax.bar(x + (j - (len(methods) - 1) / 2) * width, [r[m]["relative_std"] for r in rows], width,
                      label="VEGAS+" if m == "vegas" else m)
        for bar, r in zip(bars, rows):
            if abs(r[m]["pull"]) > PULL_MAX:  # a small spread around a wrong value: mark it, it is no win
                bar.set_hatch("xx")
                bar.set_edgecolor("red")
                ax.annotate(f"wrong: pull {r[m]['pull']:+.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, color="red", rotation=90)
    for i, r in enumerate(rows):
        if r["integrand"] in TARGET_RELATIVE_STD:
            ax.plot([i - 0.45, i + 0.45], [TARGET_RELATIVE_STD[r["integrand"]]] * 2, "k--", lw=1,
                    label="target" if i == min(k for k, q in enumerate(rows) if q["integrand"] in TARGET_RELATIVE_STD) else None)
    ax.set_yscale("log")
    ax.set_xticks(x, [r["integrand"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("relative std per event σ√N/|I| (lower is better)")
    budgets = sorted({r.get("calls") or r["nfapps"]["calls_total"] for r in rows})
    ax.set_title(f"equal budget: {' / '.join(f'{b:.3g}' for b in budgets)} calls, training counted")
    ax.legend()
    if pulls:
        ax = axes[0, 1]
        bins = np.linspace(-5, 5, 41)
        for m in methods:
            p = np.clip([run[m]["pull"] for run in runs], -5, 5)
            ax.hist(p, bins=bins, density=True, histtype="step", lw=1.5, label="VEGAS+" if m == "vegas" else m)
        t = np.linspace(-5, 5, 201)
        ax.plot(t, np.exp(-t * t / 2) / math.sqrt(2 * math.pi), "k:", label="N(0, 1)")
        ax.set_xlabel("pull (Î − I)/σ (clipped to ±5)")
        ax.set_title(f"pulls over {len({run['seed'] for run in runs})} seeds")
        ax.legend()
        # each integrand's own pulls: mean ± 1/√n (its spread under honest errors) and std
        ax = axes[0, 2]
        per = pulls["nfapps"]["per_integrand"]
        names = [name for name in INTEGRANDS if per.get(name, {}).get("n", 0) > 1]
        y = np.arange(len(names))
        ax.errorbar([per[n]["mean"] for n in names], y, xerr=[1 / math.sqrt(per[n]["n"]) for n in names], fmt="o",
                    label="mean ± 1/√n")
        ax.plot([per[n]["std"] for n in names], y, "s", label="std")
        ax.axvspan(-PULL_MEAN_MAX, PULL_MEAN_MAX, color="C0", alpha=0.15)
        ax.axvspan(*PULL_STD_RANGE, color="C1", alpha=0.15)
        ax.set_yticks(y, [f"{n} ({per[n]['n']})" for n in names], fontsize=8)
        ax.set_xlabel("nfapps pulls per integrand (seeds); bands: the targets")
        ax.legend(fontsize=8)
    save_figure(fig, path)


#: Settings that change a run's result; a journal written under others is not resumed.
RUN_SETTINGS = ("calls", "training_fraction", "batch", "loss", "reuse", "lr", "vegas_iterations", "vegas_final",
                "replica_size", "device")
JOURNAL = "nis-runs.jsonl"


def _run_key(s: Settings, methods: Sequence[str]) -> dict[str, Any]:
    return {**{k: getattr(s, k) for k in RUN_SETTINGS}, "methods": list(methods)}


def read_journal(path: Path, key: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    """The finished runs of an interrupted benchmark, by (seed, integrand).

    Each line of the journal is one run, written as it finished (flushed and fsync'ed); its first
    line holds the settings it was run under. A journal of other settings is an error (it would mix
    budgets); a torn last line — the process killed while writing it — is dropped.
    """
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        header = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        header = None
    if header is None or "settings" not in header:
        raise SystemExit(f"{path} is not a nis.py journal: remove it or pass another --out")
    if header["settings"] != json.loads(json.dumps(key)):
        raise SystemExit(f"{path} was written with other settings ({header['settings']}): pass the same options to "
                         f"resume it, or another --out")
    done: dict[tuple[int, str], dict[str, Any]] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s: dropping its torn last line (the run is done again)", path)
                continue
            raise SystemExit(f"{path}, line {number}: not JSON: remove the journal to start over") from None
        done[(run["seed"], run["integrand"])] = run
    return done


def append_journal(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the journal at ``path`` as one JSON line, flushed and fsync'ed (opened
    for each record: nothing is left open when a run is interrupted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(record, default=float) + "\n")
        file.flush()
        os.fsync(file.fileno())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--integrands", nargs="+", choices=list(INTEGRANDS), default=None, help="default: the whole suite")
    p.add_argument("--calls", type=float, default=1e6, help="integrand calls per method and integrand, training counted (default 1e6)")
    p.add_argument("--training-fraction", type=float, default=0.5, help="share of the calls spent training / adapting (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (default 0)")
    p.add_argument("--pulls", type=int, default=0, metavar="K", help="repeat over K seeds and summarise the pulls")
    p.add_argument("--device", default="auto", help="nfapps device: auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    d = NFAPPS_DEFAULTS
    p.add_argument("--batch", type=int, default=d["batch"], help=f"nfapps training batch (default {d['batch']})")
    p.add_argument("--loss", default=d["loss"], choices=("variance", "kl"), help=f"nfapps training loss (default {d['loss']})")
    p.add_argument("--reuse", type=int, default=d["reuse"], help=f"nfapps gradient steps per training batch (default {d['reuse']})")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"nfapps learning rate (default {d['lr']})")
    p.add_argument("--vegas-iterations", type=int, default=10, help="VEGAS+ adaptation iterations (default 10)")
    p.add_argument("--vegas-final", choices=("best", *VEGAS_FINALS), default="best",
                   help="VEGAS+ final iteration: keep the adapted strata, restratify, or the better of both (default)")
    p.add_argument("--out", type=Path, default=Path("results/nis"), help="output folder for nis.json and nis.png")
    p.add_argument("--no-vegas", action="store_true", help="run nfapps only")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 integrands, 2e4 calls, small sampler timings")
    p.add_argument("--no-plot", action="store_true", help="do not write nis.png")
    p.add_argument("--no-timing", action="store_true",
                   help="skip the sampler timing (e.g. for a pull study run beside other work, where it would mislead)")
    p.add_argument("--provenance", help="a note stored in nis.json: how the runs were made (e.g. the split of a merge)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="NIS_JSON",
                   help="run nothing but the sampler timing: merge the records of these nis.json files (the suite "
                        "split over processes) into one table, JSON and plot, judged against the targets together")
    return p.parse_args(argv)


def _vegas_version(skip: bool) -> str | None:
    if skip:
        log.info("--no-vegas: running nfapps only")
        return None
    try:
        import vegas  # noqa: F401
    except ImportError:
        log.warning("vegas is not installed: skipping VEGAS+ (pip install 'nfapps[bench]' to compare)")
        return None
    return importlib.metadata.version("vegas")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it writes to ``nis.json``."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_keeps_freed = keep_freed_memory()  # as the nfapps command does: steadier, faster sampling
    names = args.integrands or (list(QUICK_INTEGRANDS) if args.quick else list(INTEGRANDS))
    common = dict(training_fraction=args.training_fraction, batch=args.batch, loss=args.loss, reuse=args.reuse, lr=args.lr,
                  vegas_iterations=args.vegas_iterations, vegas_final=args.vegas_final,
                  seed=args.seed, pulls=args.pulls, device=args.device, threads=torch.get_num_threads())
    if args.quick:
        s = Settings(calls=int(min(args.calls, 2e4)), **{**common, "batch": min(args.batch, 1024)},
                     sampler_batches=(1024,), sampler_dims=(2, 4), repeats=2)
    else:
        s = Settings(calls=int(args.calls), **common)
    if not 0 <= s.training_fraction < 1 or s.vegas_iterations < 1 or s.pulls < 0:
        raise SystemExit("need 0 ≤ --training-fraction < 1, --vegas-iterations ≥ 1 and --pulls ≥ 0")
    vegas_version = _vegas_version(args.no_vegas)
    methods = METHODS if vegas_version else METHODS[:1]
    log.info("settings: %s; integrands: %s; torch %s, vegas %s", asdict(s), names, torch.__version__, vegas_version)

    seeds = [s.seed + k for k in range(max(s.pulls, 1))]
    runs: list[dict[str, Any]] = []
    order = list(INTEGRANDS)  # the suite's order, whatever a merge's split
    if args.merge:  # the suite was split over processes: their records, re-judged together
        parts = [json.loads(Path(path).read_text()) for path in args.merge]
        methods = tuple(parts[0]["methods"])
        s = Settings(**{**parts[0]["settings"], "threads": s.threads, "sampler_batches": s.sampler_batches,
                        "sampler_dims": s.sampler_dims, "repeats": s.repeats})
        first: list[dict[str, Any]] = []  # whole records of each part's first seed
        for part in parts:  # parts may differ in budget (--calls): each record keeps its own
            for record in part["integrands"] + (part["runs"] or []):
                record.setdefault("calls", int(part["settings"]["calls"]))
            first += part["integrands"]
            runs += part["runs"] or part["integrands"]
        runs.sort(key=lambda r: (r["seed"], order.index(r["integrand"])))
        seeds = sorted({r["seed"] for r in runs})
    else:
        warm_up(s)
    journal = args.out / JOURNAL
    done: dict[tuple[int, str], dict[str, Any]] = {}
    if not args.merge:
        key = _run_key(s, methods)
        done = read_journal(journal, key)
        if done:
            log.info("resuming from %s: %d runs already done", journal, len(done))
        if not journal.exists():
            append_journal(journal, {"settings": key})
    for seed in seeds if not args.merge else ():
        for name in names:
            if (seed, name) in done:
                runs.append(done[(seed, name)])
                continue
            f = INTEGRANDS[name]
            run: dict[str, Any] = {"integrand": name, "dim": f.dim, "group": group(f), "exact": f.exact, "seed": seed,
                                   "calls": s.calls}
            run["nfapps"] = run_nfapps(f, s, seed)
            if "vegas" in methods:
                run["vegas"] = run_vegas(f, s, seed)
                v, n = run["vegas"], run["nfapps"]
                run["variance_ratio"] = (v["relative_std"] / n["relative_std"]) ** 2
                run["error_variance_ratio"] = (v["error"] / n["error"]) ** 2
                run["efficiency_ratio"] = {k: n[k] / v[k] if v[k] > 0 else math.inf for k in EFFICIENCIES}
            log.info("seed %d %-14s %s", seed, name, "  ".join(
                f"{m} {run[m]['value']:.6g} ± {run[m]['error']:.2g} (pull {run[m]['pull']:+.2f}, rsd {run[m]['relative_std']:.3g}, "
                f"{run[m]['wall_s']:.1f} s)" for m in methods))
            runs.append(run)
            append_journal(journal, run)
    if args.merge:  # one row per integrand: its first seed's record (parts may split the seeds too)
        lowest = {r["integrand"]: r for r in sorted(first, key=lambda r: -r["seed"])}
        rows = sorted(lowest.values(), key=lambda r: order.index(r["integrand"]))
    else:
        rows = [r for r in runs if r["seed"] == seeds[0]]
    pulls = summarize_pulls(runs, methods) if s.pulls else None
    cost = [] if args.no_timing else sampler_cost(s)
    targets = check_targets(rows, pulls, len(seeds) if s.pulls else 0, cost)
    table = format_table(rows, targets, pulls, cost, methods)
    print(table)
    result = {
        "settings": asdict(s),
        "command": " ".join(sys.argv) if argv is None else "nis.py " + " ".join(argv),
        "environment": {"torch": torch.__version__, "vegas": vegas_version, "python": platform.python_version(),
                        "machine": platform.machine(), "threads": torch.get_num_threads(),
                        "malloc_keeps_freed": malloc_keeps_freed},
        "methods": list(methods),
        "integrands": rows,
        "runs": [compact_run(r, methods) for r in runs] if s.pulls else None,
        "pulls": pulls,
        "sampler_cost": cost,
        "targets": targets,
        "table": table,
        "provenance": args.provenance,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # atomically: an interrupted run never leaves half a file (NaN stays NaN, as the merge reads it)
    write_bytes_atomic(args.out / "nis.json", json.dumps(result, indent=2, default=float).encode())
    if not args.no_plot:
        plot(rows, runs, pulls, methods, args.out / "nis.png")
    if not args.merge:  # its runs are in nis.json now
        journal.unlink()
    log.info("wrote %s; targets measured %d, passed %d", args.out / "nis.json", targets["measured"], targets["passed"])
    return result


if __name__ == "__main__":
    main()
