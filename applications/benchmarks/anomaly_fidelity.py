"""How close are a background flow's samples to the true background, one flow against an equal
mixture of several (``DensitySettings(ensemble=E)``)?

On synthetic events (:class:`~nfapps.anomaly.synthetic.DijetModel`, background only, so the
truth is known) ``--members`` flows are trained on the sidebands from different seeds, as one
ensemble, and each mixture of the first k of them (k = 1 … E) is measured on ``--truth`` true
background events of the signal region 3.3–3.7 TeV, where the flow interpolates:

* the two-sample AUC of as many flow samples (at the true events' masses) against the true
  events (:func:`~nfapps.anomaly.methods.two_sample_auc`; 0.5: indistinguishable) — what CATHODE's
  classifier sees of the flow's errors;
* the mean negative log-likelihood of the true events under the mixture (nats per event; the
  lower, the closer the density: NLL − the true density's NLL = KL(p_true ‖ p_flow) ≥ 0), and the
  true density's own NLL, from the model's closed form;

and, for each single flow, the same two numbers. Prints a table with each mixture's excess AUC
(AUC − 0.5) as a ratio to the single flows' mean excess, writes ``anomaly-fidelity.json`` and
``anomaly-fidelity.png``. The flows are checkpointed in ``<out>/anomaly-fidelity-work/``: an
interrupted run resumes.

Usage::

    python applications/benchmarks/anomaly_fidelity.py --background 200000 --members 5 --threads 2 --out results
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from anomaly import SR, sr_events  # noqa: E402  (this folder's anomaly benchmark)

from nfapps.anomaly.classifier import ClassifierSettings  # noqa: E402
from nfapps.anomaly.density import ConditionalDensity, DensitySettings  # noqa: E402
from nfapps.anomaly.methods import two_sample_auc  # noqa: E402
from nfapps.anomaly.synthetic import FEATURES, DijetModel, make_dataset  # noqa: E402
from nfapps.outputs import pyplot, save_figure, write_json  # noqa: E402
from nfapps.training import LR_SCHEDULES  # noqa: E402

logger = logging.getLogger("anomaly-fidelity")


def measure(density: ConditionalDensity, m_true: np.ndarray, x_true: np.ndarray, classifier: ClassifierSettings,
            seed: int) -> dict:
    """Two-sample AUC of samples against the true events, and the true events' mean NLL (nats) in
    physical features (the flow's density of the preprocessed features plus the preprocessing's log|det|)."""
    samples = density.sample(m_true, seed=seed)
    return {"two_sample_auc": two_sample_auc(samples, x_true, classifier, "cpu", seed),
            "nll": float(-(density.log_prob(x_true, m_true) + density.scaler.log_abs_det(x_true)).mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--background", type=int, default=200_000, help="background events generated (sidebands and SR)")
    p.add_argument("--truth", type=int, default=100_000, help="true SR background events the flows are measured on")
    p.add_argument("--members", type=int, default=5, help="flows in the ensemble")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--architecture", default="maf")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--transforms", type=int, default=6)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--lr-schedule", default=DensitySettings.lr_schedule, choices=LR_SCHEDULES,
                   help="the flows' learning-rate schedule (nfapps.training.fit)")
    p.add_argument("--trees", type=int, default=3, help="boosted-tree models of the two-sample classifier")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small everything")
    p.add_argument("--out", default="applications/benchmarks/results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.background, args.truth, args.members, args.epochs, args.transforms, args.hidden = 30_000, 4000, 2, 2, 2, [16, 16]
    if args.members < 2:
        p.error("--members must be at least 2: the point is to compare mixtures with single flows")
    out = Path(args.out)
    started = time.perf_counter()
    model = DijetModel()
    data = make_dataset(model, args.background, 0, args.seed)
    m, x = data["mjj"], np.stack([data[name] for name in FEATURES], axis=1)
    sideband = ~((m > SR[0]) & (m < SR[1]))
    m_true, x_true = sr_events(model, args.truth, False, np.random.default_rng(10_000 + args.seed))
    true_nll = float(-model.log_prob_features_background(x_true, m_true).mean())
    settings = DensitySettings(architecture=args.architecture, epochs=args.epochs, transforms=args.transforms,
                               hidden=tuple(args.hidden), seed=args.seed, ensemble=args.members,
                               lr_schedule=args.lr_schedule)
    density = ConditionalDensity.fit(x[sideband], m[sideband], settings, args.device,
                                     checkpoint=out / "anomaly-fidelity-work" / "flow.ckpt", progress=True)
    t_train = time.perf_counter() - started
    classifier = ClassifierSettings(model="trees", trees=args.trees, seed=args.seed)
    singles = []
    for e in range(args.members):
        singles.append(measure(density.member(e), m_true, x_true, classifier, args.seed + e))
        logger.info("flow %d alone: AUC %.4f, NLL %.4f", e, singles[-1]["two_sample_auc"], singles[-1]["nll"])
    mixtures = []
    for k in range(2, args.members + 1):
        mixtures.append({"flows": k, **measure(density.members(range(k)), m_true, x_true, classifier, args.seed + 100 + k)})
        logger.info("mixture of %d: AUC %.4f, NLL %.4f", k, mixtures[-1]["two_sample_auc"], mixtures[-1]["nll"])
    single_excess = float(np.mean([s["two_sample_auc"] for s in singles]) - 0.5)
    single_nll = float(np.mean([s["nll"] for s in singles]))
    result = {
        "settings": vars(args), "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                                "threads": torch.get_num_threads()},
        "sideband_events": int(sideband.sum()), "true_nll": true_nll, "singles": singles, "mixtures": mixtures,
        "single_mean_auc_excess": single_excess, "single_mean_nll": single_nll,
        "time_training_s": t_train, "wall_time_s": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "anomaly-fidelity.json", result)
    plot(out / "anomaly-fidelity.png", result)
    print(f"\n{args.members} flows on {int(sideband.sum())} sideband events; {args.truth} true SR background events "
          f"(their NLL under the true density: {true_nll:.4f} nats)")
    print(f"{'density':<18} {'two-sample AUC':>15} {'excess / singles':>17} {'NLL':>9} {'NLL − true':>11}")
    for name, r in [(f"flow {e} alone", s) for e, s in enumerate(singles)] + [(f"mixture of {r['flows']}", r) for r in mixtures]:
        print(f"{name:<18} {r['two_sample_auc']:>15.4f} {(r['two_sample_auc'] - 0.5) / single_excess:>17.2f} "
              f"{r['nll']:>9.4f} {r['nll'] - true_nll:>11.4f}")
    print(f"wrote {out / 'anomaly-fidelity.json'} and {out / 'anomaly-fidelity.png'}")
    return 0


def plot(path: Path, result: dict) -> None:
    """Two-sample AUC and NLL excess over the truth against the number of flows mixed (singles at 1)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "two_sample_auc", "two-sample AUC vs true SR background"),
                           (axes[1], "nll", "NLL of true SR background − true NLL (nats)")):
        shift = result["true_nll"] if key == "nll" else 0.0
        ax.scatter(np.ones(len(result["singles"])), [s[key] - shift for s in result["singles"]], color="C0", label="single flows")
        ax.plot([r["flows"] for r in result["mixtures"]], [r[key] - shift for r in result["mixtures"]], "o-", color="C1",
                label="mixture of the first k")
        ax.set(xlabel="flows mixed", ylabel=label, xticks=range(1, len(result["singles"]) + 1))
        ax.legend(fontsize=8)
    if result["mixtures"]:
        axes[0].axhline(0.5, color="0.5", linestyle=":", linewidth=1)
    fig.suptitle("background flow fidelity: one flow against a mixture")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
