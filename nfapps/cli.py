"""The ``nfapps`` command: a thin layer over the library (everything here a script can do too)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from . import __version__
from .allocator import keep_freed_memory


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, accepted after the command name too."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars; warnings only")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    return common


def _add_toy(commands: argparse._SubParsersAction) -> None:
    from .toy_job import FLOWS
    from .toys import TOY_DENSITIES

    p = commands.add_parser(
        "toy",
        parents=[_common_options()],
        help="train a flow on a built-in 2-D toy density; write samples, a density plot and a JSON summary",
        description="Train a normalizing flow on a built-in 2-D toy density and write samples.csv, "
        "density.png, result.json and the trained flow (flow.nfapps) into --out. "
        "Re-running with the same --out resumes an interrupted run from its checkpoint.",
    )
    p.add_argument("--density", choices=sorted(TOY_DENSITIES), default="moons", help="toy density (default: moons)")
    p.add_argument("--flow", choices=sorted(FLOWS), default="nsf", help="flow family (default: nsf)")
    p.add_argument("--out", default="runs/toy", help="output directory (default: runs/toy)")
    p.add_argument("--epochs", type=int, default=40, help="maximum training epochs (default: 40)")
    p.add_argument("--train-size", type=int, default=20000, help="training points drawn from the density")
    p.add_argument("--samples", type=int, default=20000, help="flow samples written to samples.csv")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        from .toy_job import run_toy

        result = run_toy(
            density=args.density, flow=args.flow, out=args.out, samples=args.samples, train_size=args.train_size,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
            progress=not args.quiet,
        )
        summary = {k: result[k] for k in ("density", "flow", "test_nll", "gaussian_test_nll", "grid_integral", "wall_time_s")}
        print(json.dumps(summary, indent=2))
        return 0

    p.set_defaults(run=run)


def _one_line(err: BaseException) -> ValueError:
    """The error as a ValueError whose message fits on one line (user integrands may raise anything)."""
    return ValueError(" ".join(str(err).split("\n")))


def _add_integrate(commands: argparse._SubParsersAction) -> None:
    from .integration.job import DEFAULTS

    p = commands.add_parser(
        "integrate",
        parents=[_common_options()],
        help="integrate a function by neural importance sampling; write the result, the sampler and plots",
        description="Train a flow sampler for the integrand, estimate the integral from fresh samples and "
        "write a run directory (--out): result.json, sampler.nfapps, history.csv, training.png, weights.png "
        "and, with --events, events.h5. An interrupted run continues with --resume and ends exactly as an "
        "uninterrupted one would. Without arguments: camel-4 with 200k calls, seconds of training.",
        epilog="examples: nfapps integrate camel-4 --calls 1000000 --out runs/camel4 --seed 0 --device auto; "
        "nfapps integrate mymod.py:f --dim 3 --bounds 0 1 0 2 -1 1; nfapps integrate --list",
    )
    p.add_argument("integrand", nargs="?", default=None,
                   help=f"a built-in name (see --list), module:function or path/to/file.py:function; the function "
                   f"maps points (n, dim) (torch or NumPy) to values (n,) (default: {DEFAULTS['integrand']})")
    p.add_argument("--list", action="store_true", help="list the built-in integrands with their dimensions and exact values")
    p.add_argument("--dim", type=int, help="dimension of a user integrand (built-ins know theirs)")
    p.add_argument("--bounds", type=float, nargs="+", metavar="X",
                   help="the box: low high per dimension (2·dim numbers), or one low high for all (default: [0, 1]^dim)")
    p.add_argument("--calls", type=int, help=f"integrand calls in all (default: {DEFAULTS['calls']:,})")
    p.add_argument("--training-fraction", type=float,
                   help=f"fraction of the calls spent training the sampler (default: {DEFAULTS['training_fraction']})")
    p.add_argument("--batch", type=int, help=f"training batch (default: {DEFAULTS['batch']})")
    p.add_argument("--loss", choices=("variance", "kl"), help=f"training loss (default: {DEFAULTS['loss']})")
    p.add_argument("--reuse", type=int, help=f"gradient steps per training batch (default: {DEFAULTS['reuse']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default: {DEFAULTS['lr']})")
    p.add_argument("--bins", type=int, help="spline bins of the sampler (default: 16 up to dim 4, else 8)")
    p.add_argument("--transforms", type=int,
                   help="coupling layers of the sampler (default: 2⌈log2 dim⌉ up to dim 4, then 6, "
                        "or more where every dimension needs more to condition every other)")
    p.add_argument("--hidden", type=int, nargs="+", metavar="H", help="hidden layer widths (default: 64 64 up to dim 8, else 32 32)")
    p.add_argument("--pre-map", type=int, help=f"bins of the flow's learnable per-dimension pre-map, 0 for none (default: {DEFAULTS['pre_map']})")
    p.add_argument("--grid", type=int,
                   help=f"bins per dimension of the VEGAS grid adapted beside the flow, 0 for none (default: {DEFAULTS['grid']})")
    p.add_argument("--companion", type=int,
                   help="Gaussians of the defensive companion drawing 10%% of the estimate's points beside the flow where "
                        f"that measured no more variance than the flow alone, 0 for none (default: {DEFAULTS['companion']})")
    p.add_argument("--grid-fraction", type=float,
                   help=f"fraction of the training calls that adapt the grid (default: {DEFAULTS['grid_fraction']})")
    p.add_argument("--min-ess", type=float,
                   help="effective sample size (fraction of a batch) below which the flow trains on a tempered target "
                        f"(default: {DEFAULTS['min_ess']})")
    p.add_argument("--tempering-ramp", type=float,
                   help="fraction of the training over which the tempering exponent may rise to 1, for a run that starts "
                        f"tempered; 0 for no ramp (default: {DEFAULTS['tempering_ramp']})")
    p.add_argument("--estimate-batch", type=int, help=f"points per batch of the estimate (default: {DEFAULTS['estimate_batch']})")
    p.add_argument("--no-stratify", dest="stratify", action="store_false", default=None,
                   help="estimate from independent draws instead of draws stratified in the sampler's base space")
    p.add_argument("--no-choose", dest="choose", action="store_false", default=None,
                   help="always estimate with the trained flow (by default pilots choose between it, the grid and uniform points)")
    p.add_argument("--replica-size", type=int,
                   help=f"replica size of the bootstrap unweighting efficiency (default: {DEFAULTS['replica_size']:,})")
    p.add_argument("--events", type=int, help="also write this many events to events.h5 (default: none)")
    p.add_argument("--weighted", action="store_true", default=None, help="weighted instead of unweighted events")
    p.add_argument("--seed", type=int, help="seed of the sampler and every batch (default: 0)")
    p.add_argument("--out", help="run directory (default: runs/<integrand>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (settings not given are taken from it); a finished run is reported")

    def run(args: argparse.Namespace) -> int:
        from .integration import INTEGRANDS
        from .integration.job import run_integration

        if args.list:
            print(f"{'name':<14} {'dim':>4} {'exact':>22}  description")
            for name, f in INTEGRANDS.items():
                print(f"{name:<14} {f.dim:>4} {f.exact:>22.15g}  {f.description}")
            return 0
        name = args.integrand or DEFAULTS["integrand"]
        out = args.out or f"runs/{name.rsplit(':', 1)[-1] if ':' in name else name}"
        try:
            result = run_integration(
                args.integrand, dim=args.dim, bounds=args.bounds, calls=args.calls,
                training_fraction=args.training_fraction, batch=args.batch, loss=args.loss, reuse=args.reuse,
                lr=args.lr, seed=args.seed, device=args.device, out=out, resume=args.resume, events=args.events,
                unweighted=None if args.weighted is None else not args.weighted, progress=not args.quiet,
                bins=args.bins, transforms=args.transforms, hidden=args.hidden, pre_map=args.pre_map,
                grid=args.grid, companion=args.companion, grid_fraction=args.grid_fraction, min_ess=args.min_ess,
                tempering_ramp=args.tempering_ramp,
                estimate_batch=args.estimate_batch, replica_size=args.replica_size, stratify=args.stratify,
                choose=args.choose,
            )
        except ValueError as err:
            raise _one_line(err) from err
        except KeyboardInterrupt:
            print(f"nfapps: interrupted; continue with: nfapps integrate --resume --out {out}", file=sys.stderr)
            return 130
        r = result["result"]
        keys = ("value", "error", "relative_std", "effective_sample_size", "unweighting_efficiency",
                "unweighting_efficiency_bootstrap", "bootstrap_replica_size", "unweighting_efficiency_truncated",
                "calls_training", "calls_pilot", "calls_estimate", "sampler", "time_integrand_s", "time_sampler_s", "time_training_s",
                "peak_memory_mb", "device")
        summary = {"integrand": result["integrand"], "exact": result["exact"], "pull": result["pull"],
                   **{k: r[k] for k in keys}, "out": out}
        print(json.dumps(summary, indent=2))
        return 0

    p.set_defaults(run=run)


def _add_events(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "events",
        parents=[_common_options()],
        help="generate unweighted (or weighted) events from a trained sampler into HDF5",
        description="Draw events from a saved sampler (a run's sampler.nfapps) and write their points x and "
        "weights to an HDF5 file. Unweighted: accepted with probability min(|w|/w_max, 1) against the cap "
        "w_max that leaves a fraction 1e-3 of the weight above it; sum(weight)/n estimates the integral "
        "without bias. The integrand and its box default to those the sampler was trained for.",
        epilog="example: nfapps events --sampler runs/camel-4/sampler.nfapps --integrand camel-4 -n 10000 --out events.h5",
    )
    p.add_argument("--sampler", required=True, help="a trained sampler (sampler.nfapps of an integrate run)")
    p.add_argument("--integrand", help="built-in name, module:function or file.py:function (default: the sampler's)")
    p.add_argument("--dim", type=int, help="dimension of a user integrand (default: the sampler's)")
    p.add_argument("--bounds", type=float, nargs="+", metavar="X", help="the box, as for integrate (default: the sampler's)")
    p.add_argument("-n", "--events", type=int, default=10_000,
                   help="events (weighted: exactly; unweighted: about, see the description) (default: 10000)")
    p.add_argument("--weighted", action="store_true", help="weighted events: every point, with its weight")
    p.add_argument("--calibration", type=int, help="points that fix the unweighting cap (default: n within [10⁴, 10⁵])")
    p.add_argument("--out", default="events.h5", help="output HDF5 file (default: events.h5)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--seed", type=int, default=0)

    def run(args: argparse.Namespace) -> int:
        from .integration.events import generate_events

        try:
            attrs = generate_events(
                args.sampler, args.integrand, args.events, args.out, unweighted=not args.weighted, seed=args.seed,
                dim=args.dim, bounds=args.bounds, calibration=args.calibration, device=args.device,
                overwrite=args.force, progress=not args.quiet,
            )
        except ValueError as err:
            raise _one_line(err) from err
        keys = ("mode", "n_events", "n_tried", "integral", "integral_error", "w_max", "overweight_events", "integrand")
        print(json.dumps({**{k: attrs[k] for k in keys}, "out": args.out}, indent=2))
        return 0

    p.set_defaults(run=run)


def _add_anomaly(commands: argparse._SubParsersAction) -> None:
    from .anomaly.classifier import CLASSIFIER_MODELS
    from .anomaly.density import DensitySettings
    from .training import LR_SCHEDULES

    p = commands.add_parser(
        "anomaly",
        help="resonant anomaly search in HEP events (ANODE, CATHODE, CWoLa): generate synthetic events, search",
        description="Density-based anomaly search: 'generate' writes synthetic LHCO-like dijet events with known "
        "densities; 'search' trains on the sidebands of a resonant mass, scores the signal region, and runs the bump hunt.",
    )
    sub = p.add_subparsers(title="anomaly commands", metavar="<step>")

    g = sub.add_parser("generate", parents=[_common_options()], help="write synthetic dijet events (HDF5 or ROOT)",
                       description="Synthetic LHCO-like dijet events (m_jj and jet substructure) with closed-form "
                       "background and signal densities; columns mjj, mj1, delta_mj, tau21_1, tau21_2, label (TeV).",
                       epilog="example: nfapps anomaly generate --background 200000 --s-over-b 0.006 --out events.h5")
    g.add_argument("--out", default="events.h5", help="output file, .h5/.hdf5 or .root (default: events.h5)")
    g.add_argument("--background", type=int, default=200_000, help="background events (default: 200000)")
    amount = g.add_mutually_exclusive_group()
    amount.add_argument("--signal", type=int, help="signal events to inject")
    amount.add_argument("--s-over-b", type=float, default=0.006, help="signal-to-background ratio in the signal region "
                        "3.3-3.7 TeV (default: 0.006)")
    g.add_argument("--correlation", type=float, default=0.0, help="jet masses shifted by this × m_jj (default: 0)")
    g.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    g.add_argument("--seed", type=int, default=0)

    def generate(args: argparse.Namespace) -> int:
        from .anomaly.job import run_generate

        print(json.dumps(run_generate(args.out, args.background, args.signal, args.s_over_b, args.correlation, args.seed,
                                      overwrite=args.force), indent=2))
        return 0

    g.set_defaults(run=generate)

    s = sub.add_parser("search", parents=[_common_options()], help="train, score, bump-hunt; write results and plots",
                       description="Train the background density p(x|m) on the sidebands of the mass, score the signal "
                       "region with the method, and run the bump hunt after cuts on the score. Writes summary.json, "
                       "scores.csv and plots into --out; re-running with the same --out resumes the density's training.",
                       epilog="example: nfapps anomaly search --input events.h5 --mass mjj --features mj1 delta_mj "
                       "tau21_1 tau21_2 --label label --sr 3.3 3.7 --method cathode --out results/")
    s.add_argument("--input", required=True, help="events: .root (uproot), .h5/.hdf5 (h5py) or .npy")
    s.add_argument("--mass", required=True, help="the resonant variable (branch, column or expression)")
    s.add_argument("--features", nargs="+", required=True, help="feature names or name=expression")
    s.add_argument("--label", help="truth label column (1 signal, 0 background), for SIC curves")
    s.add_argument("--tree", help="ROOT tree (default: the only one)")
    s.add_argument("--key", help="HDF5 group or dataset (default: detected)")
    s.add_argument("--columns", nargs="+", help="column names of a 2-D .npy or HDF5 array")
    s.add_argument("--sr", type=float, nargs=2, required=True, metavar=("LOW", "HIGH"), help="signal region of the mass")
    s.add_argument("--method", default="cathode", help="cathode, lacathode, anode, cwola or supervised (default: cathode; lacathode's "
                   "cut does not sculpt the mass spectrum, so its bump hunt holds where x depends on m)")
    s.add_argument("--fit-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="mass range of the bump hunt's sideband fit (default: from where the spectrum has fallen to half "
                        "its peak, above the trigger turn-on, to the largest mass)")
    s.add_argument("--out", default="runs/anomaly", help="run directory (default: runs/anomaly)")
    s.add_argument("--epochs", type=int, default=100, help="density epochs (early stopping; default: 100)")
    s.add_argument("--classifier", default="nn", choices=CLASSIFIER_MODELS,
                   help="classifier model: nn (a network) or trees (boosted decision trees, scikit-learn; default: nn)")
    s.add_argument("--classifier-epochs", type=int, default=40, help="epochs per network classifier (default: 40)")
    s.add_argument("--folds", type=int, default=5, help="cross-fitting folds (default: 5)")
    s.add_argument("--flow-folds", type=int, default=2,
                   help="cathode, lacathode: background densities cross-fitted on this many sideband folds, so that the "
                        "sideband events of the bump hunt are scored out of sample (default: 2; 1: one density)")
    s.add_argument("--flow-ensemble", type=int,
                   help="cathode, anode: each background density an equal mixture of this many flows trained from different "
                        "seeds; its samples are closer to the true background (README), at this many times the training "
                        "(default: 3 for cathode and anode; lacathode needs 1)")
    s.add_argument("--lr-schedule", default=DensitySettings.lr_schedule, choices=LR_SCHEDULES,
                   help="the flows' learning-rate schedule: plateau (halve after 3 epochs without a lower validation NLL), "
                        f"cosine or constant (default: {DensitySettings.lr_schedule})")
    s.add_argument("--seed", type=int, default=0)

    def search(args: argparse.Namespace) -> int:
        from .anomaly.job import run_search_job

        summary = run_search_job(args.input, args.mass, args.features, args.sr, args.method, args.out, label=args.label,
                                 tree=args.tree, key=args.key, columns=args.columns, epochs=args.epochs,
                                 classifier_epochs=args.classifier_epochs, folds=args.folds, seed=args.seed,
                                 device=args.device, progress=not args.quiet, fit_range=args.fit_range,
                                 classifier=args.classifier, flow_folds=args.flow_folds,
                                 flow_ensemble=args.flow_ensemble, lr_schedule=args.lr_schedule)
        keys = ("method", "events", "sr_events", "two_sample_auc_control", "max_sic")
        print(json.dumps({k: summary[k] for k in keys if k in summary} | {"out": args.out}, indent=2))
        return 0

    s.set_defaults(run=search)


def _add_codec(commands: argparse._SubParsersAction) -> None:
    from .codec.baseline import ARCHITECTURES, BaselineConfig  # torch only; CompressAI loads when a model is built
    from .codec.codec import DEFAULT_REFINE
    from .codec.model import CONDITIONAL_FROM_LAMBDA, ENTROPY_MODELS, CodecConfig, entropy_model_for
    from .codec.distortion import DISTORTIONS
    from .codec.train import TrainingSettings

    refine_help = (f"most Adam steps of the encoder's rate–distortion optimisation of the latents (default: {DEFAULT_REFINE} "
                   "for a codec that stores its training objective, as `nfapps codec train` writes it; 0: plain rounding, "
                   "about 10× faster)")
    p = commands.add_parser(
        "codec",
        help="lossy image compression with a flow codec: train, compress, decompress, evaluate",
        description="A flow image codec (Helminger et al. 2021): an invertible multi-scale flow, a quantized latent "
        "and CompressAI entropy models, writing real .nfic files.",
    )
    sub = p.add_subparsers(title="codec commands", metavar="<step>")

    t = sub.add_parser("train", parents=[_common_options()], help="train a codec on image patches (resumes from OUT.ckpt)",
                       epilog="example: nfapps codec train --out codec.nfc --lmbda 0.01 --time-budget 1800")
    t.add_argument("--out", default="codec.nfc", help="the trained codec (default: codec.nfc); OUT.ckpt and OUT.json beside it")
    t.add_argument("--images", help="folder of training images (default: the bundled training photos)")
    t.add_argument("--lmbda", type=float, default=0.01,
                   help="distortion weight λ in R + λ·D (default: 0.01; CompressAI's scales: 0.0018–0.18 for MSE, 2.4–220 for MS-SSIM)")
    t.add_argument("--distortion", choices=DISTORTIONS, default=TrainingSettings.distortion,
                   help="D: 255²·MSE (default) or 1 − MS-SSIM (needs --patch 192 or more)")
    t.add_argument("--entropy-model", choices=("auto", *ENTROPY_MODELS), default="auto",
                   help=f"entropy model of the latents (default: auto — conditional for MSE with λ ≥ {CONDITIONAL_FROM_LAMBDA:g}, "
                        "else factorized: what measured best)")
    t.add_argument("--architecture", choices=("flow", *ARCHITECTURES), default="flow",
                   help="flow: the flow codec (default); bmshj2018-*: CompressAI's autoencoder baselines")
    t.add_argument("--levels", type=int, default=3)
    t.add_argument("--steps-per-level", type=int, default=4, help="Glow steps per level (default: 4)")
    t.add_argument("--hidden", type=int, default=64)
    t.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--patch", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-drop-at", type=float, default=TrainingSettings.lr_drop_at,
                   help="share of the run (of --time-budget if given, else of --steps) after which the learning rate drops 10× (default: 0.85)")
    t.add_argument("--time-budget", type=float, default=math.inf, help="stop after this many seconds of training")
    t.add_argument("--seed", type=int, default=0)

    def train(args: argparse.Namespace) -> int:
        from .codec.job import run_train

        if args.architecture == "flow":
            config = CodecConfig(levels=args.levels, steps=args.steps_per_level, hidden=args.hidden,
                                 entropy_model=entropy_model_for(args.lmbda, args.distortion, args.entropy_model))
        else:
            config = BaselineConfig(args.architecture)
        settings = TrainingSettings(lmbda=args.lmbda, steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
                                    seed=args.seed, time_budget_s=args.time_budget, lr_drop_at=args.lr_drop_at,
                                    distortion=args.distortion)
        summary = run_train(args.out, args.images, config, settings, device=args.device, progress=not args.quiet)
        keys = ("model", "identifier", "steps", "final_bpp", "final_psnr", "final_ms_ssim")
        print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=2))
        return 0

    t.set_defaults(run=train)

    c = sub.add_parser("compress", parents=[_common_options()], help="image → .nfic file",
                       epilog="example: nfapps codec compress --model codec.nfc photo.png photo.nfic")
    c.add_argument("--model", required=True, help="a trained codec (nfapps codec train)")
    c.add_argument("input", help="image file (PNG, JPEG, …; 8-bit RGB or grayscale)")
    c.add_argument("output", help="the compressed file to write")
    c.add_argument("--refine", type=int, default=None, metavar="STEPS", help=refine_help)

    def compress(args: argparse.Namespace) -> int:
        from .codec.codec import ImageCodec

        codec = ImageCodec.load(args.model, args.device, refine=args.refine)
        print(json.dumps(codec.compress_file(args.input, args.output) | {"output": args.output}))
        return 0

    c.set_defaults(run=compress)

    d = sub.add_parser("decompress", parents=[_common_options()], help=".nfic file → PNG image",
                       epilog="example: nfapps codec decompress --model codec.nfc photo.nfic photo.png")
    d.add_argument("--model", required=True, help="the codec that compressed the file")
    d.add_argument("input", help="a .nfic file")
    d.add_argument("output", help="the image to write (PNG unless the suffix is .bmp/.tif/.ppm)")

    def decompress(args: argparse.Namespace) -> int:
        from .codec.codec import ImageCodec

        pixels = ImageCodec.load(args.model, args.device).decompress_file(args.input, args.output)
        print(json.dumps({"output": args.output, "height": pixels.shape[0], "width": pixels.shape[1]}))
        return 0

    d.set_defaults(run=decompress)

    e = sub.add_parser("evaluate", parents=[_common_options()], help="bits per pixel (file sizes), PSNR and timings on a folder",
                       epilog="example: nfapps codec evaluate --model codec.nfc --images kodak/ --out eval.json")
    e.add_argument("--model", required=True)
    e.add_argument("--images", help="folder of images (default: the bundled evaluation photos)")
    e.add_argument("--out", default="codec-eval.json", help="JSON summary (default: codec-eval.json)")
    e.add_argument("--refine", type=int, default=None, metavar="STEPS", help=refine_help)

    def evaluate(args: argparse.Namespace) -> int:
        from .codec.job import run_evaluate

        summary = run_evaluate(args.model, args.out, args.images, args.device, refine=args.refine)
        print(json.dumps({k: summary[k] for k in ("model", "mean_bpp", "mean_psnr")} | {"out": args.out}, indent=2))
        return 0

    e.set_defaults(run=evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfapps",
        description="Normalizing flows for scientists: train, sample and evaluate exact flow models.",
        epilog="Run 'nfapps <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"nfapps {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; warnings only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(title="commands", metavar="<command>")
    _add_toy(commands)
    _add_integrate(commands)
    _add_events(commands)
    _add_anomaly(commands)
    _add_codec(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    keep_freed_memory()  # a job pushes many batches through a flow: reuse freed blocks (see nfapps.allocator)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as err:
        print(f"nfapps: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nfapps: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
