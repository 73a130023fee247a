"""The conditional density p(x | m) of the features given the resonant mass, by an engine flow.

Features are preprocessed (:class:`~nfapps.anomaly.preprocess.LogitScaler`), their polynomial
trend in the mass taken out (:class:`~nfapps.anomaly.preprocess.MassTrend`, linear by default), and
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
    # degree of the polynomial trend in m taken out of the preprocessed features before the flow (0: none);
    # measured on background only, a linear trend lowers the SR's false excess (README, "null study")
    trend_degree: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        self.hidden = tuple(int(h) for h in self.hidden)
        self.trend_degree = MassTrend.check_degree(self.trend_degree)

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
        trend = trend or MassTrend.fit(y, m, s.trend_degree)
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
        """log p(y | m) of the preprocessed features y of x."""
        y, c = self._flow_input(x, m), self._context(m)
        return np.concatenate([self.flow.log_prob(a, b).double().numpy() for a, b in zip(y.split(batch), c.split(batch))])

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

    def save(self, path: str | Path) -> None:
        dump({"flow": flow_payload(self.flow), "scaler": self.scaler.state(), "mass_scaler": self.mass_scaler.state(),
              "trend": self.trend.state(), "settings": finite(asdict(self.settings))}, path, "density")

    @classmethod
    def load(cls, path: str | Path) -> "ConditionalDensity":
        payload = load_container(path, "density")
        # a density saved before the mass trend existed modelled the features with no trend taken out
        settings = DensitySettings(**{"trend_degree": 0, **payload["settings"]})
        return cls(LogitScaler.from_state(payload["scaler"]), Standardizer.from_state(payload["mass_scaler"]),
                   flow_from_payload(payload["flow"], path).eval(), settings,
                   MassTrend.from_state(payload["trend"]) if "trend" in payload else None)


__all__ = ["DensitySettings", "ConditionalDensity", "ARCHITECTURES"]
