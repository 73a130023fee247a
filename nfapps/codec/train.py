"""Training a flow codec on image patches: loss R + λ·D, checkpoints that resume.

R is the rate proxy in bits per pixel; the distortion D is 255²·MSE or 1 − MS-SSIM
(:mod:`~nfapps.codec.distortion`).

Batch k draws its patches (random crops, flips) and the rate proxy's uniform noise with
generators seeded by (seed, k), so an
interrupted run resumed from its checkpoint trains on exactly the batches it would have.
The entropy bottlenecks' quantiles have CompressAI's separate auxiliary loss and optimiser.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic import dump, load_container
from ..device import resolve_device
from .baseline import BaselineConfig, LearnedBaseline
from .codec import build_model
from .distortion import Objective, distortion
from .images import MS_SSIM_MIN_SIDE
from .model import CodecConfig, FlowCodec, fit_entropy_quantiles, learned_state

logger = logging.getLogger(__name__)

#: The per-channel quantization gains learn this many times faster than the flow: with the flow's
#: rate, a 1e-3 step in log-gain per batch takes thousands of batches to move the bit rate by 2×.
GAIN_LR_FACTOR = 10.0

#: The learning rates' factor at TrainingSettings.lr_drop_at.
LR_DROP_FACTOR = 0.1

#: The batch counter of ActNorm's initialisation batch (no training step uses it).
INIT_BATCH_STEP = 2**31 - 1


@dataclass(frozen=True)
class TrainingSettings:
    lmbda: float = 0.01  # distortion weight λ in R + λ·D (CompressAI's conventions: nfapps.codec.distortion)
    steps: int = 2000
    batch: int = 8
    patch: int = 64
    lr: float = 1e-3
    seed: int = 0
    time_budget_s: float = math.inf  # stop (and save) after this much training time
    checkpoint_every: int = 200
    # the learning rates drop LR_DROP_FACTOR-fold once this share of the run is done (of the time
    # budget when there is one, else of the steps): measured at λ = 0.01, 15 min on one core,
    # 0.652 bpp at 30.41 dB on the held-out photos against 0.637 bpp at 29.64 dB without
    lr_drop_at: float = 0.85
    distortion: str = "mse"  # D = 255²·MSE, or 1 − MS-SSIM ("ms-ssim", patches > 160 pixels)

    @property
    def objective(self) -> Objective:
        """The R + λ·D this training minimises (and the trained codec's encoder optimises)."""
        return Objective(self.lmbda, self.distortion)

    def __post_init__(self) -> None:
        Objective(self.lmbda, self.distortion)  # checks λ and the distortion
        if self.distortion == "ms-ssim" and self.patch <= MS_SSIM_MIN_SIDE:
            raise ValueError(f"MS-SSIM needs patches larger than {MS_SSIM_MIN_SIDE} pixels (four downsamplings of an "
                             f"11-pixel window), got {self.patch}; choose --patch 192 or more")
        if not 0 < self.lr_drop_at <= 1:
            raise ValueError(f"lr_drop_at must be a share of the run in (0, 1], got {self.lr_drop_at!r}")
        for name in ("steps", "batch", "patch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)!r}")


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels


def patch_batch(images: list[np.ndarray], batch: int, patch: int, seed: int, step: int) -> torch.Tensor:
    """Centred (batch, 3, patch, patch) crops with random flips, drawn by generator (seed, step)."""
    rng = np.random.default_rng([seed, step])
    out = np.empty((batch, patch, patch, 3), dtype=np.uint8)
    for i in range(batch):
        image = images[rng.integers(len(images))]
        h, w = image.shape[:2]
        top, left = rng.integers(h - patch + 1), rng.integers(w - patch + 1)
        crop = image[top : top + patch, left : left + patch]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0 - 0.5


def _optimizers(model: FlowCodec | LearnedBaseline, lr: float) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """Adam for the model (the quantization gains, log-scale parameters that set the rate, at
    GAIN_LR_FACTOR × lr) and CompressAI's separate Adam for the bottlenecks' quantiles."""
    named = list(model.named_parameters())
    quantiles = [p for n, p in named if n.endswith("quantiles")]
    gains = [p for n, p in named if n.startswith("log_gains")]
    rest = [p for n, p in named if not n.endswith("quantiles") and not n.startswith("log_gains")]
    main = torch.optim.Adam([{"params": rest}, {"params": gains, "lr": GAIN_LR_FACTOR * lr}], lr=lr)
    return main, torch.optim.Adam(quantiles, lr=1e-3)


def train_codec(
    images: list[np.ndarray],
    config: CodecConfig | BaselineConfig | None = None,
    settings: TrainingSettings | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> tuple[FlowCodec | LearnedBaseline, list[dict[str, float]]]:
    """Train a :class:`FlowCodec` (or, given a :class:`BaselineConfig`, a CompressAI baseline) on
    patches of ``images`` (uint8 (H, W[, 3]), each at least ``patch`` on a side). With ``checkpoint``, resumes from it when it exists (same config and
    settings) and writes it atomically every ``checkpoint_every`` steps and at the end.
    Returns the model (on the CPU, in eval mode) and the per-step history (bpp, mse, psnr, loss,
    and ms_ssim when that is the distortion)."""
    config = config or CodecConfig()
    settings = settings or TrainingSettings()
    device = resolve_device(device)
    rgb = [_as_rgb(np.asarray(im, dtype=np.uint8)) for im in images]
    if not rgb or min(min(im.shape[:2]) for im in rgb) < settings.patch:
        raise ValueError(f"training needs images of at least {settings.patch}×{settings.patch} pixels")
    torch.manual_seed(settings.seed)
    model = build_model(config).to(device)
    if settings.patch % model.multiple:
        raise ValueError(f"training patches of {settings.patch} pixels do not fit this model, whose image sides must be "
                         f"multiples of {model.multiple}; choose --patch {max(model.multiple, settings.patch // model.multiple * model.multiple)}")
    main_opt, aux_opt = _optimizers(model, settings.lr)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_container(checkpoint, "codec-checkpoint")
        saved = state["settings"]
        if (state["config"] != asdict(config) or saved["lmbda"] != settings.lmbda
                or saved.get("distortion", "mse") != settings.distortion):
            raise ValueError(f"checkpoint {checkpoint} was written for another codec, λ or distortion; "
                             "use another path or the same settings")
        model.load_state_dict(state["model"], strict=False)
        main_opt.load_state_dict(state["main_opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        start, history = int(state["step"]), list(state["history"])
        logger.info("resuming codec training from step %d of %d (%s)", start, settings.steps, checkpoint)
    else:
        with torch.no_grad():  # ActNorm's data-dependent initialisation from a first batch
            model(patch_batch(rgb, max(settings.batch, 16), settings.patch, settings.seed, INIT_BATCH_STEP).to(device))

    def save(step: int) -> None:
        if checkpoint is not None:
            dump({"config": asdict(config), "settings": {**asdict(settings), "time_budget_s": None}, "model": learned_state(model),
                  "main_opt": main_opt.state_dict(), "aux_opt": aux_opt.state_dict(), "step": step, "history": history},
                 checkpoint, "codec-checkpoint")

    model.train()
    began = time.perf_counter()
    budgeted = math.isfinite(settings.time_budget_s)  # the clock, not the step count, ends the run: no ETA
    bar = tqdm(range(start, settings.steps), initial=start, total=math.inf if budgeted else settings.steps,
               desc="codec training", disable=not progress)
    done = start
    rng_devices = [device] if device.type == "cuda" else []
    dropped = main_opt.param_groups[0]["lr"] < settings.lr  # a resumed run that had dropped already
    for step in bar:
        elapsed = time.perf_counter() - began
        if elapsed > settings.time_budget_s:  # checked first: a spent budget trains no step
            logger.info("time budget of %.0f s reached at step %d", settings.time_budget_s, done)
            break
        if not dropped and (elapsed > settings.lr_drop_at * settings.time_budget_s if budgeted
                            else step >= settings.lr_drop_at * settings.steps):
            for group in main_opt.param_groups:
                group["lr"] *= LR_DROP_FACTOR
            dropped = True
            logger.info("learning rates × %g from step %d on", LR_DROP_FACTOR, step)
        x = patch_batch(rgb, settings.batch, settings.patch, settings.seed, step).to(device)
        with torch.random.fork_rng(devices=rng_devices):  # the rate proxy's noise, counter-seeded too
            torch.manual_seed(hash((settings.seed, step)) % 2**63)
            out = model(x)
        bpp = out["bpp"].mean()
        distorted = distortion(out["x_hat"], x, settings.distortion)
        loss = bpp + settings.lmbda * distorted
        if not torch.isfinite(loss):
            raise FloatingPointError(f"codec training diverged at step {step} (loss {loss.item()}); lower --lr")
        main_opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        main_opt.step()
        aux = model.aux_loss()
        aux.backward()
        aux_opt.step()
        mse = (out["x_hat"].detach() - x).square().mean().item()
        psnr = 10 * math.log10(1.0 / max(mse, 1e-12))
        history.append({"step": step, "loss": loss.item(), "bpp": bpp.item(), "mse": mse, "psnr": psnr}
                       | ({"ms_ssim": 1.0 - distorted.item()} if settings.distortion == "ms-ssim" else {}))
        bar.set_postfix(bpp=f"{bpp.item():.3f}", psnr=f"{psnr:.2f}")
        done = step + 1
        if done % settings.checkpoint_every == 0:
            save(done)
    save(done)
    fit_entropy_quantiles(model)  # the codec's coding range; the checkpoint keeps the trained state to resume from
    return model.cpu().eval(), history
