"""Engine benchmark: nfapps against zuko and nflows, side by side, in one run.

Two coupling flows of equal architecture in every library — (a) affine (RealNVP) and
(b) rational-quadratic spline (NSF) — with ``--dim`` features, ``--layers`` coupling layers,
a conditioner MLP of ``--hidden`` widths with ReLU, ``--bins`` spline bins on [−5, 5] and
"halves" masks that alternate from layer to layer (the same split in every library):

=======  ==============================================================================
library  how the flow is built
=======  ==============================================================================
nfapps   ``RealNVP(dim, transforms=L, hidden=H)`` / ``NSF(dim, bins=K, transforms=L,
         hidden=H, bound=5)`` (linear tails with learned slopes: 3K+1 parameters per feature)
zuko     ``zuko.flows.Flow`` of ``GeneralCouplingTransform(dim, mask=…, hidden_features=H)``
         with ``MonotonicAffineTransform``, or ``MonotonicRQSTransform`` (bound 5, identity
         tails: 3K−1 parameters per feature), over a ``DiagNormal`` base
nflows   ``Flow(CompositeTransform([...]), StandardNormal)`` of ``AffineCouplingTransform``
         or ``PiecewiseRationalQuadraticCouplingTransform(tails="linear", tail_bound=5)``
         (identity tails, 3K−1 parameters), with a Linear/ReLU conditioner of widths H
=======  ==============================================================================

Every ``nn.Linear`` of every flow is re-initialised with PyTorch's default initialisation from
the same seed, so no layer is trivially the identity (nfapps starts its last layers at zero).

Tasks, each on a batch of ``--batch`` in float32 on the CPU: ``log_prob`` (no gradient),
``train_step`` (log_prob, mean, backward), ``sample`` and ``sample_and_log_prob`` (no
gradient). After a warm-up, every round times ``--block`` consecutive calls of each library, in
an order that rotates from round to round, so that all libraries see the same machine load while
each runs in its steady state; the table gives the best of ``--repeats`` calls as samples/s and
the speed-up t_peer / t_nfapps (> 1: nfapps faster). Only ratios from one run are comparable.

The round-trip check maps x → z → x through each flow's transform in float32, on
x ~ N(0, I) and on |x| ∈ [5, 10] with random signs (outside the training range and the
spline box), and reports the largest absolute error and whether every value stayed finite.

Usage::

    python applications/benchmarks/engine.py --threads 2 --out results/bench
    python applications/benchmarks/engine.py --quick --out /tmp/bench   # smoke run

Writes ``engine.json`` and ``engine.png`` into ``--out``. zuko and nflows are optional (the
``bench`` extra); a library that is not installed is skipped with a message.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfapps.atomic import write_bytes_atomic  # noqa: E402
from nfapps.builders import NSF, RealNVP  # noqa: E402
from nfapps.outputs import pyplot, save_figure  # noqa: E402
from nfapps.transforms.coupling import coupling_mask  # noqa: E402

log = logging.getLogger("nfapps.bench.engine")

FLOWS = ("affine", "spline")
TASKS = ("log_prob", "train_step", "sample", "sample_and_log_prob")
LIBRARIES = ("nfapps", "zuko", "nflows")
BOUND = 5.0  # spline box [−B, B], the same in every library
SPLINE_SPEEDUP_OVER_ZUKO = 1.2  # target on the spline rows
ROUND_TRIP_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Settings:
    dim: int = 16
    layers: int = 8
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    batch: int = 4096
    repeats: int = 30
    block: int = 3
    warmup: int = 2
    threads: int = 2
    roundtrip_batch: int = 4096
    seed: int = 0


@dataclass
class Bench:
    """One library's flow behind the benchmark's common calls: ``log_prob(x)``, ``sample(n)``,
    ``sample_and_log_prob(n)``, and the bare transform ``forward(x)`` / ``inverse(z)`` (data →
    latent and back) for the round-trip check."""

    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int], Tensor]
    sample_and_log_prob: Callable[[int], tuple[Tensor, Tensor]]
    forward: Callable[[Tensor], Tensor]
    inverse: Callable[[Tensor], Tensor]


def _halves(dim: int, layer: int) -> Tensor:
    """Conditioning mask of coupling layer ``layer``: nfapps' "halves", flipped every other layer."""
    return coupling_mask(dim, "halves", flip=layer % 2 == 1)


def build_nfapps(kind: str, s: Settings) -> Bench:
    if kind == "affine":
        flow = RealNVP(s.dim, transforms=s.layers, hidden=s.hidden)
    else:
        flow = NSF(s.dim, bins=s.bins, transforms=s.layers, hidden=s.hidden, bound=BOUND)
    return Bench(
        flow,
        flow.log_prob,
        flow.sample,
        flow.sample_and_log_prob,
        lambda x: flow.transform(x)[0],
        lambda z: flow.transform.inverse(z)[0],
    )


def build_zuko(kind: str, s: Settings) -> Bench:
    import zuko
    from zuko.flows import Flow, GeneralCouplingTransform, UnconditionalDistribution
    from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

    if kind == "affine":
        univariate, shapes = MonotonicAffineTransform, [(), ()]
    else:
        univariate, shapes = MonotonicRQSTransform, [(s.bins,), (s.bins,), (s.bins - 1,)]
    layers = [
        GeneralCouplingTransform(
            s.dim, mask=_halves(s.dim, i), univariate=univariate, shapes=shapes, hidden_features=s.hidden
        )
        for i in range(s.layers)
    ]
    base = UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(s.dim), torch.ones(s.dim), buffer=True
    )
    flow = Flow(layers, base)
    return Bench(
        flow,
        lambda x: flow().log_prob(x),
        lambda n: flow().sample((n,)),
        lambda n: flow().rsample_and_log_prob((n,)),
        lambda x: flow().transform(x),
        lambda z: flow().transform.inv(z),
    )


class _NflowsNet(nn.Module):
    """Linear/ReLU conditioner with nflows' ``net(inputs, context)`` signature."""

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(inputs)


def build_nflows(kind: str, s: Settings) -> Bench:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        PiecewiseRationalQuadraticCouplingTransform,
    )

    def net(a: int, b: int) -> nn.Module:
        return _NflowsNet(a, b, s.hidden)

    layers = []
    for i in range(s.layers):
        transformed = (~_halves(s.dim, i)).int()  # nflows: mask > 0 marks the transformed features
        if kind == "affine":
            layers.append(AffineCouplingTransform(transformed, net))
        else:
            layers.append(
                PiecewiseRationalQuadraticCouplingTransform(
                    transformed, net, num_bins=s.bins, tails="linear", tail_bound=BOUND
                )
            )
    transform = CompositeTransform(layers)
    flow = Flow(transform, StandardNormal([s.dim]))
    return Bench(
        flow,
        flow.log_prob,
        flow.sample,
        flow.sample_and_log_prob,
        lambda x: transform(x)[0],
        lambda z: transform.inverse(z)[0],
    )


BUILDERS: dict[str, Callable[[str, Settings], Bench]] = {
    "nfapps": build_nfapps,
    "zuko": build_zuko,
    "nflows": build_nflows,
}


def available_libraries() -> dict[str, str]:
    """Installed libraries and their versions; missing peers are logged and skipped."""
    found = {"nfapps": "workspace"}
    for name in LIBRARIES[1:]:
        try:
            __import__(name)
        except ImportError:
            log.warning("%s is not installed: skipping it (pip install 'nfapps[bench]' to compare)", name)
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def randomize(module: nn.Module, seed: int) -> None:
    """Re-initialise every nn.Linear with PyTorch's default init, from ``seed``."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()


def build(library: str, kind: str, s: Settings) -> Bench:
    torch.manual_seed(s.seed)
    bench = BUILDERS[library](kind, s)
    randomize(bench.module, s.seed + 1)
    return bench


def _task(bench: Bench, task: str, x: Tensor, n: int) -> Callable[[], None]:
    """A zero-argument call running ``task`` once on ``bench``."""
    params = [p for p in bench.module.parameters() if p.requires_grad]

    if task == "log_prob":
        def call() -> None:
            with torch.no_grad():
                bench.log_prob(x)
    elif task == "train_step":
        def call() -> None:
            for p in params:
                p.grad = None
            bench.log_prob(x).mean().neg().backward()
    elif task == "sample":
        def call() -> None:
            with torch.no_grad():
                bench.sample(n)
    elif task == "sample_and_log_prob":
        def call() -> None:
            with torch.no_grad():
                bench.sample_and_log_prob(n)
    else:
        raise ValueError(f"unknown task {task!r}")
    return call


def time_task(calls: dict[str, Callable[[], None]], s: Settings) -> dict[str, list[float]]:
    """Seconds per call for every library: a warm-up, then rounds in which each library runs
    ``block`` timed calls back to back (its allocator and caches in their steady state, as in
    real use), in an order that rotates from round to round, until each has ``repeats`` calls."""
    names = list(calls)
    for _ in range(s.warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-s.repeats // s.block)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            for _ in range(min(s.block, s.repeats - len(times[name]))):
                start = time.perf_counter()
                calls[name]()
                times[name].append(time.perf_counter() - start)
    return times


def run_timings(libraries: Sequence[str], s: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in FLOWS:
        benches = {lib: build(lib, kind, s) for lib in libraries}
        x = torch.randn(s.batch, s.dim, generator=torch.Generator().manual_seed(s.seed))
        for task in TASKS:
            calls = {lib: _task(b, task, x, s.batch) for lib, b in benches.items()}
            times = time_task(calls, s)
            reference = min(times["nfapps"])
            for lib in libraries:
                best = min(times[lib])
                rows.append({
                    "flow": kind,
                    "task": task,
                    "library": lib,
                    "best_s": best,
                    "median_s": statistics.median(times[lib]),
                    "samples_per_s": s.batch / best,
                    "speedup": best / reference,  # t_peer / t_nfapps, 1 for nfapps itself
                })
            log.info(
                "%-6s %-19s %s", kind, task,
                "  ".join(f"{lib} {s.batch / min(times[lib]) / 1e3:7.1f}k/s" for lib in libraries),
            )
    return rows


def round_trip(libraries: Sequence[str], s: Settings) -> list[dict[str, Any]]:
    """max |inverse(forward(x)) − x| in float32 on N(0, I) inputs and on |x| ∈ [5, 10]."""
    g = torch.Generator().manual_seed(s.seed + 2)
    n = s.roundtrip_batch
    inputs = {
        "normal": torch.randn(n, s.dim, generator=g),
        "far |x| in [5,10]": (5 + 5 * torch.rand(n, s.dim, generator=g))
        * torch.where(torch.rand(n, s.dim, generator=g) < 0.5, -1.0, 1.0),
    }
    rows = []
    for kind in FLOWS:
        for lib in libraries:
            bench = build(lib, kind, s)
            for name, x in inputs.items():
                row: dict[str, Any] = {"flow": kind, "library": lib, "inputs": name}
                try:
                    with torch.no_grad():
                        z = bench.forward(x)
                        back = bench.inverse(z)
                    finite = bool(torch.isfinite(z).all() and torch.isfinite(back).all())
                    error = (back - x).abs().max().item()
                    row.update(max_abs_error=error, finite=finite, error=None)
                except Exception as err:  # a peer may raise on hard inputs: report it
                    row.update(max_abs_error=float("nan"), finite=False, error=f"{type(err).__name__}: {err}")
                row["ok"] = row["finite"] and row["max_abs_error"] <= ROUND_TRIP_TOLERANCE
                rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]], trips: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets: nfapps at least as fast as the fastest peer on every row, ≥ 1.2× zuko
    on the spline rows; round trips within 1e-3 and finite, in and out of range."""
    targets: dict[str, Any] = {"rows": []}
    for kind in FLOWS:
        for task in TASKS:
            peers = {r["library"]: r["speedup"] for r in rows if r["flow"] == kind and r["task"] == task and r["library"] != "nfapps"}
            if not peers:
                continue
            entry = {"flow": kind, "task": task, "vs_fastest_peer": min(peers.values())}
            entry["at_least_fastest_peer"] = entry["vs_fastest_peer"] >= 1.0
            if kind == "spline" and "zuko" in peers:
                entry["vs_zuko"] = peers["zuko"]
                entry["spline_1.2x_zuko"] = peers["zuko"] >= SPLINE_SPEEDUP_OVER_ZUKO
            targets["rows"].append(entry)
    ours = [t for t in trips if t["library"] == "nfapps"]
    targets["round_trip_ok"] = all(t["ok"] for t in ours)
    targets["speed_ok"] = all(
        e["at_least_fastest_peer"] and e.get("spline_1.2x_zuko", True) for e in targets["rows"]
    )
    return targets


def format_table(rows: list[dict[str, Any]], trips: list[dict[str, Any]], libraries: Sequence[str]) -> str:
    peers = [lib for lib in libraries if lib != "nfapps"]
    head = f"{'flow':<7}{'task':<21}" + "".join(f"{lib + ' /s':>13}" for lib in libraries)
    head += "".join(f"{lib + '/nfapps':>15}" for lib in peers)
    lines = [head, "-" * len(head)]
    for kind in FLOWS:
        for task in TASKS:
            by = {r["library"]: r for r in rows if r["flow"] == kind and r["task"] == task}
            line = f"{kind:<7}{task:<21}" + "".join(f"{by[lib]['samples_per_s']:>13,.0f}" for lib in libraries)
            line += "".join(f"{by[lib]['speedup']:>14.2f}×" for lib in peers)
            lines.append(line)
    lines += ["", "speed-up = t_peer / t_nfapps (best of the repeats; > 1: nfapps faster)", ""]
    lines.append(f"{'round trip (float32)':<28}{'library':<9}{'inputs':<20}{'max |Δx|':>12}  finite")
    for t in trips:
        err = "raised " + t["error"][:60] if t["error"] else f"{t['max_abs_error']:>12.3g}  {t['finite']}"
        lines.append(f"{t['flow']:<28}{t['library']:<9}{t['inputs']:<20}{err}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], libraries: Sequence[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(FLOWS), figsize=(12, 4.5), sharey=False)
    width = 0.8 / len(libraries)
    for ax, kind in zip(axes, FLOWS):
        for j, lib in enumerate(libraries):
            values = [
                next(r["samples_per_s"] for r in rows if r["flow"] == kind and r["task"] == t and r["library"] == lib)
                for t in TASKS
            ]
            ax.bar([i + (j - (len(libraries) - 1) / 2) * width for i in range(len(TASKS))], values, width, label=lib)
        ax.set_xticks(range(len(TASKS)), [t.replace("_and_", "+\n") for t in TASKS])
        ax.set_title(f"{kind} coupling flow")
        ax.set_ylabel("samples / s (higher is better)")
        ax.legend()
    save_figure(fig, path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4096, help="batch size of every call (default 4096)")
    p.add_argument("--dim", type=int, default=16, help="number of features (default 16)")
    p.add_argument("--layers", type=int, default=8, help="coupling layers (default 8)")
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128], help="conditioner widths (default 128 128)")
    p.add_argument("--bins", type=int, default=8, help="spline bins (default 8)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per library and task (default 30)")
    p.add_argument("--block", type=int, default=3, help="consecutive calls per library in a round (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("results/bench"), help="output folder for engine.json and engine.png")
    p.add_argument("--only", nargs="+", choices=LIBRARIES, default=None, help="restrict to these libraries")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 warm-up, 2 repeats")
    p.add_argument("--no-plot", action="store_true", help="do not write engine.png")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns what it writes to ``engine.json``."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        s = Settings(dim=min(args.dim, 4), layers=2, hidden=(16,), bins=min(args.bins, 4), batch=min(args.batch, 64),
                     repeats=2, block=1, warmup=1, threads=torch.get_num_threads(), roundtrip_batch=64)
    else:
        s = Settings(dim=args.dim, layers=args.layers, hidden=tuple(args.hidden), bins=args.bins, batch=args.batch,
                     repeats=args.repeats, block=args.block, threads=torch.get_num_threads())
    if s.dim < 2 or s.bins < 2:
        raise SystemExit("--dim and --bins must be at least 2")
    versions = available_libraries()
    libraries = [lib for lib in LIBRARIES if lib in versions and (args.only is None or lib in args.only or lib == "nfapps")]
    log.info("settings: %s; libraries: %s; torch %s", asdict(s), versions, torch.__version__)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Inputs to the softmax are not scaled down")  # nflows, MLP nets
        rows = run_timings(libraries, s)
        trips = round_trip(libraries, s)
    targets = check_targets(rows, trips)
    table = format_table(rows, trips, libraries)
    print(table)
    result = {
        "settings": asdict(s),
        "command": " ".join(sys.argv) if argv is None else "engine.py " + " ".join(argv),
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                        "libraries": {lib: versions[lib] for lib in libraries}},
        "timings": rows,
        "round_trip": trips,
        "targets": targets,
        "table": table,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "engine.json", json.dumps(result, indent=2).encode())  # atomically
    if not args.no_plot:
        plot(rows, libraries, args.out / "engine.png")
    log.info("wrote %s; targets: speed %s, round trip %s", args.out / "engine.json",
             "met" if targets["speed_ok"] else "missed", "met" if targets["round_trip_ok"] else "missed")
    return result


if __name__ == "__main__":
    main()
