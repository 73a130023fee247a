"""The integration job behind ``nfapps integrate``: train a sampler, estimate, write a run directory.

A run directory ``out`` ends up holding::

    run.json        the run's settings (written first; ``resume`` checks against it)
    state.nfapps    the integrator's state after each training chunk (Integrator.save)
    sampler.nfapps  the sampler that drew the estimate (flow, flow with its defensive companion, VEGAS
                    grid or uniform), reloadable with nfapps.load (plus the integral's metadata)
    history.csv     batch, training calls so far, relative std per event of the batch's weights,
                    phase (grid adaptation or flow training), tempering exponent β
    training.png    relative std per event against training calls
    weights.png     histogram of log10(|w|/⟨|w|⟩) over the estimate's weights
    events.h5       (with ``events > 0``) events from the reloaded sampler, see :mod:`.events`
    estimate.nfapps the estimate's progress while it runs (removed when the run finishes)
    result.json     settings, the estimate (IntegrationResult.to_dict()), exact value and pull
                    for a built-in integrand; written last, so its presence marks a finished run

Training runs in ``chunks`` pieces with the state saved after each, so a run killed at any point
continues with ``resume=True`` from the last chunk boundary and ends bit-identical to a run that
was never interrupted: every batch is drawn from a counter-based seed and the optimizer's state
is saved with the flow. The estimate uses fresh points from a stream of its own and writes its
progress to ``estimate.nfapps`` after every batch, so an interrupted estimate continues where it
stopped (that file is removed once ``result.json`` is written).

Every output is written atomically (temporary file + rename): a crash leaves the old file or the
new, never a part. A directory is never overwritten: starting a new run in a non-empty directory
is refused, and resuming a directory that holds another run (different settings) is refused.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from .. import distributed as dist
from ..atomic import dump, write_bytes_atomic
from ..device import resolve_device
from ..outputs import finite as _finite
from ..outputs import pyplot as _pyplot
from ..outputs import save_figure as _save_figure
from ..outputs import write_json as _write_json
from ..serialization import flow_payload
from .integrand import load_callable
from .integrands import INTEGRANDS, Integrand
from .integrator import LOSSES, Integrator, integrate_defaults, split_training

log = logging.getLogger(__name__)

RUN_FILE, STATE_FILE, SAMPLER_FILE, RESULT_FILE = "run.json", "state.nfapps", "sampler.nfapps", "result.json"
HISTORY_FILE, TRAINING_PLOT, WEIGHTS_PLOT, EVENTS_FILE = "history.csv", "training.png", "weights.png", "events.h5"
ESTIMATE_FILE = "estimate.nfapps"

def _library_defaults() -> dict[str, Any]:
    """The defaults of :func:`nfapps.integration.integrator.integrate` and :class:`Integrator`, so that
    a job with default settings computes exactly what ``integrate(f, dim, calls=…)`` does."""
    run = integrate_defaults()
    sampler = inspect.signature(Integrator).parameters
    defaults = {key: run[key] for key in ("training_fraction", "batch", "loss", "reuse", "lr", "estimate_batch",
                                          "replica_size", "stratify", "choose", "grid_fraction", "min_ess", "tempering_ramp")}
    defaults.update({key: sampler[key].default for key in ("bins", "transforms", "hidden", "pre_map", "grid", "companion")})
    return defaults


#: Settings of a run and their defaults; ``None`` passed to :func:`run_integration` means this
#: default for a new run and the stored value when resuming. Training and sampler settings are
#: those of :func:`~nfapps.integration.integrator.integrate`; 200k calls of camel-4 take seconds
#: of training on two CPU cores (the README's quickstart).
DEFAULTS: dict[str, Any] = {
    "integrand": "camel-4",
    "dim": None,
    "bounds": None,
    "calls": 200_000,
    **_library_defaults(),
    "seed": 0,
    "chunks": 20,
    "events": 0,
    "unweighted": True,
}

#: Integrand calls spent checking the integrand before a run starts (not part of ``calls``).
CHECK_CALLS = 16


# -- the integrand ---------------------------------------------------------------------------------


@dataclass
class ResolvedIntegrand:
    """A user's integrand request made concrete: the function, its box and what is known of it."""

    f: Callable
    dim: int
    bounds: list[list[float]] | None  # None: the unit hypercube
    spec: str  # built-in name, "module:function" or "path.py:function"
    exact: float | None = None  # built-in integrands only

    @property
    def builtin(self) -> bool:
        return self.spec in INTEGRANDS and isinstance(self.f, Integrand)


def parse_bounds(bounds: Sequence[float] | Sequence[Sequence[float]] | None, dim: int) -> list[list[float]] | None:
    """Bounds as ``dim`` pairs [low, high]: accepts pairs, a flat list low₁ high₁ low₂ high₂ …,
    or one pair (low, high) for every dimension; ``None`` stays None (the unit hypercube)."""
    if bounds is None:
        return None
    try:
        values = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be numbers, got {bounds!r}") from None
    if values.ndim == 1:
        if values.size == 2:
            values = np.tile(values, (dim, 1))
        elif values.size == 2 * dim:
            values = values.reshape(dim, 2)
        else:
            raise ValueError(
                f"bounds need 2 numbers (low high, the same for every dimension) or 2·dim = {2 * dim} numbers "
                f"(low high for each of the {dim} dimensions); got {values.size}"
            )
    if values.shape != (dim, 2):
        raise ValueError(f"bounds must be {dim} pairs (low, high), one per dimension; got shape {values.shape}")
    for i, (low, high) in enumerate(values):
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"bounds of dimension {i} are [{low:g}, {high:g}]: need finite low < high")
    return values.tolist()


def resolve_integrand(
    integrand: str | Callable, dim: int | None = None, bounds: Sequence | None = None
) -> ResolvedIntegrand:
    """A built-in name (see ``INTEGRANDS``), ``module:function``, ``path/to/file.py:function``, or
    a callable → the function with its dimension and bounds checked.

    Built-in integrands live on the unit hypercube and have a fixed dimension: ``dim``, if given,
    must match and ``bounds``, if given, must be [0, 1] in every dimension. A user's integrand
    needs ``dim``; its ``bounds`` default to the unit hypercube.
    """
    if dim is not None and (not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1):
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if isinstance(integrand, Integrand) or (isinstance(integrand, str) and integrand in INTEGRANDS):
        f = INTEGRANDS[integrand] if isinstance(integrand, str) else integrand
        if dim is not None and dim != f.dim:
            raise ValueError(f"the built-in integrand {f.name} has dimension {f.dim}, but dim {dim} was given")
        box = parse_bounds(bounds, f.dim)
        if box is not None and any(low != 0 or high != 1 for low, high in box):
            raise ValueError(
                f"the built-in integrand {f.name} is defined on the unit hypercube [0, 1]^{f.dim}; "
                "bounds apply to your own integrands (module:function or file.py:function)"
            )
        return ResolvedIntegrand(f, f.dim, None, f.name, f.exact)
    if isinstance(integrand, str):
        if ":" not in integrand:
            raise ValueError(
                f"unknown integrand {integrand!r}: give a built-in name ({', '.join(INTEGRANDS)}; "
                "see 'nfapps integrate --list'), module:function or path/to/file.py:function"
            )
        try:
            f = load_callable(integrand)
        except ValueError:
            raise
        except Exception as err:  # a module that raises something else while being imported
            raise ValueError(f"could not import {integrand}: {type(err).__name__}: {err}") from None
        spec = integrand
    elif callable(integrand):
        f = integrand
        spec = f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', type(f).__name__)}"
    else:
        raise ValueError(f"the integrand must be a name, a module:function spec or a callable, got {type(integrand).__name__}")
    if dim is None:
        raise ValueError(f"give the dimension of the integrand {spec} (dim=…, or --dim on the command line)")
    return ResolvedIntegrand(f, int(dim), parse_bounds(bounds, int(dim)), spec)


def _single_process(what: str) -> None:
    if dist.launched():
        raise ValueError(f"{what} runs in one process (its files have one writer); under torchrun, script "
                         "nfapps.integration.Integrator directly: train and integrate on every rank, save on rank 0")


# -- the run directory -----------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path} ({err}); the run directory is damaged — start a new run with another --out") from None


def _settings(given: dict[str, Any], stored: dict[str, Any] | None) -> dict[str, Any]:
    """Each setting: as given, else as stored (resuming), else the default."""
    settings = {}
    for key, default in DEFAULTS.items():
        value = given.get(key)
        settings[key] = value if value is not None else stored.get(key, default) if stored else default
    return settings


def _plain(obj: Any) -> Any:
    """``obj`` as JSON stores it (lists for tuples, null for non-finite floats), for comparisons."""
    return json.loads(json.dumps(_finite(obj)))


# -- plots and tables ------------------------------------------------------------------------------


def _history_rows(history: list[dict[str, Any]]) -> list[tuple[int, int, float, str, float]]:
    """(batch, training calls so far, relative std per event, phase "grid"/"flow", tempering exponent β)."""
    rows, calls = [], 0
    for record in history:
        calls += int(record["calls"])
        rows.append((int(record["batch"]), calls, float(record["relative_std"]), str(record.get("phase", "flow")),
                     float(record.get("exponent", 1.0))))
    return rows


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["batch", "training_calls", "relative_std", "phase", "exponent"])
    writer.writerows((b, c, repr(s), phase, repr(beta)) for b, c, s, phase, beta in _history_rows(history))
    write_bytes_atomic(path, buffer.getvalue().encode())


def _plot_training(path: Path, history: list[dict[str, float]], result: dict[str, Any], title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = [row for row in _history_rows(history) if math.isfinite(row[2]) and row[2] > 0]
    for phase, color, label in (("grid", "C2", "VEGAS grid adaptation"), ("flow", "C0", "flow training batches")):
        points = [(c, s) for _, c, s, p, _ in rows if p == phase]
        if points:
            calls, stds = np.array(points).T
            ax.plot(calls, stds, lw=1, color=color, label=label)
    if result["relative_std"] is not None and math.isfinite(result["relative_std"]):
        ax.axhline(result["relative_std"], color="C3", ls="--", lw=1,
                   label=f"estimate, {result['calls_estimate']:,} fresh calls: {result['relative_std']:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("training calls")
    ax.set_ylabel("relative std per event σ/|I|")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save_figure(fig, path)


class _WeightHistogram:
    """Counts of log10|w| in fixed 0.02-decade bins (memory independent of the number of calls)."""

    LOW, HIGH, WIDTH = -330.0, 310.0, 0.02

    def __init__(self) -> None:
        self.counts = np.zeros(round((self.HIGH - self.LOW) / self.WIDTH), dtype=np.int64)
        self.zeros = 0

    def add(self, w: torch.Tensor) -> None:
        a = w.detach().abs().cpu().numpy()
        nonzero = a[a > 0]
        self.zeros += a.size - nonzero.size
        index = np.clip(((np.log10(nonzero) - self.LOW) / self.WIDTH).astype(np.int64), 0, self.counts.size - 1)
        self.counts += np.bincount(index, minlength=self.counts.size)


def _plot_weights(path: Path, histogram: _WeightHistogram, result: dict[str, Any], title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    tally = result["tally"]
    mean_abs = tally["sum_abs_w"] / tally["n"] if tally["n"] else 0.0
    used = np.nonzero(histogram.counts)[0]
    if used.size and mean_abs > 0:
        # Re-bin to about 100 bins over the occupied range, in units of the mean |w|.
        step = max(1, math.ceil((used[-1] + 1 - used[0]) / 100))
        start, stop = used[0], used[-1] + 1
        stop = start + step * math.ceil((stop - start) / step)
        counts = np.pad(histogram.counts, (0, max(0, stop - histogram.counts.size)))[start:stop].reshape(-1, step).sum(1)
        edges = histogram.LOW + histogram.WIDTH * (start + step * np.arange(counts.size + 1)) - math.log10(mean_abs)
        ax.stairs(counts, edges, fill=True, alpha=0.6, color="C0", label=f"{tally['n']:,} estimate weights")
        lines = [
            (result["unweighting_efficiency"], "max |w| (classic)", "C3"),
            (result["unweighting_efficiency_bootstrap"],
             f"median of replica max (n = {result['bootstrap_replica_size']:,})", "C2"),
        ]
        truncated = result["unweighting_efficiency_truncated"]
        if truncated:  # ⟨min(|w|, c)⟩ = (1 − δ)⟨|w|⟩ at the cap c, so c/⟨|w|⟩ = (1 − δ)/ε
            lines.append((truncated / (1 - 1e-3), "cap at overweight δ = 1e-3", "C1"))
        for efficiency, label, color in lines:
            if efficiency:
                ax.axvline(-math.log10(efficiency), color=color, ls="--", lw=1, label=f"{label}: ε = {efficiency:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("log10(|w| / ⟨|w|⟩)")
    ax.set_ylabel("events per bin")
    zeros = f", {histogram.zeros:,} zero weights not shown" if histogram.zeros else ""
    ax.set_title(f"{title}{zeros}", fontsize=10)
    ax.legend(fontsize=7)
    _save_figure(fig, path)


# -- the job ---------------------------------------------------------------------------------------


def _estimate(integrator: Integrator, calls: int, exact: float | None, progress: bool, batch: int, replica_size: int,
              stratify: bool, choose: bool, checkpoint: Path):
    """Integrator.integrate, with a histogram of its weights for the weight plot."""
    result = integrator.integrate(calls, batch=batch, progress=progress, exact=exact, replica_size=replica_size,
                                  stratify=stratify, choose=choose, checkpoint=checkpoint)
    histogram = _WeightHistogram()
    histogram.add(torch.as_tensor(integrator.estimate_weights))
    return result, histogram


def _write_sampler(path: Path, integrator: Integrator, resolved: ResolvedIntegrand, result: dict[str, Any]) -> None:
    """The chosen sampler as nfapps.save writes it, plus what ``nfapps events`` needs to use it alone."""
    payload = flow_payload(integrator.sampler)
    payload["integration"] = _finite({
        "integrand": resolved.spec, "dim": resolved.dim, "bounds": resolved.bounds, "seed": integrator.seed,
        "integral": result["value"], "error": result["error"], "calls_training": result["calls_training"],
    })
    dump(payload, path, "flow")


def run_integration(
    integrand: str | Callable | None = None,
    dim: int | None = None,
    bounds: Sequence | None = None,
    calls: int | None = None,
    training_fraction: float | None = None,
    batch: int | None = None,
    loss: str | None = None,
    reuse: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | torch.device = "auto",
    out: str | Path = "runs/integrate",
    resume: bool = False,
    events: int | None = None,
    unweighted: bool | None = None,
    progress: bool = True,
    *,
    bins: int | None = None,
    transforms: int | None = None,
    hidden: Sequence[int] | None = None,
    pre_map: int | None = None,
    grid: int | None = None,
    companion: int | None = None,
    grid_fraction: float | None = None,
    min_ess: float | None = None,
    tempering_ramp: float | None = None,
    estimate_batch: int | None = None,
    replica_size: int | None = None,
    stratify: bool | None = None,
    choose: bool | None = None,
    chunks: int | None = None,
    on_chunk: Callable[[int, Integrator], None] | None = None,
) -> dict[str, Any]:
    """Integrate ``integrand`` over its box by neural importance sampling and write the run directory.

    ``integrand`` is a built-in name (``nfapps.integration.INTEGRANDS``), ``module:function``,
    ``path/to/file.py:function`` or a batched callable (points (n, dim) → values (n,)).
    ``calls`` integrand evaluations in all: ``training_fraction`` of them (whole batches of
    ``batch``) train the sampler in ``chunks`` checkpointed pieces, the rest feed the estimate;
    the result is exactly that of ``integrate(f, dim, bounds, calls, training_fraction, …)``.
    ``events > 0`` also writes that many (unweighted, or weighted) events to ``events.h5``
    from the saved sampler, reloaded. ``on_chunk(k, integrator)`` is called after training chunk
    k has been saved. Settings left as None take their default (:data:`DEFAULTS`), or, when
    resuming, the stored run's value.

    Returns what ``result.json`` holds: ``settings``, ``result`` (IntegrationResult.to_dict()),
    ``exact`` and ``pull`` (built-in integrands), ``outputs``, …. A finished run directory with
    ``resume=True`` is just read back.
    """
    started = time.perf_counter()
    _single_process("the integration job")
    out = Path(out)
    given = {
        "integrand": integrand, "dim": dim, "bounds": bounds, "calls": calls, "training_fraction": training_fraction,
        "batch": batch, "loss": loss, "reuse": reuse, "lr": lr, "seed": seed, "bins": bins, "transforms": transforms,
        "hidden": list(hidden) if hidden is not None else None, "pre_map": pre_map, "grid": grid, "companion": companion,
        "grid_fraction": grid_fraction,
        "min_ess": min_ess, "tempering_ramp": tempering_ramp, "estimate_batch": estimate_batch,
        "replica_size": replica_size, "stratify": stratify, "choose": choose, "chunks": chunks, "events": events,
        "unweighted": unweighted,
    }
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not resume:
        raise ValueError(f"the run directory {out} is not empty: continue the run there with --resume, or choose another --out")
    run, stored = None, None
    if occupied:
        if not (out / RUN_FILE).is_file():
            raise ValueError(f"{out} is not an nfapps integration run directory (no {RUN_FILE}); choose another --out")
        run = _read_json(out / RUN_FILE)
        stored = run.get("settings", {})
        if integrand is None and run.get("integrand_kind") == "callable":
            raise ValueError(f"{out} was run with the Python function {stored.get('integrand')}: pass it again to resume")
    elif resume:
        log.info("nothing to resume in %s: starting a new run", out)

    settings = _settings(given, stored)
    resolved = resolve_integrand(settings["integrand"], settings["dim"], settings["bounds"])
    kind = "builtin" if resolved.builtin else "spec" if isinstance(settings["integrand"], str) else "callable"
    settings.update(integrand=resolved.spec, dim=resolved.dim, bounds=resolved.bounds)
    settings = _plain(settings)
    if stored is not None:
        differ = [f"{key} {stored.get(key)!r} there, {settings[key]!r} here"
                  for key, value in given.items() if value is not None and settings[key] != stored.get(key)]
        if differ:
            raise ValueError(
                f"{out} holds another run ({'; '.join(differ)}): resume it with its own settings (or leave "
                "them out to take them from the run), or start this run with another --out"
            )

    if stored is not None and (out / RESULT_FILE).is_file():
        log.info("%s holds a finished run: reporting its result", out)
        return _read_json(out / RESULT_FILE)

    calls, batch, chunks = settings["calls"], settings["batch"], settings["chunks"]
    fraction, reuse, lr, loss = settings["training_fraction"], settings["reuse"], settings["lr"], settings["loss"]
    for name, value, low in (("calls", calls, 2), ("batch", batch, 1), ("reuse", reuse, 1), ("chunks", chunks, 1),
                             ("events", settings["events"], 0), ("seed", settings["seed"], 0),
                             ("estimate_batch", settings["estimate_batch"], 1), ("replica_size", settings["replica_size"], 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if not 0 <= fraction < 1:
        raise ValueError(f"training_fraction must be in [0, 1), got {fraction}")
    if not isinstance(settings["grid"], int) or isinstance(settings["grid"], bool) or settings["grid"] < 0:
        raise ValueError(f"grid must be an integer ≥ 0 (bins per dimension; 0 for none), got {settings['grid']!r}")
    if not isinstance(settings["companion"], int) or isinstance(settings["companion"], bool) or settings["companion"] < 0:
        raise ValueError(f"companion must be an integer ≥ 0 (Gaussians beside the flow; 0 for none), got {settings['companion']!r}")
    if not 0 <= settings["grid_fraction"] <= 1:
        raise ValueError(f"grid_fraction must be in [0, 1], got {settings['grid_fraction']}")
    if not 0 <= settings["min_ess"] < 1:
        raise ValueError(f"min_ess must be in [0, 1) (the effective sample size below which training is tempered), "
                         f"got {settings['min_ess']}")
    if not 0 <= settings["tempering_ramp"] <= 1:
        raise ValueError(f"tempering_ramp must be in [0, 1] (the fraction of the training over which the tempering "
                         f"exponent may rise to 1), got {settings['tempering_ramp']}")
    for flag in ("stratify", "choose"):
        if not isinstance(settings[flag], bool):
            raise ValueError(f"{flag} must be true or false, got {settings[flag]!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    grid_calls, train_calls = split_training(calls, fraction, settings["grid_fraction"], settings["grid"] > 0)
    steps = train_calls // batch
    calls_estimate = calls - grid_calls - steps * batch
    if calls_estimate < 2:
        raise ValueError(f"calls {calls} leave {calls_estimate} for the estimate after training; lower training_fraction")
    if steps == 0 and fraction > 0:
        log.warning("no training: the %d training calls are fewer than one batch of %d", train_calls, batch)
    device = resolve_device(device)

    integrator = Integrator(
        resolved.f, resolved.dim, resolved.bounds, device=device, seed=settings["seed"],
        bins=settings["bins"], transforms=settings["transforms"], hidden=settings["hidden"],
        pre_map=settings["pre_map"], grid=settings["grid"], companion=settings["companion"],
    )
    # Check the integrand on a few points before anything is written: a function that raises,
    # returns the wrong shape or indexes past its dimension fails here, with nothing to clean up.
    check = torch.rand(CHECK_CALLS, resolved.dim, generator=torch.Generator().manual_seed(settings["seed"]), dtype=torch.float64)
    integrator.integrand(check.to(device))

    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_FILE).is_file():
        _write_json(out / RUN_FILE, {"settings": settings, "integrand_kind": kind, "nfapps_version": __version__})
    if (out / STATE_FILE).is_file():
        integrator.restore(out / STATE_FILE)
        log.info("resuming %s after %d of %d training calls", out, integrator.calls_training, steps * batch)
    if integrator.calls_grid not in (0, grid_calls):
        raise ValueError(f"{out / STATE_FILE} has {integrator.calls_grid} grid calls where this run has {grid_calls}: "
                         "it holds another run; use another --out")
    if integrator.calls_grid < grid_calls:  # seconds of work: done in one go, then saved
        integrator.adapt_grid(grid_calls, progress=progress)
        integrator.save(out / STATE_FILE)
    done = integrator.calls_training // batch
    if integrator.calls_training % batch or done > steps:
        raise ValueError(f"{out / STATE_FILE} has {integrator.calls_training} training calls, which this run "
                         f"({steps} batches of {batch}) cannot have reached: it holds another run; use another --out")

    # -- train in checkpointed chunks
    boundaries = sorted({steps * k // chunks for k in range(1, chunks + 1)})
    with tqdm(total=steps * batch, initial=done * batch, desc="train sampler", unit="call", unit_scale=True,
              disable=not progress) as bar:
        for k, end in enumerate(boundaries):
            if integrator.stopped:  # the flow gave up against the grid: the rest goes to the estimate
                break
            if end <= done:
                continue
            # the learning-rate schedule spans the whole budget, whatever the chunks: as integrate() does
            integrator.train((end - done) * batch, batch=batch, loss=loss, reuse=reuse, lr=lr, progress=False,
                             schedule_calls=train_calls, min_ess=settings["min_ess"],
                             tempering_ramp=settings["tempering_ramp"])
            bar.update((end - done) * batch)
            done = end
            integrator.save(out / STATE_FILE)
            latest = integrator.history[-1]["relative_std"]
            bar.set_postfix(rel_std=f"{latest:.3g}")
            log.debug("chunk %d: %d training calls, relative std per event %.4g", k, done * batch, latest)
            if on_chunk is not None:
                on_chunk(k, integrator)

    # -- estimate from fresh samples, with every call that training did not spend
    calls_estimate = calls - integrator.calls_grid - integrator.calls_training
    result, histogram = _estimate(integrator, calls_estimate, resolved.exact, progress, settings["estimate_batch"],
                                  settings["replica_size"], settings["stratify"], settings["choose"], out / ESTIMATE_FILE)
    record = _finite(result.to_dict())
    title = f"{resolved.spec}, d = {resolved.dim}"
    _write_sampler(out / SAMPLER_FILE, integrator, resolved, record)
    _write_history(out / HISTORY_FILE, integrator.history)
    _plot_training(out / TRAINING_PLOT, integrator.history, record, title)
    _plot_weights(out / WEIGHTS_PLOT, histogram, record, title)
    outputs = [RUN_FILE, STATE_FILE, SAMPLER_FILE, HISTORY_FILE, TRAINING_PLOT, WEIGHTS_PLOT]

    events_summary = None
    if settings["events"]:
        from .events import generate_events

        if not (out / EVENTS_FILE).is_file():
            generate_events(out / SAMPLER_FILE, resolved, settings["events"], out / EVENTS_FILE,
                            unweighted=settings["unweighted"], seed=settings["seed"], device=device, progress=progress)
        events_summary = _events_summary(out / EVENTS_FILE)
        outputs.append(EVENTS_FILE)

    summary = {
        "integrand": resolved.spec,
        "builtin": resolved.builtin,
        "dim": resolved.dim,
        "bounds": resolved.bounds if resolved.bounds is not None else [[0.0, 1.0]] * resolved.dim,
        "exact": resolved.exact,
        "pull": record["pull"],
        "value": record["value"],
        "error": record["error"],
        "settings": settings,
        "result": record,
        "calls_check": CHECK_CALLS,
        "device": str(device),
        "events": events_summary,
        "wall_time_s": time.perf_counter() - started,  # of this invocation (a resumed run: since resuming)
        "nfapps_version": __version__,
        "outputs": outputs + [RESULT_FILE],
    }
    _write_json(out / RESULT_FILE, summary)
    (out / ESTIMATE_FILE).unlink(missing_ok=True)  # the finished estimate is in result.json
    pull = f", pull {record['pull']:+.2f}" if record["pull"] is not None else ""
    log.info("%s = %.6g ± %.2g (relative std per event %.3g%s); wrote %s", resolved.spec, record["value"],
             record["error"], record["relative_std"] or math.inf, pull, out)
    return _read_json(out / RESULT_FILE)


def _events_summary(path: Path) -> dict[str, Any]:
    from .events import read_events_attrs

    return {"file": path.name, **read_events_attrs(path)}


__all__ = ["DEFAULTS", "ResolvedIntegrand", "parse_bounds", "resolve_integrand", "run_integration"]
