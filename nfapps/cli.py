"""The ``nfapps`` command: a thin layer over the library (everything here a script can do too)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from . import __version__


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes, accepted after the command name too."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars; warnings only")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
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
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"nfapps: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nfapps: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
