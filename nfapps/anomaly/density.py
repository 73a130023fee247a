"""The conditional density p(x | m) of the features given the resonant mass, by an engine flow.

Features are preprocessed (:class:`~nfapps.anomaly.preprocess.LogitScaler`), their polynomial
trend in the mass taken out (:class:`~nfapps.anomaly.preprocess.MassTrend`: location and
log-width, linear by default), and
the mass standardised; the flow — the engine's MAF with affine or spline layers, or a spline coupling
NSF — is trained by maximum likelihood with :func:`nfapps.fit` (early stopping on a held-out
tenth, checkpoints that resume).

With ``DensitySettings(ensemble=E)`` E flows are trained on the same events from different seeds
(initial weights, validation split, batch order) and the density is their equal mixture,
p(x | m) = (1/E) Σ_e p_e(x | m): sampling picks a member at random for each draw. Each flow errs
in its own way where the data are thin, and the mixture averages those errors out: trained on the
sidebands of 200k synthetic background events (README, ``anomaly_fidelity.py``) and measured on
100k true SR background events, the KL divergence of the truth from the density fell from
0.0114 nats (one flow, mean of five) to 0.0085 (three mixed) and 0.0074 (five), and the
two-sample AUC of the samples from 0.518 to 0.515 and 0.507. A mixture has no single base space, so
``latent`` (LaCATHODE's) needs E = 1.

``log_prob`` is the density of the *preprocessed* features:
density ratios at the same x (ANODE's) need nothing more, and a Jacobian would cancel.
``sample`` draws x ~ p(x | m) for given masses and maps it back to physical features;
``latent`` maps events to the flow's base space, where background is N(0, I) at every mass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from ..atomic import dump, load_container
from ..builders import MAF, NSF
from ..flow import Flow
from ..outputs import finite
from ..serialization import flow_from_payload, flow_payload
from ..training import fit
from .preprocess import LogitScaler, MassTrend, Standardizer

logger = logging.getLogger(__name__)

ARCHITECTURES = ("maf", "maf-spline", "nsf")


@dataclass
class DensitySettings:
    """The flow and how it is trained."""

    architecture: str = "maf"  # measured best on the real LHCO arrays (see the README)
    transforms: int = 6
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "plateau"  # halve the rate after 3 stalled epochs (nfapps.training.fit); measured better (README)
    weight_decay: float = 1e-6
    patience: int = 10
    seed: int = 0
    # degrees of the polynomial trends in m of the preprocessed features' location and log-width, taken
    # out before the flow (0: none); measured on background only, they lower the SR's false excess
    # (README, "null study")
    trend_degree: int = 1
    scale_degree: int = 0
    ensemble: int = 1  # flows trained from different seeds; the density is their equal mixture

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        self.trend_degree = MassTrend.check_degree(self.trend_degree)
        self.scale_degree = MassTrend.check_degree(self.scale_degree, "scale trend degree")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, (int, np.integer)) or self.ensemble < 1:
            raise ValueError(f"the flow ensemble must be an integer ≥ 1 (1: one flow), got {self.ensemble!r}")
        self.ensemble = int(self.ensemble)

    def member_seed(self, member: int) -> int:
        """The seed of ensemble member ``member`` (member 0: ``seed`` itself)."""
        return self.seed + 1000 * member

    def build(self, features: int, member: int = 0) -> Flow:
        torch.manual_seed(self.member_seed(member))
        if self.architecture == "nsf":
            return NSF(features, context=1, bins=self.bins, transforms=self.transforms, hidden=self.hidden, bound=6.0)
        elementwise = "spline" if self.architecture == "maf-spline" else "affine"
        return MAF(features, context=1, transforms=self.transforms, hidden=self.hidden, elementwise=elementwise,
                   bins=self.bins, bound=6.0)


class ConditionalDensity:
    """p(x | m): a preprocessing of x and m and a conditional flow on the result (or an equal
    mixture of ``settings.ensemble`` flows)."""

    def __init__(self, scaler: LogitScaler, mass_scaler: Standardizer, flows: Flow | list[Flow], settings: DensitySettings,
                 trend: MassTrend | None = None) -> None:
        self.flows = [flows] if isinstance(flows, Flow) else list(flows)
        if len(self.flows) != settings.ensemble:
            raise ValueError(f"the settings ask for an ensemble of {settings.ensemble} flows, got {len(self.flows)}")
        self.scaler, self.mass_scaler, self.settings = scaler, mass_scaler, settings
        self.trend = trend or MassTrend.none(len(scaler.low))

    def member(self, e: int) -> "ConditionalDensity":
        """Ensemble member e alone, with the same preprocessing."""
        return self.members([e])

    def members(self, chosen: Sequence[int]) -> "ConditionalDensity":
        """The equal mixture of the chosen ensemble members alone, with the same preprocessing."""
        flows = [self.flows[e] for e in chosen]
        return ConditionalDensity(self.scaler, self.mass_scaler, flows, replace(self.settings, ensemble=len(flows)), self.trend)

    @classmethod
    def fit(cls, x: np.ndarray, m: np.ndarray, settings: DensitySettings | None = None, device: str = "auto",
            checkpoint: str | Path | None = None, progress: bool = True,
            scaler: LogitScaler | None = None, trend: MassTrend | None = None) -> "ConditionalDensity":
        """Train on events x (N, k) with masses m (N,); ``scaler`` and ``trend`` reuse a fitted
        preprocessing (ANODE's two densities share it: a density ratio then compares like with like)."""
        s = settings or DensitySettings()
        x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64).ravel()
        if x.ndim != 2 or len(x) != len(m):
            raise ValueError(f"need features (N, k) and N masses, got {x.shape} and {m.shape}")
        scaler = scaler or LogitScaler.fit(x)
        mass_scaler = Standardizer.fit(m)
        y = scaler.transform(x)
        trend = trend or MassTrend.fit(y, m, s.trend_degree, s.scale_degree)
        features = torch.as_tensor(trend.remove(y, m), dtype=torch.float32)
        context = torch.as_tensor(mass_scaler.transform(m)[:, None], dtype=torch.float32)
        flows = []
        for e in range(s.ensemble):
            if s.ensemble > 1:
                logger.info("flow %d of the ensemble of %d", e + 1, s.ensemble)
            flow = s.build(x.shape[1], e)
            fit(flow, features, context, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, lr_schedule=s.lr_schedule,
                weight_decay=s.weight_decay, patience=s.patience, seed=s.member_seed(e), device=device,
                checkpoint=_member_checkpoint(checkpoint, e), progress=progress)
            flows.append(flow.cpu().eval())
        return cls(scaler, mass_scaler, flows, s, trend)

    def _context(self, m: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.mass_scaler.transform(np.asarray(m, dtype=np.float64).ravel())[:, None], dtype=torch.float32)

    def _flow_input(self, x: np.ndarray, m: np.ndarray) -> torch.Tensor:
        """What the flow models: the preprocessed features less their mass trend."""
        return torch.as_tensor(self.trend.remove(self.scaler.transform(x), m), dtype=torch.float32)

    @torch.no_grad()
    def log_prob(self, x: np.ndarray, m: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """log p(y | m) of the preprocessed features y of x: the flow's density of the de-trended
        features (an ensemble's: log (1/E) Σ_e p_e) plus the trend's log|det| at m."""
        y, c = self._flow_input(x, m), self._context(m)
        members = np.stack([np.concatenate([flow.log_prob(a, b).double().numpy() for a, b in zip(y.split(batch), c.split(batch))])
                            if len(y) else np.zeros(0) for flow in self.flows])
        return logsumexp(members, axis=0) - np.log(len(self.flows)) + self.trend.log_abs_det(m)

    @torch.no_grad()
    def latent(self, x: np.ndarray, m: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """The flow's base point z = f(y | m) of the preprocessed features y of x. For background
        events z ~ N(0, I) at every mass (as far as the flow is right): a score of z alone does
        not depend on m for background, so a cut on it does not sculpt the mass spectrum."""
        if len(self.flows) > 1:
            raise ValueError(f"a mixture of {len(self.flows)} flows has no single latent space: LaCATHODE needs one flow "
                             "(density ensemble 1), or take one member with .member(e)")
        y, c = self._flow_input(x, m), self._context(m)
        pieces = [self.flows[0].to_base(a, b).double().numpy() for a, b in zip(y.split(batch), c.split(batch))]
        return np.concatenate(pieces) if pieces else np.zeros((0, y.shape[1]))

    @torch.no_grad()
    def sample(self, m: np.ndarray, seed: int = 0, batch: int = 65_536) -> np.ndarray:
        """One x ~ p(x | m) per mass in m, in physical features (an ensemble's member drawn at
        random for each). Rare draws far outside the fitted range are redrawn (at most a few
        times) so the result holds no overflow."""
        generator = torch.Generator().manual_seed(seed)
        m = np.asarray(m, dtype=np.float64).ravel()
        c = self._context(m)
        which = np.random.default_rng(seed).integers(len(self.flows), size=len(m))
        y = np.zeros((len(m), len(self.scaler.low)))
        for e, flow in enumerate(self.flows):
            rows = np.flatnonzero(which == e)
            for start in range(0, len(rows), batch):
                piece = rows[start:start + batch]
                y[piece] = _draw(flow, c[torch.as_tensor(piece)], generator)
        y = self.trend.restore(y, m)
        return self.scaler.inverse(np.clip(y, -50, 50))

    def _payload(self) -> dict:
        """The flows and the preprocessing as plain types (what :meth:`_from_payload` reads)."""
        return {"flows": [flow_payload(flow) for flow in self.flows], "scaler": self.scaler.state(),
                "mass_scaler": self.mass_scaler.state(), "trend": self.trend.state()}

    @classmethod
    def _from_payload(cls, payload: dict, settings: DensitySettings, path: str | Path) -> "ConditionalDensity":
        flows = payload["flows"] if "flows" in payload else [payload["flow"]]  # one "flow" before ensembles existed
        return cls(LogitScaler.from_state(payload["scaler"]), Standardizer.from_state(payload["mass_scaler"]),
                   [flow_from_payload(flow, path).eval() for flow in flows], settings,
                   MassTrend.from_state(payload["trend"]) if "trend" in payload else None)

    def save(self, path: str | Path) -> None:
        dump({**self._payload(), "settings": finite(asdict(self.settings))}, path, "density")

    @classmethod
    def load(cls, path: str | Path) -> "ConditionalDensity":
        payload = load_container(path, "density")
        # a density saved before the mass trend (or its width) existed modelled the features without it
        settings = DensitySettings(**{"trend_degree": 0, "scale_degree": 0, **payload["settings"]})
        return cls._from_payload(payload, settings, path)


def _member_checkpoint(checkpoint: str | Path | None, e: int) -> Path | None:
    """Ensemble member e's checkpoint: ``checkpoint`` itself for member 0, ``<stem>-<e><suffix>`` after."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if e == 0 else path.with_name(f"{path.stem}-{e}{path.suffix}")


def _draw(flow: Flow, context: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """One draw of ``flow`` per context row; draws that are not finite or lie beyond ±50 (far
    outside anything fitted) are redrawn, at most five times."""
    y = flow.sample(1, context, generator=generator)[:, 0].double().numpy()
    for _ in range(5):
        bad = ~np.isfinite(y).all(axis=1) | (np.abs(y) > 50).any(axis=1)
        if not bad.any():
            break
        y[bad] = flow.sample(1, context[torch.as_tensor(bad)], generator=generator)[:, 0].double().numpy()
    return y


class DensityFolds:
    """K background densities cross-fitted on the sidebands, as the classifiers are on the SR:
    the sideband events are split into K folds at random (``fold``, one per event) and density k
    is trained on the events outside fold k, so that every sideband event has a density that
    never saw it.

    Why: a bump hunt fits the sideband events after a cut on a score built from the density. A
    flow fits its own training events a little better than fresh ones (it learns their
    fluctuations), so the score of a training event is not distributed as that of an SR event,
    which the flow never saw; measured on background only (README, null study), the SR then
    shows a false excess of about +1σ at 200k events. Scoring each sideband event with the
    method built on the density of its own fold (:func:`~nfapps.anomaly.methods.cathode` and
    :func:`~nfapps.anomaly.methods.lacathode` take a ``DensityFolds`` as ``background``)
    removes that. The price: each density learns from (K − 1)/K of the sidebands, and the
    classifiers are trained once per density.
    """

    def __init__(self, densities: list[ConditionalDensity], fold: np.ndarray) -> None:
        fold = np.asarray(fold, dtype=np.int64).ravel()
        if len(densities) < 2 or fold.min(initial=0) < 0 or fold.max(initial=0) >= len(densities):
            raise ValueError(f"need ≥ 2 densities and folds in [0, {len(densities)}), got {len(densities)} densities")
        self.densities, self.fold = list(densities), fold

    @staticmethod
    def split(n: int, folds: int, seed: int = 0) -> np.ndarray:
        """A random fold in [0, folds) for each of n events, the folds as equal as can be."""
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"flow folds must be an integer ≥ 2 (1: one density on all sideband events), got {folds!r}")
        if n < 2 * folds:
            raise ValueError(f"{n} sideband events cannot be split into {folds} flow folds")
        return np.random.default_rng(seed).permutation(n) % folds

    @classmethod
    def fit(cls, x: np.ndarray, m: np.ndarray, settings: DensitySettings | None = None, folds: int = 2,
            device: str = "auto", checkpoint: str | Path | None = None, progress: bool = True) -> "DensityFolds":
        """Train ``folds`` densities on sideband events x (N, k), m (N,); ``checkpoint``: a
        directory where density k keeps ``fold<k>.ckpt`` (an interrupted run resumes)."""
        s = settings or DensitySettings()
        x, m = np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64).ravel()
        fold = cls.split(len(m), folds, s.seed)
        if checkpoint is not None:
            Path(checkpoint).mkdir(parents=True, exist_ok=True)
        densities = []
        for k in range(folds):
            logger.info("background density %d of %d (without sideband fold %d)", k + 1, folds, k)
            keep = fold != k
            densities.append(ConditionalDensity.fit(x[keep], m[keep], s, device, progress=progress,
                                                    checkpoint=Path(checkpoint) / f"fold{k}.ckpt" if checkpoint else None))
        return cls(densities, fold)

    def __len__(self) -> int:
        return len(self.densities)

    def member(self, e: int) -> "DensityFolds":
        """Ensemble member e of every fold's density, on the same folds (as
        :meth:`ConditionalDensity.member`)."""
        return DensityFolds([density.member(e) for density in self.densities], self.fold)

    @property
    def settings(self) -> DensitySettings:
        return self.densities[0].settings

    def save(self, path: str | Path) -> None:
        """One file: every density and the fold of every sideband event."""
        dump({"densities": [d._payload() for d in self.densities], "fold": self.fold.tolist(),
              "settings": finite(asdict(self.settings))}, path, "density-folds")

    @classmethod
    def load(cls, path: str | Path) -> "DensityFolds":
        payload = load_container(path, "density-folds")
        settings = DensitySettings(**payload["settings"])
        return cls([ConditionalDensity._from_payload(d, settings, path) for d in payload["densities"]],
                   np.asarray(payload["fold"]))


def fit_background(x: np.ndarray, m: np.ndarray, settings: DensitySettings | None = None, folds: int = 1,
                   device: str = "auto", checkpoint: str | Path | None = None,
                   progress: bool = True) -> ConditionalDensity | DensityFolds:
    """The background density p(x | m) of sideband events: one :class:`ConditionalDensity` on all
    of them (``folds`` = 1; ``checkpoint`` a file) or :class:`DensityFolds` cross-fitted on
    ``folds`` folds (``checkpoint`` a directory), so every sideband event has a density that
    never saw it."""
    if folds == 1:
        return ConditionalDensity.fit(x, m, settings, device, checkpoint=checkpoint, progress=progress)
    return DensityFolds.fit(x, m, settings, folds, device, checkpoint=checkpoint, progress=progress)


__all__ = ["DensitySettings", "ConditionalDensity", "DensityFolds", "ARCHITECTURES", "fit_background"]
