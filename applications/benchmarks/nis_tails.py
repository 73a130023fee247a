"""The true variance of trained NIS samplers, measured with exact draws from the integrand.

For a sampler q and the normalised integrand p = f/∫f, E_p[p/q] = E_q[(f/q)²]/(∫f)²
= 1 + (relative std per event)². A sampler's own draws estimate that variance from the weights
they happen to reach: where q falls off faster than p in some region its weights there are huge
and rarely drawn, most estimates then report too small an error, and only many seeds show it
(the pull study of ``nis.py``). Points drawn from p itself go exactly where the variance is
made, so E_p[p/q] on a few 10⁵ of them is the sampler's true variance, heavy tail included —
one trained sampler at a time, no seeds needed.

For each integrand with an exact sampler (``Integrand.sample``: the Gaussians and camels) and
each seed, the sampler is trained as :func:`nfapps.integrate` trains it (``--calls``, training
counted), its estimate is run (which fits the defensive companion), and on ``--points`` exact
draws of p this measures, for the flow alone, the flow with its companion (q_α = 0.9 q + 0.1 c),
the companion alone and the sampler the estimate chose:

* E_p[p/q] and the true relative std per event √(E_p[p/q] − 1), unstratified;
* the largest p/q seen, and its 99.9 % and 99.99 % quantiles (a flow's tail shows as a max many
  orders above the quantiles);
* next to them, what the sampler's own draws say: the relative std per event the estimate
  reported (stratified, so below the unstratified truth on smooth integrands), and the spread
  std/mean of the weights of as many plain draws of the chosen sampler — like for like with the
  truth, and far below it where the sampler has a heavy tail.

Usage::

    python applications/benchmarks/nis_tails.py --integrands camel-16 --seeds 0 9 --threads 1 --out results/tails

Writes ``nis-tails.json`` and ``nis-tails.png`` (true against reported relative std per event,
per seed and sampler, log scale).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfapps.allocator import keep_freed_memory  # noqa: E402
from nfapps.atomic import write_bytes_atomic  # noqa: E402
from nfapps.integration import INTEGRANDS, trained_integrator  # noqa: E402
from nfapps.integration.companion import DefensiveMixture  # noqa: E402
from nfapps.outputs import pyplot, save_figure  # noqa: E402

log = logging.getLogger("nfapps.bench.nis_tails")

SAMPLERS = ("flow", "flow+companion", "companion", "chosen")
CHUNK = 4096


def ratio_statistics(log_ratio: Tensor) -> dict[str, float]:
    """E_p[p/q] with its standard error, the implied relative std per event, and the tail of p/q,
    from log(p/q) at exact draws of p."""
    r = torch.exp(log_ratio.to(torch.float64)).numpy()
    mean = float(r.mean())
    return {
        "mean_ratio": mean, "mean_ratio_error": float(r.std(ddof=1) / math.sqrt(r.size)),
        "true_relative_std": math.sqrt(max(mean - 1.0, 0.0)),
        "max_ratio": float(r.max()), "q999_ratio": float(np.quantile(r, 0.999)), "q9999_ratio": float(np.quantile(r, 0.9999)),
    }


def measure(name: str, seed: int, calls: int, points: int, device: str) -> dict[str, Any]:
    """Train and estimate as ``integrate`` does, then measure every sampler on exact draws of p."""
    f = INTEGRANDS[name]
    integrator = trained_integrator(f, f.dim, calls=calls, device=device, seed=seed, progress=False)
    result = integrator.integrate(calls - integrator.calls_training - integrator.calls_grid, progress=False, exact=f.exact)
    # as many plain (unstratified) draws of the chosen sampler, from a stream of their own: the
    # spread its own weights show, like for like with the truth below
    _, _, w, _ = integrator.draw(points, stream=2, counter=0, flow=integrator.sampler)
    drawn = float(w.std() / w.mean().abs())
    x = f.sample(points, torch.Generator().manual_seed(10_000 + seed)).to(integrator.device)
    log_p = torch.log(f(x)) - math.log(f.exact)
    def log_density(sampler: Any) -> Tensor:
        return torch.cat([sampler.log_prob(part.to(sampler._anchor.dtype)) for part in x.split(CHUNK)]).to(torch.float64)

    with torch.no_grad():
        densities = {"flow": log_density(integrator.flow)}
        if integrator.companion is not None:
            densities["flow+companion"] = log_density(
                DefensiveMixture(integrator.flow, integrator.companion, integrator.companion_share))
            densities["companion"] = integrator.companion.log_prob(x)
        densities["chosen"] = log_density(integrator.sampler)  # the flow (with or without its companion), grid or uniform
    record = {"integrand": name, "seed": seed, "calls": calls, "points": points, "sampler": result.sampler,
              "companion_share": result.companion_share, "companion_ratio": integrator.companion_ratio,
              "reported_relative_std": result.relative_std, "drawn_relative_std": drawn,
              "pull": (result.value - f.exact) / result.error,
              "pareto_k": result.pareto_k}
    record.update({k: ratio_statistics(log_p.cpu() - v.cpu()) for k, v in densities.items()})
    log.info("%s seed %d: reported %.3g (%s%s); true %s", name, seed, result.relative_std, result.sampler,
             "+c" if result.companion_share else "",
             ", ".join(f"{k} {record[k]['true_relative_std']:.3g} (max p/q {record[k]['max_ratio']:.3g})"
                       for k in SAMPLERS if k in record))
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    head = (f"{'integrand':<12}{'seed':>5} {'chose':<8}{'reported':>10}{'drawn':>8}{'true':>8}{'pull':>7}"
            + "".join(f"{s + ' true':>22}{'max p/q':>10}" for s in SAMPLERS[:3]))
    lines = [head, "-" * len(head)]
    for r in records:
        cells = "".join(f"{r[s]['true_relative_std']:>22.4g}{r[s]['max_ratio']:>10.3g}" if s in r else f"{'—':>22}{'—':>10}"
                        for s in SAMPLERS[:3])
        label = r["sampler"] + ("+c" if r["companion_share"] else "")
        lines.append(f"{r['integrand']:<12}{r['seed']:>5} {label:<8}{r['reported_relative_std']:>10.4g}"
                     f"{r['drawn_relative_std']:>8.4g}{r['chosen']['true_relative_std']:>8.4g}{r['pull']:>7.2f}{cells}")
    lines += ["", "true = √(E_p[p/q] − 1) from exact draws of p (unstratified); reported = the estimate's own "
                  "(stratified) relative std per event; drawn = std/mean of the weights of as many plain draws of the chosen "
                  "sampler, true = its truth; max p/q: the largest weight seen, in units of the integral"]
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(r["drawn_relative_std"], r["chosen"]["true_relative_std"]) for r in records]
    ax.scatter(*zip(*pts), marker="o", label="the chosen sampler")
    for s, marker in zip(SAMPLERS[:3], "xs^"):
        pts = [(r["drawn_relative_std"], r[s]["true_relative_std"]) for r in records if s in r]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=f"{s} (truth only)", alpha=0.6)
    lo = min(r["drawn_relative_std"] for r in records) / 2
    ax.plot([lo, 1e3], [lo, 1e3], "k:", lw=1, label="true = drawn")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("std/mean of the chosen sampler's weights in plain draws")
    ax.set_ylabel("true relative std per event, √(E_p[p/q] − 1)")
    names = sorted({r["integrand"] for r in records})
    ax.set_title(f"{', '.join(names)}: {len(records)} trained samplers")
    ax.legend()
    save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    exact = [name for name, f in INTEGRANDS.items() if f.exact_sampler is not None]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--integrands", nargs="+", choices=exact, default=["camel-16"], help="default: camel-16")
    p.add_argument("--seeds", nargs=2, type=int, default=[0, 9], metavar=("FIRST", "LAST"), help="default: 0 9")
    p.add_argument("--calls", type=float, default=1e6, help="integrand calls per run, training counted (default 1e6)")
    p.add_argument("--points", type=float, default=4e5, help="exact draws of p per sampler (default 4e5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("results/nis-tails"))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.seeds[1] < args.seeds[0] or args.points < 2:
        raise SystemExit("need FIRST ≤ LAST seeds and --points ≥ 2")
    records = [measure(name, seed, int(args.calls), int(args.points), args.device)
               for name in args.integrands for seed in range(args.seeds[0], args.seeds[1] + 1)]
    table = format_table(records)
    print(table)
    result = {"command": " ".join(sys.argv) if argv is None else "nis_tails.py " + " ".join(argv),
              "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()},
              "records": records, "table": table}
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "nis-tails.json", json.dumps(result, indent=2, default=float).encode())
    if not args.no_plot:
        plot(records, args.out / "nis-tails.png")
    return result


if __name__ == "__main__":
    main()
