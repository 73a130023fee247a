"""The running state of an estimate, and its checkpoint (see ``Integrator.integrate``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import dump, load_container
from .estimate import Tally
from .stratify import Strata


@dataclass
class EstimateProgress:
    """What an estimate has gathered after its first ``done`` batches: the pilots' tallies and
    weights, the chosen sampler, the points per cube decided on, the estimate's tally and
    weights, each candidate's strata and the time spent. Written after every batch, it lets an
    interrupted estimate continue exactly."""

    strata: dict[str, Strata | None]
    chosen: str | None
    per_cube: int | None = None
    done: int = 0
    tally: Tally = field(default_factory=Tally)
    pilots: dict[str, Tally] = field(default_factory=dict)
    pilot_weights: dict[str, np.ndarray] = field(default_factory=dict)
    weights: list[np.ndarray] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"sampler": 0.0, "integrand": 0.0})

    def save(self, path: str | Path, signature: dict[str, Any]) -> None:
        """Write this progress atomically, with the ``signature`` of the estimate it belongs to."""
        dump({
            "signature": signature, "done": self.done, "chosen": self.chosen, "per_cube": self.per_cube,
            "timings": self.timings,
            "tally": self.tally.to_dict(), "pilots": {key: value.to_dict() for key, value in self.pilots.items()},
            "pilot_weights": {key: torch.from_numpy(value) for key, value in self.pilot_weights.items()},
            "weights": torch.from_numpy(np.concatenate(self.weights) if self.weights else np.zeros(0)),
            "strata": {key: None if value is None else value.state() for key, value in self.strata.items()},
        }, path, "estimate")

    @classmethod
    def load(cls, path: str | Path, signature: dict[str, Any], beta: float, device: torch.device) -> "EstimateProgress":
        """The progress saved at ``path``, which must belong to the estimate of this ``signature``."""
        state = load_container(path, "estimate")
        if state["signature"] != signature:
            raise ValueError(f"{path} holds the progress of another estimate (other calls, settings or sampler): "
                             "delete it to start this one afresh")
        return cls(
            strata={key: None if value is None else Strata.from_state(value, beta, device)
                    for key, value in state["strata"].items()},
            chosen=state["chosen"], per_cube=state["per_cube"], done=state["done"], tally=Tally(**state["tally"]),
            pilots={key: Tally(**value) for key, value in state["pilots"].items()},
            pilot_weights={key: value.numpy() for key, value in state["pilot_weights"].items()},
            weights=[state["weights"].numpy()] if state["weights"].numel() else [],
            timings=state["timings"],
        )


__all__ = ["EstimateProgress"]
