"""Event generation from a trained sampler: weighted or unweighted events in HDF5.

A sampler q on [0, 1]^d (a bounded flow, e.g. a run's ``sampler.nfapps``) gives points
u ~ q, x = a + (b − a)u in the box, with weights w = V·f(x)/q(u), so that E_q[w] = I = ∫ f.

**Weighted events** (``unweighted=False``): n points, all kept, each with its weight w.
Σ weight / n is the plain importance-sampling estimate of I (unbiased).

**Unweighted events** (``unweighted=True``), in three steps:

1. *Calibration*: ``calibration`` points of their own give the cap c = w_max =
   ``overweight_cap(w, δ)`` (δ = ``overweight``, 1e-3: the cap above which a fraction δ of
   Σ|w| lies) and the acceptance rate ε̂ = ⟨min(|w|/c, 1)⟩; then N_tried = ⌈n/ε̂⌉. All three
   are fixed *before* any production point is drawn; the calibration points are not events.
2. *Production*: N_tried fresh points; point i is accepted with probability
   p_i = min(|w_i|/c, 1) and, if accepted, gets the raw weight r_i = sign(w_i)·max(|w_i|, c)
   (c for ordinary events, |w_i| > c for the rare overweight ones).
3. The stored weight is r_i·n/N_tried.

Each tried point contributes p_i·r_i = w_i in expectation (|w| ≤ c: (|w|/c)·c; |w| > c: 1·|w|),
and c and N_tried do not depend on the production points, so

    E[Σ_accepted r_i] = N_tried·I,   i.e.  Σ_events weight / n  (= Σ r_i / N_tried)

is an *unbiased* estimate of I, whatever the sampler. The number of events is random around n
(binomial-like, ± about √n); the mean weight over the file's events, Σ weight / n_events,
estimates I too (consistently: it differs from the unbiased one by a factor n/n_events = 1 ±
O(n^-½)). Cutting the file to exactly n events would bias the estimate (a stopping rule), so it
is not done. Ordinary events all have |weight| = c·n/N_tried ≈ ⟨|w|⟩; the overweight ones
(flagged in the attribute ``overweight_events``) carry the δ of the total weight above the cap.

The file (written to a temporary name and renamed, so it is complete or absent) holds datasets
``x`` (n_events × d, float64, points in the box) and ``weight`` (n_events, float64), and attributes:
``integral`` and ``integral_error`` (importance-sampling estimate from all points drawn,
calibration included), ``n_requested``, ``n_events``, ``n_tried``, ``calibration_calls``,
``mode``, ``unweighting`` (this recipe in words), ``w_max``, ``overweight_delta``,
``acceptance_expected`` (ε̂), ``weight_scale`` (n/N_tried), ``overweight_events``,
``normalisation``, ``integrand``, ``dim``, ``bounds``, ``sampler``, ``seed``, ``nfapps_version``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..atomic import load_container, write_file_atomic
from ..device import resolve_device
from ..distributions import BoxUniform
from ..flow import Flow
from ..serialization import flow_from_payload
from .estimate import Tally, batch_sizes, overweight_cap
from .integrands import INTEGRANDS, Integrand
from .integrator import Integrator
from .job import ResolvedIntegrand, _single_process, resolve_integrand

log = logging.getLogger(__name__)

#: Streams of the counter-based seeds (the integrator uses 0 for training, 1 for the estimate).
CALIBRATION_STREAM, PRODUCTION_STREAM, ACCEPT_STREAM = 2, 3, 4


def unweight(w: np.ndarray, cap: float, uniforms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hit-or-miss against ``cap``: (accepted mask, raw weights sign(w)·max(|w|, cap)).

    Point i is accepted when uniforms[i]·cap < |w_i|, i.e. with probability min(|w_i|/cap, 1)
    for uniforms in [0, 1); the accepted raw weight makes each point's expected contribution w_i.
    """
    if not cap > 0:
        raise ValueError(f"the unweighting cap must be positive, got {cap}")
    a = np.abs(w)
    return uniforms * cap < a, np.sign(w) * np.maximum(a, cap)


def acceptance_rate(w: np.ndarray, cap: float) -> float:
    """Expected fraction of points :func:`unweight` accepts: ⟨min(|w|/cap, 1)⟩."""
    return float(np.minimum(np.abs(w) / cap, 1.0).mean())


def _load_sampler(sampler: Flow | str | os.PathLike, device: torch.device) -> tuple[Flow, dict[str, Any], str]:
    if isinstance(sampler, Flow):
        return sampler, {}, "<in-memory flow>"
    payload = load_container(sampler, "flow")
    flow = flow_from_payload(payload, sampler, device)
    return flow, payload.get("integration") or {}, str(sampler)


def read_events_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The attributes of an events file, as plain Python values."""
    h5py = _h5py()
    with h5py.File(path, "r") as f:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
                for k, v in f.attrs.items()}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise ValueError("writing events needs h5py: pip install h5py") from None
    return h5py


def generate_events(
    sampler: Flow | str | os.PathLike,
    integrand: str | Callable | ResolvedIntegrand | None = None,
    n: int = 10_000,
    out_path: str | os.PathLike = "events.h5",
    unweighted: bool = True,
    seed: int = 0,
    *,
    dim: int | None = None,
    bounds: Sequence | None = None,
    overweight: float = 1e-3,
    calibration: int | None = None,
    batch: int = 65536,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``n`` weighted events, or about ``n`` unweighted ones, drawn from ``sampler`` for
    ``integrand``, to the HDF5 file ``out_path``; returns its attributes (see the module docstring).

    ``sampler`` is a bounded flow on [0, 1]^d or the path of a saved one; a run's
    ``sampler.nfapps`` also records its integrand and bounds, used when ``integrand`` (a name,
    ``module:function``, ``file.py:function`` or a callable), ``dim`` or ``bounds`` are not given.
    ``calibration`` points (default min(max(n, 10⁴), 10⁵)) fix the unweighting cap. Points come from
    counter-based seeds of their own (streams 2–4 of ``seed``), never those of training or the estimate.
    """
    _single_process("event generation")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise ValueError(f"the number of events must be an integer ≥ 2 (the file's integral needs an error), got {n!r}")
    if not 0 < overweight < 1:
        raise ValueError(f"the overweight fraction δ must be in (0, 1), got {overweight}")
    if batch < 2:
        raise ValueError(f"batch must be ≥ 2, got {batch}")
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise ValueError(f"{out_path} exists: choose another output file (or overwrite it with --force)")
    h5py = _h5py()
    device = resolve_device(device)
    flow, meta, sampler_name = _load_sampler(sampler, device)
    if not isinstance(flow.base, BoxUniform):
        raise ValueError(f"{sampler_name} is not an integration sampler (a flow on [0, 1]^d with a uniform base, "
                         "like a run's sampler.nfapps)")
    if not isinstance(integrand, ResolvedIntegrand):
        if integrand is None:
            if "integrand" not in meta:
                raise ValueError(f"{sampler_name} does not record its integrand: name it (--integrand)")
            integrand = meta["integrand"]
        if integrand == meta.get("integrand"):  # the sampler's own integrand: its box unless told otherwise
            dim = meta.get("dim") if dim is None else dim
            bounds = meta.get("bounds") if bounds is None else bounds
        if dim is None and not (isinstance(integrand, Integrand) or (isinstance(integrand, str) and integrand in INTEGRANDS)):
            dim = flow.event_shape[0]  # a user's integrand: the sampler's dimension unless told
        integrand = resolve_integrand(integrand, dim, bounds)
    if flow.event_shape != (integrand.dim,):
        raise ValueError(f"the sampler {sampler_name} draws {flow.event_shape[0]}-dimensional points, "
                         f"but the integrand {integrand.spec} has dimension {integrand.dim}")
    integrator = Integrator(integrand.f, integrand.dim, integrand.bounds, flow=flow, device=device, seed=seed, grid=0)
    integrator.flow.eval()
    tally = Tally()

    # 1. calibration (unweighted only): the cap, the acceptance rate and the number of points to try
    cap = expected = math.nan
    calibration_calls = 0
    if unweighted:
        calibration_calls = calibration if calibration is not None else min(max(n, 10_000), 100_000)
        if calibration_calls < 2:
            raise ValueError(f"calibration needs at least 2 points, got {calibration_calls}")
        weights = []
        for k, size in enumerate(batch_sizes(calibration_calls, batch)):
            _, _, w, _ = integrator.draw(size, CALIBRATION_STREAM, k)
            tally.add(w)
            weights.append(w.cpu().numpy())
        w = np.concatenate(weights)
        cap = overweight_cap(w, overweight)
        if not cap > 0:
            raise ValueError(f"the integrand was zero on all {calibration_calls} calibration points: nothing to unweight")
        expected = acceptance_rate(w, cap)
        n_tried = math.ceil(n / expected)
        log.info("unweighting cap %.4g (δ = %g), expected acceptance %.3g: trying %d points for %d events",
                 cap, overweight, expected, n_tried, n)
    else:
        n_tried = n
    scale = n / n_tried

    # 2. production, straight into resizable datasets of a temporary file, moved into place when complete
    def produce(tmp: str) -> None:
        n_events = overweight_events = 0
        with h5py.File(tmp, "w") as f:
            xs = f.create_dataset("x", (0, integrand.dim), maxshape=(None, integrand.dim), dtype="f8",
                                  chunks=(min(max(n, 1), 16384), integrand.dim))
            ws = f.create_dataset("weight", (0,), maxshape=(None,), dtype="f8", chunks=(min(max(n, 1), 65536),))
            with tqdm(total=n_tried, desc="events", unit="call", unit_scale=True, disable=not progress) as bar:
                for k, m in enumerate(batch_sizes(n_tried, batch)):
                    u, _, w, _ = integrator.draw(m, PRODUCTION_STREAM, k)
                    tally.add(w)
                    x = integrator.integrand.to_box(u).cpu().numpy()
                    w = w.cpu().numpy()
                    if unweighted:
                        rng = np.random.default_rng(np.random.SeedSequence([seed, ACCEPT_STREAM, k]))
                        keep, raw = unweight(w, cap, rng.random(m))
                        x, w = x[keep], raw[keep] * scale
                        overweight_events += int((np.abs(raw[keep]) > cap).sum())
                    xs.resize(n_events + len(w), axis=0)
                    ws.resize(n_events + len(w), axis=0)
                    xs[n_events:], ws[n_events:] = x, w
                    n_events += len(w)
                    bar.update(m)
            attrs = {
                "mode": "unweighted" if unweighted else "weighted",
                "integral": tally.mean, "integral_error": tally.error,
                "n_requested": n, "n_events": n_events, "n_tried": n_tried, "calibration_calls": calibration_calls,
                "unweighting": (
                    f"calibration on {calibration_calls} points of their own: cap c = w_max = overweight_cap(w, δ = "
                    f"{overweight:g}), acceptance ε = <min(|w|/c, 1)>, n_tried = ceil(n/ε); each tried point kept "
                    "with probability min(|w|/c, 1), weight sign(w)·max(|w|, c)·n/n_tried"
                    if unweighted else "none: every point kept with its weight w = V·f(x)/q"
                ),
                "normalisation": "sum(weight)/n_requested is an unbiased estimate of the integral; "
                                 "mean(weight) over the events estimates it too",
                "w_max": cap, "overweight_delta": overweight if unweighted else math.nan,
                "acceptance_expected": expected, "weight_scale": scale, "overweight_events": overweight_events,
                "integrand": integrand.spec, "dim": integrand.dim,
                "bounds": np.asarray(integrand.bounds if integrand.bounds is not None else [[0.0, 1.0]] * integrand.dim),
                "exact": integrand.exact if integrand.exact is not None else math.nan,
                "sampler": sampler_name, "seed": seed, "nfapps_version": __version__,
            }
            f.attrs.update(attrs)

    write_file_atomic(out_path, produce, overwrite)
    attrs = read_events_attrs(out_path)
    log.info("wrote %d %s events to %s (integral %.6g ± %.2g)", attrs["n_events"], attrs["mode"], out_path, tally.mean,
             tally.error)
    return attrs


__all__ = ["acceptance_rate", "generate_events", "read_events_attrs", "unweight"]
