"""Maximum-likelihood training of a flow: ``fit(flow, data, context) -> History``.

The objective is the mean negative log-likelihood over the training rows,

    NLL(θ) = −(1/N) Σ_i log p_θ(x_i | c_i),

minimised with Adam on minibatches. Everything random is derived from ``seed``: the
validation split from one seeded permutation, the minibatch order of epoch e from a generator
seeded by (seed, e), and torch's global RNG (dropout, …) re-seeded by (seed, e, rank) inside
each epoch and restored afterwards. An epoch therefore depends only on the state at its start,
so a run resumed from the checkpoint written after epoch k reproduces the uninterrupted run
bit for bit.

Launched with ``torchrun --nproc_per_node=N`` the same call trains data-parallel: each
process joins the group, runs one no-grad forward on the first global batch (so data-dependent
initialisations happen identically everywhere), wraps the flow in DistributedDataParallel, and
takes rows ``rank::N`` of every global batch of ``batch_size`` rows. Each process's loss is
−Σ_shard log p · N / |batch|, and DDP averages gradients over the N processes, so the step is
exactly that of the single-process full-batch mean.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed as dist
from .atomic import FlowFileError, dump, load_container
from .device import resolve_device
from .flow import Flow
from .validation import check_batch, check_context

logger = logging.getLogger(__name__)

#: Data up to this many bytes is moved to an accelerator once; larger data stays in host memory
#: and is copied over batch by batch.
DEVICE_DATA_LIMIT = 1 << 30
#: Learning-rate schedules of :func:`fit`.
LR_SCHEDULES = ("constant", "cosine", "plateau")
#: "plateau": the learning rate halves after every PLATEAU_EPOCHS epochs in a row without a lower validation NLL.
PLATEAU_EPOCHS = 3

# Independent random streams derived from the user's seed.
_SPLIT, _ORDER, _RNG = 0, 1, 2

Pair = tuple[Tensor, "Tensor | None"]


@dataclasses.dataclass
class History:
    """What happened during :func:`fit`.

    Attributes:
        train_nll: mean training NLL of each epoch (running mean over the epoch's minibatches,
            in nats per sample).
        val_nll: validation NLL after each epoch; empty when there is no validation set.
        best_epoch: index (0-based, into the lists above) of the epoch whose weights the flow
            holds at the end: the lowest validation NLL, or the last epoch without validation.
        epochs_run: epochs completed, over all resumed runs together.
        stopped_early: whether training stopped because the validation NLL did not improve for
            ``patience`` epochs.
        wall_time: seconds spent training, over all resumed runs together.
    """

    train_nll: list[float] = dataclasses.field(default_factory=list)
    val_nll: list[float] = dataclasses.field(default_factory=list)
    best_epoch: int | None = None
    epochs_run: int = 0
    stopped_early: bool = False
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**{f.name: copy.deepcopy(d[f.name]) for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass
class _State:
    """Everything beyond the weights and optimiser that an epoch starts from."""

    history: History = dataclasses.field(default_factory=History)
    best_val: float = math.inf
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0


def fit(
    flow: Flow,
    data,
    context=None,
    *,
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 1e-3,
    lr_schedule: str = "constant",
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    validation=None,
    patience: int | None = 10,
    clip_grad: float | None = 5.0,
    seed: int = 0,
    device: str | torch.device = "auto",
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable[[History], None] | None = None,
) -> History:
    """Train ``flow`` by maximum likelihood on ``data`` (and ``context``), in place.

    Args:
        flow: the flow to train; it is moved to ``device``, trained, left there holding the
            weights of its best epoch, and put in eval mode.
        data: array or tensor of shape ``(N, *flow.event_shape)``.
        context: array or tensor of shape ``(N, context_features)`` for a conditional flow.
        epochs: maximum number of passes over the training rows.
        batch_size: rows per optimiser step (the global batch when data-parallel).
        lr, weight_decay: Adam's learning rate and L2 penalty.
        lr_schedule: "constant" (``lr`` throughout); "cosine": epoch e (from 0) runs at
            lr_e = lr · (1 + cos(π e / epochs)) / 2, from ``lr`` down towards 0 at ``epochs``
            (Loshchilov & Hutter 2017, without restarts); "plateau": the rate halves after every
            ``PLATEAU_EPOCHS`` epochs in a row without a lower validation NLL (as torch's
            ReduceLROnPlateau), so with ``patience`` > ``PLATEAU_EPOCHS`` a stalled run tries
            smaller steps before it stops; needs validation rows. Both are functions of the
            epoch and the validation history, so a resumed run continues the same schedule.
        val_fraction: share of rows held out (by a seeded permutation) to measure the
            validation NLL for early stopping; 0 trains on everything without early stopping.
        validation: explicit validation data instead: ``x_val`` or a tuple ``(x_val, context_val)``.
        patience: stop after this many epochs without a lower validation NLL (None: never).
        clip_grad: clip the gradient's global 2-norm to this value (None: no clipping).
        seed: seeds the split, the minibatch order and torch's RNG during training.
        device: "auto", "cpu", "cuda", "cuda:1" or a torch.device.
        checkpoint: file written atomically after every epoch; with ``resume=True`` an existing
            checkpoint there is continued from (a finished one returns straight away).
        progress: show a tqdm progress bar (only ever on rank 0).
        callback: called as ``callback(history)`` after every epoch, once its checkpoint is
            written, on every process; raising from it stops training (the checkpoint remains).

    Returns:
        The :class:`History` of the run (including epochs of the runs it resumed).

    Raises:
        ValueError: for unusable data, context, validation data or arguments, and for a
            checkpoint of a different flow (:class:`~nfapps.atomic.FlowFileError` for a damaged one).
        FloatingPointError: when an epoch's NLL becomes NaN or infinite.
    """
    _check_arguments(epochs, batch_size, lr, weight_decay, val_fraction, patience, clip_grad, seed)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if lr_schedule == "plateau" and val_fraction == 0 and validation is None:
        raise ValueError("lr_schedule='plateau' follows the validation NLL: set val_fraction > 0 or pass validation data")
    epochs, batch_size, seed, lr, weight_decay = int(epochs), int(batch_size), int(seed), float(lr), float(weight_decay)
    clip_grad = float(clip_grad) if clip_grad is not None else None  # plain types: they go into the checkpoint
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the flow has no trainable parameters")
    train, val = _split(flow, data, context, validation, val_fraction, seed)

    device = dist.init(_concrete(resolve_device(device)))
    world = dist.world_size()
    flow.to(device)
    train, val = _place(train, device), (_place(val, device) if val is not None else None)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    settings = {
        "batch_size": batch_size, "seed": seed, "lr": lr, "lr_schedule": lr_schedule, "weight_decay": weight_decay,
        "clip_grad": clip_grad,
        "n_train": train[0].shape[0], "n_val": val[0].shape[0] if val is not None else 0, "world_size": world,
    }

    state = _State()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        if _exists_everywhere(path, device) and resume:
            state = _resume(path, flow, optimizer, settings, device)
        elif dist.is_main():
            if path.exists():
                logger.info("resume=False: starting afresh; %s will be overwritten", path)
            path.parent.mkdir(parents=True, exist_ok=True)
    history = state.history
    finished = history.stopped_early or history.epochs_run >= epochs
    model: torch.nn.Module = flow
    if not finished and world > 1:
        if history.epochs_run == 0:  # data-dependent initialisation, identical on every rank
            first = _order(train[0].shape[0], seed, 0)[:batch_size].to(train[0].device)
            flow.train()
            with torch.no_grad():
                flow(*_rows(train, first, device))
        model = dist.data_parallel(flow, device)

    show = progress and dist.is_main()
    validate, flow.validate = flow.validate, False  # the data were checked once, up front
    started, base_time = time.perf_counter(), history.wall_time
    try:
        with tqdm(total=epochs, initial=min(history.epochs_run, epochs), desc="fit", unit="epoch", disable=not show) as bar, \
                (logging_redirect_tqdm() if show else contextlib.nullcontext()):
            for epoch in range(history.epochs_run, epochs if not finished else 0):
                t0 = time.perf_counter()
                epoch_lr = scheduled_lr(lr, lr_schedule, epoch, epochs, history.val_nll)
                for group in optimizer.param_groups:
                    group["lr"] = epoch_lr
                train_nll, val_nll = _epoch(model, flow, optimizer, params, train, val, epoch, seed, batch_size, clip_grad, device)
                _check_finite_epoch(epoch, train_nll, val_nll, lr, epoch_lr)
                improved = _record(state, flow, epoch, train_nll, val_nll, patience)
                history.wall_time = base_time + time.perf_counter() - started
                if dist.is_main():
                    _log_epoch(epoch, epochs, train_nll, val_nll, improved, time.perf_counter() - t0)
                bar.set_postfix(train=f"{train_nll:.4f}", **({"val": f"{val_nll:.4f}"} if val_nll is not None else {}))
                bar.update(1)
                if path is not None:
                    if dist.is_main():
                        _write_checkpoint(path, flow, optimizer, state, settings)
                    dist.barrier()
                if callback is not None:
                    callback(history)
                if history.stopped_early:
                    if dist.is_main():
                        logger.info("early stopping after epoch %d: no lower validation NLL for %d epochs; "
                                    "keeping epoch %d (val NLL %.4f)", epoch + 1, patience, history.best_epoch + 1, state.best_val)
                    break
    finally:
        flow.validate = validate
    if state.best_state is not None:
        flow.load_state_dict(state.best_state)
    flow.eval()
    return history


def scheduled_lr(lr: float, schedule: str, epoch: int, epochs: int, val_nll: Sequence[float] = ()) -> float:
    """The learning rate of epoch ``epoch`` (from 0) of ``epochs`` under ``schedule`` (see :func:`fit`),
    after the validation NLLs ``val_nll`` of the epochs before it."""
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "plateau":
        best, stalled, halvings = math.inf, 0, 0
        for value in val_nll:
            if value < best:
                best, stalled = value, 0
            else:
                stalled += 1
                halvings += stalled % PLATEAU_EPOCHS == 0
        return lr * 0.5**halvings
    return lr


def _epoch(model, flow: Flow, optimizer, params, train: Pair, val: Pair | None, epoch: int, seed: int,
           batch_size: int, clip_grad: float | None, device: torch.device) -> tuple[float, float | None]:
    """Train one epoch and measure it: (mean training NLL, validation NLL or None), over all ranks."""
    rank, world = dist.rank(), dist.world_size()
    flow.train()
    with _epoch_rng(seed, epoch, rank, device):
        order = _order(train[0].shape[0], seed, epoch)
        train_sum = _train_epoch(model, optimizer, params, train, order, batch_size, clip_grad, rank, world, device)
    val_sum = _nll_sum(flow, val, batch_size, rank, world, device) if val is not None else torch.ones(2, dtype=torch.float64, device=device)
    total, rows, val_total, val_rows = dist.all_reduce_sum(torch.cat([train_sum, val_sum])).tolist()
    return total / rows, (val_total / val_rows if val is not None else None)


def _record(state: _State, flow: Flow, epoch: int, train_nll: float, val_nll: float | None, patience: int | None) -> bool:
    """Add an epoch to the history and update the best weights and early-stopping count; True if it is the best."""
    history = state.history
    history.train_nll.append(train_nll)
    improved = val_nll is None or val_nll < state.best_val
    if val_nll is not None:
        history.val_nll.append(val_nll)
        if improved:
            state.best_val, state.bad_epochs, state.best_state = val_nll, 0, _clone_state(flow)
        else:
            state.bad_epochs += 1
    if improved:
        history.best_epoch = epoch
    history.epochs_run = epoch + 1
    history.stopped_early = patience is not None and state.bad_epochs >= patience
    return improved


def _check_arguments(epochs, batch_size, lr, weight_decay, val_fraction, patience, clip_grad, seed) -> None:
    def integer(value, name, low):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")

    integer(epochs, "epochs", 1)
    integer(batch_size, "batch_size", 1)
    integer(seed, "seed", 0)
    if patience is not None:
        integer(patience, "patience", 1)
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be positive or None, got {clip_grad!r}")


def _split(flow: Flow, data, context, validation, val_fraction: float, seed: int) -> tuple[Pair, Pair | None]:
    """Check the data once (on the CPU, in the flow's dtype) and hold out the validation rows."""
    like = torch.empty((), dtype=flow._anchor.dtype)
    x = check_batch(data, flow.event_shape, like, name="data")
    c = check_context(context, x.shape[0], flow.context_features, like, name="context")
    if validation is not None:
        vx, vc = validation if isinstance(validation, tuple) else (validation, None)
        vx = check_batch(vx, flow.event_shape, like, name="validation data")
        vc = check_context(vc, vx.shape[0], flow.context_features, like, name="validation context")
        return (x, c), (vx, vc)
    n = x.shape[0]
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_val == 0:
        return (x, c), None
    if n - n_val < 1:
        raise ValueError(
            f"data has {n} row(s): too few to hold out val_fraction={val_fraction} for validation and still "
            "train; pass more rows, val_fraction=0, or validation=(x_val, context_val)"
        )
    perm = torch.randperm(n, generator=_generator(seed, _SPLIT))
    tr, va = perm[n_val:], perm[:n_val]
    return (x[tr], c[tr] if c is not None else None), (x[va], c[va] if c is not None else None)


def _concrete(device: torch.device) -> torch.device:
    """Give a bare "cuda" its current index, so DDP and RNG handling know the GPU."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _place(pair: Pair, device: torch.device) -> Pair:
    """Move small data to the device once; keep large data in host memory."""
    nbytes = sum(t.numel() * t.element_size() for t in pair if t is not None)
    if device.type == "cpu" or nbytes > DEVICE_DATA_LIMIT:
        return pair
    return tuple(t.to(device) if t is not None else None for t in pair)  # type: ignore[return-value]


def _seed(seed: int, *stream: int) -> int:
    """A 64-bit seed for one named stream of the run's randomness (SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0])


def _generator(seed: int, *stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, *stream))


def _order(n: int, seed: int, epoch: int) -> Tensor:
    """The order in which epoch ``epoch`` visits the ``n`` training rows."""
    return torch.randperm(n, generator=_generator(seed, _ORDER, epoch))


@contextlib.contextmanager
def _epoch_rng(seed: int, epoch: int, rank: int, device: torch.device):
    """Seed torch's global RNG by (seed, epoch, rank) for one epoch, restoring the caller's afterwards."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device.index] if cuda else []):
        value = _seed(seed, _RNG, epoch, rank)
        torch.default_generator.manual_seed(value)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(value)
        yield


def _rows(pair: Pair, rows: Tensor, device: torch.device) -> Pair:
    x, c = pair
    return x[rows].to(device, non_blocking=True), (c[rows].to(device, non_blocking=True) if c is not None else None)


def _train_epoch(model, optimizer, params, train: Pair, order: Tensor, batch_size: int,
                 clip_grad: float | None, rank: int, world: int, device: torch.device) -> Tensor:
    """One pass over ``order``; returns (Σ −log p, rows) over this rank's rows, in float64."""
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for batch in order.to(train[0].device).split(batch_size):
        rows, weight = batch[rank::world], world / len(batch)
        if len(rows) == 0:  # fewer rows than ranks: join the gradient exchange with zero weight
            rows, weight = batch[:1], 0.0
        log_prob = model(*_rows(train, rows, device))
        loss = -log_prob.sum() * weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
        if weight:  # accumulate on the device: no host synchronisation per step
            total[0] -= log_prob.detach().sum().double()
            total[1] += len(rows)
    return total


@torch.no_grad()
def _nll_sum(flow: Flow, pair: Pair, batch_size: int, rank: int, world: int, device: torch.device) -> Tensor:
    """(Σ −log p, rows) over this rank's share ``rank::world`` of ``pair``, in eval mode."""
    flow.eval()
    x, c = pair
    x, c = x[rank::world], (c[rank::world] if c is not None else None)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, x.shape[0], batch_size):
        stop = start + batch_size
        xb = x[start:stop].to(device, non_blocking=True)
        cb = c[start:stop].to(device, non_blocking=True) if c is not None else None
        total[0] -= flow.log_prob(xb, cb).sum().double()
        total[1] += xb.shape[0]
    flow.train()
    return total


def _check_finite_epoch(epoch: int, train_nll: float, val_nll: float | None, lr: float, epoch_lr: float) -> None:
    """Raise if an epoch's NLL is not finite, naming the rate the epoch ran at (``epoch_lr``, which a
    schedule may have lowered from the ``lr`` the caller passed)."""
    for name, value in (("training", train_nll), ("validation", val_nll)):
        if value is not None and not math.isfinite(value):
            at = f"lr={lr}" if epoch_lr == lr else f"lr={lr}; this epoch ran at {epoch_lr:.3g}"
            raise FloatingPointError(
                f"the {name} NLL became {value} in epoch {epoch + 1}: the flow gives zero density to some rows "
                f"or diverged; lower lr ({at}), standardise the data, or check that the data lie in "
                "the base distribution's support"
            )


def _log_epoch(epoch: int, epochs: int, train_nll: float, val_nll: float | None, improved: bool, seconds: float) -> None:
    val = f", val NLL {val_nll:.4f}{' *' if improved else ''}" if val_nll is not None else ""
    logger.debug("epoch %d/%d: train NLL %.4f%s (%.2f s)", epoch + 1, epochs, train_nll, val, seconds)


def _clone_state(flow: Flow) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _architecture(flow: Flow) -> dict[str, Any]:
    """What must match for a checkpoint to fit a flow: its build config and its tensor shapes."""
    return {"config": flow.config, "shapes": {k: list(v.shape) for k, v in flow.state_dict().items()}}


def _write_checkpoint(path: Path, flow: Flow, optimizer: torch.optim.Optimizer, state: _State, settings: dict) -> None:
    dump(
        {
            "architecture": _architecture(flow),
            "settings": settings,
            "model": flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "history": state.history.to_dict(),
            "best_val": state.best_val,
            "best_state": state.best_state,
            "bad_epochs": state.bad_epochs,
        },
        path,
        "checkpoint",
    )


def _exists_everywhere(path: Path, device: torch.device) -> bool:
    """Whether the checkpoint exists, agreed by all ranks (it must live on a shared filesystem)."""
    found = dist.all_reduce_sum(torch.tensor([float(path.exists())], device=device)).item()
    world = dist.world_size()
    if 0 < found < world:
        raise RuntimeError(f"checkpoint {path} is visible to {int(found)} of {world} processes; put it on a filesystem all of them share")
    return found > 0


def _resume(path: Path, flow: Flow, optimizer: torch.optim.Optimizer, settings: dict, device: torch.device) -> _State:
    """Load the checkpoint at ``path`` into ``flow`` and ``optimizer`` and return the run state."""
    ck = load_container(path, "checkpoint")
    try:
        saved_arch, model, opt = ck["architecture"], ck["model"], ck["optimizer"]
        state = _State(History.from_dict(ck["history"]), float(ck["best_val"]), ck["best_state"], int(ck["bad_epochs"]))
    except (KeyError, TypeError, ValueError):
        raise FlowFileError(f"{path} is an nfapps checkpoint missing training state; delete it to start afresh") from None
    difference = _difference(saved_arch, _architecture(flow))
    if difference:
        raise ValueError(
            f"checkpoint {path} was written for a different flow ({difference}); delete it, or pass another "
            "checkpoint path to train this flow afresh"
        )
    flow.load_state_dict(model)
    optimizer.load_state_dict(opt)
    for group in optimizer.param_groups:  # the arguments of this call win over the saved ones
        group["lr"], group["weight_decay"] = settings["lr"], settings["weight_decay"]
    if state.best_state is not None:
        state.best_state = {k: v.to(device) for k, v in state.best_state.items()}
    saved = {"lr_schedule": "constant", **ck.get("settings", {})}  # checkpoints from before schedules ran at a constant rate
    changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if changed and dist.is_main():
        logger.warning("resuming %s with different settings %s (saved → now); the result will differ from an "
                       "uninterrupted run", path, changed)
    if dist.is_main():
        logger.info("resuming from %s after epoch %d", path, state.history.epochs_run)
    return state


def _difference(saved: dict, current: dict) -> str:
    """A short description of the first difference between two architectures ('' if none)."""
    if saved.get("config") != current.get("config"):
        return f"built as {saved.get('config')}, this flow as {current.get('config')}"
    a, b = saved.get("shapes", {}), current.get("shapes", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key, 'absent')} there, {b.get(key, 'absent')} here"
    return ""


__all__ = ["History", "LR_SCHEDULES", "PLATEAU_EPOCHS", "fit", "scheduled_lr"]
