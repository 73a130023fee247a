"""The conditional density p(x | m) of the features given the resonant mass, by an engine flow.

Features are preprocessed (:class:`~nfapps.anomaly.preprocess.LogitScaler`), their polynomial
trend in the mass taken out (:class:`~nfapps.anomaly.preprocess.MassTrend`: location and
log-width, linear by default), and
the mass standardised; the flow — the engine's MAF with affine or spline layers, or a spline coupling
NSF — is trained by maximum likelihood with :func:`nfapps.fit` (early stopping on a held-out
tenth, checkpoints that resume). ``log_prob`` is the density of the *preprocessed* features:
density ratios at the same x (ANODE's) need nothing more, and a Jacobian would cancel.
``sample`` draws x ~ p(x | m) for given masses and maps it back to physical features;
``latent`` maps events to the flow's base space, where background is N(0, I) at every mass.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

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
    weight_decay: float = 1e-6
    patience: int = 10
    seed: int = 0
    # degrees of the polynomial trends in m of the preprocessed features' location and log-width, taken
    # out before the flow (0: none); measured on background only, they lower the SR's false excess
    # (README, "null study")
    trend_degree: int = 1
    scale_degree: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        self.trend_degree = MassTrend.check_degree(self.trend_degree)
        self.scale_degree = MassTrend.check_degree(self.scale_degree, "scale trend degree")

    def build(self, features: int) -> Flow:
        torch.manual_seed(self.seed)
        if self.architecture == "nsf":
            return NSF(features, context=1, bins=self.bins, transforms=self.transforms, hidden=self.hidden, bound=6.0)
        elementwise = "spline" if self.architecture == "maf-spline" else "affine"
        return MAF(features, context=1, transforms=self.transforms, hidden=self.hidden, elementwise=elementwise,
                   bins=self.bins, bound=6.0)


class ConditionalDensity:
    """p(x | m): a preprocessing of x and m and a conditional flow on the result."""

    def __init__(self, scaler: LogitScaler, mass_scaler: Standardizer, flow: Flow, settings: DensitySettings,
                 trend: MassTrend | None = None) -> None:
        self.scaler, self.mass_scaler, self.flow, self.settings = scaler, mass_scaler, flow, settings
        self.trend = trend or MassTrend.none(len(scaler.low))

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
        flow = s.build(x.shape[1])
        fit(flow, torch.as_tensor(trend.remove(y, m), dtype=torch.float32),
            torch.as_tensor(mass_scaler.transform(m)[:, None], dtype=torch.float32),
            epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, patience=s.patience,
            seed=s.seed, device=device, checkpoint=checkpoint, progress=progress)
        return cls(scaler, mass_scaler, flow.cpu().eval(), s, trend)

    def _context(self, m: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.mass_scaler.transform(np.asarray(m, dtype=np.float64).ravel())[:, None], dtype=torch.float32)

    def _flow_input(self, x: np.ndarray, m: np.ndarray) -> torch.Tensor:
        """What the flow models: the preprocessed features less their mass trend."""
        return torch.as_tensor(self.trend.remove(self.scaler.transform(x), m), dtype=torch.float32)

    @torch.no_grad()
    def log_prob(self, x: np.ndarray, m: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """log p(y | m) of the preprocessed features y of x: the flow's density of the de-trended
        features plus the trend's log|det| at m."""
        y, c = self._flow_input(x, m), self._context(m)
        flow = [self.flow.log_prob(a, b).double().numpy() for a, b in zip(y.split(batch), c.split(batch))]
        return np.concatenate(flow) + self.trend.log_abs_det(m)

    @torch.no_grad()
    def latent(self, x: np.ndarray, m: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """The flow's base point z = f(y | m) of the preprocessed features y of x. For background
        events z ~ N(0, I) at every mass (as far as the flow is right): a score of z alone does
        not depend on m for background, so a cut on it does not sculpt the mass spectrum."""
        y, c = self._flow_input(x, m), self._context(m)
        pieces = [self.flow.to_base(a, b).double().numpy() for a, b in zip(y.split(batch), c.split(batch))]
        return np.concatenate(pieces) if pieces else np.zeros((0, y.shape[1]))

    @torch.no_grad()
    def sample(self, m: np.ndarray, seed: int = 0, batch: int = 65_536) -> np.ndarray:
        """One x ~ p(x | m) per mass in m, in physical features. Rare draws far outside the
        fitted range are redrawn (at most a few times) so the result holds no overflow."""
        generator = torch.Generator().manual_seed(seed)
        c = self._context(m)
        pieces = []
        for piece in c.split(batch):
            y = self.flow.sample(1, piece, generator=generator)[:, 0].double().numpy()
            for _ in range(5):
                bad = ~np.isfinite(y).all(axis=1) | (np.abs(y) > 50).any(axis=1)
                if not bad.any():
                    break
                y[bad] = self.flow.sample(1, piece[torch.as_tensor(bad)], generator=generator)[:, 0].double().numpy()
            pieces.append(y)
        y = np.concatenate(pieces) if pieces else np.zeros((0, len(self.scaler.low)))
        y = self.trend.restore(y, m)
        return self.scaler.inverse(np.clip(y, -50, 50))

    def _payload(self) -> dict:
        """The flow and the preprocessing as plain types (what :meth:`_from_payload` reads)."""
        return {"flow": flow_payload(self.flow), "scaler": self.scaler.state(), "mass_scaler": self.mass_scaler.state(),
                "trend": self.trend.state()}

    @classmethod
    def _from_payload(cls, payload: dict, settings: DensitySettings, path: str | Path) -> "ConditionalDensity":
        return cls(LogitScaler.from_state(payload["scaler"]), Standardizer.from_state(payload["mass_scaler"]),
                   flow_from_payload(payload["flow"], path).eval(), settings,
                   MassTrend.from_state(payload["trend"]) if "trend" in payload else None)

    def save(self, path: str | Path) -> None:
        dump({**self._payload(), "settings": finite(asdict(self.settings))}, path, "density")

    @classmethod
    def load(cls, path: str | Path) -> "ConditionalDensity":
        payload = load_container(path, "density")
        # a density saved before the mass trend (or its width) existed modelled the features without it
        settings = DensitySettings(**{"trend_degree": 0, "scale_degree": 0, **payload["settings"]})
        return cls._from_payload(payload, settings, path)


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


__all__ = ["DensitySettings", "ConditionalDensity", "DensityFolds", "ARCHITECTURES"]
